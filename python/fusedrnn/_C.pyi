"""
fusedrnn kernels (see fusedrnn.functional for the documented API)
"""
from __future__ import annotations
import collections.abc
import numpy
import typing
__all__: list[str] = ['WeightCache', 'attention_backward', 'attention_forward', 'build_info', 'cpu_info', 'deterministic', 'get_num_threads', 'matmul', 'output_cache', 'plan', 'recurrent_backward', 'recurrent_backward_many', 'recurrent_forward', 'recurrent_forward_many', 'recurrent_forward_stack', 'release_output_cache', 'release_workspaces', 'runs_side_by_side', 'set_deterministic', 'set_num_threads', 'share_openmp_threads', 'shares_openmp_threads', 'thread_workspace_bytes', 'tuning']
class WeightCache:
    """
    The packed forms of one layer direction's weights, kept between calls (pass it as a forward call's cache). It serves only the arrays of the first call it takes part in (their addresses, shapes and cell), and never sees a change to their values: keep them alive while it is used, and make a new one whenever they may change.
    """
    def __init__(self) -> None:
        ...
    @property
    def forms(self) -> int:
        """
        Packed forms kept.
        """
    @property
    def nbytes(self) -> int:
        """
        Bytes held.
        """
def attention_backward(score: str, query: numpy.ndarray, keys_proj: typing.Any, values: typing.Any, mask: typing.Any, v: typing.Any, hidden: typing.Any, weights: typing.Any, dcontext: typing.Any, dweights: typing.Any) -> tuple:
    """
    Gradients of attention_forward: (dquery, dkeys_proj, dvalues, dv).
    """
def attention_forward(score: str, query: numpy.ndarray, keys_proj: typing.Any, values: typing.Any, mask: typing.Any, v: typing.Any) -> tuple:
    """
    One attention step: (context, weights, hidden).
    """
def build_info() -> dict:
    """
    What this build holds: compiler, SIMD, kernels, BLAS, CUDA.
    """
def cpu_info() -> dict:
    """
    This CPU as CPUID and the OS describe it: vendor, model, cache sizes, bf16/AMX.
    """
def deterministic() -> bool:
    """
    Whether set_deterministic is on.
    """
def get_num_threads() -> int:
    """
    Threads of the kernels' team.
    """
def matmul(a: typing.Any, b: typing.Any, trans_a: bool = False, trans_b: bool = False) -> numpy.ndarray:
    """
    op(a) @ op(b) (op: the transpose where trans_a / trans_b) for 2-D C-contiguous float32 or float64 arrays of one dtype, on the kernels' threads (single-threaded OpenBLAS calls split over the team, as the recurrent kernels' GEMMs).
    """
def output_cache() -> dict:
    """
    The blocks of dead large outputs kept for the next calls' outputs (cpu/block_cache.h): kept_bytes, limit_bytes (FUSEDRNN_OUTPUT_CACHE_MB), min_bytes.
    """
def plan(cell: str, nonlinearity: str, T: typing.SupportsInt | typing.SupportsIndex, N: typing.SupportsInt | typing.SupportsIndex, I: typing.SupportsInt | typing.SupportsIndex, H: typing.SupportsInt | typing.SupportsIndex, dtype: numpy.dtype[typing.Any], training: bool, threads: typing.SupportsInt | typing.SupportsIndex, precision: typing.Any = None, cache: bool = False) -> dict:
    """
    What a call of this shape does on `threads` threads: the forward plan (and the backward one when training), as names. precision: as recurrent_forward's. cache: whether the call passes a WeightCache (a layer in eval mode does).
    """
def recurrent_backward(cell: str, nonlinearity: str, x: numpy.ndarray, w_ih: typing.Any, w_hh: typing.Any, lengths: typing.Any, reverse: bool, gates: typing.Any, extra: typing.Any, h_prev: typing.Any, dy: typing.Any, dh_n: typing.Any, dc_n: typing.Any, precision: typing.Any = None, w_ph: typing.Any = None, w_hr: typing.Any = None, ln: typing.Any = None, input_grad: bool = True, weight_grads: bool = True) -> tuple:
    """
    BPTT of recurrent_forward: (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh), then dw_ph when given the forward's peepholes w_ph, dw_hr when given its projection w_hr, dln when given the LayerNorm-LSTM's ln. input_grad=False: dx None, not computed; weight_grads=False: every parameter's gradient None, not computed. precision: None/'float32', or 'bfloat16' (float32: every product from bfloat16 operands with float32 accumulation).
    """
def recurrent_backward_many(cell: str, nonlinearity: str, calls: list) -> list:
    """
    Independent recurrent_backward calls (argument tuples), side by side where it pays.
    """
def recurrent_forward(cell: str, nonlinearity: str, x: numpy.ndarray, h0: typing.Any, c0: typing.Any, w_ih: typing.Any, w_hh: typing.Any, b_ih: typing.Any, b_hh: typing.Any, lengths: typing.Any, reverse: bool, training: bool, cache: typing.Any = None, precision: typing.Any = None, w_ph: typing.Any = None, w_hr: typing.Any = None, ln: typing.Any = None, ln_eps: typing.SupportsFloat | typing.SupportsIndex = 1e-05) -> tuple:
    """
    One layer, one direction, the whole sequence: (y, h_n, c_n, gates, extra, h_prev). cache: a WeightCache keeping the packed weights between calls, or None. precision: None/'float32', or 'bfloat16' (float32: the products from bfloat16 operands with float32 accumulation; a training forward saves float32 activations). w_ph: an LSTM's peepholes [3H] (i, f, o), or None. w_hr: an LSTM's projection [P, H] (torch's proj_size P: h, y and w_hh's columns are P wide), or None. ln, ln_eps: the LayerNorm-LSTM's (cell 'layernorm_lstm') norm parameters [10H] and epsilon.
    """
def recurrent_forward_many(cell: str, nonlinearity: str, calls: list) -> list:
    """
    Independent recurrent_forward calls (argument tuples), side by side where it pays.
    """
def recurrent_forward_stack(cell: str, nonlinearity: str, calls: list) -> list:
    """
    The layers of a stack (argument tuples; x of each after the first is None), as a wavefront where it pays.
    """
def release_output_cache() -> None:
    """
    Give every kept output block back to the allocator.
    """
def release_workspaces() -> None:
    """
    Give the kernel workspaces back to the allocator: the calling thread's, and the team's threads' (they end; the next call starts them again).
    """
def runs_side_by_side(cell: str, nonlinearity: str, shapes: collections.abc.Sequence[tuple[typing.SupportsInt | typing.SupportsIndex, typing.SupportsInt | typing.SupportsIndex, typing.SupportsInt | typing.SupportsIndex, typing.SupportsInt | typing.SupportsIndex]], dtype: numpy.dtype[typing.Any], stack: bool = False) -> bool:
    """
    Whether calls of these (T, N, I, H) shapes run side by side, one thread each.
    """
def set_deterministic(on: bool) -> None:
    """
    Plans whose results do not depend on the thread count (see fusedrnn.set_deterministic).
    """
def set_num_threads(n: typing.SupportsInt | typing.SupportsIndex) -> None:
    """
    Threads of the kernels' team.
    """
def share_openmp_threads() -> bool:
    """
    Run the kernels' parallel phases on the OpenMP runtime PyTorch loaded (libgomp), if it is loaded; returns whether it is.
    """
def shares_openmp_threads() -> bool:
    """
    Whether the kernels' parallel phases run on a shared OpenMP runtime.
    """
def thread_workspace_bytes() -> int:
    """
    Bytes of the kernels' workspaces the calling thread keeps between calls.
    """
def tuning() -> dict:
    """
    The CPU table's row the drivers use here (FUSEDRNN_CPU_TABLE=intel|amd|other forces one).
    """
