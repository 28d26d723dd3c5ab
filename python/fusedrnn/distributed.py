"""Data-parallel training of ``fusedrnn.nn`` models across processes and machines, on
``torch.distributed`` (PyTorch is imported on first use: ``pip install "fusedrnn[torch]"``).

Every process (rank) holds a full copy of the model and runs forward and backward on its own
part of the batch; before each optimizer step, :func:`all_reduce_gradients` averages the
gradients over the ranks, so every rank takes the same step and the copies stay identical.
With losses that average over their batch (``fr.nn.CrossEntropyLoss``, ``fr.nn.MSELoss``) and
parts of equal size, the averaged gradient is the gradient of the whole batch: N ranks on
N parts train as one process on the whole batch would (up to rounding).

Launch one process per rank with ``torchrun``, which sets ``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT`` for ``torch.distributed.init_process_group``::

    torchrun --standalone --nproc_per_node=2 train.py                      # one machine
    torchrun --nnodes=2 --nproc_per_node=2 --rdzv_backend=c10d \\
             --rdzv_endpoint=HOST:29500 train.py                           # on each machine

A training script (``train.py``)::

    import numpy as np, torch.distributed as dist
    import fusedrnn as fr, fusedrnn.distributed as frd

    dist.init_process_group("gloo")          # CPU processes: the gloo backend
    fr.set_num_threads(1)                    # or cores per machine / processes per machine
    lstm, head = fr.nn.LSTM(8, 64), fr.nn.Linear(64, 10)
    params = list(lstm.parameters()) + list(head.parameters())
    frd.broadcast_parameters(params)         # every rank starts from rank 0's weights
    opt, loss_fn = fr.optim.SGD(params, lr=0.1), fr.nn.CrossEntropyLoss()
    for x, y in batches:                     # x [T, N, 8], y [N]: the same batches on every rank
        x, y = frd.shard(x, axis=1), frd.shard(y)          # this rank's part of the batch
        out, (h_n, c_n) = lstm(x)
        loss = loss_fn(head(h_n[-1]), y)
        dh = head.backward(loss_fn.backward())
        lstm.backward(np.zeros_like(out), (dh[None], None))
        frd.all_reduce_gradients(params)     # the average over the ranks, in place
        opt.step(); opt.zero_grad()
    dist.destroy_process_group()

The collectives share memory with the arrays, no conversions: by default the gradients are
packed into one flat buffer per dtype (a torch tensor and its ``.numpy()`` view), reduced with
one ``all_reduce`` each and copied back into the ``.grad`` arrays; ``coalesce=False`` reduces
each ``.grad`` in place through ``torch.from_numpy``. Models on the CUDA backend (``.to("cuda")``:
CuPy parameters) work the same way on CUDA tensors — the flat buffers are torch CUDA tensors
seen by CuPy through DLPack — with ``init_process_group("nccl")`` (or gloo, which also reduces
CUDA tensors); the packing runs on CuPy's current stream and is finished before the collective,
which is finished before the unpacking. A model's parameters must all be on one device. Every
rank must pass the same parameters in the same order: their number, shapes and dtypes are
checked (a mismatch raises ``ValueError`` on every rank, instead of a hang), but two of one
shape and dtype in another order cannot be told apart (build the list from a module, or a
list, never a set). Frozen parameters (``requires_grad`` False) are left out, as DDP leaves
them: their ``.grad`` is not touched, on any rank.
"""
from __future__ import annotations

import hashlib
import numbers
from typing import List, Optional

import numpy as np

from ._flags import check_flag
from .nn.layers import _int_in
from .nn.module import Module, Parameter, is_device_array

__all__ = ["broadcast_parameters", "all_reduce_gradients", "shard", "get_rank", "get_world_size"]

_INSTALL = 'pip install "fusedrnn[torch]"'


def _torch():
    """(torch, torch.distributed), or ImportError naming the install command."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError as e:
        raise ImportError(f"fusedrnn.distributed runs on torch.distributed, and PyTorch is not "
                          f"installed: {_INSTALL}") from e
    if not dist.is_available():
        raise ImportError("fusedrnn.distributed: this PyTorch build has no torch.distributed "
                          f"(install a build that has it: {_INSTALL})")
    return torch, dist


def _initialized_dist():
    torch, dist = _torch()
    if not dist.is_initialized():
        raise RuntimeError("fusedrnn.distributed: torch.distributed is not initialized; call "
                           "torch.distributed.init_process_group('gloo') first (torchrun sets "
                           "the environment it reads)")
    return torch, dist


def _param_list(module_or_params, name="module_or_params") -> List[Parameter]:
    """A list of Parameters from a Module, a Parameter, or an iterable of either (each once,
    in order), all on one device."""
    if isinstance(module_or_params, (Module, Parameter)):
        items = [module_or_params]
    else:
        try:
            items = list(module_or_params)
        except TypeError:
            raise TypeError(f"{name}: expected a fusedrnn.nn.Module, a Parameter or an iterable "
                            f"of them, got {type(module_or_params).__name__}") from None
    params, seen = [], set()
    for i, item in enumerate(items):
        for p in (item.parameters() if isinstance(item, Module) else [item]):
            if not isinstance(p, Parameter):
                raise TypeError(f"{name}[{i}]: expected a fusedrnn.nn.Module or Parameter, got "
                                f"{type(p).__name__}")
            if params and p.device != params[0].device:
                raise TypeError(f"{name}[{i}]: expected every parameter on one device, got "
                                f"{params[0].device!r} and {p.device!r} (move the model with "
                                f".to(device))")
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


class _Space:
    """Where the parameters live: the array module, the torch device of the flat buffers and
    the device of the small control tensors (CUDA for NCCL, which reduces nothing else)."""

    def __init__(self, torch, dist, params, group):
        self.torch = torch
        self.cuda = bool(params) and params[0].device == "cuda"
        if self.cuda:
            from . import cuda
            self.xp = cuda.array_module()
            self.device = torch.device("cuda", self.xp.cuda.Device().id)
        else:
            self.xp, self.device = np, torch.device("cpu")
        nccl = dist.get_backend(group) == "nccl"
        self.control = (torch.device("cuda", torch.cuda.current_device()) if nccl
                        else torch.device("cpu"))

    def flat(self, dtype, n):
        """A flat buffer of n elements: (a torch tensor, the array module's view of its
        memory). Owned by torch, so that the backend's threads may free it without the GIL."""
        torch_dtype = self.torch.from_numpy(np.empty(0, dtype)).dtype
        t = self.torch.empty(n, dtype=torch_dtype, device=self.device)
        if not self.cuda:
            return t, t.numpy()
        # (the block may have served work still queued on torch's stream: done before CuPy's
        # stream writes it)
        self.torch.cuda.current_stream(self.device).synchronize()
        return t, self.xp.from_dlpack(t)

    def tensor(self, a):
        """A torch tensor over the memory of a contiguous array."""
        return self.torch.from_dlpack(a) if self.cuda else self.torch.from_numpy(a)

    def before_collective(self):
        """The arrays' writes (CuPy's current stream) done before torch's collective reads."""
        if self.cuda:
            self.xp.cuda.get_current_stream().synchronize()

    def after_collective(self):
        """The collective's result (on torch's current stream) done before CuPy reads it."""
        if self.cuda:
            self.torch.cuda.current_stream(self.device).synchronize()


def _signature(params) -> int:
    """A 62-bit digest of the parameters' shapes and dtypes (the same in every process)."""
    text = ";".join(f"{p.data.shape}:{p.data.dtype.str}" for p in params)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 2


def _agree(space, dist, params, group, what, extra=()):
    """One small all_reduce(MAX) of a fixed-size buffer: the parameters' count and signature
    (ValueError on every rank when the ranks hold different parameters) and ``extra`` (ints);
    returns the maximum of each ``extra`` over the ranks."""
    sig = _signature(params)
    n = len(params)
    buf = space.torch.tensor([n, -n, sig, -sig, *extra], dtype=space.torch.int64,
                             device=space.control)
    dist.all_reduce(buf, op=dist.ReduceOp.MAX, group=group)
    buf = buf.cpu()
    n_max, n_min, sig_max, sig_min = (int(v) for v in buf[:4])
    if n_max != -n_min or sig_max != -sig_min:
        raise ValueError(f"{what}: the ranks passed different parameters (counts from {-n_min} "
                         f"to {n_max}, or different shapes/dtypes); every rank must pass the "
                         f"same model's parameters in the same order")
    return [int(v) for v in buf[4:]]


def _by_dtype(items):
    """{dtype: [(param, array), ...]} in order."""
    groups = {}
    for p, a in items:
        groups.setdefault(p.data.dtype, []).append((p, a))
    return groups


def broadcast_parameters(module_or_params, src: int = 0, group=None) -> None:
    """Copy rank ``src``'s parameter values into every other rank's parameters, in place.

    Call it once after building the model (and before building optimizers' state) so every
    rank starts from the same weights, whatever seed each used. Only ``.data`` moves (not
    ``.grad``, not optimizer state). One ``broadcast`` per dtype over a flat buffer.

    Args:
        module_or_params: a ``fr.nn.Module``, a ``Parameter``, or an iterable of either (the
            same parameters, in the same order, on every rank).
        src: the global rank whose values are kept.
        group: a ``torch.distributed`` process group (None: the default group).

    Raises ValueError (on every rank) when the ranks' parameters differ in number, shape or
    dtype, when they pass different ``src``, or when a rank's parameter holds a read-only
    array; RuntimeError if ``torch.distributed`` is not initialized.
    """
    params = _param_list(module_or_params)  # (the arguments named first)
    torch, dist = _initialized_dist()
    world = dist.get_world_size()
    bad_src = (f"expected an integer rank, got {type(src).__name__} {src!r}"
               if not isinstance(src, numbers.Integral) or isinstance(src, bool)
               else None if 0 <= src < world else f"expected a rank in [0, {world}), got {src}")
    space = _Space(torch, dist, params, group)
    rank = dist.get_rank()
    read_only = [i for i, p in enumerate(params)  # (CuPy's flags have no writeable)
                 if rank != src and not getattr(p.data.flags, "writeable", True)]
    # every rank learns whether the ranks agree on a valid src and whether one cannot take the
    # values (else the others would wait on it in the broadcast until gloo's timeout)
    src_value = -1 if bad_src else int(src)
    src_max, src_min, any_bad_src, any_read_only = _agree(
        space, dist, params, group, "broadcast_parameters",
        [src_value, -src_value, int(bool(bad_src)), int(bool(read_only))])
    if any_bad_src:
        raise ValueError(f"src: {bad_src or 'a bad one on another rank'}")
    if src_max != -src_min:
        raise ValueError(f"src: the ranks passed different ones (this rank: {src}); every rank "
                         f"must pass the same")
    if any_read_only:
        where = (f"module_or_params[{read_only[0]}].data is read-only" if read_only
                 else "on another rank")
        raise ValueError(f"broadcast_parameters: a parameter cannot take the values: {where}")
    for dtype, items in _by_dtype((p, p.data) for p in params).items():
        flat_t, flat = space.flat(dtype, sum(a.size for _, a in items))
        if rank == src:
            _pack(flat, (a for _, a in items))
        space.before_collective()
        dist.broadcast(flat_t, src=src, group=group)
        space.after_collective()
        if rank != src:
            _unpack(space.xp, flat, (a for _, a in items))
            for p, _ in items:
                p.mark_written()


def all_reduce_gradients(module_or_params, average: bool = True, group=None,
                         coalesce: bool = True) -> None:
    """Sum every parameter's ``.grad`` over the ranks (and divide by the world size when
    ``average``), in place: the NumPy arrays in ``.grad`` are updated, not replaced.

    Call it after ``backward`` and before ``optimizer.step()`` on every rank. With a loss that
    averages over its batch and equal parts of the batch per rank, the average is the gradient
    of the whole batch.

    Missing gradients: a parameter whose ``.grad`` is None on every rank stays None everywhere
    (optimizers skip it, as on one process). One that is None on some ranks only counts as zeros
    there: those ranks receive a fresh array holding the sum (or average over all ranks, the
    zeros included), so every rank ends with the same gradients. A first small all_reduce
    checks that the ranks pass the same parameters and whether any gradient is missing
    anywhere; only then a second one (one flag per parameter) finds which.

    Args:
        module_or_params: a ``fr.nn.Module``, a ``Parameter``, or an iterable of either (the
            same parameters, in the same order, on every rank).
        average: divide the sum by the group's world size (the default); False keeps the sum.
        group: a ``torch.distributed`` process group (None: the default group).
        coalesce: True (default) packs the gradients into one flat buffer per dtype and runs
            one ``all_reduce`` per dtype (fewer, larger messages); False runs one in-place
            ``all_reduce`` per parameter on a ``torch.from_numpy`` view of its ``.grad``.

    Raises ValueError (on every rank) when the ranks' trainable parameters differ in number,
    shape or dtype, or their ``average`` or ``coalesce``; RuntimeError if ``torch.distributed`` is not
    initialized.
    """
    params = _param_list(module_or_params)  # (the arguments named first)
    params = [p for p in params if p.requires_grad]  # (as DDP: a frozen one is not reduced)
    average, coalesce = check_flag(average, "average"), check_flag(coalesce, "coalesce")
    torch, dist = _initialized_dist()
    space = _Space(torch, dist, params, group)
    xp = space.xp
    bad = [i for i, p in enumerate(params)
           if p.grad is not None and np.shape(p.grad) != p.data.shape]
    missing = any(p.grad is None for p in params)
    options = [int(average), int(coalesce)]  # (each with its negation: the minimum too)
    any_bad, any_missing, *agreed = _agree(
        space, dist, params, group, "all_reduce_gradients",
        [int(bool(bad)), int(missing), *options, *(-v for v in options)])
    if agreed[:2] != [-v for v in agreed[2:]]:  # (coalesce apart: message sizes differ)
        raise ValueError(f"all_reduce_gradients: the ranks passed different average or "
                         f"coalesce (this rank: average={bool(average)}, "
                         f"coalesce={bool(coalesce)}); every rank must pass the same")
    if any_bad:
        where = (f"module_or_params[{bad[0]}].grad has shape {np.shape(params[bad[0]].grad)}, "
                 f"expected {params[bad[0]].data.shape}" if bad else "on another rank")
        raise ValueError(f"all_reduce_gradients: a gradient of the wrong shape: {where}")
    present = [True] * len(params)
    if any_missing:  # which parameters have a gradient on some rank (the same list everywhere)
        flags = torch.tensor([p.grad is not None for p in params], dtype=torch.int64,
                             device=space.control)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=group)
        present = [bool(v) for v in flags.cpu().tolist()]
    active = [p for p, any_rank in zip(params, present) if any_rank]
    for p in active:
        if p.grad is None:
            p.grad = xp.zeros_like(p.data)
        elif not (isinstance(p.grad, xp.ndarray) and p.grad.flags.writeable
                  and p.grad.dtype.kind == "f"):  # (an integer one would truncate the average)
            p.grad = xp.array(p.grad, dtype=p.data.dtype)  # somewhere to write the result
    if not active:
        return
    world = dist.get_world_size(group)
    if coalesce:
        for dtype, items in _by_dtype((p, p.grad) for p in active).items():
            flat_t, flat = space.flat(dtype, sum(a.size for _, a in items))
            _pack(flat, (a for _, a in items))
            space.before_collective()
            dist.all_reduce(flat_t, op=dist.ReduceOp.SUM, group=group)
            space.after_collective()
            if average and world > 1:
                flat /= world
            _unpack(xp, flat, (a for _, a in items))
        return
    seen = []  # .grad memory two parameters share (one array, or views of one): the second
    for p in active:  # gets its own copy first, so that each is reduced once, and every rank
        if any(xp.may_share_memory(p.grad, g) for g in seen):  # runs len(active) collectives
            p.grad = p.grad.copy()
        seen.append(p.grad)
    for p in active:
        g = p.grad
        direct = g.flags.c_contiguous and g.dtype == p.data.dtype
        view = g if direct else xp.ascontiguousarray(g, p.data.dtype)
        space.before_collective()
        dist.all_reduce(space.tensor(view), op=dist.ReduceOp.SUM, group=group)
        space.after_collective()
        if average and world > 1:
            view /= world
        if not direct:
            xp.copyto(g, view, casting="unsafe")


def _pack(flat, arrays):
    offset = 0
    for a in arrays:
        flat[offset:offset + a.size] = a.ravel()
        offset += a.size


def _unpack(xp, flat, arrays):
    offset = 0
    for a in arrays:
        xp.copyto(a, flat[offset:offset + a.size].reshape(a.shape), casting="unsafe")
        offset += a.size


def get_rank(group=None) -> int:
    """This process's rank in ``group`` (the default group if None); 0 when
    ``torch.distributed`` is not initialized (a single process)."""
    _, dist = _torch()
    return dist.get_rank(group) if dist.is_initialized() else 0


def get_world_size(group=None) -> int:
    """The number of processes in ``group`` (the default group if None); 1 when
    ``torch.distributed`` is not initialized (a single process)."""
    _, dist = _torch()
    return dist.get_world_size(group) if dist.is_initialized() else 1


def _from_text(value, name):
    """An integer given as text (an environment variable's) as an int; anything else as is."""
    if not isinstance(value, str):
        return value
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}: expected an integer, got {value!r}") from None


def shard(array, axis: int = 0, rank: Optional[int] = None,
          world_size: Optional[int] = None):
    """This rank's contiguous part of ``array`` along ``axis`` (a view, as ``np.array_split``).

    Rank r of W gets the r-th of W nearly equal parts (the first ``n % W`` one longer). For
    ``fr.nn`` recurrent layers the batch is axis 1 of [T, N, I] (axis 0 with
    ``batch_first=True``). For data-parallel training to match one process on the whole batch
    exactly, make the batch divisible by the world size: a mean loss weights each part equally.

    Args:
        array: a NumPy array (or anything ``np.asarray`` takes), or a CuPy array (split on
            its device).
        axis: the batch axis.
        rank, world_size: default to :func:`get_rank` and :func:`get_world_size` (0 and 1
            without ``torch.distributed``, so the same script runs as one process).
    """
    # integers, or their text (os.environ["RANK"]): int() made world_size=2.9 a 2 and
    # rank=True a 1, silently
    world_size = get_world_size() if world_size is None else \
        _int_in(_from_text(world_size, "world_size"), "world_size", 1)
    rank = get_rank() if rank is None else _int_in(_from_text(rank, "rank"), "rank", 0)
    if rank >= world_size:
        raise ValueError(f"rank: expected 0 <= rank < world_size, got rank={rank}, "
                         f"world_size={world_size}")
    array = array if is_device_array(array) else np.asarray(array)
    if array.ndim == 0:
        raise ValueError(f"array: expected an array with a batch axis to split, got a scalar "
                         f"({array!r})")
    axis = _int_in(axis, "axis", -array.ndim, array.ndim - 1)
    if is_device_array(array):  # a CuPy array: split on the device
        from . import cuda
        return cuda.array_module().array_split(array, world_size, axis=axis)[rank]
    return np.array_split(np.asarray(array), world_size, axis=axis)[rank]
