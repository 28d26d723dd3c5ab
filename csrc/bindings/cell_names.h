// What both pybind11 modules (fusedrnn._C and fusedrnn._C_cuda) parse the same way.
#pragma once
#include <pybind11/pybind11.h>

#include <string>

#include "common/kernel_args.h"

namespace fusedrnn {

// The cell named by Python ("rnn" with "tanh"/"relu", "lstm", "gru", "gru_reset_before",
// "layernorm_lstm"), or ValueError.
inline CellKind parse_cell(const std::string& cell, const std::string& nonlinearity) {
  if (cell == "lstm") return CellKind::kLstm;
  if (cell == "gru") return CellKind::kGru;
  if (cell == "gru_reset_before") return CellKind::kGruResetBefore;
  if (cell == "layernorm_lstm") return CellKind::kLayerNormLstm;
  if (cell == "rnn") {
    if (nonlinearity == "tanh") return CellKind::kRnnTanh;
    if (nonlinearity == "relu") return CellKind::kRnnRelu;
    throw pybind11::value_error("nonlinearity: expected 'tanh' or 'relu', got '" + nonlinearity +
                                "'");
  }
  throw pybind11::value_error("cell: expected 'rnn', 'lstm', 'gru', 'gru_reset_before' or "
                              "'layernorm_lstm', got '" + cell + "'");
}

}  // namespace fusedrnn
