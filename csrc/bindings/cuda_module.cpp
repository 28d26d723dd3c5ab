// The pybind11 module fusedrnn._C_cuda: the CUDA drivers behind raw device pointers.
// Thin on purpose: python/fusedrnn/cuda.py validates shapes and dtypes, allocates the CuPy
// outputs and workspace, and passes their addresses (ints) with the current stream. Here: parse
// the cell, fill the argument block, release the GIL, call.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bindings/cell_names.h"
#include "bindings/gil.h"
#include "cuda/recurrent.cuh"

namespace py = pybind11;
using namespace fusedrnn;

namespace {



// P: an LSTM's projection size (0: none; else 0 < P < H).
SeqShape make_shape(CellKind cell, int64_t T, int64_t N, int64_t I, int64_t H, int64_t P = 0) {
  if (T < 0 || N < 0 || I < 0 || H < 1)
    throw py::value_error("shape: expected T, N, I >= 0 and H >= 1");
  if (P != 0 && (cell != CellKind::kLstm || P < 0 || P >= H))
    throw py::value_error("P: expected 0, or 0 < P < H for an LSTM's projection");
  return SeqShape{T, N, I, H, gate_count(cell), P};
}

cuda::Options make_options(int device, std::uintptr_t stream, bool allow_tf32, int algorithm,
                           bool bf16) {
  if (algorithm < 0 || algorithm > 2)
    throw py::value_error("algorithm: expected 0 (auto), 1 (stepwise) or 2 (persistent)");
  cuda::Options o;
  o.bf16 = bf16;
  o.device = device;
  o.stream = stream;
  o.allow_tf32 = allow_tf32;
  o.algorithm = static_cast<cuda::Algorithm>(algorithm);
  return o;
}

template <typename T>
T* ptr(std::uintptr_t address) { return reinterpret_cast<T*>(address); }

// The LayerNorm-LSTM's norm parameters (and their gradient) are given exactly for it.
void require_layer_norm(CellKind cell, bool given) {
  if ((cell == CellKind::kLayerNormLstm) != given)
    throw py::value_error(cell == CellKind::kLayerNormLstm
                              ? "ln: the LayerNorm-LSTM needs its norm parameters (and dln)"
                              : "ln: layer-norm parameters belong to the LayerNorm-LSTM");
}

// Pointer arguments, in order, as addresses (0 for null):
//   x h0 c0 w_ih w_hh b_ih b_hh lengths(int64, device) y h_n c_n gates extra h_prev workspace
//   w_ph (LSTM peepholes [3H]) w_hr (LSTM projection [P, H]) ln (LayerNorm-LSTM [10H])
template <typename T>
void forward_typed(CellKind cell, const SeqShape& shape, const py::tuple& p, bool reverse,
                   const cuda::Options& options, double ln_eps) {
  ForwardArgs<T> a{};
  a.shape = shape;
  a.x = ptr<const T>(p[0].cast<std::uintptr_t>());
  a.h0 = ptr<const T>(p[1].cast<std::uintptr_t>());
  a.c0 = ptr<const T>(p[2].cast<std::uintptr_t>());
  a.w_ih = ptr<const T>(p[3].cast<std::uintptr_t>());
  a.w_hh = ptr<const T>(p[4].cast<std::uintptr_t>());
  a.b_ih = ptr<const T>(p[5].cast<std::uintptr_t>());
  a.b_hh = ptr<const T>(p[6].cast<std::uintptr_t>());
  a.lengths = ptr<const int64_t>(p[7].cast<std::uintptr_t>());
  a.reverse = reverse;
  a.y = ptr<T>(p[8].cast<std::uintptr_t>());
  a.h_n = ptr<T>(p[9].cast<std::uintptr_t>());
  a.c_n = ptr<T>(p[10].cast<std::uintptr_t>());
  a.gates = ptr<T>(p[11].cast<std::uintptr_t>());
  a.extra = ptr<T>(p[12].cast<std::uintptr_t>());
  a.h_prev = ptr<T>(p[13].cast<std::uintptr_t>());
  T* workspace = ptr<T>(p[14].cast<std::uintptr_t>());
  a.w_ph = ptr<const T>(p[15].cast<std::uintptr_t>());
  a.w_hr = ptr<const T>(p[16].cast<std::uintptr_t>());
  a.ln = ptr<const T>(p[17].cast<std::uintptr_t>());
  a.ln_eps = static_cast<T>(ln_eps);
  require_layer_norm(cell, a.ln != nullptr);
  without_gil([&] { cuda::recurrent_forward<T>(cell, a, workspace, options); });
}

// Pointer arguments, in order: x w_ih w_hh lengths gates extra h_prev dy dh_n dc_n
//   dx dh0 dc0 dw_ih dw_hh db_ih db_hh workspace w_ph dw_ph w_hr dw_hr ln dln
template <typename T>
void backward_typed(CellKind cell, const SeqShape& shape, const py::tuple& p, bool reverse,
                    const cuda::Options& options) {
  BackwardArgs<T> a{};
  a.shape = shape;
  a.x = ptr<const T>(p[0].cast<std::uintptr_t>());
  a.w_ih = ptr<const T>(p[1].cast<std::uintptr_t>());
  a.w_hh = ptr<const T>(p[2].cast<std::uintptr_t>());
  a.lengths = ptr<const int64_t>(p[3].cast<std::uintptr_t>());
  a.reverse = reverse;
  a.gates = ptr<const T>(p[4].cast<std::uintptr_t>());
  a.extra = ptr<const T>(p[5].cast<std::uintptr_t>());
  a.h_prev = ptr<const T>(p[6].cast<std::uintptr_t>());
  a.dy = ptr<const T>(p[7].cast<std::uintptr_t>());
  a.dh_n = ptr<const T>(p[8].cast<std::uintptr_t>());
  a.dc_n = ptr<const T>(p[9].cast<std::uintptr_t>());
  a.dx = ptr<T>(p[10].cast<std::uintptr_t>());
  a.dh0 = ptr<T>(p[11].cast<std::uintptr_t>());
  a.dc0 = ptr<T>(p[12].cast<std::uintptr_t>());
  a.dw_ih = ptr<T>(p[13].cast<std::uintptr_t>());
  a.dw_hh = ptr<T>(p[14].cast<std::uintptr_t>());
  a.db_ih = ptr<T>(p[15].cast<std::uintptr_t>());
  a.db_hh = ptr<T>(p[16].cast<std::uintptr_t>());
  T* workspace = ptr<T>(p[17].cast<std::uintptr_t>());
  a.w_ph = ptr<const T>(p[18].cast<std::uintptr_t>());
  a.dw_ph = ptr<T>(p[19].cast<std::uintptr_t>());
  a.w_hr = ptr<const T>(p[20].cast<std::uintptr_t>());
  a.dw_hr = ptr<T>(p[21].cast<std::uintptr_t>());
  a.ln = ptr<const T>(p[22].cast<std::uintptr_t>());
  a.dln = ptr<T>(p[23].cast<std::uintptr_t>());
  require_layer_norm(cell, a.ln != nullptr && a.dln != nullptr);
  without_gil([&] { cuda::recurrent_backward<T>(cell, a, workspace, options); });
}

void check_pointer_count(const py::tuple& p, size_t expected, const char* what) {
  if (p.size() != expected)
    throw py::value_error(std::string(what) + ": expected " + std::to_string(expected) +
                          " device addresses, got " + std::to_string(p.size()));
}

bool is_double(const std::string& dtype) {
  if (dtype == "float32") return false;
  if (dtype == "float64") return true;
  throw py::type_error("dtype: expected 'float32' or 'float64', got '" + dtype + "'");
}

// bfloat16 products are a float32 mode.
bool is_double(const std::string& dtype, bool bf16) {
  const bool d = is_double(dtype);
  if (d && bf16) throw py::value_error("bf16: bfloat16 products need dtype 'float32', got 'float64'");
  return d;
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "fusedrnn CUDA kernels on raw device pointers (use fusedrnn.cuda / fusedrnn.functional)";
  remember_main_thread();  // (GilReleased)
  m.def(
      "forward_workspace_size",
      [](const std::string& cell, const std::string& nonlinearity, int64_t T, int64_t N,
         int64_t I, int64_t H, bool training, bool bf16, int64_t P) {
        const CellKind kind = parse_cell(cell, nonlinearity);
        return cuda::forward_workspace_elems(kind, make_shape(kind, T, N, I, H, P), training,
                                             bf16);
      },
      py::arg("cell"), py::arg("nonlinearity"), py::arg("T"), py::arg("N"), py::arg("I"),
      py::arg("H"), py::arg("training"), py::arg("bf16") = false, py::arg("P") = 0,
      "Forward workspace in elements of the dtype (float32 with bf16).");
  m.def(
      "backward_workspace_size",
      [](const std::string& cell, const std::string& nonlinearity, int64_t T, int64_t N,
         int64_t I, int64_t H, bool bf16, int64_t P) {
        const CellKind kind = parse_cell(cell, nonlinearity);
        return cuda::backward_workspace_elems(kind, make_shape(kind, T, N, I, H, P), bf16);
      },
      py::arg("cell"), py::arg("nonlinearity"), py::arg("T"), py::arg("N"), py::arg("I"),
      py::arg("H"), py::arg("bf16") = false, py::arg("P") = 0,
      "Backward workspace in elements of the dtype (float32 with bf16).");
  m.def(
      "recurrent_forward",
      [](const std::string& cell, const std::string& nonlinearity, const std::string& dtype,
         int64_t T, int64_t N, int64_t I, int64_t H, const py::tuple& pointers, bool reverse,
         int device, std::uintptr_t stream, bool allow_tf32, int algorithm, bool bf16,
         int64_t P, double ln_eps) {
        const CellKind kind = parse_cell(cell, nonlinearity);
        const SeqShape shape = make_shape(kind, T, N, I, H, P);
        const cuda::Options options = make_options(device, stream, allow_tf32, algorithm, bf16);
        check_pointer_count(pointers, 18, "pointers");
        if (is_double(dtype, bf16))
          forward_typed<double>(kind, shape, pointers, reverse, options, ln_eps);
        else
          forward_typed<float>(kind, shape, pointers, reverse, options, ln_eps);
      },
      py::arg("cell"), py::arg("nonlinearity"), py::arg("dtype"), py::arg("T"), py::arg("N"),
      py::arg("I"), py::arg("H"), py::arg("pointers"), py::arg("reverse"), py::arg("device"),
      py::arg("stream"), py::arg("allow_tf32"), py::arg("algorithm"), py::arg("bf16") = false,
      py::arg("P") = 0, py::arg("ln_eps") = 1e-5,
      "One layer, one direction, on device pointers (see fusedrnn.cuda).");
  m.def(
      "recurrent_backward",
      [](const std::string& cell, const std::string& nonlinearity, const std::string& dtype,
         int64_t T, int64_t N, int64_t I, int64_t H, const py::tuple& pointers, bool reverse,
         int device, std::uintptr_t stream, bool allow_tf32, int algorithm, bool bf16,
         int64_t P) {
        const CellKind kind = parse_cell(cell, nonlinearity);
        const SeqShape shape = make_shape(kind, T, N, I, H, P);
        const cuda::Options options = make_options(device, stream, allow_tf32, algorithm, bf16);
        check_pointer_count(pointers, 24, "pointers");
        if (is_double(dtype, bf16))
          backward_typed<double>(kind, shape, pointers, reverse, options);
        else
          backward_typed<float>(kind, shape, pointers, reverse, options);
      },
      py::arg("cell"), py::arg("nonlinearity"), py::arg("dtype"), py::arg("T"), py::arg("N"),
      py::arg("I"), py::arg("H"), py::arg("pointers"), py::arg("reverse"), py::arg("device"),
      py::arg("stream"), py::arg("allow_tf32"), py::arg("algorithm"), py::arg("bf16") = false,
      py::arg("P") = 0, "BPTT of recurrent_forward on device pointers (see fusedrnn.cuda).");
  m.def(
      "persistent_forward_fits",
      [](const std::string& cell, const std::string& nonlinearity, const std::string& dtype,
         int64_t T, int64_t N, int64_t I, int64_t H, bool bf16) {
        const CellKind kind = parse_cell(cell, nonlinearity);
        const SeqShape shape = make_shape(kind, T, N, I, H);
        return is_double(dtype, bf16) ? cuda::persistent_forward_fits<double>(kind, shape)
                                      : cuda::persistent_forward_fits<float>(kind, shape, bf16);
      },
      py::arg("cell"), py::arg("nonlinearity"), py::arg("dtype"), py::arg("T"), py::arg("N"),
      py::arg("I"), py::arg("H"), py::arg("bf16") = false,
      "Can the persistent forward kernel run this problem on the current device?");
  m.def(
      "persistent_backward_fits",
      [](const std::string& cell, const std::string& nonlinearity, const std::string& dtype,
         int64_t T, int64_t N, int64_t I, int64_t H, bool bf16) {
        const CellKind kind = parse_cell(cell, nonlinearity);
        const SeqShape shape = make_shape(kind, T, N, I, H);
        return is_double(dtype, bf16) ? cuda::persistent_backward_fits<double>(kind, shape)
                                      : cuda::persistent_backward_fits<float>(kind, shape, bf16);
      },
      py::arg("cell"), py::arg("nonlinearity"), py::arg("dtype"), py::arg("T"), py::arg("N"),
      py::arg("I"), py::arg("H"), py::arg("bf16") = false,
      "Can the persistent backward kernel run this problem on the current device?");
  m.def("device_summary", &cuda::device_summary, "Name, compute capability and SMs of the device.");
}
