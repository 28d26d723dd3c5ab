"""The package is typed: py.typed ships, and the stubs of the compiled modules
(python/fusedrnn/_C.pyi, _C_cuda.pyi) are what pybind11-stubgen makes of the modules built
now. When a binding changes, regenerate them from the repository root with
`pybind11-stubgen fusedrnn._C fusedrnn._C_cuda -o python` (on a CUDA build)."""
import importlib
import pathlib
import subprocess
import sys

import pytest

import fusedrnn

PACKAGE = pathlib.Path(fusedrnn.__file__).parent


def test_py_typed_ships():
    assert (PACKAGE / "py.typed").is_file()


@pytest.mark.parametrize("module", ["fusedrnn._C", "fusedrnn._C_cuda"])
def test_compiled_module_stubs_are_current(module, tmp_path):
    pytest.importorskip("pybind11_stubgen")
    try:
        importlib.import_module(module)
    except ImportError:
        pytest.skip(f"{module} is not built here")
    subprocess.run([sys.executable, "-m", "pybind11_stubgen", module, "-o", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=120)
    name = module.rsplit(".", 1)[1] + ".pyi"
    fresh = (tmp_path / "fusedrnn" / name).read_text()
    assert fresh == (PACKAGE / name).read_text(), (
        f"{name} is stale: regenerate it with `pybind11-stubgen fusedrnn._C fusedrnn._C_cuda "
        f"-o python` from the repository root")
