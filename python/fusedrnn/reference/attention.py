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


def attention_scores(kind, query, keys, params):
    N, S, _ = keys.shape
    scores = np.empty((N, S))
    for n in range(N):
        for s in range(S):
            scores[n, s] = _score(kind, query[n], keys[n, s], params)
    return scores


def attention_forward(kind, query, keys, lengths, params):
    query = np.asarray(query, np.float64)
    keys = np.asarray(keys, np.float64)
    params = tuple(np.asarray(p, np.float64) for p in params)
    N, S, K = keys.shape
    lengths = np.full(N, S) if lengths is None else np.asarray(lengths)
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
    query = np.asarray(query, np.float64)
    keys = np.asarray(keys, np.float64)
    params = tuple(np.asarray(p, np.float64) for p in params)
    N, S, K = keys.shape
    lengths = np.full(N, S) if lengths is None else np.asarray(lengths)
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
