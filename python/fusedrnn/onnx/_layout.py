"""ONNX's recurrent weights <-> PyTorch's (ours), one direction at a time: the one place that
knows both gate orders.

    ONNX  W [G*H, I]  R [G*H, H]  B [2*G*H] = (Wb, Rb)  P [3H]      gate blocks:
          LSTM i, o, f, c      GRU z, r, h      RNN one      P: i, o, f
    ours  w_ih [G*H, I]  w_hh [G*H, H]  b_ih, b_hh [G*H]  w_ph [3H]
          LSTM i, f, g, o      GRU r, z, n      RNN one      w_ph: i, f, o
"""
from __future__ import annotations

import numpy as np

# ONNX_BLOCKS[cell][k]: which of our gate blocks is ONNX's k-th
ONNX_BLOCKS = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2), "rnn": (0,)}
PEEPHOLE_BLOCKS = (0, 2, 1)  # ONNX's i, o, f from our i, f, o (its own inverse)


def _blocks(a, order):
    """``a``'s gate blocks along axis 0 taken in ``order``."""
    return np.concatenate([b for b in (np.split(a, len(order))[k] for k in order)])


def _inverse(order):
    return tuple(int(k) for k in np.argsort(order))


def to_onnx(cell, w_ih, w_hh, b_ih=None, b_hh=None, w_ph=None):
    """Our one direction's weights -> ONNX's (W, R, B or None, P or None)."""
    order = ONNX_BLOCKS[cell]
    B = None if b_ih is None else np.concatenate([_blocks(b_ih, order), _blocks(b_hh, order)])
    P = None if w_ph is None else _blocks(w_ph, PEEPHOLE_BLOCKS)
    return _blocks(w_ih, order), _blocks(w_hh, order), B, P


def from_onnx(cell, W, R, B=None, P=None):
    """ONNX's one direction's weights -> ours (w_ih, w_hh, b_ih, b_hh, w_ph); a missing B gives
    zero biases (ONNX's default), a missing P None."""
    order = _inverse(ONNX_BLOCKS[cell])
    GH = W.shape[0]
    if B is None:
        B = np.zeros(2 * GH, W.dtype)
    return (_blocks(W, order), _blocks(R, order), _blocks(B[:GH], order), _blocks(B[GH:], order),
            None if P is None else _blocks(P, PEEPHOLE_BLOCKS))
