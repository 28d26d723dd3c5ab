"""fusedrnn's recurrent kernels as PyTorch custom operators (``torch.library``).

One operator runs one layer of a recurrent network, all its directions (one or two) at once, so
that the kernels may run the two directions side by side; its backward is a second operator.
What backward needs from the forward (the activated gates, the cell's extra state, the state
entering each step) leaves the forward operator as tensor outputs, so that the pair composes
with autograd, ``torch.compile`` (fake implementations give every output's shape) and
``torch.library.opcheck``.

Shapes: T time, N batch, I input, H hidden, G gates (RNN 1, GRU 3, LSTM 4), D directions,
S the width of h: H, or P with an LSTM's projection (proj_size).

    layer_forward(x [T, N, I], h0 [D, N, S], c0 [D, N, H] (LSTM; else empty),
                  w_ih D x [G*H, I], w_hh D x [G*H, S], b_ih, b_hh D x [G*H] (or absent),
                  w_hr D x [P, H] (or absent), lengths [N] int64 or None, cell,
                  nonlinearity, training, precision)
      -> y [T, N, D*S], h_n [D, N, S], c_n [D, N, H] (LSTM; else [0]),
         then for the forward direction and then the reverse one: gates [T, N, G*H],
         extra [T or 0, N, H], h_prev [T, N, S] (empty [0] tensors unless training, and for
         the reverse direction of a unidirectional layer)

    layer_backward(x, w_ih, w_hh, w_hr, lengths, gates, extra, h_prev (lists over the
                   directions), dy, dh_n, dc_n, cell, nonlinearity, precision, input_grad,
                   weight_grads)
      -> dx, dh0 [D, N, S], dc0 [D, N, H] (LSTM; else [0]), dw_ih [D, G*H, I],
         dw_hh [D, G*H, S], db_ih, db_hh [D, G*H], dw_hr [D, P, H] (else [0]); dx [0] unless
         input_grad, the parameters' gradients [0] unless weight_grads (the kernels skip them)

Every output is a tensor, none a list: Inductor's ``cpp_wrapper`` calls only operators that
return tensors. The forward's saved activations take a slot per direction rather than a stacked
[D, ...] tensor, which would copy them (the kernels write each direction's apart).

``precision``: "float32", or "bfloat16": a float32 layer computes as under fusedrnn.autocast
(fusedrnn.amp; a float64 layer keeps float64). It changes no output's shape or dtype; the
backward runs on the float32 activations the forward saved, with the forward's products
(bfloat16 with float32 sums; float32 for a projected LSTM's backward) and float32 gradients.

CPU tensors reach the kernels as NumPy views (no copy); the kernels' outputs come back as
tensors over the arrays they wrote (no copy either). CUDA tensors (a build with the CUDA backend,
and CuPy) reach ``fusedrnn.cuda``'s kernels as CuPy views by DLPack, the kernels run on
``torch.cuda.current_stream()``, and what they allocate (outputs, workspace) comes from torch's
caching allocator on that stream, so their outputs are ordinary torch tensors: :class:`_Bridge`.
"""
from __future__ import annotations

import contextlib
import functools
import weakref
from typing import Optional

import numpy as np
import torch

from .. import _C
from .. import functional as F
from .. import _runtime
from .._runtime import MAX_THREADS
from ..amp import PRECISIONS

GATES = F.GATES  # (the adapter's cells are torch.nn's: rnn, gru, lstm)


def _np(t: torch.Tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor (contiguous: copied only if it was not). One call to torch
    (``numpy(force=True)``: the view whether or not it requires grad), a third less than
    detach, contiguous and numpy: a decoder step reads six."""
    if t.is_contiguous():  # (the view is then: asked of the tensor, not of the array's flags)
        return t.numpy(force=True)
    return np.ascontiguousarray(t.numpy(force=True))


class WeightViews:
    """A cell's NumPy views of its four weights (w_ih, w_hh, b_ih, b_hh), kept between steps:
    a decoder reads four a step, 0.8 us each against 0.3 for the check. A view serves while
    its weight is at the same address, shape and dtype, contiguous: it then reads exactly the
    weight's bytes (a write in place shows through it; a new ``.data``, a swap or a resize
    moves the address or the dtype, and the view is taken afresh). The module holds it, so no
    weak reference to a weight is made (torch.utils.swap_tensors refuses those), and no
    reference to the weight itself (its .grad and graph) either; copies and pickles of the
    module start empty, and converting or loading the module empties it (the views hold their
    storages)."""

    __slots__ = ("kept",)

    def __init__(self):
        self.kept = [None] * 4

    def array(self, slot, w):
        kept = self.kept[slot]
        if (kept is not None and kept[0] == w.data_ptr() and kept[1] == w.shape
                and kept[2] == w.dtype and w.is_contiguous()):
            return kept[3]
        a = _np(w)
        self.kept[slot] = ((w.data_ptr(), w.shape, w.dtype, a)
                           if a.ctypes.data == w.data_ptr() else None)  # (never a copy)
        return a

    def clear(self):
        self.kept = [None] * 4

    def __reduce__(self):
        return (WeightViews, ())

    def __deepcopy__(self, memo):
        return WeightViews()


def forget_weights(weights):
    """Drop the bfloat16 forms kept of ``weights`` and with them their weak references, which
    torch.utils.swap_tensors refuses: a Module's ``.to()`` under
    ``torch.__future__.set_swap_module_params_on_conversion(True)`` and ``load_state_dict``
    there swap each parameter (torch.nn.RNNBase drops its own weak references alike)."""
    ids = {id(w) for w in weights}
    for key in [k for k in _KEPT_FORMS if ids.intersection(k)]:
        _KEPT_FORMS.pop(key, None)


def _lengths_np(lengths):
    """The lengths as int64 on the host (both backends take them there), or None."""
    return None if lengths is None else _np(lengths.to("cpu", torch.int64))


class _Bridge:
    """How one device's tensors reach the kernels and come back, without copies.

    ``kernels``: the module the calls go to; ``array(t)``: the kernels' view of a tensor;
    ``tensor(a)``: a tensor over an array the kernels returned; ``running()``: the context the
    calls run in. The CPU's: fusedrnn._C on NumPy views, as many threads as torch uses."""

    kernels = _C
    array = staticmethod(_np)
    tensor = staticmethod(torch.from_numpy)

    def zeros(self, like, shape):
        """The kernels' zeros of ``shape`` in the dtype of ``like`` (a float32 or float64
        tensor on this device): an initial state no one gave."""
        return np.zeros(shape, np.float32 if like.dtype == torch.float32 else np.float64)

    def running(self):
        _sync_threads()
        return contextlib.nullcontext()


class _CudaBridge(_Bridge):
    """CUDA tensors: fusedrnn.cuda's kernels on CuPy views (DLPack), run on torch's current
    stream of the tensors' device, allocating through torch's caching allocator (so that what
    the kernels return is memory torch owns and orders on that stream)."""

    def __init__(self, device: torch.device):
        from .. import cuda
        self.kernels = cuda.kernels()  # raises CudaUnavailableError, saying why
        self._cp = cuda.array_module()
        self.device = device

    def array(self, t):
        if t.numel() == 0:  # (a zero-size tensor may export a null pointer)
            return self._cp.empty(tuple(t.shape), torch.empty(0, dtype=t.dtype).numpy().dtype)
        return self._cp.from_dlpack(t.detach().contiguous())

    def zeros(self, like, shape):
        return self.array(like.new_zeros(shape))  # from torch's allocator, on its stream

    def tensor(self, a):
        if a.size == 0:
            dtype = torch.from_numpy(np.empty(0, a.dtype)).dtype
            return torch.empty(a.shape, dtype=dtype, device=self.device)
        return torch.from_dlpack(a)

    def _allocate(self, size):
        block = torch.empty(max(size, 1), dtype=torch.uint8, device=self.device)
        memory = self._cp.cuda.UnownedMemory(block.data_ptr(), size, block,  # keeps it alive
                                             self.device.index)
        return self._cp.cuda.MemoryPointer(memory, 0)

    @contextlib.contextmanager
    def running(self):
        cp = self._cp
        stream = torch.cuda.current_stream(self.device)
        with cp.cuda.Device(self.device.index), cp.cuda.ExternalStream(stream.cuda_stream), \
                cp.cuda.using_allocator(self._allocate):
            yield


_CPU = _Bridge()
_CUDA = {}


def _bridge(x: torch.Tensor) -> _Bridge:
    """The bridge to the kernels for ``x``'s device."""
    if x.device.type == "cpu":
        return _CPU
    if x.device.type != "cuda":
        raise ValueError(f"x: fusedrnn.torch runs on the CPU and on CUDA devices, got a tensor "
                         f"on {x.device}")
    device = torch.device("cuda", x.device.index if x.device.index is not None
                          else torch.cuda.current_device())
    if device not in _CUDA:
        _CUDA[device] = _CudaBridge(device)
    return _CUDA[device]


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty((0,))


def _check_precision(precision):
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected 'float32' or 'bfloat16', got {precision!r}")
    return precision


def _directions_calls(bridge, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, cell, training,
                      precision, keep=False, views=None):
    """The kernel's argument tuples, one per direction (the second runs in reverse). ``x``
    [T, N, I], or a cell step's [N, I] (one step). ``h0``, ``c0``: [D, N, S], [D, N, H] tensors,
    lists of one [N, ...] tensor per direction, or None. ``keep``: an eager call, whose
    bfloat16 weights may be kept for the autocast region (:func:`_kept_forms`). ``views``: a
    cell's WeightViews (one direction), or None."""
    _check_precision(precision)
    arr = bridge.array
    w = (lambda slot, t: arr(t)) if views is None else views.array
    xn = arr(x)
    if xn.ndim == 2:  # (the array's view: a tensor's x[None] costs a step twice as much)
        xn = xn[None]
    lengths_np = _lengths_np(lengths)
    bf16 = F.bfloat16_products(xn.dtype, precision) and not (
        training and F.variant_trains_in_float32(cell, bool(w_hr), bridge is _CPU))
    # float32 weights are packed by every call (a parameter may change in place unseen);
    # bfloat16 ones are kept for the autocast region where torch keeps its own casts
    keep = keep and bf16 and not w_hr and bridge is _CPU
    N, S, GH = xn.shape[1], w_hh[0].shape[1], w_hh[0].shape[0]
    calls = []
    for d in range(len(w_ih)):
        forms, zeros = (_kept_forms(w_ih[d], w_hh[d], b_ih[d] if b_ih else None,
                                    b_hh[d] if b_hh else None) if keep else (None, None))
        if zeros is None and not b_ih:
            zeros = bridge.zeros(x, GH)
        more = ((None, "bfloat16" if bf16 else None, None, arr(w_hr[d])) if w_hr
                else (forms, "bfloat16") if bf16 else ())
        h0_d = bridge.zeros(x, (N, S)) if h0 is None else arr(h0[d])
        c0_d = (None if cell != "lstm" else bridge.zeros(x, (N, GH // 4)) if c0 is None
                else arr(c0[d]))
        calls.append((xn, h0_d, c0_d,
                      w(0, w_ih[d]), w(1, w_hh[d]),
                      w(2, b_ih[d]) if b_ih else zeros, w(3, b_hh[d]) if b_hh else zeros,
                      lengths_np, d == 1, training) + more)
    return calls


# torch.autocast casts a parameter to bfloat16 once per autocast region (its cast cache, dropped
# when the outermost region ends); the kernels' bfloat16 forms of an eager call's weights are
# kept alike, so a decoder's steps convert nothing after the first (LSTMCell(512), batch 1,
# one step, Zen 4: 224 -> 72-76 us; torch.nn's bfloat16 step 184-193). A weight's version or
# storage moving renews them within a region too (torch's cache renews nothing there); a write
# that moves neither (in place through ``.data``, a fused optimizer's step) goes unseen there,
# as by torch's own cache.
_KEPT_FORMS: dict = {}  # ids of a direction's (w_ih, w_hh, b_ih, b_hh) -> _KeptForms


def _drop_kept_forms_with_autocast_cache():
    """Drop the kept forms whenever torch drops its autocast cache (torch.autocast's
    ``__exit__`` calls ``torch.clear_autocast_cache`` when the outermost region ends); False
    where this torch has no such function (then nothing is kept)."""
    original = getattr(torch, "clear_autocast_cache", None)
    if original is None:
        return False
    if getattr(original, "_drops_fusedrnn_forms", False):
        return True

    @functools.wraps(original)
    def clear_autocast_cache(*args, **kwargs):
        _KEPT_FORMS.clear()
        return original(*args, **kwargs)
    clear_autocast_cache._drops_fusedrnn_forms = True
    torch.clear_autocast_cache = clear_autocast_cache
    return True


_REGIONS_SEEN = _drop_kept_forms_with_autocast_cache()


class _KeptForms:
    """A direction's bfloat16 weights in the kernels' forms (a WeightCache), for the weights
    at the versions and addresses they had (``state``), and the zeros of a missing bias (the
    cache serves fixed arrays). ``storages`` holds the weights' storages, so that no new one
    (a new ``.data``, which keeps the version) takes an address while the forms are kept."""

    __slots__ = ("refs", "state", "storages", "cache", "zeros")

    def __init__(self, weights, forget, zeros):
        self.refs = [weakref.ref(w, forget) for w in weights]
        self.state = _kept_state(weights)
        self.storages = [w.untyped_storage() for w in weights]
        self.cache, self.zeros = _C.WeightCache(), zeros


def _kept_state(weights):
    return tuple((w._version, w.data_ptr()) for w in weights)


def _kept_forms(w_ih, w_hh, b_ih, b_hh):
    """(WeightCache, zeros for a missing bias or None) of one direction's weights under
    bfloat16 autocast: kept for the region where torch would keep its casts of them (its
    cache on, each weight a leaf that requires grad and is no view), else (None, None): the
    call converts its own (so do weights made under torch.inference_mode, which count no
    versions)."""
    if not (_REGIONS_SEEN and torch.is_autocast_cache_enabled()):
        return None, None
    weights = (w_ih, w_hh, b_ih, b_hh)
    present = [w for w in weights if w is not None]
    for w in present:
        if not (w.requires_grad and w.is_leaf and not w._is_view()) or w.is_inference():
            return None, None
    key = tuple(map(id, weights))
    kept = _KEPT_FORMS.get(key)
    if kept is None or kept.state != _kept_state(present) or \
            any(r() is not w for r, w in zip(kept.refs, present)):
        def forget(_, key=key):  # a weight is gone: so are its forms
            _KEPT_FORMS.pop(key, None)
        zeros = None if b_ih is not None else _CPU.zeros(w_hh, w_hh.shape[0])
        kept = _KEPT_FORMS[key] = _KeptForms(present, forget, zeros)
    return kept.cache, kept.zeros


def _sync_threads():
    """Inside a torch program our kernels use as many threads as torch does, and keep to
    their deterministic plans while torch.use_deterministic_algorithms is on (checked at each
    call: torch's settings may change at any time). Our mode turned on by torch's goes off
    with it; one the user set with fusedrnn.set_deterministic stays."""
    n = min(torch.get_num_threads(), MAX_THREADS)  # (the kernels' bound)
    if n != _C.get_num_threads():
        _C.set_num_threads(n)
    _runtime.follow_torch_determinism(torch.are_deterministic_algorithms_enabled())


def _run(bridge, kernel, cell, nonlinearity, calls):
    """The kernel calls (side by side where that pays), as fusedrnn.functional runs them: a
    call with no work (T, N or H zero) returns at once."""
    empty = F._empty_forward if kernel == "recurrent_forward" else F._empty_backward
    return F._run_calls([(bridge.kernels, c) for c in calls], kernel, cell, nonlinearity, empty)


def _stack(tensors):
    """[D, ...] tensor of the directions' tensors (a view for one direction)."""
    return tensors[0][None] if len(tensors) == 1 else torch.stack(tensors)


def _stacked(bridge, arrays):
    """[D, ...] tensor over the directions' arrays; for one direction a tensor of its own over
    the array's memory, not a torch view: a user may change h_n in place (``h_n.detach_()``),
    which autograd refuses on a view."""
    if len(arrays) == 1:
        return bridge.tensor(arrays[0][None])
    return torch.stack([bridge.tensor(a) for a in arrays])


def _forward_impl(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, cell, nonlinearity,
                  training, precision, context=True, keep=False):
    """The kernels' forward (see the module docstring); no autograd here. ``context=False``
    (eager inference) returns None for the three saved lists; ``h0``, ``c0`` None: zeros.
    ``keep``: an eager call (not an operator's), as :func:`_directions_calls` takes it."""
    bridge = _bridge(x)
    if bridge is _CPU and len(w_hh) == 1 and not w_hr and lengths is None and x.shape[0] and \
            x.shape[1] and w_hh[0].shape[0]:  # one direction, straight to the kernel (lengths:
        # fusedrnn.functional's runner, which splits long-tail batches)
        y, h_n, c_n, *saved = kernel_now(
            x, h0, c0 if cell == "lstm" else None,
            (w_ih[0], w_hh[0], b_ih[0] if b_ih else None, b_hh[0] if b_hh else None), cell,
            nonlinearity, training, precision, keep)
        h_n = _stacked(_CPU, [h_n.numpy()])
        c_n = _stacked(_CPU, [c_n.numpy()]) if cell == "lstm" else _empty(x)
        if not context:
            return y, h_n, c_n, None, None, None
        return (y, h_n, c_n, *([t if training else _empty(x)] for t in saved))
    with bridge.running():
        calls = _directions_calls(bridge, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, cell,
                                  training, precision, keep)
        outs = _run(bridge, "recurrent_forward", cell, nonlinearity, calls)
        tensor = bridge.tensor
        y = (tensor(outs[0][0]) if len(outs) == 1
             else torch.cat([tensor(o[0]) for o in outs], dim=2))
        h_n = _stacked(bridge, [o[1] for o in outs])
        c_n = _stacked(bridge, [o[2] for o in outs]) if cell == "lstm" else _empty(x)
        if not context:
            return y, h_n, c_n, None, None, None
        # what backward needs: empty tensors (one per direction) unless training
        saved = [[tensor(o[i]) if training else _empty(x) for o in outs] for i in (3, 4, 5)]
    return (y, h_n, c_n, *saved)


def _backward_args(x, w_ih, w_hh, w_hr, lengths, reverse, gates, extra, h_prev, dy, dh_n, dc_n,
                   bf16, input_grad=True, weight_grads=True):
    """recurrent_backward's arguments for one direction, from the kernels' arrays (``w_hr``,
    ``lengths``, ``dc_n`` None where absent; ``bf16``: the forward ran bfloat16 products, whose
    backward runs its products dgates W in bfloat16 too, but a projected LSTM's in float32;
    ``input_grad``, ``weight_grads``: whether dx and the parameters' gradients are wanted)."""
    more = ((None, None, w_hr) if w_hr is not None else ("bfloat16",) if bf16 else ())
    return F.backward_args_wanting((x, w_ih, w_hh, lengths, reverse, gates, extra, h_prev, dy,
                                    dh_n, dc_n) + more, input_grad, weight_grads)


def _backward_impl(x, w_ih, w_hh, w_hr, lengths, gates, extra, h_prev, dy, dh_n, dc_n, cell,
                   nonlinearity, precision, input_grad=True, weight_grads=True):
    """The kernels' BPTT: (dx, dh0 [D, N, S], dc0 (LSTM; else [0]), dw_ih, dw_hh, db_ih, db_hh,
    dw_hr (lists over the directions; dw_hr empty without a projection)); ``precision``: the
    forward's (its products' rounding). ``w_hr``: empty, or Nones, without a projection. dx
    None unless ``input_grad``, the parameters' gradients Nones unless ``weight_grads``."""
    D, S, w_hr = len(w_hh), w_hh[0].shape[1], _given(w_hr)
    bridge = _bridge(x)
    with bridge.running():
        arr = bridge.array
        xn = arr(x)
        lengths_np = _lengths_np(lengths)
        bf16 = F.bfloat16_products(xn.dtype, _check_precision(precision)) and not w_hr
        calls = [_backward_args(xn, arr(w_ih[d]), arr(w_hh[d]), arr(w_hr[d]) if w_hr else None,
                                lengths_np, d == 1, arr(gates[d]), arr(extra[d]),
                                arr(h_prev[d]), arr(dy[:, :, d * S:(d + 1) * S]), arr(dh_n[d]),
                                arr(dc_n[d]) if cell == "lstm" else None, bf16, input_grad,
                                weight_grads)
                 for d in range(D)]
        outs = _run(bridge, "recurrent_backward", cell, nonlinearity, calls)

        def tensor(a):  # (None: not wanted)
            return None if a is None else bridge.tensor(a)
        dx = tensor(outs[0][0])
        for o in outs[1:]:
            dx = None if dx is None else dx.add_(tensor(o[0]))
        dh0 = _stacked(bridge, [o[1] for o in outs])
        dc0 = _stacked(bridge, [o[2] for o in outs]) if cell == "lstm" else _empty(x)
        dw_hr = [tensor(o[7]) for o in outs] if w_hr else []
        grads = [[tensor(o[i]) for o in outs] for i in range(3, 7)]
    return (dx, dh0, dc0, *grads, dw_hr)


# ---------------------------------------------------------------------------- custom operators
@torch.library.custom_op("fusedrnn::layer_forward", mutates_args=(),
                         device_types=("cpu", "cuda"))
def layer_forward(x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w_ih: list[torch.Tensor],
                  w_hh: list[torch.Tensor], b_ih: list[torch.Tensor], b_hh: list[torch.Tensor],
                  w_hr: list[torch.Tensor], lengths: Optional[torch.Tensor], cell: str,
                  nonlinearity: str, training: bool, precision: str
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                             torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                             torch.Tensor]:
    """One layer, every direction: (y, h_n, c_n, then gates, extra, h_prev of each direction
    slot); see the module docstring. An absent bias or projection is an empty list or, as the
    layers pass it, an empty tensor per direction (AOTInductor's runtime passes an empty list
    as None)."""
    y, h_n, c_n, *saved = _forward_impl(x, h0, c0, w_ih, w_hh, _given(b_ih), _given(b_hh),
                                        _given(w_hr), lengths, cell, nonlinearity, training,
                                        precision)
    return y, h_n, c_n, *_slots(saved, x)


def _slots(saved, like):
    """(gates, extra, h_prev) of the forward direction, then of the reverse one, from the lists
    over the directions (empty tensors where a layer has no reverse direction)."""
    return tuple(part[d] if d < len(part) else like.new_empty((0,))
                 for d in range(2) for part in saved)


def _of_slots(outputs, D):
    """The lists over the directions (gates, extra, h_prev) from layer_forward's slots."""
    return [[outputs[3 + 3 * d + i] for d in range(D)] for i in range(3)]


def _given(tensors):
    """[] for an absent bias or projection (an empty list, or empty tensors), else the list."""
    return [] if not tensors or tensors[0].numel() == 0 else list(tensors)


def _or_placeholders(tensors, like, D):
    """The layers' form of an operator list that may be empty: an empty tensor per direction
    where it is (never an empty list: AOTInductor's runtime would pass None)."""
    return list(tensors) if tensors else [like.new_empty((0,))] * D


@layer_forward.register_fake
def _layer_forward_fake(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, cell, nonlinearity,
                        training, precision):
    T, N, _ = x.shape
    G = GATES[cell]
    D, S, H = len(w_hh), w_hh[0].shape[1], w_hh[0].shape[0] // G
    y = x.new_empty((T, N, D * S))
    h_n = x.new_empty((D, N, S))
    c_n = x.new_empty((D, N, H)) if cell == "lstm" else x.new_empty((0,))
    shapes = ((T, N, G * H), (T if cell in ("lstm", "gru") else 0, N, H), (T, N, S))
    saved = [[x.new_empty(shape if training else (0,)) for _ in range(D)] for shape in shapes]
    return (y, h_n, c_n, *_slots(saved, x))


@torch.library.custom_op("fusedrnn::layer_backward", mutates_args=(),
                         device_types=("cpu", "cuda"))
def layer_backward(x: torch.Tensor, w_ih: list[torch.Tensor], w_hh: list[torch.Tensor],
                   w_hr: list[torch.Tensor], lengths: Optional[torch.Tensor],
                   gates: list[torch.Tensor], extra: list[torch.Tensor],
                   h_prev: list[torch.Tensor], dy: torch.Tensor, dh_n: torch.Tensor,
                   dc_n: torch.Tensor, cell: str, nonlinearity: str, precision: str,
                   input_grad: bool = True, weight_grads: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                              torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """BPTT of :func:`layer_forward`: (dx, dh0 [D, N, S], dc0 (LSTM; else [0]), dw_ih, dw_hh,
    db_ih, db_hh, dw_hr (each [D, ...]; dw_hr [0] without a projection)); ``precision``: the
    forward's. dx is [0] unless ``input_grad``, the parameters' gradients [0] unless
    ``weight_grads``: the kernels do not make them (an operator returns tensors, not None)."""
    dx, dh0, dc0, *grads, dw_hr = _backward_impl(x, w_ih, w_hh, w_hr, lengths, gates, extra,
                                                 h_prev, dy, dh_n, dc_n, cell, nonlinearity,
                                                 precision, input_grad, weight_grads)

    def none():  # (a new one each: an operator's outputs may not alias each other)
        return x.new_empty((0,))
    return (none() if dx is None else dx, dh0, dc0,
            *(_stack(g) if weight_grads else none() for g in grads),
            _stack(dw_hr) if dw_hr and weight_grads else none())


def _backward_through_operator(*args, input_grad=True, weight_grads=True):
    """layer_backward's gradients as :func:`_backward_impl` gives them (lists over the
    directions, of Nones where not wanted; dw_hr empty without a projection)."""
    dx, dh0, dc0, *grads, dw_hr = layer_backward(*args, input_grad, weight_grads)
    D = dh0.shape[0]
    grads = [list(g.unbind(0)) if weight_grads else [None] * D for g in grads]
    dw_hr = ([] if not _given(args[3]) else
             list(dw_hr.unbind(0)) if weight_grads else [None] * D)
    return (dx if input_grad else None, dh0, dc0, *grads, dw_hr)


@layer_backward.register_fake
def _layer_backward_fake(x, w_ih, w_hh, w_hr, lengths, gates, extra, h_prev, dy, dh_n, dc_n,
                         cell, nonlinearity, precision, input_grad=True, weight_grads=True):
    D, N, S = dh_n.shape
    H = w_hh[0].shape[0] // GATES[cell]
    dc0 = x.new_empty((D, N, H)) if cell == "lstm" else x.new_empty((0,))
    w_hr = _given(w_hr)
    grads = ((D, *w_ih[0].shape), (D, *w_hh[0].shape), (D, w_hh[0].shape[0]),
             (D, w_hh[0].shape[0]), (D, *w_hr[0].shape) if w_hr else None)
    return (x.new_empty(x.shape if input_grad else (0,)), x.new_empty((D, N, S)), dc0,
            *(x.new_empty(g if g and weight_grads else (0,)) for g in grads))


NO_VMAP = ("fusedrnn: torch.func.vmap over the recurrent layers (and jacrev, jacfwd, hessian, "
           "autograd.grad(is_grads_batched=True), jacobian(vectorize=True), which use it) is "
           "not supported; torch.func.grad and vjp are")
NO_FORWARD_AD = ("fusedrnn: forward-mode AD (torch.func.jvp, torch.autograd.forward_ad) through "
                 "the recurrent layers is not supported; reverse mode (backward, grad, vjp) is")
DOUBLE_BACKWARD = ("fusedrnn: double backward (gradients of gradients) through the recurrent "
                   "layers is not supported")


def _gradients(meta, saved, dy, dh_n, dc_n, backward):
    """The gradients of a layer's inputs from what its forward saved: (dx, dh0, dc0, dw_ih,
    dw_hh, db_ih, db_hh), None for what has none. ``backward`` runs the kernels (the operator
    under torch.compile, the plain function in eager mode)."""
    cell, nonlinearity, training, has_bias, D, projected, precision = meta
    if not training:
        raise RuntimeError("fusedrnn: this forward ran without saving what backward needs "
                           "(it was called with training=False: nothing required grad when it "
                           "ran, or was traced); call it with gradients enabled")
    x, lengths, *rest = saved
    parts = 6 if projected else 5
    w_ih, w_hh, gates, extra, h_prev, *w_hr = (list(rest[i * D:(i + 1) * D])
                                               for i in range(parts))
    w_hr = w_hr[0] if w_hr else []
    S, N = w_hh[0].shape[1], x.shape[1]  # S: the width of h
    H = w_hh[0].shape[0] // GATES[cell]
    dy = x.new_zeros((x.shape[0], N, D * S)) if dy is None else dy
    dh_n = x.new_zeros((D, N, S)) if dh_n is None else dh_n
    if cell == "lstm":
        dc_n = x.new_zeros((D, N, H)) if dc_n is None else dc_n
    else:
        dc_n = x.new_empty((0,))
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = backward(
        x, w_ih, w_hh, w_hr, lengths, gates, extra, h_prev, dy, dh_n, dc_n, cell, nonlinearity,
        precision)
    return (dx, dh0, dc0 if cell == "lstm" else None, dw_ih, dw_hh,
            db_ih if has_bias else None, db_hh if has_bias else None, dw_hr)


def _setup_context(ctx, inputs, output):
    (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, cell, nonlinearity, training,
     precision) = inputs
    gates, extra, h_prev = _of_slots(output, len(w_ih))
    ctx.meta = (cell, nonlinearity, training, bool(_given(b_ih)), len(w_ih), bool(_given(w_hr)),
                precision)
    ctx.absent = [len(t) for t in (b_ih, b_hh, w_hr)]  # the gradients' structure
    ctx.save_for_backward(x, lengths, *w_ih, *w_hh, *gates, *extra, *h_prev, *_given(w_hr))


def _backward(ctx, dy, dh_n, dc_n, *dsaved):
    # (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, ...: a list of flags for each list of tensors)
    needs = ctx.needs_input_grad
    backward = functools.partial(_backward_through_operator, input_grad=needs[0],
                                 weight_grads=any(any(n) for n in needs[3:8]))
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = _gradients(
        ctx.meta, ctx.saved_tensors, dy, dh_n, dc_n, backward)
    # the operator's inputs: a list where it took a list (of Nones where it held placeholders)
    db_ih, db_hh, dw_hr = (g or [None] * n for g, n in zip((db_ih, db_hh, dw_hr), ctx.absent))
    return (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, None, None, None, None, None)


layer_forward.register_autograd(_backward, setup_context=_setup_context)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(DOUBLE_BACKWARD)


def _setup_nothing(ctx, inputs, output):
    pass


layer_backward.register_autograd(_no_double_backward, setup_context=_setup_nothing)


# ---------------------------------------------------------------------------- eager mode
def _layer_outputs(meta, precision, x, h0, c0, lengths, weights, keep=False):
    """(y, h_n, c_n, *gates, *extra, *h_prev): the layer's outputs and what its backward needs,
    from the flat inputs of the autograd Functions below."""
    cell, nonlinearity, training, has_bias, D, projected = meta
    w = [list(weights[i * D:(i + 1) * D])
         for i in range((4 if has_bias else 2) + (1 if projected else 0))]
    b_ih, b_hh = (w[2], w[3]) if has_bias else ([], [])
    w_hr = w[-1] if projected else []
    y, h_n, c_n, gates, extra, h_prev = _forward_impl(x, h0, c0, w[0], w[1], b_ih, b_hh, w_hr,
                                                      lengths, cell, nonlinearity, True, precision,
                                                      keep=keep)
    return (y, h_n, c_n, *gates, *extra, *h_prev)


def _save_context(ctx, meta, precision, x, lengths, weights, outputs):
    D, projected = meta[4], meta[5]
    ctx.meta = (*meta, precision)
    ctx.save_for_backward(x, lengths, *weights[:2 * D], *outputs[3:],
                          *(weights[-D:] if projected else ()))


def _batched(t):
    """A tensor of a vmap: functorch's, or autograd's own (is_grads_batched)."""
    functorch = torch._C._functorch
    return functorch.is_batchedtensor(t) or functorch.is_legacy_batchedtensor(t)


def _check_gradient_call(grads, transforms=False):
    """Refuses a backward the kernels cannot give: a gradient of a gradient, or a batch of
    them (vmap). ``grads``: the gradients of the outputs; ``transforms``: under torch.func."""
    if transforms:
        # torch.func.grad runs this at its level (1) and vjp's function at none, both with grad
        # mode on; a deeper level is a gradient of this gradient, which would be wrong
        level = torch._C._functorch.maybe_current_level()
        if level is not None and level > 1:
            raise RuntimeError(DOUBLE_BACKWARD)
    elif torch.is_grad_enabled():  # create_graph=True: a gradient of this would be wrong
        raise RuntimeError(DOUBLE_BACKWARD)
    if any(g is not None and _batched(g) for g in grads):
        raise RuntimeError(NO_VMAP)  # jacrev (vjp under vmap), batched grad_outputs


def _layer_gradients(ctx, dy, dh_n, dc_n, transforms=False):
    """The autograd Functions' backward: a gradient per input (None for meta, precision and
    lengths). ``transforms``: _LayerUnderTransforms's, under torch.func."""
    _check_gradient_call((dy, dh_n, dc_n), transforms)
    needs = ctx.needs_input_grad  # (meta, precision, x, h0, c0, lengths, *weights)
    backward = functools.partial(_backward_impl, input_grad=needs[2],
                                 weight_grads=any(needs[6:]))
    args = (ctx.meta, ctx.saved_tensors, dy, dh_n, dc_n, backward)
    if not transforms:
        dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = _gradients(*args)
    else:  # every op (reading a tensor's data too) is the transform's: out of the way
        with torch._C._DisableFuncTorch(), torch.no_grad():
            dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = _gradients(*args)
    biases = (*db_ih, *db_hh) if db_ih is not None else ()
    return (None, None, dx, dh0, dc0, None, *dw_ih, *dw_hh, *biases, *dw_hr)


class _Layer(torch.autograd.Function):
    """The same layer for eager autograd, without the operators' dispatch (about 50 us a call,
    a fifth of a batch-1 LSTM layer): inputs flattened, ``meta`` as in :func:`_gradients`."""

    @staticmethod
    def forward(ctx, meta, precision, x, h0, c0, lengths, *weights):
        outputs = _layer_outputs(meta, precision, x, h0, c0, lengths, weights, keep=True)
        _save_context(ctx, meta, precision, x, lengths, weights, outputs)
        ctx.mark_non_differentiable(*(() if meta[0] == "lstm" else outputs[2:3]))
        return outputs[:3]

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n):
        return _layer_gradients(ctx, dy, dh_n, dc_n)

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(NO_FORWARD_AD)


class _LayerUnderTransforms(torch.autograd.Function):
    """_Layer in the form torch.func's transforms (grad, vjp) can see through: forward without
    ctx, the saved context returned as outputs and saved in setup_context (a form whose apply
    costs some 20 us more: used only under a transform). vmap (and what uses it: jacrev,
    jacfwd, hessian) is refused by name."""

    @staticmethod
    def forward(meta, precision, x, h0, c0, lengths, *weights):
        return _layer_outputs(meta, precision, x, h0, c0, lengths, weights)

    @staticmethod
    def setup_context(ctx, inputs, output):
        meta, precision, x, h0, c0, lengths, *weights = inputs
        _save_context(ctx, meta, precision, x, lengths, weights, output)
        ctx.mark_non_differentiable(*output[3:], *(() if meta[0] == "lstm" else output[2:3]))

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n, *_):
        return _layer_gradients(ctx, dy, dh_n, dc_n, transforms=True)

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(NO_FORWARD_AD)

    @staticmethod
    def vmap(info, in_dims, *args):
        raise RuntimeError(NO_VMAP)


# ONNX's gate order from torch's: LSTM i,f,g,o -> i,o,f,c(=g); GRU r,z,n -> z,r,h(=n)
_ONNX_GATES = {"lstm": [0, 3, 1, 2], "gru": [1, 0, 2], "rnn": [0]}


NO_ONNX_PROJECTION = ("ONNX's LSTM has no projection: torch.onnx.export cannot write an LSTM "
                      "with proj_size (torch.nn's cannot either); fusedrnn.onnx.export writes "
                      "a fusedrnn.nn.LSTM with one (which loads this layer's state_dict) as an "
                      "ONNX Scan")


def _onnx_nodes(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, cell, nonlinearity):
    """(y, h_n, c_n) of one layer as ONNX's own LSTM/GRU/RNN node, under torch.onnx.export's
    default (dynamo) path: the exported graph holds the standard node, which any ONNX runtime
    runs, not our operator."""
    if w_hr:
        raise RuntimeError("torch.onnx.export: " + NO_ONNX_PROJECTION)
    T, N, D, H = x.shape[0], x.shape[1], len(w_hh), w_hh[0].shape[1]

    def onnx_order(w):  # [G*H, ...] in ONNX's gate order
        return torch.cat([w[g * H:(g + 1) * H] for g in _ONNX_GATES[cell]])
    W = torch.stack([onnx_order(w) for w in w_ih])
    R = torch.stack([onnx_order(w) for w in w_hh])
    B = (torch.stack([torch.cat([onnx_order(bi), onnx_order(bh)]) for bi, bh in zip(b_ih, b_hh)])
         if b_ih else None)
    attrs = {"hidden_size": H, "direction": "bidirectional" if D == 2 else "forward"}
    if cell == "gru":
        attrs["linear_before_reset"] = 1  # torch's GRU: r * (W_hn h + b_hn)
    elif cell == "rnn":
        attrs["activations"] = ["Relu" if nonlinearity == "relu" else "Tanh"] * D
    inputs = [x, W, R, B, None if lengths is None else lengths.to(torch.int32), h0]
    if cell == "lstm":
        inputs.append(c0)
    outs = torch.onnx.ops.symbolic_multi_out(
        f"::{cell.upper()}", inputs, attrs, dtypes=[x.dtype] * (3 if cell == "lstm" else 2),
        shapes=[[T, D, N, H], [D, N, H], [D, N, H]][:3 if cell == "lstm" else 2], version=14)
    y = outs[0].permute(0, 2, 1, 3).reshape(T, N, D * H)  # [T, D, N, H] -> [T, N, D*H]
    return y, outs[1], outs[2] if cell == "lstm" else x.new_empty((0,))


def kernel_now(x, h0, c0, weights, cell, nonlinearity, training, precision, keep=False):
    """The kernel's outputs as tensors, (y, h_n [N, S], c_n or None, gates, extra, h_prev), of
    one direction's forward on the CPU (no projection, no lengths): what _forward_impl computes,
    the same arguments (:func:`_directions_calls`) without its bridge, lists and runner, which
    cost some 25 us a call, most of a decoder step's (LSTMCell(128) at batch 1, no_grad: 63 ->
    39-44 us). x [T, N, I] (T, N, H > 0); h0, c0 as _directions_calls takes them; weights
    (w_ih, w_hh, b_ih, b_hh), the biases None without; the last three outputs None unless
    ``training``."""
    return tuple(None if a is None else torch.from_numpy(a)
                 for a in _kernel_arrays(x, h0, c0, weights, cell, nonlinearity, training,
                                         precision, keep)[1])


def step_now(x, h, c, weights, cell, nonlinearity, precision, views=None):
    """(h', c') of one cell step without autograd, eager on the CPU: the kernel's state
    outputs alone (a step's y is its h'). x [N, I] (N, H > 0); h, c [N, H] or None for zeros
    (c None but for the LSTM; c' None there too); weights as :func:`kernel_now`'s; ``views``:
    the cell's WeightViews, or None."""
    _, h_n, c_n = _kernel_arrays(x, None if h is None else [h],
                                 None if c is None else [c], weights, cell, nonlinearity, False,
                                 precision, keep=True, views=views)[1][:3]
    return torch.from_numpy(h_n), None if c_n is None else torch.from_numpy(c_n)


def _kernel_arrays(x, h0, c0, weights, cell, nonlinearity, training, precision, keep,
                   views=None):
    """(the kernel's arguments, its outputs) of :func:`kernel_now`'s call, as arrays."""
    _sync_threads()
    w_ih, w_hh, b_ih, b_hh = weights
    args, = _directions_calls(_CPU, x, h0, c0, [w_ih], [w_hh], [] if b_ih is None else [b_ih],
                              [] if b_hh is None else [b_hh], [], None, cell, training,
                              precision, keep, views)
    return args, _C.recurrent_forward(cell, nonlinearity, *args)


def cell_step(x, h, c, weights, cell, nonlinearity, precision, views=None):
    """(h', c') of one cell step with autograd, eager on the CPU (no transform, compile or
    trace active: they take the layer's path): x [N, I] (N, H > 0), h, c [N, H] (c None but
    for the LSTM; c' None there too); weights (w_ih, w_hh, b_ih, b_hh), the biases None
    without; ``views``: the cell's WeightViews, or None. The layer's general path costs some
    35 us a step more in lists, reshapes and outputs no step needs: two fifths of a decoder's
    step at batch 1."""
    outs = _OneDirection.apply((cell, nonlinearity, precision, False, views), x, h, c,
                               *weights)
    return outs if cell == "lstm" else (outs, None)


def one_direction(x, h0, c0, weights, cell, nonlinearity, precision):
    """(y [T, N, H], h_n [1, N, H], c_n [1, N, H] (LSTM; else an empty tensor)) of a layer's
    one direction with autograd, eager on the CPU, without projection or lengths (T, N, H >
    0): :func:`cell_step`'s path for a sequence (a decoder that steps an nn.GRU one token at
    a time calls it with T = 1). h0, c0 [1, N, H] (c0 None but for the LSTM)."""
    outs = _OneDirection.apply((cell, nonlinearity, precision, True, None), x, h0, c0,
                               *weights)
    return outs if cell == "lstm" else (*outs, x.new_empty((0,)))


def _keeps_graph():
    """Whether the backward running now keeps the graph (retain_graph=True): torch frees a
    node's saved tensors after its backward unless so (its private query; True where absent,
    keeping what a second backward may need)."""
    query = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    # (under compiled autograd Dynamo traces this backward and cannot read the flag: kept)
    return True if query is None or torch.compiler.is_compiling() else query()


class _OneDirection(torch.autograd.Function):
    """The kernels' forward and BPTT of one direction as one autograd node: a cell's step
    (x [N, I], states [N, H]; ``meta[3]`` False) or a layer's direction (x [T, N, I], states
    [1, N, H]). Outputs y (a layer's; a step's is its h_n, so it gives none, and its backward
    gets no zeros for it), h_n and c_n (the LSTM's). A layer saves what its backward needs
    of the forward as tensors (saved-tensor hooks, such as torch.utils.checkpoint's, see them);
    a cell's step keeps the kernel's arrays (ctx.step: a few [N, G*H] rows, about 10 us a step
    less) until its backward is done (unless the graph is retained). x and the weights are
    saved as tensors too (autograd refuses a backward after they changed in place); the
    backward reads them through the forward's views."""

    @staticmethod
    def forward(ctx, meta, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        cell, nonlinearity, precision, layered, views = meta
        state = (lambda t: t[0]) if layered else (lambda t: t)  # [N, H] of a state
        args, outs = _kernel_arrays(x, [state(h0)],
                                    None if c0 is None else [state(c0)],
                                    (w_ih, w_hh, b_ih, b_hh), cell, nonlinearity, True,
                                    precision, keep=True, views=views)
        y, h_n, c_n, *saved = outs
        ctx.step = (meta, args[0], args[3], args[4], None if layered else saved,
                    F.bfloat16_products(args[0].dtype, precision))
        ctx.save_for_backward(x, w_ih, w_hh,
                              *((torch.from_numpy(a) for a in saved) if layered else ()))
        if not layered:
            h_n = torch.from_numpy(h_n)
            return (h_n, torch.from_numpy(c_n)) if cell == "lstm" else h_n
        outputs = (torch.from_numpy(y), torch.from_numpy(h_n[None]))
        return (*outputs, torch.from_numpy(c_n[None])) if cell == "lstm" else outputs

    @staticmethod
    def backward(ctx, *grads):
        _check_gradient_call(grads)
        # (raises if x or a weight changed in place since, or on a second backward through
        # a graph not retained)
        tensors = ctx.saved_tensors
        (cell, nonlinearity, _, layered, _), x, w_ih, w_hh, saved, bf16 = ctx.step
        _sync_threads()
        # (autograd passes zeros for an output the loss did not use; dc_n None but the LSTM's)
        arrays = [_np(g) for g in grads] + [None]
        if layered:
            saved = [_np(t) for t in tensors[3:]]
            dy, dh_n, dc_n = arrays[:3]
            dh_n, dc_n = dh_n[0], None if dc_n is None else dc_n[0]
        else:  # a step: its y is h_n, whose gradient comes as dy (the kernel adds 0 to it)
            dh_n, dc_n = arrays[:2]
            dy, dh_n = dh_n[None], np.zeros(dh_n.shape, dh_n.dtype)
        needs = ctx.needs_input_grad  # (meta, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        outs = _C.recurrent_backward(cell, nonlinearity, *_backward_args(
            x, w_ih, w_hh, None, None, False, *saved, dy, dh_n, dc_n, bf16, needs[1],
            any(needs[4:])))
        if not _keeps_graph():  # the arrays go as torch's saved tensors go (kept where it
            ctx.step = None      # failed: a backward may be tried again, as torch's)
        dx, dh0, dc0, *dw = outs[:7]
        if layered:  # (the arrays' views: a tensor's costs a microsecond more)
            dh0, dc0 = dh0[None], None if dc0 is None else dc0[None]
        elif dx is not None:
            dx = dx[0]
        # tensors for the inputs that take a gradient alone (none for a missing bias, c0
        # but the LSTM's, a state no one gave)
        return (None, *(torch.from_numpy(a) if needed else None
                        for a, needed in zip((dx, dh0, dc0, *dw), ctx.needs_input_grad[1:])))

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(NO_FORWARD_AD)


def _in_onnx_export():
    """Whether torch.onnx.export is tracing. Dynamo folds torch.onnx.is_in_onnx_export() to
    False (so the exporter's strict=True attempt saw our operator, which has no ONNX function,
    and said only that); the flag it reads is read here as Dynamo reads any global."""
    try:
        from torch.onnx._internal.exporter import _flags
    except ImportError:  # (a torch without it: the public function alone)
        return torch.onnx.is_in_onnx_export()
    return bool(_flags._is_onnx_exporting) or torch.onnx.is_in_onnx_export()


def _through_operators(x):
    """Whether a call goes through the operators (their fake implementations, their registered
    autograd) rather than straight to the kernels: under torch.compile and torch.jit.trace (so
    that the graph holds the operator, not the outputs of one call as constants), and for
    tensors the kernels cannot read (meta, fake: shapes only)."""
    return (type(x) is not torch.Tensor or x.is_meta or torch.compiler.is_compiling()
            or torch.jit.is_tracing())


def layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, cell, nonlinearity, training,
          precision, w_hr=()):
    """(y, h_n, c_n) of one layer, every direction, with autograd where ``training``: the
    operator under torch.compile and torch.jit.trace and on meta or fake tensors (and
    torch.library's checks), a plain autograd Function in eager mode (its torch.func form under
    torch.func's transforms), the kernels alone without autograd. ``w_hr``: an LSTM's
    projections, one per direction, or none. ``h0``, ``c0`` (the LSTM's; else unused):
    [D, N, S] and [D, N, H], or None for zeros."""
    w_hr = list(w_hr)
    if torch.compiler.is_compiling() and _in_onnx_export():
        return _onnx_nodes(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, cell, nonlinearity)
    dispatch = _through_operators(x)
    transforms = torch._C._are_functorch_transforms_active()  # torch.func.grad & co.
    if not training and not dispatch and not transforms:  # the kernels alone
        return _forward_impl(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, cell,
                             nonlinearity, False, precision, context=False, keep=True)[:3]
    D, N, S, GH = len(w_hh), x.shape[1], w_hh[0].shape[1], w_hh[0].shape[0]
    h0 = x.new_zeros((D, N, S)) if h0 is None else h0
    if c0 is None:
        c0 = x.new_zeros((D, N, GH // 4)) if cell == "lstm" else x.new_empty((0,))
    if dispatch:
        return layer_forward(x, h0, c0, w_ih, w_hh, _or_placeholders(b_ih, x, D),
                             _or_placeholders(b_hh, x, D), _or_placeholders(w_hr, x, D),
                             lengths, cell, nonlinearity, training, precision)[:3]
    if D == 1 and not w_hr and lengths is None and not transforms and x.device.type == "cpu" \
            and x.shape[0] and N and GH:  # one direction: one lean autograd node
        return one_direction(x, h0, c0 if cell == "lstm" else None,
                             (w_ih[0], w_hh[0], b_ih[0] if b_ih else None,
                              b_hh[0] if b_hh else None), cell, nonlinearity, precision)
    meta = (cell, nonlinearity, True, bool(b_ih), len(w_ih), bool(w_hr))
    function = _LayerUnderTransforms if transforms else _Layer
    return function.apply(meta, precision, x, h0, c0, lengths, *w_ih, *w_hh, *b_ih, *b_hh,
                          *w_hr)[:3]
