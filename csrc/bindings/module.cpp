// The pybind11 module fusedrnn._C: validate, allocate, release the GIL, call. No math here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cblas.h>
#include <cstdint>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "bindings/cell_names.h"
#include "bindings/gil.h"
#include "cells/layernorm_lstm_cell.h"
#include "cpu/attention.h"
#include "cpu/block_cache.h"
#include "cpu/matmul.h"
#include "cpu/plan.h"
#include "cpu/recurrent.h"
#include "cpu/thread_team.h"
#include "cpu/weight_cache.h"

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

// Whether `a` holds T's dtype, by numpy's equivalence (not identity: an unpickled or copied
// float32 dtype is another object).
template <typename T>
bool holds(const py::array& a) { return py::isinstance<py::array_t<T>>(a); }

// Raise ValueError naming the argument unless `a` has exactly the expected shape.
template <typename T>
const T* require(const py::object& obj, const char* name, std::vector<int64_t> dims) {
  if (!py::isinstance<Array<T>>(obj) && !py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + ": expected a numpy.ndarray");
  auto arr = py::cast<py::array>(obj);
  if (!holds<T>(arr))
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

// The LSTM's peepholes [3H] (i, f, o), or null for None; a peephole of another cell is refused.
template <typename T>
const T* require_peepholes(const py::object& w_ph, CellKind cell, int64_t H) {
  if (w_ph.is_none()) return nullptr;
  if (cell != CellKind::kLstm)
    throw py::value_error("w_ph: peepholes belong to an LSTM, got them for another cell");
  return require<T>(w_ph, "w_ph", {3 * H});
}

// The LayerNorm-LSTM's norm parameters ln [10H] (required for it, refused for another cell).
template <typename T>
const T* require_layer_norm(const py::object& ln, CellKind cell, int64_t H) {
  if (cell != CellKind::kLayerNormLstm) {
    if (!ln.is_none())
      throw py::value_error("ln: layer-norm parameters belong to the LayerNorm-LSTM "
                            "(cell='layernorm_lstm'), got them for another cell");
    return nullptr;
  }
  if (ln.is_none())
    throw py::value_error("ln: the LayerNorm-LSTM needs its norm parameters [10H] (gains "
                          "g_ih, g_hh [4H], g_c [H], bias b_c [H])");
  return require<T>(ln, "ln", {10 * H});
}

// An LSTM's projection w_hr [P, H] (torch's proj_size; 0 < P < H), or null for None; the
// projection of another cell is refused. Sets P (0 without one).
template <typename T>
const T* require_projection(const py::object& w_hr, CellKind cell, int64_t H, int64_t& P) {
  P = 0;
  if (w_hr.is_none()) return nullptr;
  if (cell != CellKind::kLstm)
    throw py::value_error("w_hr: projections (proj_size) belong to an LSTM, got one for another "
                          "cell");
  auto arr = py::cast<py::array>(w_hr);
  if (arr.ndim() != 2 || arr.shape(1) != H || arr.shape(0) < 1 || arr.shape(0) >= H)
    throw py::value_error("w_hr: expected shape (P, " + std::to_string(H) +
                          ") with 0 < P < H (proj_size < hidden_size), got " +
                          shape_str(std::vector<int64_t>(arr.shape(), arr.shape() + arr.ndim())));
  P = arr.shape(0);
  return require<T>(w_hr, "w_hr", {P, H});
}

// The hidden size of a call: w_hh's columns, or with a projection w_hr's (w_hh then has P).
inline int64_t hidden_size(const py::object& w_hh, const py::object& w_hr) {
  auto w = py::cast<py::array>(w_hr.is_none() ? w_hh : w_hr);
  if (w.ndim() != 2)
    throw py::value_error(w_hr.is_none() ? "w_hh: expected 2 dimensions [G*H, H]"
                                         : "w_hr: expected 2 dimensions [P, H]");
  return w.shape(1);
}

// Outputs of this many bytes and more come from the process's kept blocks (cpu/block_cache.h):
// smaller ones from NumPy (glibc keeps those in its bins).
constexpr size_t kKeptOutputBytes = size_t(256) << 10;

// An uninitialised output of `shape`; a large one in a kept block, given back when the array
// (and every view of it) dies.
template <typename T>
Array<T> output_array(const std::vector<int64_t>& shape) {
  size_t bytes = sizeof(T);
  for (int64_t d : shape) bytes *= static_cast<size_t>(d);
  if (bytes < kKeptOutputBytes) return Array<T>(shape);
  struct Block {
    void* data;
    size_t bytes;
  };
  auto& blocks = cpu::output_blocks();
  void* data;
  size_t capacity = bytes;  // (the block's own size, given back with it)
  {
    std::lock_guard<std::mutex> g(blocks.mutex);
    data = blocks.cache.take(capacity);
  }
  py::capsule owner(new Block{data, capacity}, [](void* b) {
    auto* block = static_cast<Block*>(b);
    auto& blocks = cpu::output_blocks();
    {
      std::lock_guard<std::mutex> g(blocks.mutex);
      blocks.cache.give(block->data, block->bytes);
    }
    delete block;
  });
  return Array<T>(shape, static_cast<T*>(data), owner);
}

// A new array of `shape`: zeros where asked (numpy.zeros: fresh pages come zeroed, no pass
// over them), else uninitialised.
template <typename T>
py::array new_array(std::vector<int64_t> shape, bool zeros) {
  if (!zeros) return output_array<T>(shape);
  return py::module_::import("numpy").attr("zeros")(py::cast(shape), py::dtype::of<T>());
}


// A call's arguments, checked, with its outputs allocated (the tuple the binding returns).
template <typename Args>
struct PreparedCall {
  Args args;
  py::tuple outputs;
  py::object keep;  // the call's arguments, alive until the kernels ran (args holds pointers)
};

// The sizes and traits of a forward or backward call, from x and the weights.
struct CallSizes {
  int64_t T, N, I, H, G, GH, P, SW, E;  // SW: the width of h (P with a projection, else H)
  bool lstm, uses_extra;                 // the cell has c; it saves a step's extra
};

// What a forward and a backward call check and take alike: x, the weights, the lengths, the
// direction and the variants' arrays, into a (ForwardArgs or BackwardArgs).
template <typename T, typename Args>
CallSizes common_args(CellKind cell, const py::array& x_arr, const py::object& w_ih,
                      const py::object& w_hh, const py::object& w_hr, const py::object& lengths,
                      bool reverse, const py::object& w_ph, const py::object& ln, Args& a) {
  if (x_arr.ndim() != 3) throw py::value_error("x: expected 3 dimensions [T, N, I]");
  CallSizes z{};
  z.T = x_arr.shape(0), z.N = x_arr.shape(1), z.I = x_arr.shape(2);
  z.G = gate_count(cell);
  z.H = hidden_size(w_hh, w_hr);
  z.GH = z.G * z.H;
  const bool layer_norm = cell == CellKind::kLayerNormLstm;
  z.lstm = cell == CellKind::kLstm || layer_norm;
  z.uses_extra = z.lstm || is_gru(cell);
  // a step's saved extra: H values, the LayerNorm-LSTM's its norms' too
  z.E = layer_norm ? LayerNormLstmCell::extra_width(z.H) : z.H;
  a.w_hr = require_projection<T>(w_hr, cell, z.H, z.P);
  a.shape = SeqShape{z.T, z.N, z.I, z.H, z.G, z.P};
  z.SW = a.shape.state();
  a.x = require<T>(x_arr, "x", {z.T, z.N, z.I});
  if (z.T * z.N > INT32_MAX)  // the products over every step at once (the weight gradients
    // sum T*N rows) take 32-bit dimensions in OpenBLAS (scipy-openblas32)
    throw py::value_error("x: expected T*N below 2^31 (OpenBLAS's dimensions are 32-bit), got " +
                          std::to_string(z.T) + "*" + std::to_string(z.N) + " = " +
                          std::to_string(z.T * z.N) + ": run the sequence in chunks, carrying "
                          "the state (fusedrnn.training.TruncatedBPTT in training)");
  // w_hh first: H is read from it, so a w_hh of a wrong shape is named as such
  a.w_hh = require<T>(w_hh, "w_hh", {z.GH, z.SW});
  a.w_ih = require<T>(w_ih, "w_ih", {z.GH, z.I});
  a.lengths = require_lengths(lengths, z.T, z.N);
  a.reverse = reverse;
  a.w_ph = require_peepholes<T>(w_ph, cell, z.H);
  a.ln = require_layer_norm<T>(ln, cell, z.H);
  return z;
}

template <typename T>
PreparedCall<ForwardArgs<T>> prepare_forward(CellKind cell, const py::array& x_arr,
                                             const py::object& h0, const py::object& c0,
                                             const py::object& w_ih, const py::object& w_hh,
                                             const py::object& b_ih, const py::object& b_hh,
                                             const py::object& lengths, bool reverse,
                                             bool training, const py::object& w_ph,
                                             const py::object& w_hr, const py::object& ln,
                                             double ln_eps) {
  ForwardArgs<T> a{};
  const CallSizes z = common_args<T>(cell, x_arr, w_ih, w_hh, w_hr, lengths, reverse, w_ph, ln, a);
  const int64_t T_ = z.T, N = z.N, H = z.H, GH = z.GH, SW = z.SW, E = z.E;
  const bool lstm = z.lstm, uses_extra = z.uses_extra;
  a.h0 = require<T>(h0, "h0", {N, SW});
  a.c0 = lstm ? require<T>(c0, "c0", {N, H}) : nullptr;
  a.b_ih = require<T>(b_ih, "b_ih", {GH});
  a.b_hh = require<T>(b_hh, "b_hh", {GH});
  a.ln_eps = static_cast<T>(ln_eps);

  py::array y = output_array<T>({T_, N, SW});
  py::array h_n = output_array<T>({N, SW});
  py::object c_n = py::none(), extra = py::none(), h_prev = py::none(), gates_out = py::none();
  a.y = mutable_data<T>(y);
  a.h_n = mutable_data<T>(h_n);
  // With lengths, the saved arrays hold zeros past each sample's length (the loop never
  // writes there), so that every output is a function of the inputs.
  const bool zeros = a.lengths != nullptr;
  if (training) {  // the gates are saved for backward: a NumPy array the context keeps
    py::array gates = new_array<T>({T_, N, GH}, zeros);
    a.gates = mutable_data<T>(gates);
    gates_out = gates;
  }  // else null: the driver takes a workspace if its loop needs one
  if (lstm) {
    py::array c = output_array<T>({N, H});
    a.c_n = mutable_data<T>(c);
    c_n = c;
  }
  if (training) {
    py::array hp = new_array<T>({T_, N, SW}, zeros);
    a.h_prev = mutable_data<T>(hp);
    h_prev = hp;
    py::array ex = new_array<T>({uses_extra ? T_ : 0, N, E}, zeros);
    if (uses_extra) a.extra = mutable_data<T>(ex);
    extra = ex;
  }
  return {a, py::make_tuple(y, h_n, c_n, gates_out, extra, h_prev)};
}

template <typename T>
PreparedCall<BackwardArgs<T>> prepare_backward(CellKind cell, const py::array& x_arr,
                                               const py::object& w_ih, const py::object& w_hh,
                                               const py::object& lengths, bool reverse,
                                               const py::object& gates, const py::object& extra,
                                               const py::object& h_prev, const py::object& dy,
                                               const py::object& dh_n, const py::object& dc_n,
                                               const py::object& w_ph, const py::object& w_hr,
                                               const py::object& ln, bool input_grad,
                                               bool weight_grads) {
  BackwardArgs<T> a{};
  const CallSizes z = common_args<T>(cell, x_arr, w_ih, w_hh, w_hr, lengths, reverse, w_ph, ln, a);
  const int64_t T_ = z.T, N = z.N, I = z.I, H = z.H, GH = z.GH, SW = z.SW, E = z.E, P = z.P;
  const bool lstm = z.lstm;
  a.gates = require<T>(gates, "gates", {T_, N, GH});
  a.extra = z.uses_extra ? require<T>(extra, "extra", {T_, N, E}) : nullptr;
  a.h_prev = require<T>(h_prev, "h_prev", {T_, N, SW});
  a.dy = require<T>(dy, "dy", {T_, N, SW});
  a.dh_n = require<T>(dh_n, "dh_n", {N, SW});
  a.dc_n = lstm ? require<T>(dc_n, "dc_n", {N, H}) : nullptr;

  // An output not wanted is None, its pointer null: the kernel skips its work.
  auto output = [](bool wanted, std::vector<int64_t> shape, T*& to) -> py::object {
    if (!wanted) return py::none();
    py::array out = output_array<T>(shape);
    to = mutable_data<T>(out);
    return std::move(out);
  };
  py::object dx = output(input_grad, {T_, N, I}, a.dx);
  py::object dh0 = output(true, {N, SW}, a.dh0);
  py::object dc0 = output(lstm, {N, H}, a.dc0);
  py::tuple grads = py::make_tuple(dx, dh0, dc0, output(weight_grads, {GH, I}, a.dw_ih),
                                   output(weight_grads, {GH, SW}, a.dw_hh),
                                   output(weight_grads, {GH}, a.db_ih),
                                   output(weight_grads, {GH}, a.db_hh));
  // with peepholes their gradient, with a projection its, last (in that order)
  if (a.w_ph) grads = grads + py::make_tuple(output(weight_grads, {3 * H}, a.dw_ph));
  if (a.w_hr) grads = grads + py::make_tuple(output(weight_grads, {P, H}, a.dw_hr));
  if (a.ln)  // the LayerNorm-LSTM's norm parameters
    grads = grads + py::make_tuple(output(weight_grads, {10 * H}, a.dln));
  return {a, grads};
}

// Runs prepared calls without the GIL, run(args, count) being a cpu:: driver entry; returns
// their outputs in order.
template <typename Args, typename Run>
py::list run_prepared(const std::vector<PreparedCall<Args>>& prepared, Run run) {
  std::vector<Args> args;
  for (const auto& p : prepared) args.push_back(p.args);
  without_gil([&] { run(args.data(), static_cast<int>(args.size())); });
  py::list out;
  for (const auto& p : prepared) out.append(p.outputs);
  return out;
}

constexpr const char* kBackwardCall =
    "(x, w_ih, w_hh, lengths, reverse, gates, extra, h_prev, dy, dh_n, dc_n[, precision[, "
    "w_ph[, w_hr[, ln[, input_grad[, weight_grads]]]]]])";

constexpr const char* kForwardCall =
    "(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, training[, cache[, precision[, "
    "w_ph[, w_hr[, ln, ln_eps]]]]])";

// A call's precision: None or "float32" (the arrays' own), or "bfloat16" (float32, the
// products from bfloat16 operands). Returns whether bfloat16 products were asked for.
bool parse_precision(const py::handle& precision, bool float32) {
  if (precision.is_none()) return false;
  if (!py::isinstance<py::str>(precision))
    throw py::type_error(std::string("precision: expected 'float32', 'bfloat16' or None, got ") +
                         Py_TYPE(precision.ptr())->tp_name);
  const std::string p = py::cast<std::string>(precision);
  if (p == "float32") return false;
  if (p != "bfloat16")
    throw py::value_error("precision: expected 'float32', 'bfloat16' or None, got '" + p + "'");
  if (!float32)
    throw py::type_error("precision: 'bfloat16' needs float32 arrays, got float64 (float64 "
                         "stays float64 under autocast)");
  return true;
}

// One call's arguments as a tuple: a tuple, or a list's items in a new one (kept with the
// prepared call; an iterator is refused: its items would die with a temporary).
py::tuple call_items(const py::handle& call) {
  if (!py::isinstance<py::tuple>(call) && !py::isinstance<py::list>(call))
    throw py::type_error(std::string("calls: expected tuples of arguments, got ") +
                         Py_TYPE(call.ptr())->tp_name);
  return py::cast<py::tuple>(call);
}

// One call's argument tuple, of `items` items named by `names`.
py::tuple call_tuple(const py::handle& call, size_t items, const char* names) {
  auto t = call_items(call);
  if (t.size() != items)
    throw py::value_error(std::string("calls: expected tuples ") + names + ", got one of " +
                          std::to_string(t.size()) + " items");
  return t;
}

// A call tuple's LayerNorm epsilon: a number, named otherwise.
double call_eps(const py::handle& value) {
  try {
    if (!value.is_none()) return py::cast<double>(value);
  } catch (const py::cast_error&) {
  }
  throw py::type_error(std::string("ln_eps: expected a number, got ") + Py_TYPE(value.ptr())->tp_name);
}

// A call tuple's flag (reverse, training): a bool, named otherwise (None is not False).
bool call_flag(const py::handle& value, const char* name) {
  try {
    if (!value.is_none()) return py::cast<bool>(value);
  } catch (const py::cast_error&) {
  }
  throw py::type_error(std::string(name) + ": expected a bool, got " + Py_TYPE(value.ptr())->tp_name);
}

// A call tuple's x: an ndarray itself (a list would be converted to a temporary array that is
// gone before the kernel reads it).
py::array call_x(const py::object& x) {
  if (!py::isinstance<py::array>(x))
    throw py::type_error(std::string("x: expected a numpy.ndarray, got ") + Py_TYPE(x.ptr())->tp_name);
  return py::reinterpret_borrow<py::array>(x);
}

// Forward calls (tuples of a single call's arguments after cell and nonlinearity): independent
// (cpu::recurrent_forward_many) or, with `stack`, the layers of a unidirectional stack whose x,
// None after the first, is the previous layer's y (cpu::recurrent_forward_stack).
template <typename T>
py::list forward_calls_typed(CellKind cell, const py::list& calls, bool stack) {
  std::vector<PreparedCall<ForwardArgs<T>>> prepared;
  // A snapshot of the list, and each call's tuple kept with its prepared call: Python code run
  // while the arguments are read (a flag's __bool__, a collection's __del__, another thread)
  // may empty the list, and would free arrays whose pointers earlier calls already hold.
  const py::tuple snapshot(calls);
  for (const py::handle& c : snapshot) {
    auto t = call_items(c);  // the cache, precision, peepholes, projection may be left out
    if (t.size() < 11 || t.size() > 16 || t.size() == 15) t = call_tuple(t, 10, kForwardCall);
    cpu::WeightCache* cache = nullptr;
    if (t.size() >= 11 && !t[10].is_none()) {
      if (!py::isinstance<cpu::WeightCache>(t[10]))
        throw py::type_error(std::string("cache: expected a fusedrnn._C.WeightCache or None, ") +
                             "got " + Py_TYPE(t[10].ptr())->tp_name);
      cache = py::cast<cpu::WeightCache*>(t[10]);
    }
    py::object x = t[0];
    const bool reverse = call_flag(t[8], "reverse");  // (read once: a __bool__ may change)
    if (stack) {
      if (prepared.empty() == x.is_none())
        throw py::value_error("calls: expected x in the first layer's call only (the next layers "
                              "read the previous layer's y)");
      if (reverse)
        throw py::value_error("calls: expected reverse=False in a stack");
      if (!prepared.empty()) x = prepared.back().outputs[0];
    }
    prepared.push_back(prepare_forward<T>(cell, call_x(x), t[1], t[2], t[3], t[4],
                                          t[5], t[6], t[7], reverse,
                                          call_flag(t[9], "training"),
                                          t.size() >= 13 ? py::object(t[12]) : py::none(),
                                          t.size() >= 14 ? py::object(t[13]) : py::none(),
                                          t.size() == 16 ? py::object(t[14]) : py::none(),
                                          t.size() == 16 ? call_eps(t[15]) : 0.0));
    prepared.back().args.cache = cache;
    prepared.back().args.bf16 = t.size() >= 12 && parse_precision(t[11], sizeof(T) == 4);
    prepared.back().keep = t;
  }
  return run_prepared(prepared, [&](ForwardArgs<T>* args, int count) {
    if (stack)
      cpu::recurrent_forward_stack<T>(cell, args, count);
    else
      cpu::recurrent_forward_many<T>(cell, args, count);
  });
}

template <typename T>
py::list backward_calls_typed(CellKind cell, const py::list& calls) {
  std::vector<PreparedCall<BackwardArgs<T>>> prepared;
  const py::tuple snapshot(calls);  // (as forward_calls_typed's)
  for (const py::handle& c : snapshot) {
    auto t = call_items(c);  // the items after dc_n may be left out
    if (t.size() < 12 || t.size() > 17)
      t = call_tuple(t, 11, kBackwardCall);
    auto item = [&](size_t i) { return t.size() > i ? py::object(t[i]) : py::none(); };
    prepared.push_back(prepare_backward<T>(
        cell, call_x(t[0]), t[1], t[2], t[3], call_flag(t[4], "reverse"), t[5], t[6], t[7], t[8],
        t[9], t[10], item(12), item(13), item(14),
        t.size() <= 15 || call_flag(t[15], "input_grad"),
        t.size() <= 16 || call_flag(t[16], "weight_grads")));
    prepared.back().args.bf16 = t.size() >= 12 && parse_precision(t[11], sizeof(T) == 4);
    prepared.back().keep = t;
  }
  return run_prepared(prepared, [&](BackwardArgs<T>* args, int count) {
    cpu::recurrent_backward_many<T>(cell, args, count);
  });
}

// The dtype of the calls' first x (float32 or float64); every call must share it.
enum class Dtype { kFloat32, kFloat64 };
Dtype calls_dtype(const py::list& calls) {
  if (calls.empty()) return Dtype::kFloat32;
  auto first = call_items(calls[0]);
  if (first.empty()) throw py::value_error("calls: expected tuples of arguments, got an empty one");
  auto x = call_x(first[0]);
  if (holds<float>(x)) return Dtype::kFloat32;
  if (holds<double>(x)) return Dtype::kFloat64;
  throw py::type_error("x: expected dtype float32 or float64, got " + std::string(py::str(x.dtype())));
}

py::list recurrent_forward_many(const std::string& cell, const std::string& nonlinearity,
                                const py::list& calls) {
  const CellKind kind = parse_cell(cell, nonlinearity);
  return calls_dtype(calls) == Dtype::kFloat32 ? forward_calls_typed<float>(kind, calls, false)
                                               : forward_calls_typed<double>(kind, calls, false);
}

py::list recurrent_forward_stack(const std::string& cell, const std::string& nonlinearity,
                                 const py::list& calls) {
  const CellKind kind = parse_cell(cell, nonlinearity);
  return calls_dtype(calls) == Dtype::kFloat32 ? forward_calls_typed<float>(kind, calls, true)
                                               : forward_calls_typed<double>(kind, calls, true);
}

py::list recurrent_backward_many(const std::string& cell, const std::string& nonlinearity,
                                 const py::list& calls) {
  const CellKind kind = parse_cell(cell, nonlinearity);
  return calls_dtype(calls) == Dtype::kFloat32 ? backward_calls_typed<float>(kind, calls)
                                               : backward_calls_typed<double>(kind, calls);
}

// One call: a list of one.
py::tuple recurrent_forward(const std::string& cell, const std::string& nonlinearity,
                            const py::array& x, const py::object& h0, const py::object& c0,
                            const py::object& w_ih, const py::object& w_hh, const py::object& b_ih,
                            const py::object& b_hh, const py::object& lengths, bool reverse,
                            bool training, const py::object& cache,
                            const py::object& precision, const py::object& w_ph,
                            const py::object& w_hr, const py::object& ln, double ln_eps) {
  py::list calls;
  calls.append(py::make_tuple(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, training,
                              cache, precision, w_ph, w_hr, ln, ln_eps));
  return recurrent_forward_many(cell, nonlinearity, calls)[0];
}

py::tuple recurrent_backward(const std::string& cell, const std::string& nonlinearity,
                             const py::array& x, const py::object& w_ih, const py::object& w_hh,
                             const py::object& lengths, bool reverse, const py::object& gates,
                             const py::object& extra, const py::object& h_prev,
                             const py::object& dy, const py::object& dh_n, const py::object& dc_n,
                             const py::object& precision, const py::object& w_ph,
                             const py::object& w_hr, const py::object& ln, bool input_grad,
                             bool weight_grads) {
  py::list calls;
  calls.append(py::make_tuple(x, w_ih, w_hh, lengths, reverse, gates, extra, h_prev, dy, dh_n, dc_n,
                              precision, w_ph, w_hr, ln, input_grad, weight_grads));
  return recurrent_backward_many(cell, nonlinearity, calls)[0];
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
  py::array weights = output_array<T>({a.N, a.S});
  py::array context = output_array<T>({a.N, a.K});
  py::object hidden = py::none();
  a.weights = mutable_data<T>(weights);
  a.context = mutable_data<T>(context);
  if (additive) {
    py::array h = output_array<T>({a.N, a.S, a.A});
    a.hidden = mutable_data<T>(h);
    hidden = h;
  }
  without_gil([&] { cpu::attention_forward<T>(a); });
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
  py::array dquery = output_array<T>({a.N, a.A});
  py::array dkeys_proj = output_array<T>({a.N, a.S, a.A});
  py::array dvalues = output_array<T>({a.N, a.S, a.K});
  py::object dv = py::none();
  a.dquery = mutable_data<T>(dquery);
  a.dkeys_proj = mutable_data<T>(dkeys_proj);
  a.dvalues = mutable_data<T>(dvalues);
  if (additive) {
    py::array d = output_array<T>({a.A});
    a.dv = mutable_data<T>(d);
    dv = d;
  }
  without_gil([&] { cpu::attention_backward<T>(a); });
  return py::make_tuple(dquery, dkeys_proj, dvalues, dv);
}

template <typename T>
py::array matmul_typed(const py::array& a, const py::array& b, bool trans_a, bool trans_b) {
  const int64_t M = a.shape(trans_a ? 1 : 0), K = a.shape(trans_a ? 0 : 1);
  const int64_t N = b.shape(trans_b ? 0 : 1), Kb = b.shape(trans_b ? 1 : 0);
  for (int64_t d : {M, N, K})
    if (d > INT32_MAX)  // OpenBLAS's (scipy-openblas32) dimensions are 32-bit
      throw py::value_error("a, b: expected dimensions below 2^31, got " + std::to_string(d));
  if (Kb != K)
    throw py::value_error("b: expected " + std::to_string(K) + " rows in op(b) (op(a) has " +
                          std::to_string(K) + " columns), got " + std::to_string(Kb) +
                          " (shapes a " + shape_str({a.shape(0), a.shape(1)}) + ", b " +
                          shape_str({b.shape(0), b.shape(1)}) + ")");
  py::array c = output_array<T>({M, N});
  const T* A = static_cast<const T*>(a.data());
  const T* B = static_cast<const T*>(b.data());
  T* C = mutable_data<T>(c);
  without_gil([&] {
    cpu::matmul<T>(trans_a, trans_b, M, N, K, A, a.shape(1), B, b.shape(1), C, N);
  });
  return c;
}

// op(a) @ op(b) for two 2-D C-contiguous arrays of one float dtype (cpu/matmul.h).
py::array matmul(const py::object& a_obj, const py::object& b_obj, bool trans_a, bool trans_b) {
  const char* names[2] = {"a", "b"};
  py::array arrays[2];
  const py::object* objects[2] = {&a_obj, &b_obj};
  for (int i = 0; i < 2; ++i) {
    if (!py::isinstance<py::array>(*objects[i]))
      throw py::type_error(std::string(names[i]) + ": expected a numpy.ndarray");
    arrays[i] = py::cast<py::array>(*objects[i]);
    if (!holds<float>(arrays[i]) && !holds<double>(arrays[i]))
      throw py::type_error(std::string(names[i]) + ": expected dtype float32 or float64, got " +
                           std::string(py::str(arrays[i].dtype())));
    if (arrays[i].ndim() != 2)
      throw py::value_error(std::string(names[i]) + ": expected a 2-D array, got " +
                            std::to_string(arrays[i].ndim()) + "-D");
    if (!(arrays[i].flags() & py::array::c_style))
      throw py::value_error(std::string(names[i]) + ": expected a C-contiguous array");
  }
  if (holds<float>(arrays[0]) != holds<float>(arrays[1]))
    throw py::type_error("b: expected the dtype of a (" + std::string(py::str(arrays[0].dtype())) +
                         "), got " + std::string(py::str(arrays[1].dtype())));
  if (holds<float>(arrays[0])) return matmul_typed<float>(arrays[0], arrays[1], trans_a, trans_b);
  return matmul_typed<double>(arrays[0], arrays[1], trans_a, trans_b);
}

py::tuple attention_forward(const std::string& score, const py::array& query,
                            const py::object& keys_proj, const py::object& values,
                            const py::object& mask, const py::object& v) {
  const bool additive = parse_score(score);
  if (holds<float>(query))
    return attention_forward_typed<float>(additive, query, keys_proj, values, mask, v);
  if (holds<double>(query))
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
  if (holds<float>(query))
    return attention_backward_typed<float>(additive, query, keys_proj, values, mask, v, hidden,
                                           weights, dcontext, dweights);
  if (holds<double>(query))
    return attention_backward_typed<double>(additive, query, keys_proj, values, mask, v, hidden,
                                            weights, dcontext, dweights);
  throw py::type_error("query: expected dtype float32 or float64, got " +
                       std::string(py::str(query.dtype())));
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
  d["simd"] = cpu::isa_name(cpu::best_isa());  // (what the CPU runs; "kernels": what runs)
  d["kernels"] = cpu::isa_name(cpu::active_isa());
  d["bf16_products"] = cpu::bf16_path();
  d["blas"] = std::string("OpenBLAS (scipy-openblas32): ") + scipy_openblas_get_config();
#ifdef FUSEDRNN_WITH_CUDA
  d["cuda"] = true;
#else
  d["cuda"] = false;
#endif
  return d;
}

py::dict cpu_info_dict() {
  const cpu::CpuInfo& c = cpu::cpu_info();
  py::dict d;
  d["vendor"] = c.vendor;
  d["model"] = c.model;
  d["l1d_bytes"] = c.l1d_bytes;
  d["l2_bytes"] = c.l2_bytes;
  d["l3_bytes"] = c.l3_bytes;
  d["avx512_bf16"] = c.avx512_bf16;
  d["amx"] = c.amx;
  return d;
}

py::dict tuning_dict() {
  const cpu::Tuning& t = cpu::tuning();
  py::dict d;
  d["row"] = t.row;
  for (int i = 0; i < cpu::kTuningEntryCount; ++i) {
    const cpu::TuningEntry& e = cpu::kTuningEntries[i];
    if (e.integer) d[e.name] = t.*(e.integer);
    else d[e.name] = t.*(e.real);
  }
  return d;
}

// The plans of one call of this shape on `threads` threads (cpu/plan.h), as names.
// The sizes of a planned call, checked: T, N, I >= 0, H >= 1, and the element counts the plans
// work out from them (the gates over the sequence, the weights) within int64.
SeqShape checked_sizes(CellKind kind, int64_t T, int64_t N, int64_t I, int64_t H) {
  if (T < 0 || N < 0 || I < 0 || H < 1)
    throw py::value_error("T, N, I, H: expected sizes (T, N, I >= 0, H >= 1), got " +
                          std::to_string(T) + ", " + std::to_string(N) + ", " +
                          std::to_string(I) + ", " + std::to_string(H));
  const int64_t G = gate_count(kind);
  int64_t width, gh, tngh, counted;  // (the largest the plans form: T N GH (I + H) MACs, and
  if (__builtin_add_overflow(I, H, &width) || __builtin_mul_overflow(G, H, &gh) ||  // the
      __builtin_mul_overflow(T, N, &tngh) || __builtin_mul_overflow(tngh, gh, &tngh) ||
      __builtin_mul_overflow(tngh, width, &counted) ||  // weights' GH (I + H) 8 bytes)
      __builtin_mul_overflow(gh, width, &counted) || __builtin_mul_overflow(counted, 8, &counted))
    throw py::value_error("T, N, I, H: sizes whose element counts overflow 64 bits, got " +
                          std::to_string(T) + ", " + std::to_string(N) + ", " +
                          std::to_string(I) + ", " + std::to_string(H));
  return SeqShape{T, N, I, H, G};
}

// A plan's dtype: its item size, 4 (float32) or 8 (float64); TypeError naming anything else.
int64_t float_bytes(const py::dtype& dtype) {
  if (dtype.kind() != 'f' || (dtype.itemsize() != 4 && dtype.itemsize() != 8))
    throw py::type_error("dtype: expected float32 or float64, got " + std::string(py::str(dtype)));
  return dtype.itemsize();
}

py::dict plan_dict(const std::string& cell, const std::string& nonlinearity, int64_t T, int64_t N,
                   int64_t I, int64_t H, const py::dtype& dtype, bool training, int threads,
                   const py::object& precision, bool cache) {
  const CellKind kind = parse_cell(cell, nonlinearity);
  const SeqShape s = checked_sizes(kind, T, N, I, H);
  if (threads < 1 || threads > 4096)  // (fusedrnn.MAX_THREADS, as set_num_threads takes)
    throw py::value_error("threads: expected 1 to 4096, got " + std::to_string(threads));
  const int64_t bytes = float_bytes(dtype);
  const bool bf16 = parse_precision(precision, bytes == 4);
  const cpu::ForwardPlan f =
      cpu::plan_forward(kind, s, threads, bytes, training, false, false, bf16, cache);
  py::dict d, fd;
  fd["loop"] = cpu::name_of(f.loop);
  fd["step_product"] = cpu::name_of(f.product);
  fd["projection"] = cpu::name_of(f.projection);
  // A split loop runs on every thread of the call, in loop_slices slices (a by-units loop gives
  // each thread unit_slices_per_thread of them, a by-samples one sample_slices_per_thread, or
  // bf16_sample_slices_per_thread).
  const int loop_threads = f.loop == cpu::Loop::kPipelined || f.loop_slices == 1 ? 1 : f.slices;
  fd["loop_threads"] = loop_threads;
  fd["loop_slices"] = f.loop == cpu::Loop::kPipelined ? 1 : f.loop_slices;
  // Up front: its own GEMM phase; chunks: every thread claims them; else inside the loop.
  fd["projection_threads"] = f.projection == cpu::Projection::kUpFront  ? f.gemm_slices
                             : f.projection == cpu::Projection::kChunks ? f.slices
                                                                        : loop_threads;
  d["forward"] = fd;
  if (training) {
    const cpu::BackwardPlan b = cpu::plan_backward(kind, s, threads, bytes, bf16);
    py::dict bd;
    bd["loop"] = cpu::name_of(b.loop);
    bd["step_product"] = cpu::name_of(b.product);
    bd["dx"] = cpu::name_of(b.dx);
    bd["loop_threads"] = b.loop_slices == 1 ? 1 : b.slices;
    bd["loop_slices"] = b.loop_slices;
    bd["weight_grad_threads"] = b.gemm_slices;
    // under autocast: whether the steps' and dx's products, and the weight gradients', take
    // bfloat16 operands (a short call keeps float32 ones)
    bd["bfloat16_products"] = b.bf16;
    bd["bfloat16_weight_grads"] = b.bf16_weights;
    d["backward"] = bd;
  }
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fusedrnn kernels (see fusedrnn.functional for the documented API)";
  remember_main_thread();  // (GilReleased)
  // NumPy's C API now: pybind11 imports it at the first array made, and a first call from a
  // __del__ at interpreter exit finds the import system gone (ImportError).
  py::detail::npy_api::get();
  m.def("recurrent_forward", &recurrent_forward, py::arg("cell"), py::arg("nonlinearity"),
        py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("w_ih"), py::arg("w_hh"),
        py::arg("b_ih"), py::arg("b_hh"), py::arg("lengths"), py::arg("reverse"),
        py::arg("training"), py::arg("cache") = py::none(), py::arg("precision") = py::none(),
        py::arg("w_ph") = py::none(), py::arg("w_hr") = py::none(), py::arg("ln") = py::none(),
        py::arg("ln_eps") = 1e-5,
        "One layer, one direction, the whole sequence: (y, h_n, c_n, gates, extra, h_prev). "
        "cache: a WeightCache keeping the packed weights between calls, or None. precision: "
        "None/'float32', or 'bfloat16' (float32: the products from bfloat16 operands with float32 "
        "accumulation; a training forward saves float32 activations). w_ph: an LSTM's "
        "peepholes [3H] (i, f, o), or None. w_hr: an LSTM's projection [P, H] (torch's "
        "proj_size P: h, y and w_hh's columns are P wide), or None. ln, ln_eps: the "
        "LayerNorm-LSTM's (cell 'layernorm_lstm') norm parameters [10H] and epsilon.");
  py::class_<cpu::WeightCache>(m, "WeightCache",
                               "The packed forms of one layer direction's weights, kept between "
                               "calls (pass it as a forward call's cache). It serves only the "
                               "arrays of the first call it takes part in (their addresses, "
                               "shapes and cell), and never sees a change to their values: keep "
                               "them alive while it is used, and make a new one whenever they "
                               "may change.")
      .def(py::init<>())
      .def_property_readonly("nbytes", &cpu::WeightCache::bytes, "Bytes held.")
      .def_property_readonly("forms", &cpu::WeightCache::forms, "Packed forms kept.");
  m.def("recurrent_backward", &recurrent_backward, py::arg("cell"), py::arg("nonlinearity"),
        py::arg("x"), py::arg("w_ih"), py::arg("w_hh"), py::arg("lengths"), py::arg("reverse"),
        py::arg("gates"), py::arg("extra"), py::arg("h_prev"), py::arg("dy"), py::arg("dh_n"),
        py::arg("dc_n"), py::arg("precision") = py::none(), py::arg("w_ph") = py::none(),
        py::arg("w_hr") = py::none(), py::arg("ln") = py::none(), py::arg("input_grad") = true,
        py::arg("weight_grads") = true,
        "BPTT of recurrent_forward: (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh), then dw_ph "
        "when given the forward's peepholes w_ph, dw_hr when given its projection w_hr, dln "
        "when given the LayerNorm-LSTM's ln. input_grad=False: dx None, not computed; "
        "weight_grads=False: every parameter's gradient None, not computed. "
        "precision: None/'float32', or 'bfloat16' (float32: every product from bfloat16 "
        "operands with float32 accumulation).");
  m.def("recurrent_forward_many", &recurrent_forward_many, py::arg("cell"),
        py::arg("nonlinearity"), py::arg("calls"),
        "Independent recurrent_forward calls (argument tuples), side by side where it pays.");
  m.def("recurrent_forward_stack", &recurrent_forward_stack, py::arg("cell"),
        py::arg("nonlinearity"), py::arg("calls"),
        "The layers of a stack (argument tuples; x of each after the first is None), as a "
        "wavefront where it pays.");
  m.def("recurrent_backward_many", &recurrent_backward_many, py::arg("cell"),
        py::arg("nonlinearity"), py::arg("calls"),
        "Independent recurrent_backward calls (argument tuples), side by side where it pays.");
  m.def("runs_side_by_side",
        [](const std::string& cell, const std::string& nonlinearity,
           const std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>& shapes,
           const py::dtype& dtype, bool stack) {
          const CellKind kind = parse_cell(cell, nonlinearity);
          const bool float64 = float_bytes(dtype) == 8;
          std::vector<SeqShape> s;
          for (const auto& [T, N, I, H] : shapes) s.push_back(checked_sizes(kind, T, N, I, H));
          const int count = static_cast<int>(s.size());
          if (float64)
            return cpu::runs_side_by_side<double>(kind, s.data(), count, stack);
          return cpu::runs_side_by_side<float>(kind, s.data(), count, stack);
        },
        py::arg("cell"), py::arg("nonlinearity"), py::arg("shapes"), py::arg("dtype"),
        py::arg("stack") = false,
        "Whether calls of these (T, N, I, H) shapes run side by side, one thread each.");
  m.def("attention_forward", &attention_forward, py::arg("score"), py::arg("query"),
        py::arg("keys_proj"), py::arg("values"), py::arg("mask"), py::arg("v"),
        "One attention step: (context, weights, hidden).");
  m.def("attention_backward", &attention_backward, py::arg("score"), py::arg("query"),
        py::arg("keys_proj"), py::arg("values"), py::arg("mask"), py::arg("v"), py::arg("hidden"),
        py::arg("weights"), py::arg("dcontext"), py::arg("dweights"),
        "Gradients of attention_forward: (dquery, dkeys_proj, dvalues, dv).");
  m.def("matmul", &matmul, py::arg("a"), py::arg("b"), py::arg("trans_a") = false,
        py::arg("trans_b") = false,
        "op(a) @ op(b) (op: the transpose where trans_a / trans_b) for 2-D C-contiguous float32 "
        "or float64 arrays of one dtype, on the kernels' threads (single-threaded OpenBLAS "
        "calls split over the team, as the recurrent kernels' GEMMs).");
  m.def("cpu_info", &cpu_info_dict,
        "This CPU as CPUID and the OS describe it: vendor, model, cache sizes, bf16/AMX.");
  m.def("tuning", &tuning_dict,
        "The CPU table's row the drivers use here (FUSEDRNN_CPU_TABLE=intel|amd|other forces one).");
  m.def("plan", &plan_dict, py::arg("cell"), py::arg("nonlinearity"), py::arg("T"), py::arg("N"),
        py::arg("I"), py::arg("H"), py::arg("dtype"), py::arg("training"), py::arg("threads"),
        py::arg("precision") = py::none(), py::arg("cache") = false,
        "What a call of this shape does on `threads` threads: the forward plan (and the backward "
        "one when training), as names. precision: as recurrent_forward's. cache: whether the call "
        "passes a WeightCache (a layer in eval mode does).");
  m.def("set_deterministic", &cpu::set_deterministic, py::arg("on"),
        "Plans whose results do not depend on the thread count (see fusedrnn.set_deterministic).");
  m.def("deterministic", &cpu::deterministic, "Whether set_deterministic is on.");
  m.def("build_info", &build_info, "What this build holds: compiler, SIMD, kernels, BLAS, CUDA.");
  m.def(
      "output_cache",
      []() {
        auto& blocks = cpu::output_blocks();
        size_t kept, limit;
        {  // (no Python object made under the lock: a collection it starts may free an output,
           // whose capsule takes the lock)
          std::lock_guard<std::mutex> g(blocks.mutex);
          kept = blocks.cache.kept_bytes();
          limit = blocks.cache.max_bytes();
        }
        py::dict d;
        d["kept_bytes"] = kept;
        d["limit_bytes"] = limit;
        d["min_bytes"] = kKeptOutputBytes;
        return d;
      },
      "The blocks of dead large outputs kept for the next calls' outputs (cpu/block_cache.h): "
      "kept_bytes, limit_bytes (FUSEDRNN_OUTPUT_CACHE_MB), min_bytes.");
  m.def(
      "release_output_cache",
      []() {
        auto& blocks = cpu::output_blocks();
        std::lock_guard<std::mutex> g(blocks.mutex);
        blocks.cache.release();
      },
      "Give every kept output block back to the allocator.");
  m.def("thread_workspace_bytes", &cpu::thread_workspace_bytes,
        "Bytes of the kernels' workspaces the calling thread keeps between calls.");
  m.def(
      "release_workspaces",
      []() {
        cpu::release_thread_workspaces();
        without_gil([] { cpu::release_team(); });  // (waits for a running call's team)
      },
      "Give the kernel workspaces back to the allocator: the calling thread's, and the team's "
      "threads' (they end; the next call starts them again).");
  // Without the GIL: it waits for a running call's team, and the other Python threads go on
  m.def("set_num_threads", [](int n) {
          if (n < 1 || n > 4096)  // (fusedrnn.MAX_THREADS: a typo must not start 10**6)
            throw py::value_error("n: expected 1 to 4096 threads, got " + std::to_string(n));
          without_gil([n] { cpu::set_num_threads(n); });
        }, py::arg("n"), "Threads of the kernels' team.");
  m.def("get_num_threads", []() { return cpu::get_num_threads(); },
        "Threads of the kernels' team.");
  m.def("share_openmp_threads", &cpu::share_openmp_threads,
        "Run the kernels' parallel phases on the OpenMP runtime PyTorch loaded (libgomp), if it "
        "is loaded; returns whether it is.");
  m.def("shares_openmp_threads", &cpu::shares_openmp_threads,
        "Whether the kernels' parallel phases run on a shared OpenMP runtime.");
}
