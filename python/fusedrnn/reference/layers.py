"""NumPy float64 reference for a whole recurrent layer stack, exactly as torch.nn.RNN/LSTM/GRU
(time-major, no dropout): ``num_layers`` layers, each one or two directions, built from the cell
references in :mod:`.cells`.

    x     [T, N, I]             out, dout   [T, N, D*S]   (forward direction in the first S columns)
    hx    [L*D, N, S]           LSTM: a tuple (h0, c0), h0 [L*D, N, S], c0 [L*D, N, H]; None: zeros
    h_n   [L*D, N, S]           ordered layer-major then direction, as PyTorch (c_n [L*D, N, H])
    params  dict with PyTorch's names: weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k},
            and the same with the suffix "_reverse"; the biases may be absent (bias=False). An
            LSTM may have weight_hr_l{k} [P, H] (torch's proj_size P) and weight_ph_l{k} [3H]
            (fusedrnn's peepholes i, f, o); other names are refused.

S, the width of h, is H, or P with a projection.

``mode`` is one of "RNN_TANH", "RNN_RELU", "LSTM", "GRU" (PyTorch's / cuDNN's mode names).
"RNN" is also accepted and then takes its activation from ``nonlinearity``; with the other modes
``nonlinearity`` is ignored. Variable ``lengths`` [N] follow packed-sequence semantics in every
layer and both directions (see :mod:`.cells`).
"""
from __future__ import annotations

import numpy as np

from .._flags import check_flag
from . import cells

MODES = ("RNN_TANH", "RNN_RELU", "LSTM", "GRU", "RNN")


def _cell_and_activation(mode, nonlinearity):
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if mode == "RNN":
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        return "rnn", nonlinearity
    return {"RNN_TANH": ("rnn", "tanh"), "RNN_RELU": ("rnn", "relu"),
            "LSTM": ("lstm", "tanh"), "GRU": ("gru", "tanh")}[mode]


def _suffix(layer, direction):
    return f"_l{layer}" + ("_reverse" if direction == 1 else "")


def _cell_forward(cell, nonlinearity, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
                  w_ph=None, w_hr=None, reset_after=True):
    """One layer, one direction; returns (y, h_n, c_n or None, ctx) whatever the cell."""
    if cell == "lstm":
        return cells.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=lengths,
                                  reverse=reverse, training=True, w_ph=w_ph, w_hr=w_hr)
    if cell == "gru":
        y, h_n, ctx = cells.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths=lengths,
                                        reverse=reverse, training=True, reset_after=reset_after)
    else:
        y, h_n, ctx = cells.rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity=nonlinearity,
                                        lengths=lengths, reverse=reverse, training=True)
    return y, h_n, None, ctx


def _cell_backward(cell, ctx, dy, dh_n, dc_n):
    """Returns (dx, dh0, dc0 or None, dw_ih, dw_hh, db_ih, db_hh) whatever the cell, then an
    LSTM's dw_ph and dw_hr where it has peepholes and a projection."""
    if cell == "lstm":
        return cells.lstm_backward(ctx, dy, dh_n, dc_n)
    backward = cells.gru_backward if cell == "gru" else cells.rnn_backward
    dx, dh0, dw_ih, dw_hh, db_ih, db_hh = backward(ctx, dy, dh_n)
    return dx, dh0, None, dw_ih, dw_hh, db_ih, db_hh


def _check_names(cell, params, num_layers, D):
    """Refuse parameters this reference would not use (a LayerNorm-LSTM's norms, a peephole of
    a GRU): computing without them would answer for another network."""
    kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") + (
        ("weight_hr", "weight_ph") if cell == "lstm" else ())
    known = {kind + _suffix(layer, d) for kind in kinds for layer in range(num_layers)
             for d in range(D)}
    missing = sorted(kind + _suffix(layer, d) for kind in ("weight_ih", "weight_hh")
                     for layer in range(num_layers) for d in range(D)
                     if kind + _suffix(layer, d) not in params)
    if missing:
        raise ValueError(f"params: missing {missing} for a {cell.upper()} of {num_layers} "
                         f"layer(s), {D} direction(s)")
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"params: unexpected {unknown} for a {cell.upper()} of {num_layers} "
                         f"layer(s), {D} direction(s) (this reference takes torch.nn's names, and "
                         f"an LSTM's weight_hr (proj_size) and weight_ph (peepholes); a "
                         f"LayerNorm-LSTM's layers: fusedrnn.reference.cells."
                         f"layernorm_lstm_forward)")


def recurrent_forward(mode, x, params, *, num_layers, bidirectional, hx=None, lengths=None,
                      nonlinearity="tanh", reset_after=True):
    """Forward through the stack. Returns (out, h_n, c_n, cache); c_n is None unless LSTM.
    ``reset_after``: a GRU's reset gate after the product (torch's, the default) or before it
    (``fr.nn.GRU(reset_after=False)``, Keras', ONNX's linear_before_reset=0): its weights are
    named alike, so the state_dict cannot tell."""
    cell, nonlinearity = _cell_and_activation(mode, nonlinearity)
    reset_after = check_flag(reset_after, "reset_after")
    if not reset_after and cell != "gru":
        raise ValueError(f"reset_after: a GRU's option, got reset_after=False for {mode!r}")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"x: expected 3 dimensions [T, N, I], got shape {x.shape}")
    T, N, _ = x.shape
    D = 2 if bidirectional else 1
    _check_names(cell, params, num_layers, D)
    H = np.asarray(params["weight_ih_l0"]).shape[0] // {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    S = np.asarray(params["weight_hh_l0"]).shape[1]  # the width of h: H, or P
    h0, c0 = (hx if cell == "lstm" else (hx, None)) if hx is not None else (None, None)
    h0 = np.zeros((num_layers * D, N, S)) if h0 is None else np.asarray(h0, dtype=np.float64)
    c0 = np.zeros((num_layers * D, N, H)) if c0 is None else np.asarray(c0, dtype=np.float64)
    for name, s, width in (("h0", h0, S), ("c0", c0, H)):
        if s.shape != (num_layers * D, N, width):
            raise ValueError(f"hx ({name}): expected shape {(num_layers * D, N, width)}, got "
                             f"{s.shape}")

    h_n = np.zeros((num_layers * D, N, S))
    c_n = np.zeros((num_layers * D, N, H))
    contexts = {}
    layer_input = x
    for layer in range(num_layers):
        outputs = []
        for direction in range(D):
            k = _suffix(layer, direction)
            index = layer * D + direction
            y, h_last, c_last, ctx = _cell_forward(
                cell, nonlinearity, layer_input, h0[index], c0[index],
                params["weight_ih" + k], params["weight_hh" + k],
                params.get("bias_ih" + k), params.get("bias_hh" + k),
                lengths, reverse=(direction == 1), w_ph=params.get("weight_ph" + k),
                w_hr=params.get("weight_hr" + k), reset_after=reset_after)
            outputs.append(y)
            h_n[index] = h_last
            if c_last is not None:
                c_n[index] = c_last
            contexts[index] = ctx
        layer_input = np.concatenate(outputs, axis=2)  # [T, N, D*S]
    cache = {"cell": cell, "num_layers": num_layers, "D": D, "H": H, "S": S, "contexts": contexts,
             "has_bias": "bias_ih_l0" in params, "input_shape": x.shape}
    return layer_input, h_n, (c_n if cell == "lstm" else None), cache


def recurrent_backward(cache, dout, dh_n=None, dc_n=None):
    """BPTT through the stack. Returns (dx, dh0, dc0, grads); dc0 is None unless LSTM and grads
    is a dict keyed by the PyTorch parameter names (biases only when the forward had them)."""
    cell, L, D, H, S = (cache[k] for k in ("cell", "num_layers", "D", "H", "S"))
    T, N, _ = cache["input_shape"]
    dout = cells.grad_or_zeros(dout, (T, N, D * S), "dout")
    dh_n = cells.grad_or_zeros(dh_n, (L * D, N, S), "dh_n")
    dc_n = cells.grad_or_zeros(dc_n, (L * D, N, H), "dc_n")
    dh0 = np.zeros((L * D, N, S))
    dc0 = np.zeros((L * D, N, H))
    grads = {}
    d_layer_output = dout  # gradient w.r.t. the output of the layer being walked back
    for layer in reversed(range(L)):
        d_layer_input = 0.0
        for direction in range(D):
            k = _suffix(layer, direction)
            index = layer * D + direction
            dy = d_layer_output[:, :, direction * S:(direction + 1) * S]
            ctx = cache["contexts"][index]
            dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh, *more = _cell_backward(
                cell, ctx, dy, dh_n[index], dc_n[index])
            if ctx.get("w_hr") is not None:
                grads["weight_hr" + k] = more.pop()
            if ctx.get("w_ph") is not None:
                grads["weight_ph" + k] = more.pop()
            d_layer_input = d_layer_input + dx  # both directions read the same input
            dh0[index] = dh
            if dc is not None:
                dc0[index] = dc
            grads["weight_ih" + k] = dw_ih
            grads["weight_hh" + k] = dw_hh
            if cache["has_bias"]:
                grads["bias_ih" + k] = db_ih
                grads["bias_hh" + k] = db_hh
        d_layer_output = d_layer_input
    return d_layer_output, dh0, (dc0 if cell == "lstm" else None), grads
