"""What was built and how many threads the kernels use."""
from ._loader import _C


def info() -> dict:
    """What this build holds: version, compiler, SIMD level, BLAS, threads, CUDA."""
    from . import __version__
    d = dict(_C.build_info())
    d["version"] = __version__
    d["threads"] = _C.get_num_threads()
    d["thread_pool"] = ("OpenMP (shared with PyTorch)" if _C.shares_openmp_threads()
                        else "fusedrnn's own")
    return d


def set_num_threads(n: int) -> None:
    """Threads used by the kernels (and by their BLAS calls). n >= 1."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n: expected an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n: expected at least 1 thread, got {n}")
    _C.set_num_threads(n)


def get_num_threads() -> int:
    """Threads the kernels (and their BLAS calls) use now; see :func:`set_num_threads`."""
    return _C.get_num_threads()
