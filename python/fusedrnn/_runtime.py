"""What was built and how many threads the kernels use."""
from __future__ import annotations

import numbers
import threading

import numpy as np

from ._flags import check_flag
from ._loader import _C


def info() -> dict:
    """What this build holds and what it runs on: version, compiler, SIMD level, BLAS, threads,
    CUDA; ``cpu`` (the CPU model, vendor and caches, see :func:`cpu_summary`) and
    ``cpu_table`` (the sizes and thresholds the CPU drivers choose by on this CPU: one row per
    vendor, scaled to the core's L2; ``FUSEDRNN_CPU_TABLE=intel|amd|other`` forces a row)."""
    from . import __version__
    d = dict(_C.build_info())
    d["version"] = __version__
    d["threads"] = _C.get_num_threads()
    d["thread_pool"] = ("OpenMP (shared with PyTorch)" if _C.shares_openmp_threads()
                        else "fusedrnn's own")
    d["deterministic"] = _C.deterministic()
    cache = _C.output_cache()
    d["output_cache"] = (f"{_mib(cache['kept_bytes'])} kept of {_mib(cache['limit_bytes'])} "
                         f"(outputs of {_size(cache['min_bytes'])} and more)")
    d["cpu"] = cpu_summary()
    d["cpu_table"] = dict(_C.tuning())
    return d


def empty_cache() -> None:
    """Give the blocks kept for the kernels' large outputs, and the kernels' workspaces, back
    to the allocator. The kernels keep the blocks of dead outputs of 256 KiB and more (up to
    ``FUSEDRNN_OUTPUT_CACHE_MB``, default 256, in all; 0 keeps none) for the next call's
    outputs of the same size, and each thread that ran a call its workspaces (up to T*N*G*H
    floats for a backward or an inference call's gates, twice that for the backward of torch's
    GRU or a LayerNorm-LSTM), so that a training loop does not fault their pages in afresh
    every step; this returns them (as ``torch.cuda.empty_cache`` does its cached blocks): the
    calling thread's, and the kernels' team's, whose threads end (once no call is on them) and
    start again at the next call. Other threads that call the kernels keep theirs, as do
    torch's OpenMP threads where the kernels share them (``fusedrnn.torch``)."""
    _C.release_output_cache()
    _C.release_workspaces()


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.1f} MiB"


def _size(nbytes: int) -> str:
    if nbytes <= 0:
        return "?"
    if nbytes % (1 << 20) == 0:
        return f"{nbytes >> 20} MiB"
    return f"{nbytes >> 10} KiB"


def cpu_summary() -> str:
    """One line naming this CPU as the kernels see it: model, vendor, caches (L1d and L2 per
    core, L3 in all), bfloat16/AMX, and the CPU table row in use."""
    c = _C.cpu_info()
    extras = [name for name in ("avx512_bf16", "amx") if c[name]]
    return (f"{c['model']} ({c['vendor']}; L1d {_size(c['l1d_bytes'])}, "
            f"L2 {_size(c['l2_bytes'])} per core, L3 {_size(c['l3_bytes'])}"
            + "".join(f"; {e}" for e in extras) + f"; CPU table row {_C.tuning()['row']})")


def cpu_table_summary() -> str:
    """The CPU table's row in one line (name=value), for benchmark headers."""
    return " ".join(f"{k}={v}" for k, v in _C.tuning().items())


# A bound far above any machine's cores that keeps a typo (10**6) from starting that many threads.
MAX_THREADS = 4096


def set_num_threads(n: int) -> None:
    """Threads used by the kernels (and by their BLAS calls). 1 <= n <= MAX_THREADS."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n: expected an int, got {type(n).__name__}")
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"n: expected 1 to {MAX_THREADS} threads, got {n}")
    _C.set_num_threads(int(n))


def set_deterministic(on: bool | int) -> None:
    """Make the CPU kernels' results independent of the thread count (``True``), not only
    reproducible for a given one (the default), as ``torch.use_deterministic_algorithms`` does
    for PyTorch's. The kernels then use only the strategies whose arithmetic is the same on
    any number of threads (the time loop split by hidden units; no loop split by samples, no
    pipelined input projection, the big GEMMs in a fixed number of blocks), which costs speed
    on the shapes that needed those (``fusedrnn bench --deterministic`` measures it,
    ``fusedrnn bench --explain`` shows the plans). In a torch program, the adapter's calls
    turn it on while ``torch.use_deterministic_algorithms`` is on, and its first call after
    torch's goes off turns it off again, unless it was set here since."""
    global deterministic_by_torch
    on = check_flag(on, "on")
    with _deterministic_lock:
        deterministic_by_torch = False  # (the user's choice: torch's switch leaves it be)
        _C.set_deterministic(bool(on))


# Whether the torch adapter turned the deterministic mode on, following
# torch.use_deterministic_algorithms (it turns it off again with torch's); the lock keeps a
# user's set_deterministic from landing between the adapter's look and its change.
deterministic_by_torch = False
_deterministic_lock = threading.Lock()


def follow_torch_determinism(torch_on: bool) -> None:
    """The torch adapter's, at each call: deterministic while torch.use_deterministic_algorithms
    is on (if the mode was off), off again when it goes off (if torch's turned it on)."""
    global deterministic_by_torch

    def turn_on():
        return torch_on and not _C.deterministic()

    def turn_off():
        return not torch_on and deterministic_by_torch
    if not (turn_on() or turn_off()):
        return  # (the common case: nothing to change, no lock)
    with _deterministic_lock:  # (looked at again: a set_deterministic may have come between)
        if turn_on():
            deterministic_by_torch = True
            _C.set_deterministic(True)
        elif turn_off():
            deterministic_by_torch = False
            _C.set_deterministic(False)


def get_deterministic() -> bool:
    """Whether :func:`set_deterministic` is on."""
    return _C.deterministic()


def get_num_threads() -> int:
    """Threads the kernels (and their BLAS calls) use now; see :func:`set_num_threads`."""
    return _C.get_num_threads()
