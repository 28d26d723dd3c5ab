// The CPU drivers compiled for one instruction set (flags in CMakeLists.txt).
#define FUSEDRNN_ISA generic
#include "cpu/recurrent_impl.inc"
#include "cpu/attention_impl.inc"
