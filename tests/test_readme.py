"""The README's Python examples run as a new user runs them.

Every ```python block of README.md runs in a fresh ``python`` subprocess (120 s timeout) and must
exit 0; a failure names the block's README line and shows the end of its output. The block's code
is compiled under README.md's own path and line numbers, so a traceback points at the README line
that failed (``File ".../README.md", line 100``).

Rules:

- **Continuation.** A block that imports nothing (no ``import`` statement at all) continues the
  Python block before it in the README: the test runs that block (with its own continuation
  chain) and then this one, in order, in one process. Every other block must run on its own.
- **Optional packages.** A block (with the blocks it continues) that imports torch, onnx,
  onnxruntime, onnxscript, keras, h5py, matplotlib or cupy, or the fusedrnn module that needs one
  (``fusedrnn.torch``, ``fusedrnn.distributed``: torch; ``fusedrnn.onnx``: onnx;
  ``fusedrnn.keras.load_weights``: h5py), is skipped when that package is missing;
  ``torch.onnx.export`` (its default exporter) needs onnxscript. Keras runs on the torch backend
  unless ``KERAS_BACKEND`` says otherwise.
- **GPU.** A block that imports cupy or asks for ``device="cuda"`` is skipped unless
  ``fusedrnn.cuda.is_available()`` (the CUDA build, CuPy and a visible GPU).
- **torch.distributed.** A block that calls ``init_process_group`` runs as a world of one
  process, with the variables torchrun sets (``RANK=0``, ``WORLD_SIZE=1``, ``LOCAL_RANK=0``,
  ``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``).
- **Working directory.** Each block runs in a temporary directory of its own, so that the files
  the examples write (``lstm.onnx``, ``ckpt.npz``) never land in the checkout; no Python block
  reads a file of the repository.

A block that fails because the README is wrong (a name it never defines, a file no block writes)
is not skipped here: the README is what to fix. The module is skipped where README.md is not
beside tests/ (an installed package without the source tree).
"""
from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
import re
import socket
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

if not README.is_file():
    pytest.skip("README.md is not beside tests/ (an installed package without the source "
                "tree)", allow_module_level=True)

TIMEOUT_S = 120

# Top-level modules that are optional extras (not fusedrnn's own dependencies).
OPTIONAL = ("torch", "onnx", "onnxruntime", "onnxscript", "keras", "h5py", "matplotlib", "cupy")
# fusedrnn modules that import an optional package.
FUSEDRNN_NEEDS = {"fusedrnn.torch": ("torch",), "fusedrnn.distributed": ("torch",),
                  "fusedrnn.onnx": ("onnx",)}
# Calls that need an optional package the block does not import itself.
CALL_NEEDS = {"torch.onnx.export(": ("onnxscript",), ".load_weights(": ("h5py",)}
_CUDA = re.compile(r"""device\s*=\s*["']cuda|\.cuda\(\)|\.to\(\s*["']cuda""")
_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


def python_blocks(text):
    """[(fence_line, first_code_line, source)] of the ```python blocks, 1-based README lines,
    each source dedented (blocks inside list items are indented)."""
    lines = text.split("\n")
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not re.match(r"^\s*```\s*$", lines[j]):
            j += 1
        if m.group(2) == "python":
            source = textwrap.dedent("\n".join(lines[i + 1:j]))
            blocks.append((i + 1, i + 2, source))
        i = j + 1
    return blocks


def imported_modules(source):
    """Every module an import statement of ``source`` names (dotted, as written)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # still find what it imports, so that the skip rules hold
        return {m for line in source.splitlines()
                for m in re.findall(r"^\s*(?:from|import)\s+([\w.]+)", line)}
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def chains(blocks):
    """Per block, the blocks it runs with (itself last): a block that imports nothing continues
    the chain of the block before it."""
    result = []
    for k, block in enumerate(blocks):
        if k and not imported_modules(block[2]):
            result.append(result[-1] + [block])
        else:
            result.append([block])
    return result


def needed_packages(source):
    """The optional packages ``source`` needs, from its imports and calls."""
    modules = imported_modules(source)
    need = {m.split(".")[0] for m in modules} & set(OPTIONAL)
    for module, packages in FUSEDRNN_NEEDS.items():
        if any(m == module or m.startswith(module + ".") for m in modules):
            need.update(packages)
    for call, packages in CALL_NEEDS.items():
        if call in source:
            need.update(packages)
    if "keras" in need and "KERAS_BACKEND" not in os.environ:
        need.add("torch")  # run_block sets KERAS_BACKEND=torch
    return need


def needs_gpu(source):
    return "cupy" in {m.split(".")[0] for m in imported_modules(source)} or bool(
        _CUDA.search(source))


def _installed(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _gpu_available():
    try:
        import fusedrnn.cuda
        return bool(fusedrnn.cuda.is_available())
    except Exception:  # no CUDA build, no CuPy, no driver: no GPU for these blocks
        return False


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))
CHAINS = chains(BLOCKS)


def test_readme_has_python_blocks():
    assert BLOCKS, "README.md holds no ```python block (has the fence syntax changed?)"


def _runner(chain):
    """A script that runs the chain's blocks in order in one namespace (the script's own, as a
    file run with `python` has), each compiled under README.md's path at its README lines."""
    parts = [(first_line, source) for _, first_line, source in chain]
    return "\n".join([
        f"_readme_parts = {parts!r}",
        "for _readme_line, _readme_source in _readme_parts:",
        "    exec(compile('\\n' * (_readme_line - 1) + _readme_source, "
        f"{str(README)!r}, 'exec'), globals())",
        "",
    ])


@pytest.mark.parametrize("chain", CHAINS, ids=[f"line{b[0]}" for b in BLOCKS])
def test_readme_python_block(chain, tmp_path):
    fence_line = chain[-1][0]
    where = f"README.md line {fence_line}"
    if len(chain) > 1:
        where += " (continuing the blocks at line " + ", ".join(
            str(b[0]) for b in chain[:-1]) + ")"
    source = "\n".join(b[2] for b in chain)
    missing = sorted(p for p in needed_packages(source) if not _installed(p))
    if missing:
        pytest.skip(f"{where} needs {', '.join(missing)} (not installed)")
    if needs_gpu(source) and not _gpu_available():
        pytest.skip(f"{where} needs a GPU (fusedrnn.cuda.is_available() is False)")

    env = dict(os.environ)
    env.setdefault("KERAS_BACKEND", "torch")
    if "init_process_group" in source:  # a world of one process, as torchrun would set it up
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    script = tmp_path / f"readme_line{fence_line}.py"
    script.write_text(_runner(chain), encoding="utf-8")
    try:
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{where}: the ```python block ran past {TIMEOUT_S} s\n"
                    f"{(exc.stdout or '')[-2000:]}\n{(exc.stderr or '')[-2000:]}")
    if proc.returncode != 0:
        output = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        pytest.fail(f"{where}: the ```python block exited {proc.returncode}:\n{output}",
                    pytrace=False)
