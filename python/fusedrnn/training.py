"""Training loops: truncated backpropagation through time and a small ``fit`` loop with a tqdm
progress bar, which checkpoints and resumes (``Checkpointer``).

Truncated BPTT (``TruncatedBPTT``) trains on a long sequence in chunks of ``k`` steps. The model
keeps its state across chunks (the final state of one chunk is the initial state of the next)
but each chunk's backward starts from a zero gradient at the chunk's end state and its gradient
with respect to the chunk's initial state is dropped: gradients stop at chunk boundaries. With
``k`` equal to the sequence length this is exactly full BPTT.

The model protocol (see ``fusedrnn.tasks.common.RecurrentLM``): ``model.forward(x, state)``
with x time-major ``[k, N, ...]`` returns ``(output [k, N, ...], new_state)``;
``model.backward(doutput)`` back-propagates the latest forward (adding into ``grad``) with no
gradient arriving at the final state.

Checkpoints (``fit(..., state=..., checkpoint=Checkpointer(path, every, resume))``, the
``--checkpoint``/``--resume`` of `fusedrnn train`) hold everything a run needs to go on as if it
had never stopped: parameters, optimizer and scheduler state, every Generator the steps draw
from (batch order, dropout masks, teacher forcing), what the loop carries from step to step, and
the position: epoch, the epoch's batches and how many of them are done. ``gather_state`` and
``restore_state`` are the one place that knows how to take and put back each kind of object.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import signal
import sys
import threading
import time

import numpy as np

from . import _atomic
from ._flags import check_flag
from .nn.cells import RNNCellBase
from .nn.module import Module
from .nn.layers import _int_in
from .optim import Optimizer, _nonnegative, clip_grad_norm_

__all__ = ["Checkpointer", "TrainingInterrupted", "TruncatedBPTT", "detach_state", "fit",
           "gather_state", "restore_state"]


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
    with respect to output (the losses of ``fusedrnn.nn`` do both). ``clip_norm``: the
    gradients' norm is clipped to it before each step (``clip_grad_norm_``; 0 zeroes them, as
    torch's max_norm=0), None: no clipping; it clips before each optimizer step, so it needs
    an optimizer. A bidirectional layer is refused: its reverse direction reads the steps after
    a chunk, which truncation cuts off."""

    def __init__(self, model, loss_fn, k, optimizer=None, clip_norm=None):
        self.model, self.loss_fn, self.k = model, loss_fn, _int_in(k, "k", 1)
        if optimizer is not None and not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected a fusedrnn.optim optimizer or None, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.clip_norm = None if clip_norm is None else _nonnegative(clip_norm, "clip_norm")
        if self.clip_norm is not None and optimizer is None:
            raise ValueError("clip_norm: clips the gradients before each optimizer step; give an "
                             "optimizer too (or clip the accumulated gradients yourself, "
                             "fusedrnn.optim.clip_grad_norm_)")
        if isinstance(model, RNNCellBase) and \
                type(model).forward.__module__ == RNNCellBase.__module__:  # (one step a call:
            # its forward returns h, chunks became batches; a subclass may run whole chunks)
            raise TypeError(f"model: a {type(model).__name__} takes one step a call; truncated "
                            f"BPTT runs a model over chunks of steps: wrap the cell in a Module "
                            f"with forward(x_chunk, state) -> (output, state) and "
                            f"backward(dout)")
        for name, m in getattr(model, "named_modules", lambda: ())():
            if getattr(m, "bidirectional", False):
                raise ValueError(f"model: {name or 'the model'} is bidirectional; truncated BPTT "
                                 f"cannot train it (its reverse direction reads the time steps "
                                 f"after each chunk, which truncation cuts off): use full BPTT")
            if getattr(m, "batch_first", False):  # (its chunks would be samples, not steps)
                raise ValueError(f"model: {name or 'the model'} is batch_first; truncated BPTT "
                                 f"cuts x [T, N, ...] along its first axis, time: use "
                                 f"batch_first=False and time-major arrays")
        if getattr(loss_fn, "reduction", "mean") not in ("mean", "sum"):
            raise ValueError(f"loss_fn: expected reduction 'mean' or 'sum' (one number a chunk), "
                             f"got {loss_fn.reduction!r}")

    def run(self, x, target, state=None):
        """Returns ``(loss, final state)``: the loss of the whole sequence, as ``loss_fn``
        reduces it: with reduction "sum" the chunks' sum, else their mean losses weighted by
        their time steps, or by their counted targets where ``loss_fn`` ignores some
        (``ignore_index``; with every target ignored, what ``loss_fn`` gives for that: 0 for
        ``CrossEntropyLoss``)."""
        for name, a in (("x", x), ("target", target)):
            if not hasattr(a, "shape"):
                raise TypeError(f"{name}: expected an array [T, ...], got {type(a).__name__}")
        T = x.shape[0]
        if T == 0:
            raise ValueError(f"x: expected at least one time step, got shape {x.shape}")
        if target.shape[0] != T:
            raise ValueError(f"target: expected {T} time steps like x, got shape {target.shape}")
        total = weight = 0.0
        for start in range(0, T, self.k):
            stop = min(start + self.k, T)
            if self.optimizer is not None:
                self.optimizer.zero_grad()
            output, new_state = self.model.forward(x[start:stop], state)
            loss = self.loss_fn(output, target[start:stop])
            self.model.backward(self.loss_fn.backward())
            if self.optimizer is not None:
                if self.clip_norm is not None:
                    clip_grad_norm_(self.model.parameters(), self.clip_norm)
                self.optimizer.step()
            chunk = _chunk_weight(self.loss_fn, target[start:stop])
            if chunk:  # (an all-ignored chunk's loss is 0 or NaN: not a mean of anything)
                total += float(loss) * chunk
                weight += chunk
            state = detach_state(new_state)
        if getattr(self.loss_fn, "reduction", "mean") == "sum":
            return total, state
        # every target ignored: the loss's own answer for a mean of nothing (CrossEntropyLoss's
        # 0) rather than 0/0
        return (total / weight if weight else float(loss)), state


def _chunk_weight(loss_fn, target):
    """How much a chunk's mean loss weighs in TruncatedBPTT.run's mean: its targets that count
    where ``loss_fn`` ignores some (``ignore_index``), else its time steps."""
    if getattr(loss_fn, "reduction", "mean") == "sum":
        return 1  # (a sum over the sequence is the chunks' sum)
    ignore = getattr(loss_fn, "ignore_index", None)
    if ignore is None or not np.issubdtype(np.asarray(target).dtype, np.integer):
        return target.shape[0]
    return int(np.count_nonzero(np.asarray(target) != ignore))


def _epoch_loss(losses, batches):
    """The epoch's loss: its batches' losses weighted by their sizes where the batches are
    index arrays (``fusedrnn.data.batches``'s: a short last batch counts for its samples, as
    Keras' History counts it), else their plain mean; NaN for no batch."""
    if not losses:
        return float("nan")
    sizes = [len(b) if isinstance(b, np.ndarray) and b.ndim == 1 else None
             for b in batches[:len(losses)]]
    if None in sizes or not sum(sizes):
        return float(np.mean(losses))
    counted = [(loss, n) for loss, n in zip(losses, sizes) if n]  # (an empty batch's NaN: none)
    return float(sum(loss * n for loss, n in counted) / sum(sizes))


def fit(train_step, make_batches, epochs, evaluate=None, scheduler=None, progress=True,
        desc="train", state=None, checkpoint=None):
    """A plain epoch loop. ``make_batches(epoch)`` returns a list of batches,
    ``train_step(batch)`` trains on one and returns its loss, ``evaluate(epoch)`` (optional)
    returns a dict of metrics, ``scheduler.step()`` runs after each epoch. A tqdm bar shows the
    batches and the running loss. Returns one dict per epoch: epoch, loss (the batches' losses
    weighted by their sizes where they are index arrays, as ``fusedrnn.data.batches`` makes;
    else their mean), seconds, metrics.

    With ``checkpoint`` (a :class:`Checkpointer`) the run survives interruption: ``state``
    names every object whose state the steps change (``{"model": model, "optimizer": opt,
    "rng": rng, ...}``: modules, optimizers, Generators, dicts the loop carries; the scheduler
    is added) and is written, with the loop's position and the current epoch's batches, every
    ``checkpoint.every`` steps, at the end, and on Ctrl-C; a checkpoint being resumed puts it
    all back first, so the run goes on bit for bit. The first Ctrl-C lets the step under way
    finish (its state is then whole), a second one stops at once; either way ``fit`` raises
    :class:`TrainingInterrupted`."""
    for name, fn in (("train_step", train_step), ("make_batches", make_batches),
                     ("evaluate", evaluate)):  # (named before any work is done)
        if not callable(fn) and not (name == "evaluate" and fn is None):
            raise TypeError(f"{name}: expected a callable, got {type(fn).__name__}")
    if scheduler is not None and not callable(getattr(scheduler, "step", None)):
        raise TypeError(f"scheduler: expected an object with a step() method (an LR scheduler) "
                        f"or None, got {type(scheduler).__name__}")
    epochs = _int_in(epochs, "epochs", 0)
    tqdm = _tqdm() if check_flag(progress, "progress") else None  # (before a restore)
    objects = dict(state or {})
    if scheduler is not None:
        objects.setdefault("scheduler", scheduler)
    if checkpoint is not None and checkpoint.path is not None:
        _check_storable(gather_state(objects), "state")  # (not at the first write, steps later)
    pos = (checkpoint.restore(desc, objects) if checkpoint is not None else None) or _Position()
    start = time.perf_counter() - pos.seconds

    def where():
        if pos.batches is None:
            return f"{desc}: after epoch {pos.epoch - 1}/{epochs}"
        return (f"{desc}: epoch {pos.epoch}/{epochs}, after batch "
                f"{pos.next_batch}/{len(pos.batches)}")

    def at_boundary(periodic):
        """Between steps the state is whole: write it when due or asked to stop."""
        if checkpoint is None:
            return
        if periodic or stop_requested():
            pos.seconds = time.perf_counter() - start
            checkpoint.save(desc, objects, pos, where())
        if stop_requested():
            raise checkpoint.stopped(where())

    with _stop_between_steps(checkpoint is not None and checkpoint.path is not None) \
            as stop_requested:
        try:
            while pos.epoch <= epochs:
                if pos.batches is None:
                    pos.batches = list(make_batches(pos.epoch))
                    pos.next_batch, pos.losses = 0, []
                    if checkpoint is not None and checkpoint.path is not None:
                        _check_storable(pos.batches)
                bar = tqdm(total=len(pos.batches), initial=pos.next_batch, leave=False,
                           desc=f"{desc} {pos.epoch}/{epochs}", unit="batch",
                           dynamic_ncols=True) if tqdm else None
                try:
                    while pos.next_batch < len(pos.batches):
                        pos.losses.append(float(train_step(pos.batches[pos.next_batch])))
                        pos.next_batch += 1
                        pos.step += 1
                        if bar is not None:
                            bar.update()
                            if len(pos.losses) % 10 == 0:
                                bar.set_postfix(loss=f"{np.mean(pos.losses[-10:]):.4f}")
                        at_boundary(checkpoint is not None and pos.step % checkpoint.every == 0)
                finally:
                    if bar is not None:
                        bar.close()
                record = {"epoch": pos.epoch, "loss": _epoch_loss(pos.losses, pos.batches)}
                if evaluate is not None:
                    record.update(_metrics(evaluate(pos.epoch)))
                if scheduler is not None:
                    scheduler.step()
                record["seconds"] = time.perf_counter() - start
                pos.history.append(record)
                pos.epoch, pos.batches, pos.next_batch, pos.losses = pos.epoch + 1, None, 0, []
                if tqdm:
                    shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items()
                                      if k != "epoch" and isinstance(v, float))
                    tqdm.write(f"{desc} epoch {record['epoch']}/{epochs}: {shown}",
                               file=sys.stderr)
                at_boundary(False)
            if checkpoint is not None:
                pos.seconds = time.perf_counter() - start
                checkpoint.finish(desc, objects, pos, where())
        except TrainingInterrupted:
            raise
        except KeyboardInterrupt:  # mid-step: this state is not whole, the last file's is
            if checkpoint is None:
                raise
            raise checkpoint.stopped(where(), mid_step=True) from None
        if stop_requested():  # Ctrl-C while the finished run was written: stop as asked
            raise checkpoint.stopped(where())
    return pos.history


def _metrics(metrics):
    """``evaluate``'s result: a dict of metrics under names of their own (one named "loss"
    would replace the training loss in the history)."""
    if not isinstance(metrics, dict):
        raise TypeError(f"evaluate: expected it to return a dict of metrics, got "
                        f"{type(metrics).__name__}")
    taken = sorted({"epoch", "loss", "seconds"} & set(metrics))
    if taken:
        raise ValueError(f"evaluate: returned the metric {taken[0]!r}, a name the history gives "
                         f"the epoch's own value; name it otherwise (e.g. 'val_{taken[0]}')")
    return metrics


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but a missing bar must not stop training
        return None
    return tqdm


# ---------------------------------------------------------------------------- checkpoints
CHECKPOINT_FORMAT = "fusedrnn.training-checkpoint/1"
DEFAULT_CHECKPOINT_EVERY = 100  # steps (batches) between checkpoints


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`fit`. The message says where; ``checkpoint`` is the file that
    ``--resume`` continues from (None when no file holds the run)."""

    def __init__(self, message, checkpoint=None):
        super().__init__(message)
        self.checkpoint = checkpoint


def _check_storable(value, what="batches"):
    """Checkpoints hold the epoch's batches (the order they run in) and the state of the
    objects ``state`` names: refuse, before training, what ``fr.save`` cannot store (a slice,
    a set, an object) rather than fail at the first write, steps later or on Ctrl-C."""
    from . import io
    try:
        io._encode(value, {}, what)
    except (TypeError, ValueError) as error:
        if what == "batches":
            raise TypeError(f"make_batches: with a checkpoint, each epoch's batches are saved in "
                            f"it, so they must be arrays, numbers, strings or lists/tuples/dicts "
                            f"of them (e.g. index arrays); {error}") from None
        raise TypeError(f"state: with a checkpoint, the state of the objects it names is saved "
                        f"in it, so a dict it names must hold arrays, numbers, strings or "
                        f"lists/tuples/dicts of them; {error}") from None


@contextlib.contextmanager
def _stop_between_steps(enabled):
    """Yields ``stop_requested()``. While enabled (in the main thread), Ctrl-C only asks to
    stop, so that the step under way finishes and the checkpoint holds a whole state; a second
    Ctrl-C raises KeyboardInterrupt at once."""
    previous = signal.getsignal(signal.SIGINT)
    if not enabled or previous in (None, signal.SIG_IGN) \
            or threading.current_thread() is not threading.main_thread():  # (ignored: stays so)
        yield lambda: False
        return
    requested = []

    def ask_to_stop(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)
        os.write(2, b"\nfusedrnn: stopping after this step to write the checkpoint "
                    b"(Ctrl-C again: stop at once)\n")  # os.write: safe inside a handler

    signal.signal(signal.SIGINT, ask_to_stop)
    try:
        yield lambda: bool(requested)
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclasses.dataclass
class _Position:
    """Where a fit stands: the epoch under way (1-based), its batches (None until made), the
    index of the next one, the epoch's losses so far, the finished epochs' records, the steps
    taken and the seconds trained."""
    epoch: int = 1
    batches: list | None = None
    next_batch: int = 0
    losses: list = dataclasses.field(default_factory=list)
    history: list = dataclasses.field(default_factory=list)
    step: int = 0
    seconds: float = 0.0

    @classmethod
    def from_saved(cls, saved):
        batches = None if saved["batches"] is None else list(saved["batches"])
        pos = cls(epoch=int(saved["epoch"]), batches=batches,
                  next_batch=int(saved["next_batch"]),
                  losses=[float(v) for v in saved["losses"]],
                  history=[dict(h) for h in saved["history"]], step=int(saved["step"]),
                  seconds=float(saved["seconds"]))
        if pos.epoch < 1 or not 0 <= pos.next_batch <= len(batches or ()):
            raise ValueError(f"position: epoch {pos.epoch}, batch {pos.next_batch} of "
                             f"{len(batches or ())}")
        return pos


def _generators_of(module):
    """(name, Generator) for every NumPy Generator a module tree draws from (dropout masks)."""
    for prefix, m in module.named_modules():
        for attr, value in vars(m).items():
            if isinstance(value, np.random.Generator):
                yield (f"{prefix}.{attr}" if prefix else attr), value


def gather_state(objects):
    """The state of ``objects`` ({name: object}) as a tree ``fr.save`` writes, copied: a
    Module's parameters and the Generators it draws from, an optimizer's, a scheduler's or any
    ``state_dict()``, a Generator's bit-generator state, a dict's values (what a loop carries
    from step to step, such as a recurrent state)."""
    out = {}
    for name, obj in objects.items():
        if isinstance(obj, np.random.Generator):
            out[name] = {"generator": obj.bit_generator.state}
        elif isinstance(obj, Module):
            out[name] = {"parameters": obj.state_dict(),
                         "generators": {k: g.bit_generator.state for k, g in _generators_of(obj)}}
        elif hasattr(obj, "state_dict"):
            out[name] = {"state_dict": obj.state_dict()}
        elif isinstance(obj, dict):
            out[name] = {"values": copy.deepcopy(dict(obj))}
        else:
            raise TypeError(f"state[{name!r}]: cannot checkpoint a {type(obj).__name__} (expected "
                            f"a Module, an optimizer, a scheduler, a Generator or a dict)")
    return out


def restore_state(objects, saved):
    """Put back what :func:`gather_state` took from objects of the same kinds and shapes: all
    of them or, where one does not fit, none (those put back already are restored)."""
    if set(saved) != set(objects):
        raise ValueError(f"holds the state of {sorted(saved)}, this run trains {sorted(objects)}")
    before = gather_state(objects)
    try:
        _put_state(objects, saved)
    except BaseException:
        _put_state(objects, before)
        raise


def _put_state(objects, saved):
    for name, obj in objects.items():
        entry = saved[name]
        if isinstance(obj, np.random.Generator):
            obj.bit_generator.state = entry["generator"]
        elif isinstance(obj, Module):
            generators = dict(_generators_of(obj))
            if not set(entry["generators"]) <= set(generators):  # (a newer model may draw from
                raise ValueError(f"{name}: Generators {sorted(entry['generators'])}, this model "
                                 f"has {sorted(generators)}")  # more: those keep their seeds)
            obj.load_state_dict(entry["parameters"])
            for key, state in entry["generators"].items():
                generators[key].bit_generator.state = state
        elif hasattr(obj, "state_dict"):
            obj.load_state_dict(entry["state_dict"])
        else:
            obj.clear()
            obj.update(entry["values"])


class Checkpointer:
    """Where :func:`fit` writes the training state, how often, and what it resumes from: the
    ``--checkpoint PATH``, ``--checkpoint-every N`` and ``--resume PATH`` of `fusedrnn train`.

    ``run`` describes the run (``{"command": ..., "options": {...}}``: what changes training);
    a file being resumed must describe the same run. One Checkpointer serves every ``fit`` of a
    run (`train adding` trains one model per cell): each fit is a stage named by its ``desc``,
    and a finished stage's final state stays in every later file, so a resumed run skips it.
    Files are written with ``fr.save``: atomically, the previous file intact until the new one
    is whole."""

    def __init__(self, path=None, every=None, resume=None, run=None, ignore=()):
        if every is not None and path is None:
            raise ValueError(f"--checkpoint-every {every}: needs --checkpoint PATH (where to "
                             f"write)")
        self.path = None if path is None else os.fspath(path)
        if self.path is not None:  # before the training it keeps, not at its first write
            _atomic.check_writable(self.path)
        self.every = DEFAULT_CHECKPOINT_EVERY if every is None else _int_in(every, "every", 1)
        self.run = {"command": None, "options": {}, **(run or {})}
        # options a resumed file may record although they change no training (an earlier
        # version recorded them): not compared
        self.ignore = frozenset(ignore)
        self.resume_path = None if resume is None else os.fspath(resume)
        self.finished = {}  # stage -> its final state, kept in every later file
        self.resumed = {} if resume is None else self._read(self.resume_path)
        self.written = None  # what the file at ``path`` holds, for the message after a stop
        if self.resumed and self.path is not None and os.path.exists(self.path) \
                and os.path.samefile(self.path, self.resume_path):
            self.written = "the state it was resumed from"

    def _read(self, path):
        from . import io
        saved = io.load(path)
        if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: not a training checkpoint (`--checkpoint PATH` writes one; "
                             f"a model saved with --save holds no training state)")
        try:
            command, theirs = saved["run"]["command"], dict(saved["run"]["options"])
            stages = dict(saved["stages"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: a damaged training checkpoint (no run or stages in "
                             f"it)") from None
        if command != self.run["command"]:
            raise ValueError(f"{path}: a checkpoint of `fusedrnn {command}`, not of "
                             f"`fusedrnn {self.run['command']}`")
        ours = self.run["options"]
        theirs = {k: v for k, v in theirs.items() if k not in self.ignore}
        differ = [k for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
        if differ:
            raise ValueError(f"{path}: written by a run with {_options(theirs, differ)}; this run "
                             f"has {_options(ours, differ)} (resume with the options the "
                             f"checkpoint was written with)")
        return stages

    def restore(self, stage, objects):
        """Put ``objects`` back as the resumed file holds them for ``stage``; returns the
        position to go on from, or None when the file holds no such stage."""
        if stage in self.finished:  # a resumed run would give this fit the other one's state
            raise ValueError(f"desc: the stage {stage!r} already ran under this Checkpointer; "
                             f"give each fit of a run its own desc (a resumed run finds each "
                             f"stage by it)")
        saved = self.resumed.get(stage)
        if saved is None:
            return None
        try:  # the position first: a refused one changes no object (restore_state rolls back)
            position = _Position.from_saved(saved)
            restore_state(objects, saved["objects"])
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as e:
            raise ValueError(f"{self.resume_path}: a damaged checkpoint, or one that does not fit "
                             f"this run ({stage}: {type(e).__name__}: {e})") from e
        del self.resumed[stage]  # (only now: a refused resume may be retried, fixed)
        return position

    def _entry(self, objects, pos):
        return {**dataclasses.asdict(pos), "objects": gather_state(objects)}

    def _write(self, stages, where):
        if self.path is None:
            return
        from . import io
        stages = {**self.resumed, **stages}  # (stages resumed from but not reached: kept)
        io.save({"format": CHECKPOINT_FORMAT, "run": self.run, "stages": stages}, self.path)
        self.written = f"the state at {where}"

    def save(self, stage, objects, pos, where):
        """Write the finished stages and ``stage`` at ``pos``."""
        if self.path is not None:
            self._write({**self.finished, stage: self._entry(objects, pos)}, where)

    def finish(self, stage, objects, pos, where):
        """``stage`` is done: keep its final state for every later file, and write it."""
        self.finished[stage] = self._entry(objects, pos)
        self._write(dict(self.finished), where)

    def stopped(self, where, mid_step=False):
        """The TrainingInterrupted that says where training stopped and what resumes it."""
        if self.path is None:
            return TrainingInterrupted(
                f"interrupted ({where}); no checkpoint was written: run with --checkpoint PATH to "
                f"write one every {self.every} steps (--checkpoint-every N) and on Ctrl-C, then "
                f"--resume PATH to continue from it")
        if mid_step and self.written is None:
            return TrainingInterrupted(f"interrupted mid-step ({where}) before the first "
                                       f"checkpoint was written: nothing to resume from")
        if mid_step:
            return TrainingInterrupted(f"interrupted mid-step ({where}); {self.path} holds "
                                       f"{self.written}", checkpoint=self.path)
        return TrainingInterrupted(f"interrupted ({where}); checkpoint written to {self.path}",
                                   checkpoint=self.path)


def _options(options, keys):
    """``--hidden 32, --lr 0.01``: the command-line spelling of some options' values."""
    return ", ".join(f"--{k.replace('_', '-')} {options.get(k, '(not given)')}" for k in keys)
