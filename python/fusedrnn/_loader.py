"""Load the OpenBLAS shared library that the extension links against, then the extension.

The extension's RPATH points at the scipy_openblas32 package installed beside it; loading the
library here by its full path as well makes that hold however the package was installed."""
import ctypes
import os

import scipy_openblas32 as _openblas

_lib = os.path.join(_openblas.get_lib_dir(), _openblas.get_library(fullname=True))
_openblas_dll = ctypes.CDLL(_lib, mode=ctypes.RTLD_GLOBAL)

from . import _C  # noqa: E402,F401
