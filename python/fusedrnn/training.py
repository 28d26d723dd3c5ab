"""Training loops: truncated backpropagation through time and a small ``fit`` loop with a tqdm
progress bar.

Truncated BPTT (``TruncatedBPTT``) trains on a long sequence in chunks of ``k`` steps. The model
keeps its state across chunks (the final state of one chunk is the initial state of the next)
but each chunk's backward starts from a zero gradient at the chunk's end state and its gradient
with respect to the chunk's initial state is dropped: gradients stop at chunk boundaries. With
``k`` equal to the sequence length this is exactly full BPTT.

The model protocol (see ``fusedrnn.tasks.common.RecurrentLM``): ``model.forward(x, state)``
with x time-major ``[k, N, ...]`` returns ``(output [k, N, ...], new_state)``;
``model.backward(doutput)`` back-propagates the latest forward (adding into ``grad``) with no
gradient arriving at the final state.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from .optim import clip_grad_norm_

__all__ = ["TruncatedBPTT", "detach_state", "fit"]


def detach_state(state):
    """A copy of a recurrent state (an array or a tuple of arrays). NumPy arrays carry no graph,
    so this only guards against later in-place edits; the gradient stop is that backward never
    sends a gradient into a chunk's initial state."""
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(s) for s in state)
    return np.array(state, copy=True)


class TruncatedBPTT:
    """Stateful chunked training: ``run(x, target, state)`` walks x [T, N, ...] in chunks of
    ``k`` time steps. For each chunk: forward from the carried state, loss, backward,
    (optionally) clip and take an optimizer step, then carry the final state forward with its
    gradient stopped. Without an optimizer the chunks' gradients accumulate in ``grad``.

    ``loss_fn(output, target)`` returns the chunk's loss and ``loss_fn.backward()`` its gradient
    with respect to output (the losses of ``fusedrnn.nn`` do both)."""

    def __init__(self, model, loss_fn, k, optimizer=None, clip_norm=None):
        if int(k) < 1:
            raise ValueError(f"k: expected a positive number of time steps, got {k}")
        self.model, self.loss_fn, self.k = model, loss_fn, int(k)
        self.optimizer, self.clip_norm = optimizer, clip_norm

    def run(self, x, target, state=None):
        """Returns ``(mean loss over chunks weighted by chunk length, final state)``."""
        T = x.shape[0]
        if target.shape[0] != T:
            raise ValueError(f"target: expected {T} time steps like x, got shape {target.shape}")
        total = 0.0
        for start in range(0, T, self.k):
            stop = min(start + self.k, T)
            if self.optimizer is not None:
                self.optimizer.zero_grad()
            output, new_state = self.model.forward(x[start:stop], state)
            loss = self.loss_fn(output, target[start:stop])
            self.model.backward(self.loss_fn.backward())
            if self.optimizer is not None:
                if self.clip_norm:
                    clip_grad_norm_(self.model.parameters(), self.clip_norm)
                self.optimizer.step()
            total += float(loss) * (stop - start)
            state = detach_state(new_state)
        return total / T, state


def fit(train_step, make_batches, epochs, evaluate=None, scheduler=None, progress=True,
        desc="train"):
    """A plain epoch loop. ``make_batches(epoch)`` returns a list of batches,
    ``train_step(batch)`` trains on one and returns its loss, ``evaluate(epoch)`` (optional)
    returns a dict of metrics, ``scheduler.step()`` runs after each epoch. A tqdm bar shows the
    batches and the running loss. Returns one dict per epoch: epoch, loss, seconds, metrics."""
    history = []
    tqdm = None
    if progress:
        try:
            from tqdm import tqdm
        except ImportError:  # tqdm is a dependency, but a missing bar must not stop training
            tqdm = None
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        batch_list = list(make_batches(epoch))
        bar = tqdm(batch_list, desc=f"{desc} {epoch}/{epochs}", leave=False, unit="batch",
                   dynamic_ncols=True) if tqdm else batch_list
        losses = []
        for batch in bar:
            losses.append(float(train_step(batch)))
            if tqdm and len(losses) % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}")
        if tqdm:
            bar.close()
        record = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan")}
        if evaluate is not None:
            record.update(evaluate(epoch))
        if scheduler is not None:
            scheduler.step()
        record["seconds"] = time.perf_counter() - start
        history.append(record)
        if tqdm:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items()
                              if k != "epoch" and isinstance(v, float))
            tqdm.write(f"{desc} epoch {epoch}/{epochs}: {shown}", file=sys.stderr)
    return history
