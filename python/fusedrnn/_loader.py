"""Load the OpenBLAS shared library that the extension links against, then the extension.

The extension's RPATH points at the scipy_openblas32 package installed beside it; loading the
library here by its full path as well makes that hold however the package was installed.

Our OpenBLAS runs single-threaded: the kernels' own thread team splits the big GEMMs. With
OPENBLAS_NUM_THREADS=1 while the library loads (importing scipy_openblas32 loads it), it starts
no thread pool that would spin against the team. The variable is set only around that load, so an
OpenBLAS loaded later (NumPy's has its own copy) is not affected."""
import ctypes
import os
import sys

_saved = os.environ.get("OPENBLAS_NUM_THREADS")
if "scipy_openblas32" not in sys.modules:
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
try:
    import scipy_openblas32 as _openblas

    _lib = os.path.join(_openblas.get_lib_dir(), _openblas.get_library(fullname=True))
    _openblas_dll = ctypes.CDLL(_lib, mode=ctypes.RTLD_GLOBAL)
finally:
    if _saved is None:
        os.environ.pop("OPENBLAS_NUM_THREADS", None)
    else:
        os.environ["OPENBLAS_NUM_THREADS"] = _saved

from . import _C  # noqa: E402,F401
