// CPU sequence drivers. Forward: the input projection of all T steps as one GEMM, then the time
// loop: the recurrent product (one GEMM per step) and the fused gate math of the cell. Backward:
// the reverse time loop producing gate gradients (the dh chain is the only sequential part),
// then dx, dw_ih, dw_hh as single GEMMs over all T*N rows and the biases as column sums.
#include "cpu/recurrent.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "cells/gru_cell.h"
#include "cells/lstm_cell.h"
#include "cells/rnn_cell.h"
#include "common/blas.h"

namespace fusedrnn {
namespace cpu {
namespace {

// Broadcast a bias row into rows x GH, to be accumulated onto by a GEMM with beta = 1.
template <typename T>
void fill_rows(T* out, const T* row, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) std::memcpy(out + r * cols, row, cols * sizeof(T));
}

template <typename T>
void column_sums(const T* a, int64_t rows, int64_t cols, T* out) {
  std::fill(out, out + cols, T(0));
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = a + r * cols;
    for (int64_t c = 0; c < cols; ++c) out[c] += row[c];
  }
}

template <typename T, typename Cell>
void forward_impl(const ForwardArgs<T>& a) {
  const SeqShape s = a.shape;
  const int64_t GH = s.GH(), H = s.H, N = s.N;
  // gates <- x W_ih^T + b_ih for every step at once.
  fill_rows(a.gates, a.b_ih, s.T * N, GH);
  if (s.T * N > 0 && s.I > 0)
    gemm(false, true, s.T * N, GH, s.I, T(1), a.x, s.I, a.w_ih, s.I, T(1), a.gates, GH);

  std::copy(a.h0, a.h0 + N * H, a.h_n);
  if (Cell::kHasCellState) std::copy(a.c0, a.c0 + N * H, a.c_n);
  std::vector<T> gh(N * GH);
  std::vector<T> extra_scratch(Cell::kUsesExtra && !a.extra ? N * H : 0);
  T dummy_c = T(0);

  for (int64_t step = 0; step < s.T; ++step) {
    const int64_t t = a.reverse ? s.T - 1 - step : step;
    fill_rows(gh.data(), a.b_hh, N, GH);
    gemm(false, true, N, GH, H, T(1), a.h_n, H, a.w_hh, H, T(1), gh.data(), GH);
    if (a.h_prev) std::copy(a.h_n, a.h_n + N * H, a.h_prev + t * N * H);
    for (int64_t n = 0; n < N; ++n) {
      T* h = a.h_n + n * H;
      T* y = a.y + (t * N + n) * H;
      if (!is_active(a.lengths, n, t)) {
        std::fill(y, y + H, T(0));
        continue;
      }
      T* gates = a.gates + (t * N + n) * GH;
      T* c = Cell::kHasCellState ? a.c_n + n * H : &dummy_c;
      T* extra = a.extra ? a.extra + (t * N + n) * H : extra_scratch.data() + n * H;
      const T* ghn = gh.data() + n * GH;
      for (int64_t j = 0; j < H; ++j)
        Cell::forward(gates, ghn, H, j, h[j], Cell::kHasCellState ? c[j] : dummy_c, gates, extra);
      std::copy(h, h + H, y);
    }
  }
}

template <typename T, typename Cell>
void backward_impl(const BackwardArgs<T>& a) {
  const SeqShape s = a.shape;
  const int64_t GH = s.GH(), H = s.H, N = s.N, TN = s.T * s.N;
  std::vector<T> dgx(TN * GH, T(0));
  std::vector<T> dgh_storage(Cell::kSplitRecurrentGrad ? TN * GH : 0, T(0));
  T* dgh_all = Cell::kSplitRecurrentGrad ? dgh_storage.data() : dgx.data();
  std::vector<T> dh_next(N * H);
  T* dh = a.dh0;  // running gradient w.r.t. the state entering the current step
  std::copy(a.dh_n, a.dh_n + N * H, dh);
  if (Cell::kHasCellState) std::copy(a.dc_n, a.dc_n + N * H, a.dc0);
  T dummy_c = T(0);

  for (int64_t step = s.T - 1; step >= 0; --step) {
    const int64_t t = a.reverse ? s.T - 1 - step : step;
    for (int64_t n = 0; n < N; ++n) {
      T* dh_row = dh + n * H;
      T* dh_next_row = dh_next.data() + n * H;
      if (!is_active(a.lengths, n, t)) {  // state passes through untouched; gates get nothing
        std::copy(dh_row, dh_row + H, dh_next_row);
        continue;
      }
      const int64_t row = t * N + n;
      const T* gates = a.gates + row * GH;
      const T* extra = a.extra ? a.extra + row * H : nullptr;
      const T* h_prev = a.h_prev + row * H;
      const T* dy = a.dy + row * H;
      T* dc = Cell::kHasCellState ? a.dc0 + n * H : nullptr;
      T* dgx_row = dgx.data() + row * GH;
      T* dgh_row = dgh_all + row * GH;
      for (int64_t j = 0; j < H; ++j)
        Cell::backward(gates, extra, h_prev[j], H, j, dh_row[j] + dy[j],
                       Cell::kHasCellState ? dc[j] : dummy_c, dgx_row, dgh_row, dh_next_row[j]);
    }
    // dh <- dh_direct + dgh_t W_hh (rows of inactive samples of dgh_t are zero).
    gemm(false, false, N, H, GH, T(1), dgh_all + t * N * GH, GH, a.w_hh, H, T(1), dh_next.data(), H);
    std::copy(dh_next.begin(), dh_next.end(), dh);
  }

  if (TN > 0) {
    if (s.I > 0) gemm(false, false, TN, s.I, GH, T(1), dgx.data(), GH, a.w_ih, s.I, T(0), a.dx, s.I);
    gemm(true, false, GH, s.I, TN, T(1), dgx.data(), GH, a.x, s.I, T(0), a.dw_ih, s.I);
    gemm(true, false, GH, H, TN, T(1), dgh_all, GH, a.h_prev, H, T(0), a.dw_hh, H);
  } else {
    std::fill(a.dw_ih, a.dw_ih + GH * s.I, T(0));
    std::fill(a.dw_hh, a.dw_hh + GH * H, T(0));
  }
  column_sums(dgx.data(), TN, GH, a.db_ih);
  column_sums(dgh_all, TN, GH, a.db_hh);
}

}  // namespace

template <typename T>
void recurrent_forward(CellKind cell, const ForwardArgs<T>& args) {
  switch (cell) {
    case CellKind::kLstm: return forward_impl<T, LstmCell>(args);
    case CellKind::kGru: return forward_impl<T, GruCell>(args);
    case CellKind::kRnnTanh: return forward_impl<T, RnnCell<false>>(args);
    case CellKind::kRnnRelu: return forward_impl<T, RnnCell<true>>(args);
  }
}

template <typename T>
void recurrent_backward(CellKind cell, const BackwardArgs<T>& args) {
  switch (cell) {
    case CellKind::kLstm: return backward_impl<T, LstmCell>(args);
    case CellKind::kGru: return backward_impl<T, GruCell>(args);
    case CellKind::kRnnTanh: return backward_impl<T, RnnCell<false>>(args);
    case CellKind::kRnnRelu: return backward_impl<T, RnnCell<true>>(args);
  }
}

template void recurrent_forward<float>(CellKind, const ForwardArgs<float>&);
template void recurrent_forward<double>(CellKind, const ForwardArgs<double>&);
template void recurrent_backward<float>(CellKind, const BackwardArgs<float>&);
template void recurrent_backward<double>(CellKind, const BackwardArgs<double>&);

}  // namespace cpu
}  // namespace fusedrnn
