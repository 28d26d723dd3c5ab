"""fusedrnn's recurrent kernels as PyTorch custom operators (``torch.library``).

One operator runs one layer of a recurrent network, all its directions (one or two) at once, so
that the kernels may run the two directions side by side; its backward is a second operator.
What backward needs from the forward (the activated gates, the cell's extra state, the state
entering each step) leaves the forward operator as tensor outputs, so that the pair composes
with autograd, ``torch.compile`` (fake implementations give every output's shape) and
``torch.library.opcheck``.

Shapes: T time, N batch, I input, H hidden, G gates (RNN 1, GRU 3, LSTM 4), D directions.

    layer_forward(x [T, N, I], h0 [D, N, H], c0 [D, N, H] (LSTM; else empty),
                  w_ih D x [G*H, I], w_hh D x [G*H, H], b_ih, b_hh D x [G*H] (or empty lists),
                  lengths [N] int64 or None, cell, nonlinearity, training)
      -> y [T, N, D*H], h_n [D, N, H], c_n [D, N, H] (LSTM; else [0]),
         gates D x [T, N, G*H], extra D x [T or 0, N, H], h_prev D x [T, N, H]
         (the last three empty [0] tensors unless training)

CPU tensors reach the kernels as NumPy views (no copy); the kernels' outputs come back as
tensors over the arrays they wrote (no copy either).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .. import _C

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def _np(t: torch.Tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor (contiguous: copied only if it was not)."""
    return t.detach().contiguous().numpy()


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty((0,))


def _directions_calls(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, cell, training):
    """The kernel's argument tuples, one per direction (the second runs in reverse)."""
    xn = _np(x)
    lengths_np = None if lengths is None else _np(lengths.to(torch.int64))
    calls = []
    for d in range(len(w_ih)):
        gh = w_hh[d].shape[0]
        zeros = np.zeros(gh, xn.dtype)
        calls.append((xn, _np(h0[d]), _np(c0[d]) if cell == "lstm" else None,
                      _np(w_ih[d]), _np(w_hh[d]),
                      _np(b_ih[d]) if b_ih else zeros, _np(b_hh[d]) if b_hh else zeros,
                      lengths_np, d == 1, training))
    return calls


def _sync_threads():
    """Inside a torch program our kernels use as many threads as torch does (checked at each
    call: torch.set_num_threads may change it at any time)."""
    from .. import _runtime
    n = torch.get_num_threads()
    if n != _runtime.get_num_threads():
        _runtime.set_num_threads(n)


def _run(kernel, cell, nonlinearity, calls):
    _sync_threads()
    if len(calls) == 1:
        return [getattr(_C, kernel)(cell, nonlinearity, *calls[0])]
    return getattr(_C, kernel + "_many")(cell, nonlinearity, calls)


@torch.library.custom_op("fusedrnn::layer_forward", mutates_args=(), device_types="cpu")
def layer_forward(x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w_ih: list[torch.Tensor],
                  w_hh: list[torch.Tensor], b_ih: list[torch.Tensor], b_hh: list[torch.Tensor],
                  lengths: Optional[torch.Tensor], cell: str, nonlinearity: str, training: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor],
                             list[torch.Tensor], list[torch.Tensor]]:
    calls = _directions_calls(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, cell, training)
    outs = _run("recurrent_forward", cell, nonlinearity, calls)
    ys = [torch.from_numpy(o[0]) for o in outs]
    y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=2)
    h_n = torch.stack([torch.from_numpy(o[1]) for o in outs])
    c_n = torch.stack([torch.from_numpy(o[2]) for o in outs]) if cell == "lstm" else _empty(x)

    def saved(i):  # what backward needs: empty tensors (one per direction) unless training
        return [torch.from_numpy(o[i]) if training else _empty(x) for o in outs]
    return y, h_n, c_n, saved(3), saved(4), saved(5)


@layer_forward.register_fake
def _layer_forward_fake(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, cell, nonlinearity, training):
    T, N, _ = x.shape
    D, H = len(w_hh), w_hh[0].shape[1]
    G = GATES[cell]
    y = x.new_empty((T, N, D * H))
    h_n = x.new_empty((D, N, H))
    c_n = x.new_empty((D, N, H)) if cell == "lstm" else x.new_empty((0,))
    if not training:
        return y, h_n, c_n, *([x.new_empty((0,)) for _ in range(D)] for _ in range(3))
    extra_t = T if cell in ("lstm", "gru") else 0
    return (y, h_n, c_n, [x.new_empty((T, N, G * H)) for _ in range(D)],
            [x.new_empty((extra_t, N, H)) for _ in range(D)],
            [x.new_empty((T, N, H)) for _ in range(D)])


@torch.library.custom_op("fusedrnn::layer_backward", mutates_args=(), device_types="cpu")
def layer_backward(x: torch.Tensor, w_ih: list[torch.Tensor], w_hh: list[torch.Tensor],
                   lengths: Optional[torch.Tensor], gates: list[torch.Tensor],
                   extra: list[torch.Tensor], h_prev: list[torch.Tensor], dy: torch.Tensor,
                   dh_n: torch.Tensor, dc_n: torch.Tensor, cell: str, nonlinearity: str
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor],
                              list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """BPTT of :func:`layer_forward`: (dx, dh0 [D, N, H], dc0 (LSTM; else [0]), dw_ih, dw_hh,
    db_ih, db_hh (lists over the directions))."""
    D, H = len(w_hh), w_hh[0].shape[1]
    xn = _np(x)
    lengths_np = None if lengths is None else _np(lengths.to(torch.int64))
    calls = []
    for d in range(D):
        calls.append((xn, _np(w_ih[d]), _np(w_hh[d]), lengths_np, d == 1, _np(gates[d]),
                      _np(extra[d]), _np(h_prev[d]), _np(dy[:, :, d * H:(d + 1) * H]),
                      _np(dh_n[d]), _np(dc_n[d]) if cell == "lstm" else None))
    outs = _run("recurrent_backward", cell, nonlinearity, calls)
    dx = torch.from_numpy(outs[0][0])
    for o in outs[1:]:
        dx += torch.from_numpy(o[0])
    dh0 = torch.stack([torch.from_numpy(o[1]) for o in outs])
    dc0 = torch.stack([torch.from_numpy(o[2]) for o in outs]) if cell == "lstm" else _empty(x)
    return (dx, dh0, dc0, *([torch.from_numpy(o[i]) for o in outs] for i in range(3, 7)))


@layer_backward.register_fake
def _layer_backward_fake(x, w_ih, w_hh, lengths, gates, extra, h_prev, dy, dh_n, dc_n, cell,
                         nonlinearity):
    D, N, H = dh_n.shape
    dc0 = x.new_empty((D, N, H)) if cell == "lstm" else x.new_empty((0,))
    return (x.new_empty(x.shape), x.new_empty((D, N, H)), dc0,
            [w.new_empty(w.shape) for w in w_ih], [w.new_empty(w.shape) for w in w_hh],
            [w.new_empty(w.shape[:1]) for w in w_hh], [w.new_empty(w.shape[:1]) for w in w_hh])


def _setup_context(ctx, inputs, output):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, cell, nonlinearity, training = inputs
    _, _, _, gates, extra, h_prev = output
    ctx.cell, ctx.nonlinearity, ctx.training = cell, nonlinearity, training
    ctx.has_bias, ctx.directions = bool(b_ih), len(w_ih)
    ctx.has_lengths = lengths is not None
    ctx.save_for_backward(x, lengths, *w_ih, *w_hh, *gates, *extra, *h_prev)


def _backward(ctx, dy, dh_n, dc_n, dgates, dextra, dh_prev):
    if not ctx.training:
        raise RuntimeError("fusedrnn: this forward ran without saving what backward needs "
                           "(it was called with training=False); call it with gradients enabled")
    D = ctx.directions
    x, lengths, *rest = ctx.saved_tensors
    w_ih, w_hh, gates, extra, h_prev = (rest[i * D:(i + 1) * D] for i in range(5))
    H = w_hh[0].shape[1]
    N = x.shape[1]
    dy = torch.zeros(x.shape[0], N, D * H, dtype=x.dtype) if dy is None else dy
    dh_n = torch.zeros(D, N, H, dtype=x.dtype) if dh_n is None else dh_n
    if ctx.cell == "lstm":
        dc_n = torch.zeros(D, N, H, dtype=x.dtype) if dc_n is None else dc_n
    else:
        dc_n = x.new_empty((0,))
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh = layer_backward(
        x, list(w_ih), list(w_hh), lengths if ctx.has_lengths else None, list(gates),
        list(extra), list(h_prev), dy, dh_n, dc_n, ctx.cell, ctx.nonlinearity)
    return (dx, dh0, dc0 if ctx.cell == "lstm" else None, dw_ih, dw_hh,
            db_ih if ctx.has_bias else [], db_hh if ctx.has_bias else [],
            None, None, None, None)


layer_forward.register_autograd(_backward, setup_context=_setup_context)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("fusedrnn: double backward (gradients of gradients) through the "
                       "recurrent layers is not supported")


def _setup_nothing(ctx, inputs, output):
    pass


layer_backward.register_autograd(_no_double_backward, setup_context=_setup_nothing)
