"""Keras 3 import: ``convert(layer)`` turns a Keras ``LSTM``, ``GRU``, ``SimpleRNN`` (or an ``RNN``
of one such cell) or a ``Bidirectional`` of one of them into a fusedrnn module that returns what
the Keras layer returns; ``load_weights(path)`` does the same for every such layer of a saved
``.keras`` model, reading the file with json and h5py alone (no Keras needed).

The module, a :class:`KerasRecurrent`, holds one ``fusedrnn.nn.LSTM``/``GRU``/``RNN`` layer
(``batch_first=True``; a ``Bidirectional`` is one ``bidirectional=True`` layer) and Keras'
options around it: ``return_sequences``, ``return_state``, ``go_backwards``, ``merge_mode``.
It takes batch-major input [N, T, I] and returns Keras' structure with NumPy arrays: the output
alone, or a tuple (output, *states) with ``return_state`` (LSTM: h then c); a Bidirectional's
tuple is (output, *forward states, *backward states), its output two arrays with
``merge_mode=None``.

Weights, per direction (Keras [kernel, recurrent_kernel, bias] -> torch's parameter names):

    weight_ih_l0 = kernel.T          [G*H, I]     (kernel [I, G*H])
    weight_hh_l0 = recurrent_kernel.T [G*H, H]    (recurrent_kernel [H, G*H])
    bias_ih_l0   = bias               [G*H]       (GRU reset_after=True: bias[0])
    bias_hh_l0   = 0                  [G*H]       (GRU reset_after=True: bias[1])

with the backward layer of a Bidirectional in the ``_reverse`` parameters. Keras' LSTM gates
i, f, c, o are torch's i, f, g, o; its GRU gates z, r, h are reordered to torch's r, z, n. Keras
has one bias where torch has two (LSTM, SimpleRNN, GRU reset_after=False): both enter the same
pre-activations, so it goes into bias_ih and bias_hh is zero. ``use_bias=False`` gives
``bias=False``.

What cannot be represented is refused with a ValueError or TypeError naming the layer and the
attribute: other activations (LSTM/GRU: tanh with sigmoid gates; SimpleRNN: tanh or relu),
``stateful=True``, dtype policies other than float32/float64, a Bidirectional whose two layers
differ in anything but ``go_backwards`` or whose forward layer runs backwards, any other layer.
``dropout``/``recurrent_dropout`` are accepted: Keras applies them only in training, and the
converted module never applies them (training it runs without them). Masks are not supported:
``load_weights`` refuses a recurrent layer that comes after a layer making a Keras mask
(``Masking``, ``Embedding``/``ReversibleEmbedding(mask_zero=True)``, a ``Lambda`` with a
``mask``), and warns after a custom layer in a Sequential (its ``compute_mask`` is not in the
saved config).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import warnings
import zipfile
from collections import OrderedDict

import numpy as np

from ._flags import check_flag
from .io import checked_path
from .nn.module import Module, array_module
from .nn.recurrent import GRU, LSTM, RNN, LayerNormLSTM, _check_array, _check_shape

__all__ = ["KerasRecurrent", "convert", "load_weights"]

# Keras layer (and cell) classes -> fusedrnn layer classes
_LAYERS = {"LSTM": LSTM, "GRU": GRU, "SimpleRNN": RNN}
_CELLS = {"LSTMCell": "LSTM", "GRUCell": "GRU", "SimpleRNNCell": "SimpleRNN"}
_MODELS = ("Sequential", "Functional")
_MERGE_MODES = ("concat", "sum", "mul", "ave", None)
_DTYPES = ("float32", "float64")  # the dtype policies whose math fusedrnn's dtypes reproduce
_SUPPORTED = "an LSTM, GRU, SimpleRNN, RNN (of one LSTMCell, GRUCell or SimpleRNNCell) or " \
             "Bidirectional layer"


@dataclasses.dataclass(frozen=True)
class _Spec:
    """What a Keras recurrent layer's config says, in fusedrnn's terms."""
    keras_class: str  # "LSTM", "GRU" or "SimpleRNN"
    units: int
    use_bias: bool
    reset_after: bool
    nonlinearity: str
    return_sequences: bool
    return_state: bool
    go_backwards: bool
    dtype: str

    @property
    def gates(self):
        return {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}[self.keras_class]


def _describe(class_name, name):
    """How error messages name a Keras layer: "layer (LSTM 'enc')"."""
    return f"layer ({class_name} {name!r})"


def _is_builtin(entry):
    """True for a serialized Keras class (a subclass or a custom class has a registered_name:
    its call may compute something else)."""
    return isinstance(entry, dict) and entry.get("registered_name") is None \
        and str(entry.get("module") or "").startswith("keras")


def _dtype_name(config, where):
    policy = config.get("dtype") or "float32"
    name = policy.get("config", {}).get("name") if isinstance(policy, dict) else policy
    if name not in _DTYPES:
        raise ValueError(f"{where}: dtype: expected the float32 or float64 policy (fusedrnn's "
                         f"dtypes), got {name!r}")
    return name


def _short(value, limit=80):
    """repr(value), cut to ``limit`` characters (a serialized lambda is a page of base64)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _direction_spec(entry, where):
    """The _Spec of one serialized LSTM/GRU/SimpleRNN layer (or RNN of one cell)."""
    if not _is_builtin(entry) or entry.get("class_name") not in (*_LAYERS, "RNN"):
        got = entry.get("class_name") if isinstance(entry, dict) else type(entry).__name__
        custom = " (a subclass or custom class)" if isinstance(entry, dict) \
            and not _is_builtin(entry) else ""
        raise TypeError(f"{where}: expected an LSTM, GRU, SimpleRNN or RNN (of one LSTMCell, "
                        f"GRUCell or SimpleRNNCell), got {got!r}{custom}")
    keras_class, config = entry["class_name"], dict(entry["config"])
    if keras_class == "RNN":  # the cell's settings and the RNN's sequence options
        cell = config.pop("cell", None)
        if not _is_builtin(cell) or cell.get("class_name") not in _CELLS:
            got = cell.get("class_name") if isinstance(cell, dict) else cell
            raise TypeError(f"{where}: cell: expected one LSTMCell, GRUCell or SimpleRNNCell, "
                            f"got {got!r}")
        # Keras computes in the cell's dtype policy, which the RNN's does not set
        cell_dtype, rnn_dtype = (_dtype_name(cell["config"], f"{where}: cell"),
                                 _dtype_name(config, where))
        if cell_dtype != rnn_dtype:
            raise ValueError(f"{where}: cell: dtype: expected the RNN's policy {rnn_dtype!r} "
                             f"(one dtype for the layer), got {cell_dtype!r}")
        keras_class, config = _CELLS[cell["class_name"]], {**cell["config"], **config}
    if config.get("stateful"):
        raise ValueError(f"{where}: stateful: expected False (a fusedrnn module keeps no state "
                         f"between calls; pass initial_state instead), got True")
    activations = ("tanh", "relu") if keras_class == "SimpleRNN" else ("tanh",)
    activation = config.get("activation")
    if activation not in activations:
        raise ValueError(f"{where}: activation: expected {' or '.join(map(repr, activations))} "
                         f"(fusedrnn's {keras_class}), got {_short(activation)}")
    if keras_class != "SimpleRNN" and config.get("recurrent_activation") != "sigmoid":
        raise ValueError(f"{where}: recurrent_activation: expected 'sigmoid' (fusedrnn's "
                         f"{keras_class} gates), got {_short(config.get('recurrent_activation'))}")
    return _Spec(keras_class=keras_class, units=int(config["units"]),
                 use_bias=bool(config.get("use_bias", True)),
                 reset_after=bool(config.get("reset_after", True)), nonlinearity=activation,
                 return_sequences=bool(config.get("return_sequences", False)),
                 return_state=bool(config.get("return_state", False)),
                 go_backwards=bool(config.get("go_backwards", False)),
                 dtype=_dtype_name(config, where))


def _layer_spec(entry, where):
    """(spec, bidirectional, merge_mode) of a serialized supported layer."""
    if not (_is_builtin(entry) and entry.get("class_name") == "Bidirectional"):
        return _direction_spec(entry, where), False, None
    config = entry["config"]
    merge_mode = config.get("merge_mode", "concat")
    if merge_mode not in _MERGE_MODES:
        raise ValueError(f"{where}: merge_mode: expected one of {_MERGE_MODES}, "
                         f"got {merge_mode!r}")
    forward = _direction_spec(config.get("layer"), f"{where}: forward layer")
    backward = _direction_spec(config.get("backward_layer"), f"{where}: backward layer")
    # fusedrnn's reverse direction runs from each sequence's end and its outputs are aligned in
    # time: Keras' backward layer (go_backwards=True) once Bidirectional re-reverses it
    if forward.go_backwards or not backward.go_backwards:
        raise ValueError(f"{where}: go_backwards: expected False for the forward layer and True "
                         f"for the backward layer, got {forward.go_backwards} and "
                         f"{backward.go_backwards}")
    for field in dataclasses.fields(_Spec):
        ours, theirs = getattr(forward, field.name), getattr(backward, field.name)
        if field.name != "go_backwards" and ours != theirs:
            raise ValueError(f"{where}: backward layer: {field.name}: expected the forward "
                             f"layer's {ours!r} (one bidirectional fusedrnn layer), got {theirs!r}")
    dtype = _dtype_name(config, where)
    if dtype != forward.dtype:
        raise ValueError(f"{where}: dtype: expected the wrapped layers' {forward.dtype!r}, "
                         f"got {dtype!r}")
    return forward, True, merge_mode


def _torch_state_dict(spec, weights, suffix, where):
    """One direction's Keras weights [kernel, recurrent_kernel(, bias)] -> fusedrnn's (torch's)
    parameters named ``weight_ih_l0{suffix}`` etc.; ValueError naming the weight otherwise."""
    GH, H = spec.gates * spec.units, spec.units
    names = ["kernel", "recurrent_kernel"] + (["bias"] if spec.use_bias else [])
    if len(weights) != len(names):
        raise ValueError(f"{where}: expected {len(names)} weights ({', '.join(names)}), "
                         f"got {len(weights)}")
    weights = [np.asarray(w) for w in weights]
    two_biases = spec.keras_class == "GRU" and spec.reset_after  # (input, recurrent)
    input_size = weights[0].shape[0] if weights[0].ndim == 2 else "input_size"
    shapes = {"kernel": (input_size, GH), "recurrent_kernel": (H, GH),
              "bias": (2, GH) if two_biases else (GH,)}
    for name, w in zip(names, weights):
        if w.shape != shapes[name] or w.dtype.kind != "f":
            raise ValueError(f"{where}: {name}: expected a float array of shape {shapes[name]}, "
                             f"got a {w.dtype} array of shape {w.shape}")

    def torch_gates(a):  # Keras' GRU blocks z, r, h -> torch's r, z, n (others: the same order)
        if spec.keras_class != "GRU":
            return a
        z, r, h = np.split(a, 3, axis=-1)
        return np.concatenate([r, z, h], axis=-1)

    kernel, recurrent = weights[:2]
    state = {f"weight_ih_l0{suffix}": torch_gates(kernel).T,
             f"weight_hh_l0{suffix}": torch_gates(recurrent).T}
    if spec.use_bias:
        bias = torch_gates(weights[2])
        state[f"bias_ih_l0{suffix}"] = bias[0] if two_biases else bias
        state[f"bias_hh_l0{suffix}"] = bias[1] if two_biases else np.zeros_like(bias)
    return state


def _build(entry, weights, where):
    """The KerasRecurrent of a serialized layer and its weights (one list per direction)."""
    spec, bidirectional, merge_mode = _layer_spec(entry, where)
    directions = [_torch_state_dict(spec, w, "_reverse" if d else "",
                                    f"{where}: {('forward', 'backward')[d]} layer"
                                    if bidirectional else where)
                  for d, w in enumerate(weights)]
    options = {"GRU": {"reset_after": spec.reset_after},
               "SimpleRNN": {"nonlinearity": spec.nonlinearity}}.get(spec.keras_class, {})
    rnn = _LAYERS[spec.keras_class](
        directions[0]["weight_ih_l0"].shape[1], spec.units, bias=spec.use_bias,
        batch_first=True, bidirectional=bidirectional, dtype=np.dtype(spec.dtype), **options)
    rnn.load_state_dict({k: v for state in directions for k, v in state.items()})
    return KerasRecurrent(rnn, name=entry["config"].get("name"),
                          return_sequences=spec.return_sequences,
                          return_state=spec.return_state,
                          go_backwards=spec.go_backwards and not bidirectional,
                          merge_mode=merge_mode if bidirectional else "concat")


# ---------------------------------------------------------------------------- the module
class KerasRecurrent(Module):
    """A fusedrnn recurrent layer with a Keras 3 layer's options and outputs (``convert`` and
    ``load_weights`` build it).

    Args:
        rnn: a one-layer ``fusedrnn.nn.LSTM``, ``GRU`` or ``RNN`` with ``batch_first=True``,
            bidirectional for a Keras ``Bidirectional``; registered as the child ``rnn``.
        name: the Keras layer's name (for the repr). Default: None
        return_sequences, return_state, go_backwards: as Keras' recurrent layers (go_backwards
            only for a unidirectional ``rnn``). Default: False
        merge_mode: for a bidirectional ``rnn``, as Keras' ``Bidirectional``: 'concat', 'sum',
            'mul', 'ave' or None (the two directions' outputs apart). Default: 'concat'

    ``module(x, initial_state=None)``: x [N, T, I]; initial_state None (zeros) or a list of
    [N, H] arrays in Keras' order ([h] or [h, c]; a Bidirectional's forward states, then the
    backward ones). Returns what the Keras layer returns (see the module docstring).

    ``module.backward(dout)`` after a training-mode forward: dout shaped like forward's result
    (a tuple's entries may be None for zeros). Returns ``(dx, dstates)``: the gradient of x and
    a list of the initial states' gradients in Keras' order (zeros where none was given); adds
    into the parameters' ``grad``.
    """

    def __init__(self, rnn, *, name=None, return_sequences=False, return_state=False,
                 go_backwards=False, merge_mode="concat"):
        super().__init__()
        if not isinstance(rnn, (LSTM, GRU, RNN)) or isinstance(rnn, LayerNormLSTM):
            raise TypeError(f"rnn: expected a fusedrnn.nn.LSTM, GRU or RNN, "
                            f"got {type(rnn).__name__}")
        if rnn.num_layers != 1 or not rnn.batch_first or rnn.proj_size or rnn.peephole:
            raise ValueError(f"rnn: expected one layer with batch_first=True (no projection, no "
                             f"peepholes), got {rnn!r}")
        if not isinstance(merge_mode, (str, type(None))) or merge_mode not in _MERGE_MODES:
            raise ValueError(f"merge_mode: expected one of {_MERGE_MODES}, got {merge_mode!r}")
        return_sequences = check_flag(return_sequences, "return_sequences")
        return_state = check_flag(return_state, "return_state")
        go_backwards = check_flag(go_backwards, "go_backwards")
        if go_backwards and rnn.bidirectional:
            raise ValueError("go_backwards: expected False for a bidirectional rnn (its reverse "
                             "direction is Keras' backward layer), got True")
        self.rnn = rnn
        self.name = name
        self.return_sequences, self.return_state = return_sequences, return_state
        self.go_backwards = go_backwards
        self.merge_mode = merge_mode
        self._saved = None

    @property
    def _states_per_direction(self):
        return 2 if isinstance(self.rnn, LSTM) else 1

    def _state_names(self):
        names = ["h", "c"][:self._states_per_direction]
        if self.rnn.bidirectional:
            names = [f"{n}_{d}" for d in ("forward", "backward") for n in names]
        return "[" + ", ".join(names) + "]"

    def _initial_state(self, initial_state, N):
        """Keras' list of [N, H] states -> the rnn's hx ([D, N, H], or a tuple for LSTM)."""
        if initial_state is None:
            return None
        if not isinstance(initial_state, (list, tuple)):
            initial_state = [initial_state]  # Keras takes a lone array for a one-state layer
        S, D = self._states_per_direction, self.rnn.num_directions
        if len(initial_state) != S * D:
            raise ValueError(f"initial_state: expected {S * D} arrays {self._state_names()} "
                             f"(Keras' order), got {len(initial_state)}")
        states = []
        for i, state in enumerate(initial_state):
            state = _check_array(self._as_layer_dtype(state), f"initial_state[{i}]",
                                 self.rnn.dtype, self.rnn.device)
            _check_shape(state, f"initial_state[{i}]", (N, self.rnn.hidden_size), " [N, H]")
            states.append(state)
        xp = array_module(self.rnn.device)
        h0 = xp.stack(states[0::S])
        return (h0, xp.stack(states[1::S])) if S == 2 else h0

    def _as_layer_dtype(self, a):
        """A NumPy array of numbers in the layer's dtype, as Keras casts its inputs to the
        layer's (float64 data into a float32 layer); anything else goes to the checks as it
        is."""
        if isinstance(a, np.ndarray) and a.dtype.kind in "biuf" and a.dtype != self.rnn.dtype:
            return a.astype(self.rnn.dtype)
        return a

    def forward(self, x, initial_state=None):
        """Run the layer on x [N, T, I] (cast to the layer's dtype, as Keras does); returns what
        the Keras layer returns."""
        rnn = self.rnn
        x = _check_array(self._as_layer_dtype(x), "x", rnn.dtype, rnn.device)
        if x.ndim != 3:
            raise ValueError(f"x: expected 3 dimensions [N, T, I] (Keras' batch-major layout), "
                             f"got shape {x.shape}")
        xp = array_module(rnn.device)
        hx = self._initial_state(initial_state, x.shape[0])
        if self.go_backwards:  # Keras reads the sequence from its end and keeps that order out
            x = xp.ascontiguousarray(x[:, ::-1])
        out, states = rnn(x, hx)
        h_n, c_n = states if isinstance(rnn, LSTM) else (states, None)
        D, H = rnn.num_directions, rnn.hidden_size
        # per direction: the output sequence (the reverse one aligned in time, as Bidirectional
        # re-reverses its backward layer's), else the last output, which is the final h
        ys = [xp.ascontiguousarray(out[:, :, d * H:(d + 1) * H]) if self.return_sequences
              else h_n[d] for d in range(D)]
        outputs = self._merge(ys, xp)
        if self.return_state:
            outputs += [s[d] for d in range(D) for s in (h_n, c_n) if s is not None]
        self._saved = {"x_shape": x.shape, "ys": ys, "shapes": [o.shape for o in outputs]} \
            if self.training else None
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def _merge(self, ys, xp):
        """The directions' outputs -> the list of outputs Keras returns (before the states)."""
        if len(ys) == 1 or self.merge_mode is None:
            return list(ys)
        forward, backward = ys
        if self.merge_mode == "concat":
            return [xp.concatenate(ys, axis=-1)]
        if self.merge_mode == "sum":
            return [forward + backward]
        if self.merge_mode == "ave":
            return [(forward + backward) / 2]
        return [forward * backward]  # "mul"

    def _unmerge(self, d_outputs, ys):
        """The gradients of _merge's outputs -> the gradient of each direction's output (None
        for zeros)."""
        if len(ys) == 1 or self.merge_mode is None:
            return list(d_outputs)
        g = d_outputs[0]
        if g is None:
            return [None, None]
        if self.merge_mode == "concat":
            H = self.rnn.hidden_size
            return [g[..., :H], g[..., H:]]
        if self.merge_mode == "sum":
            return [g, g]
        if self.merge_mode == "ave":
            return [g / 2, g / 2]
        return [g * ys[1], g * ys[0]]  # "mul"

    def backward(self, dout):
        """BPTT for the latest training-mode forward; returns ``(dx, dstates)``."""
        saved, rnn = self._saved, self.rnn
        if saved is None:
            raise RuntimeError("backward called before a training-mode forward: call forward() "
                               "with the module in training mode (module.train()) first")
        shapes = saved["shapes"]
        if len(shapes) == 1:
            grads = [dout]
        elif isinstance(dout, (list, tuple)) and len(dout) == len(shapes):
            grads = list(dout)
        else:
            got = f"{type(dout).__name__}" + (f" of length {len(dout)}"
                                              if isinstance(dout, (list, tuple)) else "")
            raise TypeError(f"dout: expected a tuple of {len(shapes)} arrays or None (the "
                            f"gradients of forward's outputs), got {got}")
        for i, (g, shape) in enumerate(zip(grads, shapes)):
            name = "dout" if len(shapes) == 1 else f"dout[{i}]"
            if g is None and len(shapes) == 1:
                raise TypeError("dout: expected an array, got None")
            if g is not None:
                grads[i] = _check_array(g, name, rnn.dtype, rnn.device)
                _check_shape(grads[i], name, shape, " (the shape of forward's output)")

        S, D, H = self._states_per_direction, rnn.num_directions, rnn.hidden_size
        n_outputs = len(shapes) - (S * D if self.return_state else 0)
        xp = array_module(rnn.device)
        N, T = saved["x_shape"][:2]
        d_out = xp.zeros((N, T, D * H), rnn.dtype)
        d_states = xp.zeros((S, D, N, H), rnn.dtype)  # (h, c) of each direction
        for d, dy in enumerate(self._unmerge(grads[:n_outputs], saved["ys"])):
            if dy is None:
                continue
            if self.return_sequences:
                d_out[:, :, d * H:(d + 1) * H] = dy
            else:  # the output was the final h
                d_states[0, d] += dy
        for i, g in enumerate(grads[n_outputs:]):
            if g is not None:
                d, which = divmod(i, S)
                d_states[which, d] += g
        dx, dhx = rnn.backward(d_out, (d_states[0], d_states[1]) if S == 2 else d_states[0])
        d_initial = dhx if S == 2 else (dhx,)  # (dh0, dc0), each [D, N, H]
        if self.go_backwards:
            dx = xp.ascontiguousarray(dx[:, ::-1])
        return dx, [d_initial[which][d] for d in range(D) for which in range(S)]

    def extra_repr(self):
        """The Keras name, the options that differ from Keras' defaults and a Bidirectional's
        merge_mode."""
        parts = [repr(self.name)] if self.name is not None else []
        for option in ("return_sequences", "return_state", "go_backwards"):
            if getattr(self, option):
                parts.append(f"{option}=True")
        if self.rnn.bidirectional:
            parts.append(f"merge_mode={self.merge_mode!r}")
        return ", ".join(parts)


# ---------------------------------------------------------------------------- entry points
def convert(layer):
    """A Keras 3 recurrent layer -> a :class:`KerasRecurrent` with its weights and options.

    ``layer``: a built ``keras.layers.LSTM``, ``GRU``, ``SimpleRNN``, ``RNN`` of one
    ``LSTMCell``/``GRUCell``/``SimpleRNNCell``, or a ``Bidirectional`` of one of them. The module
    returns what ``layer(x, initial_state=...)`` returns (inference), as NumPy arrays; TypeError
    or ValueError naming the layer and the attribute for anything it cannot reproduce."""
    import keras

    if not isinstance(layer, keras.layers.Layer):
        raise TypeError(f"layer: expected a Keras 3 layer ({_SUPPORTED}), "
                        f"got {type(layer).__name__}")
    entry = keras.saving.serialize_keras_object(layer)
    where = _describe(type(layer).__name__, layer.name)
    _layer_spec(entry, where)  # the type and options first: the clearest error
    if not layer.built:
        raise ValueError(f"{where}: expected a built layer (its weights exist once it is called "
                         f"on a batch or built with layer.build(input_shape)), got an unbuilt one")
    directions = [layer.forward_layer, layer.backward_layer] \
        if entry["class_name"] == "Bidirectional" else [layer]
    for direction in directions:
        _check_activation_functions(keras, getattr(direction, "cell", direction), where)
    return _build(entry, [d.get_weights() for d in directions], where)


def _check_activation_functions(keras, cell, where):
    """The live cell's activations are Keras' own functions: Keras serializes any function by
    its __name__ when that names a built-in activation, so a user's function called ``tanh``
    reads as Keras' tanh in the config checked before."""
    for attribute in ("activation", "recurrent_activation"):
        fn = getattr(cell, attribute, None)
        name = getattr(fn, "__name__", None)
        if fn is None or name is None:
            continue
        own = {getattr(module, name, None) for module in (keras.activations, keras.ops)}
        if fn not in own:
            raise ValueError(f"{where}: {attribute}: expected Keras' own {name!r}, got a "
                             f"function of that name from {getattr(fn, '__module__', '?')!r} "
                             f"(fusedrnn's kernels compute Keras' {name})")


def _snake_case(name):
    """Keras' naming.to_snake_case: the h5 group of a layer is its class name in snake case."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _read_vars(store, group, path):
    """The arrays of an h5 ``<group>/vars`` (0, 1, 2, ...), as Keras' H5IOStore writes them."""
    variables = store.get(f"{group}/vars")
    if variables is None:
        raise ValueError(f"path: {path!r} has no weights at {group}/vars in model.weights.h5 "
                         f"(a model saved before it was built?)")
    return [np.asarray(variables[str(i)]) for i in range(len(variables))]


def _model_layers(model, path):
    """The serialized layers of a serialized Sequential or functional model."""
    class_name = model.get("class_name") if isinstance(model, dict) else type(model).__name__
    layers = model["config"].get("layers") if class_name in _MODELS else None
    if not isinstance(layers, list) or not all(isinstance(e, dict) for e in layers):
        raise ValueError(f"path: expected a Sequential or functional model in config.json of "
                         f"{path!r}, got {class_name!r} (a subclassed model stores its weights "
                         f"by attribute, which config.json does not describe)")
    return layers


def _makes_mask(entry):
    """Whether a serialized Keras layer starts a mask: Masking, an Embedding or
    ReversibleEmbedding with mask_zero=True, a Lambda given a ``mask``. (A custom layer may too,
    by its compute_mask, which its config does not show: see ``_may_make_mask``.)"""
    config = entry.get("config", {})
    kind = entry.get("class_name")
    return kind == "Masking" or (kind in ("Embedding", "ReversibleEmbedding")
                                 and bool(config.get("mask_zero"))) \
        or (kind == "Lambda" and config.get("mask") is not None)


def _may_make_mask(entry):
    """A custom (registered) layer: its compute_mask, if it has one, is not in its config."""
    return isinstance(entry, dict) and not _is_builtin(entry) and entry.get("class_name") not in (
        *_MODELS, "InputLayer")


def _mask_fed(entry):
    """The layer whose output is the Keras mask a functional model's layer is called with
    (its inbound nodes' ``mask`` argument: a serialized tensor, or a list of them and nulls
    for a layer of several inputs), or None."""
    def names(mask):
        if isinstance(mask, (list, tuple)):
            for part in mask:
                yield from names(part)
        elif isinstance(mask, dict):
            history = mask.get("config", {}).get("keras_history")
            yield str(history[0]) if history else "a mask"
        elif mask:
            yield "a mask"
    for node in entry.get("inbound_nodes") or []:
        mask = node.get("kwargs", {}).get("mask") if isinstance(node, dict) else None
        for name in names(mask):
            return name
    return None


# Layers whose output carries no Keras mask whatever their input's (pooling over the steps,
# convolutions, reshapes: measured with Keras 3, the recurrent layer after them runs
# unmasked); a recurrent layer returning its last step alone ends it too (_ends_mask).
_MASK_ENDS = {"GlobalAveragePooling1D", "GlobalMaxPooling1D", "AveragePooling1D",
              "MaxPooling1D", "Conv1D", "SeparableConv1D", "DepthwiseConv1D", "Conv1DTranspose",
              "Flatten", "Reshape", "RepeatVector", "Permute", "Cropping1D", "UpSampling1D",
              "ZeroPadding1D"}


# Merge layers: their output carries a mask only where every input carries one (measured with
# Keras 3: one unmasked input and the recurrent layer after the merge runs unmasked).
_MERGES = {"Concatenate", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}


# Keras ops that may return their input tensor itself (a cast to its own dtype, the real part
# of a real tensor), mask and all: they count as passing the mask on.
_OPS_GIVING_THEIR_INPUT = {"Cast", "Real", "ConvertToTensor", "Identity", "Copy"}


def _ends_mask(entry):
    """Whether a serialized layer's output carries no mask (a nested model: whether no mask
    reaches its outputs, :func:`_carries_mask`)."""
    kind, config = entry.get("class_name"), entry.get("config", {})
    if str(entry.get("module", "")).startswith("keras.src.ops"):  # (an op between layers,
        return kind not in _OPS_GIVING_THEIR_INPUT  # x[:, :-1], x * y: a new tensor, which
        # Keras 3 gives no mask; those that may return their input tensor keep its mask)
    if kind in _MODELS:
        return not _carries_mask(entry)
    if kind in (*_LAYERS, "RNN", "Bidirectional"):
        inner = config.get("layer", {}).get("config", {}) if kind == "Bidirectional" else config
        return not inner.get("return_sequences", False)
    if kind == "Lambda":  # (one given no mask function does not support masking: drops it)
        return config.get("mask") is None
    return kind in _MASK_ENDS


def _histories(value):
    """The (layer, node index) of every serialized tensor in an inbound node's arguments."""
    if isinstance(value, (list, tuple)):
        for part in value:
            yield from _histories(part)
    elif isinstance(value, dict):
        config = value.get("config")
        history = config.get("keras_history") if isinstance(config, dict) else None
        if history:
            yield str(history[0]), int(history[1]) if len(history) > 1 else 0
        else:
            for part in value.values():
                yield from _histories(part)


def _graph(entries):
    """A functional model's calls: {(layer, node index): the (layer, node index) it reads},
    {layer: its serialized entry} and {layer: its calls}."""
    graph, by_name, calls = {}, {}, {}
    for e in entries:
        name = str(e.get("config", {}).get("name"))
        by_name[name] = e
        calls[name] = []
        for i, node in enumerate(e.get("inbound_nodes") or []):
            graph[(name, i)] = set(_histories(node))
            calls[name].append((name, i))
    return graph, by_name, calls


def _mask_source(start, graph, by_name, sources):
    """The first mask source (``sources``: layer name -> the name to say) whose mask reaches
    the calls ``start`` read, through the layers between that carry it (Keras carries a mask
    through Dense, Dropout, a nested model... where the saved graph shows it on no node), or
    None."""
    seen, stack = set(), [n for node in start for n in graph.get(node, ())]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        layer = node[0]
        if layer in sources:
            return sources[layer]
        entry = by_name.get(layer)
        if entry is not None and _ends_mask(entry):
            continue
        if entry is not None and entry.get("class_name") in _MERGES:
            found = [_call_source(i, graph, by_name, sources) for i in _merged(entry, node[1])]
            if found and all(found):
                return found[0]
            continue
        stack.extend(graph.get(node, ()))
    return None


def _merged(entry, index):
    """The calls a merge layer's call ``index`` merges (its tensor arguments; not the masks
    Keras records beside them)."""
    nodes = entry.get("inbound_nodes") or []
    node = nodes[index] if index < len(nodes) and isinstance(nodes[index], dict) else {}
    return set(_histories(node.get("args")))


def _call_source(node, graph, by_name, sources):
    """The mask source whose mask the call ``node``'s output carries, or None."""
    if node[0] in sources:
        return sources[node[0]]
    entry = by_name.get(node[0])
    if entry is not None and _ends_mask(entry):
        return None
    return _mask_source([node], graph, by_name, sources)


def _carries_mask(model):
    """Whether a mask given to a serialized nested model, or made inside it, can reach its
    outputs (a model that pools, reshapes or returns a last step drops it)."""
    entries = _model_layers(model, "")
    if model.get("class_name") != "Functional":  # a Sequential: the last mask ender or maker
        for entry in reversed(entries):
            if _makes_mask(entry):
                return True
            if _ends_mask(entry):
                return False
        return True
    graph, by_name, calls_of = _graph(entries)
    sources = {name: name for name, e in by_name.items()
               if _makes_mask(e) or e.get("class_name") == "InputLayer"}
    # the layers giving the outputs (a list, a dict or nested lists of [name, node, tensor]);
    # every call of each (Keras numbers a nested model's nodes from 1 there, from 0 inbound)
    for layer in _output_layers(model["config"].get("output_layers")):
        if layer in sources:
            return True
        entry = by_name.get(layer)
        if (entry is None or not _ends_mask(entry)) and \
                _mask_source(calls_of.get(layer, []), graph, by_name, sources):
            return True
    return False


def _output_layers(outputs):
    """The layer names of a functional config's ``output_layers`` tree."""
    if isinstance(outputs, dict):
        for value in outputs.values():
            yield from _output_layers(value)
    elif isinstance(outputs, (list, tuple)) and outputs:
        if isinstance(outputs[0], str):  # a leaf [name, node index, tensor index]
            yield outputs[0]
        else:
            for value in outputs:
                yield from _output_layers(value)


def _collect(model, store, group, prefix, path, modules, mask=None):
    """Add the supported layers of a serialized Sequential/functional model to ``modules``;
    returns the name of a layer making a Keras mask before them (or ``mask``), which a
    recurrent layer after it in a Sequential is refused for (in a functional model, one called
    with a mask; a functional model returns its first mask-making layer, or ``mask``, for a
    Sequential that holds it: whether or not that mask reaches its outputs, as a flat
    Sequential counts a mask made anywhere before).

    Keras' saving_lib stores the layers of a model in ``<group>/layers/<snake_case(class)>``,
    numbered ``_1``, ``_2``... in the order of the config's layers per class name (not by the
    layers' names); a nested model is a group of its own."""
    used = {}
    functional = isinstance(model, dict) and model.get("class_name") == "Functional"
    made = None  # a functional model's first mask-making layer (or nested model making one)
    custom = None  # a Sequential's first custom layer (it may make a mask unseen)
    entries = _model_layers(model, path)
    # a functional model: its calls, and the mask sources met so far (its layers come in the
    # order they run: a layer's sources come before it); a mask fed to the model from outside
    # comes in through its inputs
    graph, by_name, calls_of = _graph(entries) if functional else ({}, {}, {})
    sources = {name: mask for name, e in by_name.items()
               if mask and e.get("class_name") == "InputLayer"}

    def fed_mask(entry, name):
        """The mask a functional model's layer is called with, named by its source."""
        fed = _mask_fed(entry)
        source = _mask_source(calls_of.get(str(name), []), graph, by_name, sources)
        return source or (prefix + fed if fed and fed != "a mask" else fed)

    for entry in entries:
        class_name, name = entry.get("class_name"), entry.get("config", {}).get("name")
        base = _snake_case(str(class_name))
        used[base] = used.get(base, -1) + 1
        layer_group = f"{group}layers/{base}" + (f"_{used[base]}" if used[base] else "")
        if class_name in _MODELS:
            # in a Sequential a mask made before reaches every later layer, the nested
            # model's too; in a functional model what a layer reads from, through any
            # layers between (the nested model's inbound mask, or a mask it makes)
            fed = fed_mask(entry, name) if functional else None
            inner = _collect(entry, store, f"{layer_group}/", f"{prefix}{name}/", path,
                             modules, fed if functional else mask)
            if not functional:
                mask = inner
            elif inner:
                made = made or inner
                if _carries_mask(entry):  # (a mask fed to it: found through its inputs)
                    sources[str(name)] = inner
            continue
        if _makes_mask(entry):
            if functional:
                made = made or prefix + str(name)
                sources[str(name)] = prefix + str(name)
            else:
                mask = mask or prefix + str(name)
        elif not functional and _may_make_mask(entry):
            custom = custom or prefix + str(name)
        if class_name not in (*_LAYERS, "RNN", "Bidirectional"):
            if not functional and not _makes_mask(entry) and _ends_mask(entry):
                mask = custom = None  # (a Conv1D, a pooling...: the layers after it run
                # unmasked, whatever a custom layer before it made)
            wrapped = entry.get("config", {}).get("layer")
            if isinstance(wrapped, dict) and wrapped.get("class_name") in (
                    *_LAYERS, "RNN", "Bidirectional"):  # (TimeDistributed(LSTM), say)
                warnings.warn(f"{path!r}: {_describe(class_name, name)} holds a "
                              f"{wrapped.get('class_name')}, which load_weights leaves out "
                              f"(it loads recurrent layers of the model itself, not wrapped "
                              f"ones)", stacklevel=3)
            elif _may_make_mask(entry) and {"units", "return_sequences"} <= set(
                    entry.get("config", {})):  # (a subclass of LSTM, say)
                warnings.warn(f"{path!r}: {_describe(class_name, name)} looks recurrent but is "
                              f"a custom class, whose call may compute something else: "
                              f"load_weights leaves it out", stacklevel=3)
            continue
        fed = fed_mask(entry, name) if functional else mask
        if fed:
            raise ValueError(f"path: {path!r}: {_describe(class_name, name)} comes after "
                             f"{fed!r}, which makes a Keras mask (Masking, Embedding(mask_zero="
                             f"True), a Lambda's mask...): Keras skips the masked steps, which "
                             f"fusedrnn's layers do not reproduce (expected a model without a "
                             f"mask before its recurrent layers)")
        if custom:
            warnings.warn(f"{path!r}: {_describe(class_name, name)} comes after the custom "
                          f"layer {custom!r}: if it makes a Keras mask (a compute_mask, which "
                          f"the saved config does not show), Keras skips the masked steps and "
                          f"the loaded layer's results differ from the model's", stacklevel=3)
        # recent Keras versions also write each layer's name beside its variables: a check
        own_vars = store.get(f"{layer_group}/vars")
        stored_name = None if own_vars is None else own_vars.attrs.get("name")
        if stored_name is not None and stored_name != name:
            raise ValueError(f"path: {path!r}: the weights at {layer_group} belong to layer "
                             f"{stored_name!r}, expected {name!r} (an h5 layout this reader "
                             f"does not know)")
        cells = ([f"{layer_group}/forward_layer/cell", f"{layer_group}/backward_layer/cell"]
                 if class_name == "Bidirectional" else [f"{layer_group}/cell"])
        modules[prefix + name] = _build(entry, [_read_vars(store, c, path) for c in cells],
                                        f"path: {path!r}: {_describe(class_name, name)}")
    return (made or mask) if functional else mask


def load_weights(path):
    """The recurrent layers of a Keras 3 ``.keras`` file (or the folder ``model.save(path,
    zipped=False)`` writes), without Keras.

    Returns an ordered dict {Keras layer name: :class:`KerasRecurrent`} (as ``convert`` builds)
    for every LSTM, GRU, SimpleRNN, RNN (of one such cell) and Bidirectional layer of the
    Sequential or functional model, in the config's order; a nested model's layers are named
    ``'<model name>/<layer name>'``. Needs h5py (``pip install "fusedrnn[keras]"``)."""
    path = checked_path(path)
    folder = os.path.isdir(path)  # (Keras 3's model.save(path, zipped=False): the members)
    if not folder and not os.path.isfile(path):
        raise FileNotFoundError(f"path: no such file {path!r}")
    if not folder and not zipfile.is_zipfile(path):
        raise ValueError(f"path: expected a Keras 3 .keras file (a zip of config.json and "
                         f"model.weights.h5), got {path!r}, which is not a zip archive")
    try:
        import h5py
    except ImportError as error:
        raise ImportError('fusedrnn.keras.load_weights needs h5py to read model.weights.h5: '
                          'pip install "fusedrnn[keras]"') from error
    with contextlib.ExitStack() as stack:
        if folder:
            names = os.listdir(path)

            def member(name):
                return stack.enter_context(open(os.path.join(path, name), "rb"))
        else:
            archive = stack.enter_context(zipfile.ZipFile(path))
            names = archive.namelist()

            def member(name):
                return stack.enter_context(archive.open(name))
        missing = [m for m in ("config.json", "model.weights.h5") if m not in names]
        if missing:
            raise ValueError(f"path: expected a Keras 3 .keras file (a zip of config.json and "
                             f"model.weights.h5, or a folder of them), got {path!r} without "
                             f"{' and '.join(missing)}")
        try:
            config = json.loads(member("config.json").read())
        except ValueError as error:
            raise ValueError(f"path: config.json of {path!r} is not valid JSON: {error}") from None
        _model_layers(config, path)  # the model's kind before its weights
        modules = OrderedDict()
        # Keras stores the members uncompressed: h5py reads the weights in place
        try:
            store = h5py.File(member("model.weights.h5"), "r")
        except OSError as error:
            raise ValueError(f"path: model.weights.h5 of {path!r} is not an HDF5 file: "
                             f"{error}") from None
        with store:
            _collect(config, store, "", "", path, modules)
    return modules
