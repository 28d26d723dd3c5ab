"""NumPy float64 reference of attention, written one sample and one source position at a time
with no fusing: the oracle for ``fusedrnn.nn.attention`` (and for a C++ step kernel).

    query [N, Q]   keys (= values) [N, S, K]   lengths [N] or None
    additive: params = (weight_query [A, Q], weight_key [A, K], bias_key [A], v [A])
    dot:      params = ()                      general: params = (weight [Q, K],)

``attention_forward`` returns (context [N, K], weights [N, S]); ``attention_backward`` returns
(dquery, dkeys, dparams) for the loss ``sum(dcontext * context) + sum(dweights * weights)``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["attention_scores", "attention_forward", "attention_backward"]


def _score(kind, q, k, params):
    """The score of one query [Q] against one key [K]."""
    if kind == "additive":
        weight_query, weight_key, bias_key, v = params
        return float(v @ np.tanh(weight_query @ q + weight_key @ k + bias_key))
    if kind == "dot":
        return float(q @ k)
    (weight,) = params
    return float(q @ (weight @ k))


_PARAMS = {"additive": 4, "dot": 0, "general": 1}


def _checked(kind, query, keys, lengths, params):
    """(query, keys, lengths, params) as float64 (lengths int64), or ValueError naming what
    does not fit: the oracle answers only the question it is asked."""
    if kind not in _PARAMS:
        raise ValueError(f"kind: expected one of {list(_PARAMS)}, got {kind!r}")
    query, keys = np.asarray(query, np.float64), np.asarray(keys, np.float64)
    params = tuple(np.asarray(p, np.float64) for p in params)
    if len(params) != _PARAMS[kind]:
        raise ValueError(f"params: expected {_PARAMS[kind]} arrays for {kind!r}, got "
                         f"{len(params)}")
    if keys.ndim != 3 or query.ndim != 2 or query.shape[0] != keys.shape[0]:
        raise ValueError(f"query, keys: expected [N, Q] and [N, S, K], got {query.shape} and "
                         f"{keys.shape}")
    N, S, _ = keys.shape
    if lengths is None:
        return query, keys, np.full(N, S), params
    lengths = np.asarray(lengths)
    if lengths.shape != (N,) or lengths.dtype.kind not in "iu" or (
            N and (lengths.min() < 0 or lengths.max() > S)):
        raise ValueError(f"lengths: expected {N} integers in [0, {S}], got {lengths!r}")
    return query, keys, lengths.astype(np.int64), params


def attention_scores(kind, query, keys, params):
    N, S, _ = keys.shape
    scores = np.empty((N, S))
    for n in range(N):
        for s in range(S):
            scores[n, s] = _score(kind, query[n], keys[n, s], params)
    return scores


def attention_forward(kind, query, keys, lengths, params):
    query, keys, lengths, params = _checked(kind, query, keys, lengths, params)
    N, S, K = keys.shape
    scores = attention_scores(kind, query, keys, params)
    weights = np.zeros((N, S))
    context = np.zeros((N, K))
    for n in range(N):
        L = int(lengths[n])
        if L == 0:
            continue
        e = np.exp(scores[n, :L] - scores[n, :L].max())
        weights[n, :L] = e / e.sum()
        for s in range(L):
            context[n] += weights[n, s] * keys[n, s]
    return context, weights


def attention_backward(kind, query, keys, lengths, params, dcontext, dweights=None):
    query, keys, lengths, params = _checked(kind, query, keys, lengths, params)
    N, S, K = keys.shape
    _, weights = attention_forward(kind, query, keys, lengths, params)
    dquery = np.zeros_like(query)
    dkeys = np.zeros_like(keys)
    dparams = [np.zeros_like(p) for p in params]
    for n in range(N):
        L = int(lengths[n])
        # d loss / d weights, then through the softmax to d scores
        dw = np.array([dcontext[n] @ keys[n, s] for s in range(L)])
        if dweights is not None:
            dw = dw + dweights[n, :L]
        w = weights[n, :L]
        dscore = w * (dw - (w * dw).sum())
        for s in range(L):
            dkeys[n, s] += w[s] * dcontext[n]                 # keys as values
            q, k = query[n], keys[n, s]
            if kind == "additive":
                weight_query, weight_key, bias_key, v = params
                hidden = np.tanh(weight_query @ q + weight_key @ k + bias_key)
                dpre = dscore[s] * v * (1 - hidden ** 2)
                dquery[n] += weight_query.T @ dpre
                dkeys[n, s] += weight_key.T @ dpre
                dparams[0] += np.outer(dpre, q)
                dparams[1] += np.outer(dpre, k)
                dparams[2] += dpre
                dparams[3] += dscore[s] * hidden
            elif kind == "dot":
                dquery[n] += dscore[s] * k
                dkeys[n, s] += dscore[s] * q
            else:
                (weight,) = params
                dquery[n] += dscore[s] * (weight @ k)
                dkeys[n, s] += dscore[s] * (weight.T @ q)
                dparams[0] += dscore[s] * np.outer(q, k)
    return dquery, dkeys, tuple(dparams)
