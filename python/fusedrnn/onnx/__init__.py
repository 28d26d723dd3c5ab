"""Model exchange with ONNX (needs ``pip install "fusedrnn[onnx]"``; imported lazily):

- :func:`export` writes our layers (any cell and variant), a ``Sequential`` of them or a
  ``Seq2Seq``'s encoder as an ONNX model that ONNX Runtime runs with our outputs;
- :class:`Backend` runs graphs of ONNX ``LSTM``/``GRU``/``RNN`` nodes on fusedrnn's kernels
  (``onnx.backend.base.Backend``: ``Backend.prepare(model).run(inputs)``);
- :func:`load` turns the recurrent nodes of an ONNX model into ``fr.nn`` layers with their
  weights.

The gate orders of both sides meet in ``_layout`` only.
"""
from ._export import export

__all__ = ["Backend", "export", "load", "prepare", "run_model", "run_node", "supports_device"]


def __getattr__(name):  # the backend subclasses onnx's, so it is defined once onnx is imported
    if name in ("Backend", "prepare", "run_model", "run_node", "supports_device", "load"):
        from . import backend
        return getattr(backend, name)
    raise AttributeError(f"module 'fusedrnn.onnx' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
