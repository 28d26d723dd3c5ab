// The pybind11 module fusedrnn._C: validate, allocate, release the GIL, call. No math here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cblas.h>
#include <sstream>
#include <string>
#include <vector>

#include "bindings/cell_names.h"
#include "cpu/attention.h"
#include "cpu/recurrent.h"
#include "cpu/thread_team.h"

namespace py = pybind11;
using namespace fusedrnn;

namespace {

template <typename T>
using Array = py::array_t<T, py::array::c_style>;

std::string shape_str(const std::vector<int64_t>& dims) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < dims.size(); ++i) os << (i ? ", " : "") << dims[i];
  os << (dims.size() == 1 ? ",)" : ")");
  return os.str();
}

// Raise ValueError naming the argument unless `a` has exactly the expected shape.
template <typename T>
const T* require(const py::object& obj, const char* name, std::vector<int64_t> dims) {
  if (!py::isinstance<Array<T>>(obj) && !py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + ": expected a numpy.ndarray");
  auto arr = py::cast<py::array>(obj);
  if (!arr.dtype().is(py::dtype::of<T>()))
    throw py::type_error(std::string(name) + ": expected dtype " +
                         std::string(py::str(py::dtype::of<T>())) + ", got " +
                         std::string(py::str(arr.dtype())));
  if (!(arr.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": expected a C-contiguous array");
  std::vector<int64_t> got(arr.shape(), arr.shape() + arr.ndim());
  if (got != dims)
    throw py::value_error(std::string(name) + ": expected shape " + shape_str(dims) + ", got " +
                          shape_str(got));
  return static_cast<const T*>(arr.data());
}

const int64_t* require_lengths(const py::object& obj, int64_t T, int64_t N) {
  if (obj.is_none()) return nullptr;
  const int64_t* p = require<int64_t>(obj, "lengths", {N});
  for (int64_t n = 0; n < N; ++n)
    if (p[n] < 0 || p[n] > T)
      throw py::value_error("lengths: expected values in [0, " + std::to_string(T) + "], got " +
                            std::to_string(p[n]));
  return p;
}



template <typename T>
T* mutable_data(py::array& a) { return static_cast<T*>(a.mutable_data()); }


template <typename T>
py::tuple forward_typed(CellKind cell, const py::array& x_arr, const py::object& h0,
                        const py::object& c0, const py::object& w_ih, const py::object& w_hh,
                        const py::object& b_ih, const py::object& b_hh, const py::object& lengths,
                        bool reverse, bool training) {
  if (x_arr.ndim() != 3) throw py::value_error("x: expected 3 dimensions [T, N, I]");
  const int64_t T_ = x_arr.shape(0), N = x_arr.shape(1), I = x_arr.shape(2);
  const int64_t G = gate_count(cell);
  py::object w_hh_obj = w_hh;
  auto w_hh_arr = py::cast<py::array>(w_hh_obj);
  if (w_hh_arr.ndim() != 2) throw py::value_error("w_hh: expected 2 dimensions [G*H, H]");
  const int64_t H = w_hh_arr.shape(1);
  const int64_t GH = G * H;
  const bool lstm = cell == CellKind::kLstm;
  const bool uses_extra = cell == CellKind::kLstm || cell == CellKind::kGru;

  ForwardArgs<T> a{};
  a.shape = SeqShape{T_, N, I, H, G};
  a.x = require<T>(x_arr, "x", {T_, N, I});
  a.h0 = require<T>(h0, "h0", {N, H});
  a.c0 = lstm ? require<T>(c0, "c0", {N, H}) : nullptr;
  a.w_ih = require<T>(w_ih, "w_ih", {GH, I});
  a.w_hh = require<T>(w_hh, "w_hh", {GH, H});
  a.b_ih = require<T>(b_ih, "b_ih", {GH});
  a.b_hh = require<T>(b_hh, "b_hh", {GH});
  a.lengths = require_lengths(lengths, T_, N);
  a.reverse = reverse;

  py::array y = Array<T>({T_, N, H});
  py::array h_n = Array<T>({N, H});
  py::object c_n = py::none(), extra = py::none(), h_prev = py::none(), gates_out = py::none();
  a.y = mutable_data<T>(y);
  a.h_n = mutable_data<T>(h_n);
  if (training) {  // the gates are saved for backward: a NumPy array the context keeps
    py::array gates = Array<T>({T_, N, GH});
    a.gates = mutable_data<T>(gates);
    gates_out = gates;
  }  // else null: the driver takes a workspace if its loop needs one
  if (lstm) {
    py::array c = Array<T>({N, H});
    a.c_n = mutable_data<T>(c);
    c_n = c;
  }
  if (training) {
    py::array hp = Array<T>({T_, N, H});
    a.h_prev = mutable_data<T>(hp);
    h_prev = hp;
    py::array ex = Array<T>({uses_extra ? T_ : 0, N, H});
    if (uses_extra) a.extra = mutable_data<T>(ex);
    extra = ex;
  }
  {
    py::gil_scoped_release release;
    cpu::recurrent_forward<T>(cell, a);
  }
  return py::make_tuple(y, h_n, c_n, gates_out, extra, h_prev);
}

template <typename T>
py::tuple backward_typed(CellKind cell, const py::array& x_arr, const py::object& w_ih,
                         const py::object& w_hh, const py::object& lengths, bool reverse,
                         const py::object& gates, const py::object& extra,
                         const py::object& h_prev, const py::object& dy, const py::object& dh_n,
                         const py::object& dc_n) {
  if (x_arr.ndim() != 3) throw py::value_error("x: expected 3 dimensions [T, N, I]");
  const int64_t T_ = x_arr.shape(0), N = x_arr.shape(1), I = x_arr.shape(2);
  const int64_t G = gate_count(cell);
  auto w_hh_arr = py::cast<py::array>(w_hh);
  if (w_hh_arr.ndim() != 2) throw py::value_error("w_hh: expected 2 dimensions [G*H, H]");
  const int64_t H = w_hh_arr.shape(1);
  const int64_t GH = G * H;
  const bool lstm = cell == CellKind::kLstm;
  const bool uses_extra = cell == CellKind::kLstm || cell == CellKind::kGru;

  BackwardArgs<T> a{};
  a.shape = SeqShape{T_, N, I, H, G};
  a.x = require<T>(x_arr, "x", {T_, N, I});
  a.w_ih = require<T>(w_ih, "w_ih", {GH, I});
  a.w_hh = require<T>(w_hh, "w_hh", {GH, H});
  a.lengths = require_lengths(lengths, T_, N);
  a.reverse = reverse;
  a.gates = require<T>(gates, "gates", {T_, N, GH});
  a.extra = uses_extra ? require<T>(extra, "extra", {T_, N, H}) : nullptr;
  a.h_prev = require<T>(h_prev, "h_prev", {T_, N, H});
  a.dy = require<T>(dy, "dy", {T_, N, H});
  a.dh_n = require<T>(dh_n, "dh_n", {N, H});
  a.dc_n = lstm ? require<T>(dc_n, "dc_n", {N, H}) : nullptr;

  py::array dx = Array<T>({T_, N, I});
  py::array dh0 = Array<T>({N, H});
  py::array dw_ih = Array<T>({GH, I});
  py::array dw_hh = Array<T>({GH, H});
  py::array db_ih = Array<T>({GH});
  py::array db_hh = Array<T>({GH});
  py::object dc0 = py::none();
  a.dx = mutable_data<T>(dx);
  a.dh0 = mutable_data<T>(dh0);
  a.dw_ih = mutable_data<T>(dw_ih);
  a.dw_hh = mutable_data<T>(dw_hh);
  a.db_ih = mutable_data<T>(db_ih);
  a.db_hh = mutable_data<T>(db_hh);
  if (lstm) {
    py::array c = Array<T>({N, H});
    a.dc0 = mutable_data<T>(c);
    dc0 = c;
  }
  {
    py::gil_scoped_release release;
    cpu::recurrent_backward<T>(cell, a);
  }
  return py::make_tuple(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh);
}

py::tuple recurrent_forward(const std::string& cell, const std::string& nonlinearity,
                            const py::array& x, const py::object& h0, const py::object& c0,
                            const py::object& w_ih, const py::object& w_hh, const py::object& b_ih,
                            const py::object& b_hh, const py::object& lengths, bool reverse,
                            bool training) {
  const CellKind kind = parse_cell(cell, nonlinearity);
  if (x.dtype().is(py::dtype::of<float>()))
    return forward_typed<float>(kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, training);
  if (x.dtype().is(py::dtype::of<double>()))
    return forward_typed<double>(kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, training);
  throw py::type_error("x: expected dtype float32 or float64, got " + std::string(py::str(x.dtype())));
}

py::tuple recurrent_backward(const std::string& cell, const std::string& nonlinearity,
                             const py::array& x, const py::object& w_ih, const py::object& w_hh,
                             const py::object& lengths, bool reverse, const py::object& gates,
                             const py::object& extra, const py::object& h_prev,
                             const py::object& dy, const py::object& dh_n, const py::object& dc_n) {
  const CellKind kind = parse_cell(cell, nonlinearity);
  if (x.dtype().is(py::dtype::of<float>()))
    return backward_typed<float>(kind, x, w_ih, w_hh, lengths, reverse, gates, extra, h_prev, dy,
                                 dh_n, dc_n);
  if (x.dtype().is(py::dtype::of<double>()))
    return backward_typed<double>(kind, x, w_ih, w_hh, lengths, reverse, gates, extra, h_prev, dy,
                                  dh_n, dc_n);
  throw py::type_error("x: expected dtype float32 or float64, got " + std::string(py::str(x.dtype())));
}

// ---------------------------------------------------------------------------- attention
bool parse_score(const std::string& score) {
  if (score == "additive") return true;
  if (score == "dot" || score == "general") return false;
  throw py::value_error("score: expected 'additive', 'dot' or 'general', got '" + score + "'");
}

template <typename T>
cpu::AttentionArgs<T> attention_args(bool additive, const py::array& query,
                                     const py::object& keys_proj, const py::object& values,
                                     const py::object& mask, const py::object& v) {
  if (query.ndim() != 2) throw py::value_error("query: expected 2 dimensions [N, A]");
  auto vals = py::cast<py::array>(values);
  if (vals.ndim() != 3) throw py::value_error("values: expected 3 dimensions [N, S, K]");
  cpu::AttentionArgs<T> a{};
  a.additive = additive;
  a.N = query.shape(0);
  a.A = query.shape(1);
  a.S = vals.shape(1);
  a.K = vals.shape(2);
  a.query = require<T>(query, "query", {a.N, a.A});
  a.keys_proj = require<T>(keys_proj, "keys_proj", {a.N, a.S, a.A});
  a.values = require<T>(values, "values", {a.N, a.S, a.K});
  a.mask = require<uint8_t>(mask, "mask", {a.N, a.S});
  a.v = additive ? require<T>(v, "v", {a.A}) : nullptr;
  return a;
}

template <typename T>
py::tuple attention_forward_typed(bool additive, const py::array& query, const py::object& keys_proj,
                                  const py::object& values, const py::object& mask,
                                  const py::object& v) {
  auto a = attention_args<T>(additive, query, keys_proj, values, mask, v);
  py::array weights = Array<T>({a.N, a.S});
  py::array context = Array<T>({a.N, a.K});
  py::object hidden = py::none();
  a.weights = mutable_data<T>(weights);
  a.context = mutable_data<T>(context);
  if (additive) {
    py::array h = Array<T>({a.N, a.S, a.A});
    a.hidden = mutable_data<T>(h);
    hidden = h;
  }
  {
    py::gil_scoped_release release;
    cpu::attention_forward<T>(a);
  }
  return py::make_tuple(context, weights, hidden);
}

template <typename T>
py::tuple attention_backward_typed(bool additive, const py::array& query,
                                   const py::object& keys_proj, const py::object& values,
                                   const py::object& mask, const py::object& v,
                                   const py::object& hidden, const py::object& weights,
                                   const py::object& dcontext, const py::object& dweights) {
  auto a = attention_args<T>(additive, query, keys_proj, values, mask, v);
  a.hidden = additive ? const_cast<T*>(require<T>(hidden, "hidden", {a.N, a.S, a.A})) : nullptr;
  a.weights = const_cast<T*>(require<T>(weights, "weights", {a.N, a.S}));
  a.dcontext = require<T>(dcontext, "dcontext", {a.N, a.K});
  a.dweights = dweights.is_none() ? nullptr : require<T>(dweights, "dweights", {a.N, a.S});
  py::array dquery = Array<T>({a.N, a.A});
  py::array dkeys_proj = Array<T>({a.N, a.S, a.A});
  py::array dvalues = Array<T>({a.N, a.S, a.K});
  py::object dv = py::none();
  a.dquery = mutable_data<T>(dquery);
  a.dkeys_proj = mutable_data<T>(dkeys_proj);
  a.dvalues = mutable_data<T>(dvalues);
  if (additive) {
    py::array d = Array<T>({a.A});
    a.dv = mutable_data<T>(d);
    dv = d;
  }
  {
    py::gil_scoped_release release;
    cpu::attention_backward<T>(a);
  }
  return py::make_tuple(dquery, dkeys_proj, dvalues, dv);
}

py::tuple attention_forward(const std::string& score, const py::array& query,
                            const py::object& keys_proj, const py::object& values,
                            const py::object& mask, const py::object& v) {
  const bool additive = parse_score(score);
  if (query.dtype().is(py::dtype::of<float>()))
    return attention_forward_typed<float>(additive, query, keys_proj, values, mask, v);
  if (query.dtype().is(py::dtype::of<double>()))
    return attention_forward_typed<double>(additive, query, keys_proj, values, mask, v);
  throw py::type_error("query: expected dtype float32 or float64, got " +
                       std::string(py::str(query.dtype())));
}

py::tuple attention_backward(const std::string& score, const py::array& query,
                             const py::object& keys_proj, const py::object& values,
                             const py::object& mask, const py::object& v, const py::object& hidden,
                             const py::object& weights, const py::object& dcontext,
                             const py::object& dweights) {
  const bool additive = parse_score(score);
  if (query.dtype().is(py::dtype::of<float>()))
    return attention_backward_typed<float>(additive, query, keys_proj, values, mask, v, hidden,
                                           weights, dcontext, dweights);
  if (query.dtype().is(py::dtype::of<double>()))
    return attention_backward_typed<double>(additive, query, keys_proj, values, mask, v, hidden,
                                            weights, dcontext, dweights);
  throw py::type_error("query: expected dtype float32 or float64, got " +
                       std::string(py::str(query.dtype())));
}

std::string simd_level() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "avx512";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "avx2+fma";
  return "sse2";
#else
  return "generic";
#endif
}

py::dict build_info() {
  py::dict d;
#if defined(__clang__)
  d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  d["compiler"] = std::string("gcc ") + __VERSION__;
#else
  d["compiler"] = "unknown";
#endif
  d["simd"] = simd_level();
  d["kernels"] = cpu::isa_name(cpu::active_isa());
  d["blas"] = std::string("OpenBLAS (scipy-openblas32): ") + scipy_openblas_get_config();
#ifdef FUSEDRNN_WITH_CUDA
  d["cuda"] = true;
#else
  d["cuda"] = false;
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fusedrnn kernels (see fusedrnn.functional for the documented API)";
  m.def("recurrent_forward", &recurrent_forward, py::arg("cell"), py::arg("nonlinearity"),
        py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("w_ih"), py::arg("w_hh"),
        py::arg("b_ih"), py::arg("b_hh"), py::arg("lengths"), py::arg("reverse"),
        py::arg("training"));
  m.def("recurrent_backward", &recurrent_backward, py::arg("cell"), py::arg("nonlinearity"),
        py::arg("x"), py::arg("w_ih"), py::arg("w_hh"), py::arg("lengths"), py::arg("reverse"),
        py::arg("gates"), py::arg("extra"), py::arg("h_prev"), py::arg("dy"), py::arg("dh_n"),
        py::arg("dc_n"));
  m.def("attention_forward", &attention_forward, py::arg("score"), py::arg("query"),
        py::arg("keys_proj"), py::arg("values"), py::arg("mask"), py::arg("v"));
  m.def("attention_backward", &attention_backward, py::arg("score"), py::arg("query"),
        py::arg("keys_proj"), py::arg("values"), py::arg("mask"), py::arg("v"), py::arg("hidden"),
        py::arg("weights"), py::arg("dcontext"), py::arg("dweights"));
  m.def("build_info", &build_info);
  m.def("set_num_threads", [](int n) { cpu::set_num_threads(n); }, py::arg("n"));
  m.def("get_num_threads", []() { return cpu::get_num_threads(); });
}
