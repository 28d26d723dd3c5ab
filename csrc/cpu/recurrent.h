// CPU sequence drivers: one layer, one direction, the whole sequence in one call.
#pragma once
#include "common/kernel_args.h"

namespace fusedrnn {
namespace cpu {

template <typename T>
void recurrent_forward(CellKind cell, const ForwardArgs<T>& args);

template <typename T>
void recurrent_backward(CellKind cell, const BackwardArgs<T>& args);

}  // namespace cpu
}  // namespace fusedrnn
