"""NumPy float64 references for one layer, one direction of RNN, LSTM and GRU: the oracle.

Same signatures and return conventions as :mod:`fusedrnn.functional`, written to be read, not to be
fast: the forward walks the steps in processing order and caches each one; the backward walks the
same steps in the opposite order, carrying ``dh_next`` (and ``dc_next``) and accumulating ``dw +=``
(min-char-rnn style). Inputs of any float dtype are computed and returned in float64.

Shapes: T time, N batch, I input, H hidden, G gates (RNN 1, GRU 3, LSTM 4).

    x       [T, N, I]          h0, c0, h_n, c_n, dh_n, dc_n   [N, H]
    w_ih    [G*H, I]           w_hh  [G*H, H]       b_ih, b_hh  [G*H]   (PyTorch layout, gate order)
    y, dy   [T, N, H]          lengths  [N] integers in [0, T]

Variable lengths follow PyTorch's packed sequences: sample n runs only the steps t < lengths[n],
y[t, n] = 0 past its length and its state is left unchanged there, so the final state is the state
after its own last step, and in reverse it starts at t = lengths[n] - 1 from h0. dy at padded
positions contributes nothing. The context is always returned (a dict), whatever ``training`` says.
"""
from __future__ import annotations

import numpy as np

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


# ---------------------------------------------------------------------------- helpers
def sigmoid(a):
    """1 / (1 + e^-a), from e^-|a| (never overflows; 0.5 (1 + tanh(a/2)) lost the relative
    accuracy of very negative a, 0 below -37)."""
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1.0, e) / (1.0 + e)


def _f64(a, name="array"):
    """``a`` as float64; TypeError naming ``name`` for complex values (the cast drops their
    imaginary part)."""
    if a is None:
        return None
    a = np.asarray(a)
    if a.dtype.kind == "c":
        raise TypeError(f"{name}: expected real numbers, got dtype {a.dtype}")
    return a.astype(np.float64, copy=False)


def round_bf16(a):
    """a rounded to the nearest bfloat16 (ties to even; NaN stays NaN, inf inf), as float64:
    what the kernels' bfloat16 products read (precision="bfloat16")."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint32) << 16
    out = rounded.view(np.float32).astype(np.float64)
    return np.where(np.isnan(a), np.nan, out)


def _operands(v, w, precision):
    """(v, W) as a product reads them (x and W_ih, h and W_hh): themselves, or bfloat16-rounded."""
    if precision in (None, "float32"):
        return v, w
    if precision != "bfloat16":
        raise ValueError(f"precision: expected 'float32', 'bfloat16' or None, got {precision!r}")
    return round_bf16(v), round_bf16(w)


def _prepare(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, w_hr=None):
    """Cast to float64, fill defaults (zero states, zero biases, full lengths), check shapes.
    w_hr [P, H]: an LSTM's projection (h, h0 and w_hh's columns P wide)."""
    x, w_ih, w_hh = _f64(x, "x"), _f64(w_ih, "w_ih"), _f64(w_hh, "w_hh")
    if x.ndim != 3:
        raise ValueError(f"x: expected 3 dimensions [T, N, I], got shape {x.shape}")
    T, N, I = x.shape
    G = GATES[cell]
    if w_hr is not None:
        if np.ndim(w_hr) != 2:
            raise ValueError(f"w_hr: expected shape [P, H], got {np.shape(w_hr)}")
        P, H = np.shape(w_hr)
        if w_hh.shape != (G * H, P):
            raise ValueError(f"w_hh: expected shape {(G * H, P)}, got {w_hh.shape}")
    elif w_hh.ndim != 2 or w_hh.shape[0] != G * w_hh.shape[1]:
        raise ValueError(f"w_hh: expected shape ({G}*H, H), got {w_hh.shape}")
    else:
        H = P = w_hh.shape[1]
    if w_ih.shape != (G * H, I):
        raise ValueError(f"w_ih: expected shape {(G * H, I)}, got {w_ih.shape}")
    if (b_ih is None) != (b_hh is None):
        raise ValueError("b_ih, b_hh: give both biases or neither")
    has_bias = b_ih is not None
    b_ih = np.zeros(G * H) if b_ih is None else _f64(b_ih, "b_ih")
    b_hh = np.zeros(G * H) if b_hh is None else _f64(b_hh, "b_hh")
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b.shape != (G * H,):
            raise ValueError(f"{name}: expected shape {(G * H,)}, got {b.shape}")
    h0 = np.zeros((N, P)) if h0 is None else _f64(h0, "h0")
    c0 = np.zeros((N, H)) if c0 is None else _f64(c0, "c0")
    for name, s, width in (("h0", h0, P), ("c0", c0, H)):
        if s.shape != (N, width):
            raise ValueError(f"{name}: expected shape {(N, width)}, got {s.shape}")
    if lengths is None:
        lengths = np.full(N, T, dtype=np.int64)
    else:
        lengths = np.asarray(lengths)
        if lengths.shape != (N,) or lengths.dtype.kind not in "iu":
            raise ValueError(f"lengths: expected {N} integers, got {lengths.dtype} {lengths.shape}")
        if N and (lengths.min() < 0 or lengths.max() > T):
            raise ValueError(f"lengths: expected values in [0, {T}], got {lengths}")
        lengths = lengths.astype(np.int64)
    # padded steps are never read (as torch's packed sequences): 0 there, so that NaN or inf
    # left in the padding reaches no gradient through the steps' zero gradients (0 * NaN)
    x = np.where((np.arange(T)[:, None] >= lengths[None, :])[:, :, None], 0.0, x)
    return x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, has_bias


def _steps(T, reverse):
    """Time steps in processing order."""
    return list(range(T - 1, -1, -1)) if reverse else list(range(T))


def _new_ctx(cell, nonlinearity, reverse, x, w_ih, w_hh, lengths, has_bias, precision):
    return {"cell": cell, "nonlinearity": nonlinearity, "reverse": reverse, "x": x,
            "w_ih": w_ih, "w_hh": w_hh, "lengths": lengths, "has_bias": has_bias, "steps": {},
            "precision": precision}


def _grad_product(d, w, precision):
    """d W as the backward's products compute it: exact, or from bfloat16-rounded d and W
    (precision="bfloat16": every product of the backward, dgates W_hh, dgates W_ih and the
    weight gradients dgates^T x, dgates^T h_prev; the sums stay exact). The weight gradients
    take ctx["weight_grad_precision"] where a backward's ctx has it (default: the forward's
    precision): "float32" models the kernels' plans that sum them from float32 operands under
    bfloat16 products (``fusedrnn._C.plan(...)["backward"]["bfloat16_weight_grads"]`` False:
    short calls, and every call with AVX2 kernels)."""
    dr, wr = _operands(d, w, precision)
    return dr @ wr


def grad_or_zeros(d, shape, name):
    """A gradient given for an output of ``shape`` (zeros for None), as float64; ValueError
    naming it for another shape (a reshape took [N, T, H] for [T, N, H] silently)."""
    if d is None:
        return np.zeros(shape)
    d = _f64(d, name)
    if d.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {d.shape}")
    return d


# ---------------------------------------------------------------------------- LSTM
def _peepholes(w_ph, H):
    """(p_i, p_f, p_o) from w_ph [3H] (order i, f, o), or None: no peephole terms at all (not
    zero ones: 0 * c is NaN where c is infinite, and a cell without peepholes has no such
    term)."""
    if w_ph is None:
        return None
    w_ph = _f64(w_ph)
    if w_ph.shape != (3 * H,):
        raise ValueError(f"w_ph: expected shape {(3 * H,)}, got {w_ph.shape}")
    return w_ph[:H], w_ph[H:2 * H], w_ph[2 * H:]


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, *, lengths=None, reverse=False,
                 training=False, precision=None, w_ph=None, w_hr=None):
    """LSTM, gates i, f, g, o: c' = f*c + i*g, h' = o*tanh(c'). Returns (y, h_n, c_n, ctx).
    precision="bfloat16": the products W_ih x and W_hh h (and W_hr m) from bfloat16-rounded
    operands (the rest exact). w_ph [3H]: peepholes p_i, p_f, p_o (ONNX's P reordered):
    i = sigma(a_i + p_i*c), f = sigma(a_f + p_f*c), o = sigma(a_o + p_o*c'). w_hr [P, H]: a projection (torch's
    proj_size), h' = W_hr (o*tanh(c')), P wide (w_hh [4H, P])."""
    w_hr = _f64(w_hr)
    x, h, c, w_ih, w_hh, b_ih, b_hh, lengths, has_bias = _prepare(
        "lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, w_hr)
    T, N, _ = x.shape
    H = w_hh.shape[0] // 4
    peepholes = _peepholes(w_ph, H)
    y = np.zeros((T, N, h.shape[1]))
    ctx = _new_ctx("lstm", "tanh", reverse, x, w_ih, w_hh, lengths, has_bias,
                   precision)
    ctx["w_ph"] = peepholes
    ctx["w_hr"] = w_hr

    def peep(k, a, c):  # a gate's preactivation plus its peephole term, if any
        return a if peepholes is None else a + peepholes[k] * c

    xr, wir = _operands(x, w_ih, precision)
    for t in _steps(T, reverse):
        active = (t < lengths)[:, None]  # [N, 1]
        hr, wr = _operands(h, w_hh, precision)
        a = xr[t] @ wir.T + b_ih + hr @ wr.T + b_hh  # [N, 4H]
        i = sigmoid(peep(0, a[:, 0:H], c))
        f = sigmoid(peep(1, a[:, H:2 * H], c))
        g = np.tanh(a[:, 2 * H:3 * H])
        c_new = f * c + i * g
        o = sigmoid(peep(2, a[:, 3 * H:4 * H], c_new))
        m = o * np.tanh(c_new)  # the cell's output, projected where there is a projection
        if w_hr is None:
            h_new = m
        else:  # bfloat16: the projection's product from rounded operands too
            mr, wr_hr = _operands(m, w_hr, precision)
            h_new = mr @ wr_hr.T
        ctx["steps"][t] = dict(active=active, h_prev=h, c_prev=c, i=i, f=f, g=g, o=o, c=c_new,
                               m=m)
        h = np.where(active, h_new, h)
        c = np.where(active, c_new, c)
        y[t] = np.where(active, h_new, 0.0)
    return y, h, c, ctx


def lstm_backward(ctx, dy, dh_n=None, dc_n=None):
    """BPTT for :func:`lstm_forward`. Returns (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh), then
    dw_ph where the forward had peepholes and dw_hr where it had a projection."""
    x, w_ih, w_hh = ctx["x"], ctx["w_ih"], ctx["w_hh"]
    w_hr = ctx.get("w_hr")
    precision = ctx["precision"]
    wg_precision = ctx.get("weight_grad_precision", precision)  # see _grad_product
    T, N, _ = x.shape
    H, S = w_hh.shape[0] // 4, w_hh.shape[1]  # S: the width of h
    peepholes = ctx.get("w_ph")  # (p_i, p_f, p_o), or None: no peephole terms
    dw_ph = np.zeros(3 * H)
    dw_hr = None if w_hr is None else np.zeros_like(w_hr)
    dy = grad_or_zeros(dy, (T, N, S), "dy")
    dh_next = grad_or_zeros(dh_n, (N, S), "dh_n")
    dc_next = grad_or_zeros(dc_n, (N, H), "dc_n")
    dx = np.zeros_like(x)
    dw_ih, dw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    db = np.zeros(4 * H)
    for t in reversed(_steps(T, ctx["reverse"])):
        s = ctx["steps"][t]
        active = s["active"]
        dh = dh_next + np.where(active, dy[t], 0.0)
        if w_hr is not None:  # h = W_hr m: the gradient reaching m
            dw_hr += np.where(active, dh, 0.0).T @ s["m"]
            dh = dh @ w_hr
        tanh_c = np.tanh(s["c"])
        da_o = dh * tanh_c * s["o"] * (1.0 - s["o"])
        dc = dc_next + dh * s["o"] * (1.0 - tanh_c ** 2)
        if peepholes is not None:
            dc = dc + da_o * peepholes[2]  # o saw c' too
        da_i = dc * s["g"] * s["i"] * (1.0 - s["i"])
        da_f = dc * s["c_prev"] * s["f"] * (1.0 - s["f"])
        dc_prev = dc * s["f"]
        if peepholes is not None:
            dc_prev = dc_prev + da_i * peepholes[0] + da_f * peepholes[1]  # i and f saw c
        da = np.concatenate([da_i, da_f, dc * s["i"] * (1.0 - s["g"] ** 2), da_o], axis=1)
        da = np.where(active, da, 0.0)  # inactive samples: the step did not happen
        if peepholes is not None:
            dw_ph += np.concatenate([(da[:, :H] * s["c_prev"]).sum(axis=0),
                                     (da[:, H:2 * H] * s["c_prev"]).sum(axis=0),
                                     (da[:, 3 * H:] * s["c"]).sum(axis=0)])
        dx[t] = _grad_product(da, w_ih, precision)
        dw_ih += _grad_product(da.T, x[t], wg_precision)
        dw_hh += _grad_product(da.T, s["h_prev"], wg_precision)
        db += da.sum(axis=0)
        dh_next = np.where(active, _grad_product(da, w_hh, precision), dh_next)
        dc_next = np.where(active, dc_prev, dc_next)
    db_ih, db_hh = (db, db.copy()) if ctx["has_bias"] else (None, None)
    grads = (dx, dh_next, dc_next, dw_ih, dw_hh, db_ih, db_hh)
    grads += () if ctx.get("w_ph") is None else (dw_ph,)
    return grads + (() if w_hr is None else (dw_hr,))


# ---------------------------------------------------------------------------- GRU
def gru_forward(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, lengths=None, reverse=False,
                training=False, precision=None, reset_after=True):
    """GRU, gates r, z, n: n = tanh(W_in x + b_in + r*(W_hn h + b_hn)), h' = (1-z)*n + z*h.
    reset_after=False: the reset gate before the product, n = tanh(W_in x + b_in + W_hn (r*h) +
    b_hn) (Keras' reset_after=False, ONNX's linear_before_reset=0). Returns (y, h_n, ctx)."""
    x, h, _, w_ih, w_hh, b_ih, b_hh, lengths, has_bias = _prepare(
        "gru", x, h0, None, w_ih, w_hh, b_ih, b_hh, lengths)
    T, N, _ = x.shape
    H = w_hh.shape[1]
    y = np.zeros((T, N, H))
    ctx = _new_ctx("gru", "tanh", reverse, x, w_ih, w_hh, lengths, has_bias,
                   precision)
    ctx["reset_after"] = bool(reset_after)
    xr, wir = _operands(x, w_ih, precision)
    for t in _steps(T, reverse):
        active = (t < lengths)[:, None]
        gi = xr[t] @ wir.T + b_ih  # [N, 3H]
        hr, wr = _operands(h, w_hh, precision)
        gh = hr @ wr[:2 * H].T + b_hh[:2 * H]  # [N, 2H]: r and z
        r = sigmoid(gi[:, 0:H] + gh[:, 0:H])
        z = sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
        if reset_after:
            hn = hr @ wr[2 * H:].T + b_hh[2 * H:]  # W_hn h + b_hn, needed again by backward
            n = np.tanh(gi[:, 2 * H:3 * H] + r * hn)
            rh = None
        else:
            rh = r * h  # what the product reads (and backward, for dW_hn)
            rhr, wnr = _operands(rh, w_hh[2 * H:], precision)
            hn = None
            n = np.tanh(gi[:, 2 * H:3 * H] + rhr @ wnr.T + b_hh[2 * H:])
        h_new = (1.0 - z) * n + z * h
        ctx["steps"][t] = dict(active=active, h_prev=h, r=r, z=z, n=n, hn=hn, rh=rh)
        h = np.where(active, h_new, h)
        y[t] = np.where(active, h_new, 0.0)
    return y, h, ctx


def gru_backward(ctx, dy, dh_n=None):
    """BPTT for :func:`gru_forward`. Returns (dx, dh0, dw_ih, dw_hh, db_ih, db_hh)."""
    x, w_ih, w_hh = ctx["x"], ctx["w_ih"], ctx["w_hh"]
    precision = ctx["precision"]
    wg_precision = ctx.get("weight_grad_precision", precision)  # see _grad_product
    T, N, _ = x.shape
    H = w_hh.shape[1]
    dy = grad_or_zeros(dy, (T, N, H), "dy")
    dh_next = grad_or_zeros(dh_n, (N, H), "dh_n")
    dx = np.zeros_like(x)
    dw_ih, dw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    db_ih, db_hh = np.zeros(3 * H), np.zeros(3 * H)
    for t in reversed(_steps(T, ctx["reverse"])):
        s = ctx["steps"][t]
        active, r, z, n, hn, h_prev = s["active"], s["r"], s["z"], s["n"], s["hn"], s["h_prev"]
        dh = dh_next + np.where(active, dy[t], 0.0)
        dn = dh * (1.0 - z)
        dz = dh * (h_prev - n)
        dan = np.where(active, dn * (1.0 - n ** 2), 0.0)  # gradient of n's pre-activation
        if ctx.get("reset_after", True):
            dr = dan * hn
            dh_rh = 0.0
        else:  # n read W_hn (r*h): its gradient d(r*h) reaches r and h
            d_rh = _grad_product(dan, w_hh[2 * H:], precision)
            dr, dh_rh = d_rh * h_prev, d_rh * r
        dar = dr * r * (1.0 - r)
        daz = dz * z * (1.0 - z)
        dgi = np.where(active, np.concatenate([dar, daz, dan], axis=1), 0.0)  # [N, 3H]
        dx[t] = _grad_product(dgi, w_ih, precision)
        dw_ih += _grad_product(dgi.T, x[t], wg_precision)
        db_ih += dgi.sum(axis=0)
        if ctx.get("reset_after", True):
            dgh = np.where(active, np.concatenate([dar, daz, dan * r], axis=1), 0.0)  # [N, 3H]
            dw_hh += _grad_product(dgh.T, h_prev, wg_precision)
            db_hh += dgh.sum(axis=0)
            dh_rec = _grad_product(dgh, w_hh, precision)
        else:
            drz = dgi[:, :2 * H]
            dw_hh[:2 * H] += _grad_product(drz.T, h_prev, wg_precision)
            dw_hh[2 * H:] += _grad_product(dan.T, s["rh"], wg_precision)
            db_hh += dgi.sum(axis=0)
            dh_rec = _grad_product(drz, w_hh[:2 * H], precision) + dh_rh
        dh_next = np.where(active, dh * z + dh_rec, dh_next)
    if not ctx["has_bias"]:
        db_ih = db_hh = None
    return dx, dh_next, dw_ih, dw_hh, db_ih, db_hh


# ---------------------------------------------------------------------------- Elman RNN
def rnn_forward(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, nonlinearity="tanh", lengths=None,
                reverse=False, training=False, precision=None):
    """Elman RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh), act tanh or relu.
    Returns (y, h_n, ctx)."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
    x, h, _, w_ih, w_hh, b_ih, b_hh, lengths, has_bias = _prepare(
        "rnn", x, h0, None, w_ih, w_hh, b_ih, b_hh, lengths)
    T, N, _ = x.shape
    H = w_hh.shape[1]
    y = np.zeros((T, N, H))
    ctx = _new_ctx("rnn", nonlinearity, reverse, x, w_ih, w_hh, lengths, has_bias,
                   precision)
    xr, wir = _operands(x, w_ih, precision)
    for t in _steps(T, reverse):
        active = (t < lengths)[:, None]
        hr, wr = _operands(h, w_hh, precision)
        a = xr[t] @ wir.T + b_ih + hr @ wr.T + b_hh
        h_new = np.tanh(a) if nonlinearity == "tanh" else np.maximum(a, 0.0)  # propagates NaN
        ctx["steps"][t] = dict(active=active, h_prev=h, h=h_new)
        h = np.where(active, h_new, h)
        y[t] = np.where(active, h_new, 0.0)
    return y, h, ctx


def rnn_backward(ctx, dy, dh_n=None):
    """BPTT for :func:`rnn_forward`. Returns (dx, dh0, dw_ih, dw_hh, db_ih, db_hh)."""
    x, w_ih, w_hh = ctx["x"], ctx["w_ih"], ctx["w_hh"]
    precision = ctx["precision"]
    wg_precision = ctx.get("weight_grad_precision", precision)  # see _grad_product
    T, N, _ = x.shape
    H = w_hh.shape[1]
    dy = grad_or_zeros(dy, (T, N, H), "dy")
    dh_next = grad_or_zeros(dh_n, (N, H), "dh_n")
    dx = np.zeros_like(x)
    dw_ih, dw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    db = np.zeros(H)
    for t in reversed(_steps(T, ctx["reverse"])):
        s = ctx["steps"][t]
        active, h_new = s["active"], s["h"]
        dh = dh_next + np.where(active, dy[t], 0.0)
        if ctx["nonlinearity"] == "tanh":
            da = dh * (1.0 - h_new ** 2)
        else:
            # relu: dh where the output is > 0 (NaN too), else exactly 0 (a select, as torch's:
            da = np.where(h_new <= 0, 0.0, dh)  # an inf dh there would give inf * 0 = NaN)
        da = np.where(active, da, 0.0)
        dx[t] = _grad_product(da, w_ih, precision)
        dw_ih += _grad_product(da.T, x[t], wg_precision)
        dw_hh += _grad_product(da.T, s["h_prev"], wg_precision)
        db += da.sum(axis=0)
        dh_next = np.where(active, _grad_product(da, w_hh, precision), dh_next)
    db_ih, db_hh = (db, db.copy()) if ctx["has_bias"] else (None, None)
    return dx, dh_next, dw_ih, dw_hh, db_ih, db_hh


# ---------------------------------------------------------------------------- LayerNorm-LSTM
def _normalize(a, eps):
    """(a - mean) * rstd over the last axis, and rstd = 1 / sqrt(var + eps) [..., 1]."""
    mean = a.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((a - mean) ** 2).mean(axis=-1, keepdims=True) + eps)
    return (a - mean) * rstd, rstd


def _normalize_backward(d_hat, a_hat, rstd):
    """The gradient reaching a from the gradient reaching a_hat = (a - mean) * rstd."""
    return rstd * (d_hat - d_hat.mean(axis=-1, keepdims=True)
                   - a_hat * (d_hat * a_hat).mean(axis=-1, keepdims=True))


def layernorm_lstm_forward(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, ln=None, *, eps=1e-5,
                           lengths=None, reverse=False, training=False, precision=None):
    """LayerNorm-LSTM (haste's LayerNormLSTM, in PyTorch's gate order i, f, g, o): layer norm on
    the input and the recurrent pre-activations (over their 4H values) and on the cell state:
        a   = g_ih * LN(W_ih x) + b_ih + g_hh * LN(W_hh h) + b_hh
        c'  = f * c + i * g                 h' = o * tanh(g_c * LN(c') + b_c)
    LN(v) = (v - mean v) / sqrt(var v + eps); the biases come after the normalization (before it
    they would cancel). ln [10H]: g_ih [4H], g_hh [4H], g_c [H], b_c [H] (None: ones and zeros).
    c carries the un-normalized c'. precision="bfloat16": W_ih x and W_hh h from
    bfloat16-rounded operands (the norms exact). Returns (y, h_n, c_n, ctx)."""
    x, h, c, w_ih, w_hh, b_ih, b_hh, lengths, has_bias = _prepare(
        "lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths)
    T, N, _ = x.shape
    H = w_hh.shape[1]
    if not eps > 0:  # (0 or less: a constant row normalizes to 0/0 = NaN)
        raise ValueError(f"eps: expected a positive number, got {eps!r}")
    ln = np.concatenate([np.ones(9 * H), np.zeros(H)]) if ln is None else _f64(ln, "ln")
    if ln.shape != (10 * H,):
        raise ValueError(f"ln: expected shape {(10 * H,)}, got {ln.shape}")
    g_ih, g_hh, g_c, b_c = ln[:4 * H], ln[4 * H:8 * H], ln[8 * H:9 * H], ln[9 * H:]
    y = np.zeros((T, N, H))
    ctx = _new_ctx("layernorm_lstm", "tanh", reverse, x, w_ih, w_hh, lengths, has_bias, None)
    ctx.update(ln=ln, eps=eps)
    xr, wir = _operands(x, w_ih, precision)
    for t in _steps(T, reverse):
        active = (t < lengths)[:, None]
        hr, whr = _operands(h, w_hh, precision)
        x_hat, rx = _normalize(xr[t] @ wir.T, eps)
        h_hat, rh = _normalize(hr @ whr.T, eps)
        a = g_ih * x_hat + b_ih + g_hh * h_hat + b_hh
        i, f = sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H])
        g, o = np.tanh(a[:, 2 * H:3 * H]), sigmoid(a[:, 3 * H:])
        c_new = f * c + i * g
        c_hat, rc = _normalize(c_new, eps)
        tanh_cn = np.tanh(g_c * c_hat + b_c)
        h_new = o * tanh_cn
        ctx["steps"][t] = dict(active=active, h_prev=h, c_prev=c, i=i, f=f, g=g, o=o,
                               x_hat=x_hat, rx=rx, h_hat=h_hat, rh=rh, c_hat=c_hat, rc=rc,
                               tanh_cn=tanh_cn)
        h = np.where(active, h_new, h)
        c = np.where(active, c_new, c)
        y[t] = np.where(active, h_new, 0.0)
    return y, h, c, ctx


def layernorm_lstm_backward(ctx, dy, dh_n=None, dc_n=None):
    """BPTT for :func:`layernorm_lstm_forward`. Returns (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh,
    dln), dln [10H] in ln's order."""
    x, w_ih, w_hh, ln = ctx["x"], ctx["w_ih"], ctx["w_hh"], ctx["ln"]
    T, N, _ = x.shape
    H = w_hh.shape[1]
    g_ih, g_hh, g_c = ln[:4 * H], ln[4 * H:8 * H], ln[8 * H:9 * H]
    dy = grad_or_zeros(dy, (T, N, H), "dy")
    dh_next = grad_or_zeros(dh_n, (N, H), "dh_n")
    dc_next = grad_or_zeros(dc_n, (N, H), "dc_n")
    dx = np.zeros_like(x)
    dw_ih, dw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    db, dln = np.zeros(4 * H), np.zeros(10 * H)
    for t in reversed(_steps(T, ctx["reverse"])):
        s = ctx["steps"][t]
        active = s["active"]
        dh = dh_next + np.where(active, dy[t], 0.0)
        i, f, g, o = s["i"], s["f"], s["g"], s["o"]
        d_cn = np.where(active, dh * o * (1.0 - s["tanh_cn"] ** 2), 0.0)  # reaching g_c LN + b_c
        dc = dc_next + _normalize_backward(d_cn * g_c, s["c_hat"], s["rc"])
        da = np.concatenate([dc * g * i * (1.0 - i), dc * s["c_prev"] * f * (1.0 - f),
                             dc * i * (1.0 - g ** 2), dh * s["tanh_cn"] * o * (1.0 - o)], axis=1)
        da = np.where(active, da, 0.0)  # inactive samples: the step did not happen
        dax = _normalize_backward(da * g_ih, s["x_hat"], s["rx"])
        dah = _normalize_backward(da * g_hh, s["h_hat"], s["rh"])
        db += da.sum(axis=0)
        dln += np.concatenate([(da * s["x_hat"]).sum(axis=0), (da * s["h_hat"]).sum(axis=0),
                               (d_cn * s["c_hat"]).sum(axis=0), d_cn.sum(axis=0)])
        dx[t] = dax @ w_ih
        dw_ih += dax.T @ x[t]
        dw_hh += dah.T @ s["h_prev"]
        dh_next = np.where(active, dah @ w_hh, dh_next)
        dc_next = np.where(active, dc * f, dc_next)
    db_ih, db_hh = (db, db.copy()) if ctx["has_bias"] else (None, None)
    return dx, dh_next, dc_next, dw_ih, dw_hh, db_ih, db_hh, dln
