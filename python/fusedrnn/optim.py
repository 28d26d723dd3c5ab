"""Optimizers on ``Parameter.data`` / ``Parameter.grad``, with torch.optim's arguments and update
rules: ``SGD`` (momentum, dampening, nesterov, weight decay), ``Adam``, ``AdamW``, ``RMSprop``;
gradient clipping (``clip_grad_norm_``, ``clip_grad_value_``); learning-rate schedules
(``StepLR``, ``CosineAnnealingLR``); and a gradient-free ``GeneticAlgorithm`` trainer.

Optimizers take parameters (or dicts ``{"params": [...], "lr": ...}`` for groups), skip any
parameter whose ``grad`` is None, and update in place in the parameter's dtype.
``state_dict()`` returns ``{"state": {index: {name: array}}, "param_groups": [...]}`` with
parameters numbered in order, as PyTorch does, so ``fusedrnn.save`` can keep it and
``load_state_dict`` can resume a run.
"""
from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from ._flags import check_flag
from .functional import check_unmasked
from .nn.layers import _int_in, _number_in, _seeded
from .nn.module import Module, Parameter, is_device_array, to_device, user_stacklevel

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "clip_grad_norm_", "clip_grad_value_",
           "LRScheduler", "StepLR", "CosineAnnealingLR", "GeneticAlgorithm",
           "parameters_to_vector", "vector_to_parameters"]


def _param_list(params, name="params"):
    if isinstance(params, Module):
        params = params.parameters()
    if isinstance(params, Parameter):
        params = [params]
    if isinstance(params, np.ndarray) or not hasattr(params, "__iter__"):
        raise TypeError(f"{name}: expected a Module, a Parameter or an iterable of Parameters, "
                        f"got {type(params).__name__}" + (" (an array is a Parameter's .data: "
                        "pass the Parameters)" if isinstance(params, np.ndarray) else ""))
    params = list(params)
    for i, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(f"{name}[{i}]: expected a fusedrnn.nn.Parameter, got {type(p).__name__}")
    return params


def _is_array(value):
    """A NumPy or CuPy array (optimizer state lives on its parameter's device)."""
    return isinstance(value, np.ndarray) or is_device_array(value)


def _betas(value, name="betas"):
    """Adam's (beta1, beta2): two numbers in [0, 1), as a tuple of floats."""
    pair = np.asarray(value) if not isinstance(value, str) else None
    if (pair is None or pair.shape != (2,) or pair.dtype.kind not in "iuf"
            or not ((0 <= pair) & (pair < 1)).all()):
        raise ValueError(f"{name}: expected two numbers in [0, 1), got {value!r}")
    return float(pair[0]), float(pair[1])


_FLOAT_MAX = float(np.finfo(np.float64).max)  # (a bound that refuses inf and NaN)


def _nonnegative(value, name):
    return _number_in(value, name, 0.0, math.inf, ">= 0")


# torch.optim's options of these classes: a group giving one that the optimizer does not take
# is refused, as the constructors refuse it.
TORCH_OPTIONS = frozenset({"lr", "momentum", "dampening", "weight_decay", "nesterov", "betas",
                           "eps", "amsgrad", "alpha", "centered", "maximize", "foreach",
                           "capturable", "differentiable", "fused", "decoupled_weight_decay"})


class Optimizer:
    """What every optimizer shares: parameter groups, per-parameter state, (de)serialisation."""

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        params = _param_list(params) if isinstance(params, (Module, Parameter, np.ndarray)) \
            or not hasattr(params, "__iter__") else list(params)
        if not params:
            raise ValueError("params: the optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        self.state = {}  # Parameter -> dict of arrays / numbers
        for i, group in enumerate(groups):
            self._add_group(group, f"params[{i}]")

    def add_param_group(self, param_group):
        """Add a group (a dict with "params" and, optionally, its own hyper-parameters; the
        others are the optimizer's defaults), as torch's optimizers do: e.g. layers unfrozen
        during training."""
        self._add_group(param_group, "param_group")

    def _add_group(self, group, where):
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"{where}: expected a dict with 'params' (a parameter group), got "
                            f"{type(group).__name__}")
        unknown = sorted((set(group) & TORCH_OPTIONS) - set(self.defaults))
        if unknown:  # (torch's other options, maximize say, would be kept unread: the steps
            # would not be what they ask; other keys, a group's "name", are the user's tags)
            raise TypeError(f"{where}: {type(self).__name__} takes no option "
                            f"{', '.join(map(repr, unknown))} (its options: "
                            f"{', '.join(self.defaults)})")
        g = dict(self.defaults)
        g.update(group)
        g["params"] = _param_list(group["params"], f"{where}['params']")
        once = list({id(p): p for p in g["params"]}.values())
        if len(once) != len(g["params"]):  # a tied weight listed under both its names
            warnings.warn(f"{where}['params']: a parameter appears more than once in the group "
                          f"(a tied weight?): it is kept once, and each step updates it once "
                          f"(torch.optim warns alike)", UserWarning, stacklevel=user_stacklevel())
            g["params"] = once
        seen = {id(p) for other in self.param_groups for p in other["params"]}
        if len({id(p) for p in g["params"]} | seen) != len(seen) + len(g["params"]):
            raise ValueError(f"{where}: a parameter appears in more than one group")
        for key in self.defaults:  # a group's own values, checked as the constructor's
            g[key] = self._checked(key, g[key], f"{where}[{key!r}]" if key in group else key)
        self._check_group(g)
        self.param_groups.append(g)

    def _check_group(self, group):
        """A rule between a group's values (SGD's nesterov): an error unless it holds."""

    @staticmethod
    def _checked(key, value, name):
        """A hyper-parameter's value as the optimizer keeps it; an error naming ``name``."""
        if key == "betas":
            return _betas(value, name)
        if key in ("nesterov", "centered", "amsgrad"):
            return check_flag(value, name)
        number = _nonnegative(value, name)
        # a NumPy scalar as a Python float (a float32 lr would round a float64 parameter's
        # steps to float32); a Python int stays one (a subclass's count of steps, say)
        return number if isinstance(value, np.generic) else value

    def zero_grad(self, set_to_none=True):
        """Clear the gradient of every parameter in every group: None (default) or zeros."""
        set_to_none = check_flag(set_to_none, "set_to_none")
        for group in self.param_groups:
            for p in group["params"]:
                p.zero_grad(set_to_none)

    def _params_with_grad(self):
        """(group, parameter, its state) of every parameter with a gradient, each gradient
        checked before any is used: a bad one refuses the whole step, leaving every parameter
        and every state as it was (an update changes its state in place)."""
        found = []
        for g, group in enumerate(self.param_groups):
            for k, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                name = f"param_groups[{g}]['params'][{k}].grad"
                check_unmasked(p.grad, name)
                if not _is_array(p.grad) or p.grad.dtype.kind not in "iuf":  # (CuPy on CUDA)
                    got = (f"dtype {p.grad.dtype}" if _is_array(p.grad)
                           else type(p.grad).__name__)
                    raise TypeError(f"{name}: expected an array of real numbers (NumPy, or CuPy "
                                    f"for a CUDA parameter), got {got}")
                if p.grad.shape != p.data.shape:  # (NumPy would broadcast it silently)
                    raise ValueError(f"{name}: expected the parameter's shape {p.data.shape}, "
                                     f"got {p.grad.shape}")
                found.append((group, p))
        return [(group, p, self.state.setdefault(p, {})) for group, p in found]

    def step(self):
        """One update of every parameter whose ``grad`` is not None, from its group's
        hyper-parameters and its state; parameters without a gradient are skipped."""
        for group, p, state in self._params_with_grad():
            # (a gradient of another dtype steps in the parameter's: a float32 one squared in
            # float32 would round a float64 parameter's moments)
            p.writable_data()  # (a read-only one, np.load's mmap say: a copy steps)
            self._update(group, p, p.grad.astype(p.data.dtype, copy=False), state)
            p.mark_written()

    def _update(self, group, p, grad, state):
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    def _indexed(self):
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self):
        """``{"state": {index: {name: value}}, "param_groups": [{hyper-parameters, "params":
        [indices]}]}`` (copies)."""
        index = {id(p): i for i, p in enumerate(self._indexed())}
        state = {}
        for p, s in self.state.items():
            state[index[id(p)]] = {k: (v.copy() if _is_array(v) else v) for k, v in s.items()}
        groups = []
        for g in self.param_groups:
            d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
            d["params"] = [index[id(p)] for p in g["params"]]
            groups.append(d)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyper-parameters and per-parameter state saved by :meth:`state_dict` from an
        optimizer over parameters of the same shapes, in the same order."""
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        if not isinstance(groups, list) or "state" not in state_dict:
            raise ValueError("state_dict: expected a dict with 'state' and 'param_groups' "
                             "(from Optimizer.state_dict())")
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict: expected {len(self.param_groups)} parameter groups, "
                             f"got {len(groups)}")
        for i, (saved, own) in enumerate(zip(groups, self.param_groups)):
            if not isinstance(saved, dict) or "params" not in saved:
                raise ValueError(f"state_dict['param_groups'][{i}]: expected a dict with "
                                 f"'params', got {type(saved).__name__}")
            keys = {"params", "initial_lr"}  # (amsgrad: newer than some saved files)
            missing = sorted(set(own) - set(saved) - keys - {"amsgrad"})
            extra = sorted(set(saved) - set(own) - keys)
            if missing or extra:  # (another optimizer's state_dict: SGD's into Adam)
                raise ValueError(f"state_dict: group {i} "
                                 f"{f'lacks {missing}' if missing else f'has {extra}'}: "
                                 f"another optimizer's state_dict, not {type(self).__name__}'s")
            if len(saved["params"]) != len(own["params"]):
                raise ValueError(f"state_dict: group {i} holds {len(saved['params'])} parameters, "
                                 f"this optimizer's holds {len(own['params'])}")
        # every value checked before any is taken: a refused state_dict changes nothing
        values = [{k: self._checked(k, v, f"state_dict['param_groups'][{i}][{k!r}]")
                   if k in self.defaults else v for k, v in saved.items() if k != "params"}
                  for i, saved in enumerate(groups)]
        if not isinstance(state_dict["state"], dict):
            raise ValueError(f"state_dict['state']: expected a dict of parameter index -> its "
                             f"state, got {type(state_dict['state']).__name__}")
        params = self._indexed()
        new_state = {}
        for key, s in state_dict["state"].items():
            try:
                i = int(key)
            except (TypeError, ValueError):
                raise ValueError(f"state_dict['state']: expected parameter indices as keys, got "
                                 f"{key!r}") from None
            if not 0 <= i < len(params):
                raise ValueError(f"state_dict: state for parameter {i}, but there are {len(params)}")
            if not isinstance(s, dict):
                raise ValueError(f"state_dict['state'][{key!r}]: expected a dict of arrays and "
                                 f"numbers, got {type(s).__name__}")
            p = params[i]
            entry = {}
            for name, value in s.items():
                if _is_array(value):
                    if value.shape != p.data.shape:
                        raise ValueError(f"state_dict['state'][{i}][{name!r}]: expected shape "
                                         f"{p.data.shape}, got {value.shape}")
                    # on the parameter's device (a state saved on another moves with it)
                    value = to_device(value, p.device).astype(p.data.dtype, copy=True)
                entry[name] = value
            new_state[p] = entry
        for saved, own in zip(values, self.param_groups):
            self._check_group({**own, **saved})
        for saved, own in zip(values, self.param_groups):
            for k, v in saved.items():
                own[k] = tuple(v) if isinstance(self.defaults.get(k), tuple) else v
        self.state = new_state

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(g.items()) if k != "params"]
        return "\n".join(lines + [")"])


class SGD(Optimizer):
    """Stochastic gradient descent as torch.optim.SGD: ``g = grad + weight_decay * p``; with
    momentum ``buf = momentum * buf + (1 - dampening) * g`` (the first step ``buf = g``) and
    ``g = g + momentum * buf`` (nesterov) or ``g = buf``; then ``p -= lr * g``."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov)
        # the defaults are held to the rule too, as torch's are (a group giving its own
        # momentum does not make a default momentum of 0 with nesterov valid)
        self._check_group({k: self._checked(k, v, k) for k, v in defaults.items()})
        super().__init__(params, defaults)

    def _check_group(self, group):
        # (after the values' own checks, which name a momentum that is no number; a group
        # added or loaded later is held to it too)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("nesterov: requires momentum > 0 and dampening = 0")

    def _update(self, group, p, grad, state):
        g = grad
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p.data
        momentum = group["momentum"]
        if momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                # (astype, not np.array: the gradient may be a CuPy array)
                buf = g.astype(p.data.dtype, copy=True)
                if not isinstance(buf, type(p.data)):  # a NumPy scalar: a 0-d parameter's
                    buf = np.array(buf)  # g + wd * p; the updates below are in place
                state["momentum_buffer"] = buf
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * g
            g = g + momentum * buf if group["nesterov"] else buf
        p.data -= (group["lr"] * g).astype(p.data.dtype, copy=False)


class Adam(Optimizer):
    """Adam as torch.optim.Adam (L2 weight decay added to the gradient), with bias correction:
    ``p -= lr * m_hat / (sqrt(v_hat) + eps)``; ``amsgrad``: v_hat from the running maximum of
    v, as torch's."""

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False):
        super().__init__(params, dict(lr=lr, betas=_betas(betas), eps=eps,
                                      weight_decay=weight_decay,
                                      amsgrad=check_flag(amsgrad, "amsgrad")))

    def _update(self, group, p, grad, state):
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p.data)
            state["exp_avg_sq"] = np.zeros_like(p.data)
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = np.zeros_like(p.data)
        if wd:
            if self._decoupled:
                p.data *= p.data.dtype.type(1 - lr * wd)
            else:
                grad = grad + wd * p.data
        state["step"] += 1
        t = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= beta1
        m += (1 - beta1) * grad
        v *= beta2
        v += (1 - beta2) * grad * grad
        bias1 = 1 - beta1 ** t
        bias2 = 1 - beta2 ** t
        if group["amsgrad"]:
            v = np.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
        denom = np.sqrt(v) / math.sqrt(bias2) + eps
        p.data -= ((lr / bias1) * m / denom).astype(p.data.dtype, copy=False)


class AdamW(Adam):
    """Adam with decoupled weight decay (``p *= 1 - lr * weight_decay`` before the step), as
    torch.optim.AdamW (default weight_decay 0.01)."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad)


class RMSprop(Optimizer):
    """RMSprop as torch.optim.RMSprop: ``sq = alpha * sq + (1 - alpha) * g^2``; ``avg =
    sqrt(sq) + eps`` (centered: ``sqrt(sq - mean_g^2) + eps``); with momentum ``buf = momentum *
    buf + g / avg`` and ``p -= lr * buf``, else ``p -= lr * g / avg``."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered))

    def _update(self, group, p, grad, state):
        alpha, eps, lr = group["alpha"], group["eps"], group["lr"]
        if not state:
            state["step"] = 0
            state["square_avg"] = np.zeros_like(p.data)
        # momentum or centered switched on after the first step start from zeros then (as
        # Adam's amsgrad; torch's raises KeyError)
        if group["momentum"] > 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = np.zeros_like(p.data)
        if group["centered"] and "grad_avg" not in state:
            state["grad_avg"] = np.zeros_like(p.data)
        state["step"] += 1
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * p.data
        sq = state["square_avg"]
        sq *= alpha
        sq += (1 - alpha) * grad * grad
        if group["centered"]:
            ga = state["grad_avg"]
            ga *= alpha
            ga += (1 - alpha) * grad
            var = sq.copy()  # (in place: a 0-d parameter's stays an array)
            with np.errstate(over="ignore", invalid="ignore"):
                var -= ga * ga
            # where sq overflowed, ga * ga may too: inf - inf is NaN, where torch.optim's fused
            # multiply-add (inf - the exact finite ga^2) gives inf, a step of 0
            var[np.isinf(sq) & np.isfinite(ga)] = np.inf
            avg = np.sqrt(var) + eps
        else:
            avg = np.sqrt(sq) + eps
        if group["momentum"] > 0:
            buf = state["momentum_buffer"]
            buf *= group["momentum"]
            buf += grad / avg
            p.data -= (lr * buf).astype(p.data.dtype, copy=False)
        else:
            p.data -= (lr * grad / avg).astype(p.data.dtype, copy=False)


# ---------------------------------------------------------------------------- clipping
def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """Scale every gradient by ``max_norm / (total_norm + 1e-6)`` when that is below 1, where
    total_norm is the norm of all gradients together. Returns total_norm (a float) before
    clipping; parameters without a gradient are skipped. A NaN total_norm scales every gradient
    by NaN and an infinite one by 0, as torch's do (``error_if_nonfinite=True``: raises);
    ``foreach`` is taken for torch's signature (NumPy has no batched form)."""
    grads = _float_grads(parameters)
    max_norm = _nonnegative(max_norm, "max_norm")
    error_if_nonfinite = check_flag(error_if_nonfinite, "error_if_nonfinite")
    if isinstance(norm_type, str) and norm_type == "inf":  # torch's spelling, too
        norm_type = math.inf
    norm_type = _number_in(norm_type, "norm_type", 1e-300, math.inf, "> 0 (or inf)")
    if not grads:
        return 0.0
    if math.isinf(norm_type):  # (a NaN anywhere is the total: Python's max would drop it)
        norms = [float(abs(g).max()) if g.size else 0.0 for g in grads]
        total = math.nan if any(math.isnan(n) for n in norms) else max(norms)
    else:
        total = float(sum(float(np.sum(np.abs(g.astype(np.float64)) ** norm_type)) for g in grads)
                      ** (1.0 / norm_type))
    if not math.isfinite(total) and error_if_nonfinite:
        raise RuntimeError(f"clip_grad_norm_: the total norm of order {norm_type} of the "
                           f"gradients is {total}; with error_if_nonfinite=False they are "
                           f"scaled by NaN instead")
    coef = max_norm / (total + 1e-6)
    if not coef < 1.0 and not math.isnan(coef):
        return total
    for g in grads:
        g *= g.dtype.type(coef)
    return total


def clip_grad_value_(parameters, clip_value, foreach=None):
    """Clamp every gradient element into [-clip_value, clip_value] in place; ``foreach`` is
    taken for torch's signature."""
    clip_value = _nonnegative(clip_value, "clip_value")
    for g in _float_grads(parameters):
        np.clip(g, -clip_value, clip_value, out=g)


def _float_grads(parameters):
    """The gradients of ``parameters`` that are not None; TypeError for one that is no
    floating-point array (clipping writes in place: an integer one would truncate to 0)."""
    grads = []
    for i, p in enumerate(_param_list(parameters, "parameters")):
        if p.grad is None:
            continue
        check_unmasked(p.grad, f"parameters[{i}].grad")
        if not _is_array(p.grad) or p.grad.dtype.kind != "f":
            got = f"dtype {p.grad.dtype}" if _is_array(p.grad) else type(p.grad).__name__
            raise TypeError(f"parameters[{i}].grad: expected a floating-point array (clipping "
                            f"scales it in place), got {got}")
        grads.append(p.grad)
    return grads


# ---------------------------------------------------------------------------- schedules
class LRScheduler:
    """Changes each group's ``lr`` once per epoch; call ``step()`` after the epoch's optimizer
    steps. As torch.optim's schedulers, each step changes the group's current ``lr`` (not a
    value computed from the initial one alone), so schedulers chained on one optimizer, and a
    change made by hand, compose as they do in torch."""

    def __init__(self, optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected a fusedrnn.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lrs = []
        self._adopt_new_groups()
        self.last_epoch = 0
        self._last_lr = [g["lr"] for g in optimizer.param_groups]

    # The constructor's settings a state_dict carries (torch's names): each subclass's.
    _settings = ()

    def _checked_settings(self, values):
        """The settings of a loaded state_dict, checked as the constructor checks them."""
        return values

    def _adopt_new_groups(self):
        """Groups added to the optimizer since (``add_param_group``: layers unfrozen during
        training) are scheduled from their ``lr`` as they come, as torch's chainable steps do."""
        for g in self.optimizer.param_groups[len(self.base_lrs):]:
            g.setdefault("initial_lr", g["lr"])
            self.base_lrs.append(g["initial_lr"])

    def next_lr(self, lr, base_lr, epoch):
        """A group's ``lr`` at ``epoch`` from its ``lr`` at ``epoch - 1`` and its initial
        ``base_lr`` (defined by each schedule, as torch's ``get_lr``). A schedule of an earlier
        release defining ``lr_at(base_lr, epoch)`` alone is stepped by that (its closed form:
        it does not chain)."""
        return self.lr_at(base_lr, epoch)

    def lr_at(self, base_lr, epoch):
        """The closed form of a schedule: its ``lr`` at ``epoch`` (see :meth:`next_lr`)."""
        raise NotImplementedError(f"{type(self).__name__}: a scheduler defines next_lr(lr, "
                                  f"base_lr, epoch) (or lr_at(base_lr, epoch))")

    def step(self):
        """Advance ``last_epoch`` by one and set each group's ``lr`` to ``next_lr``."""
        self.last_epoch += 1
        self._adopt_new_groups()
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = self.next_lr(g["lr"], base, self.last_epoch)
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def get_last_lr(self):
        """The ``lr`` of each group as this scheduler last set it (as torch's: a later
        scheduler on the same optimizer, or a change by hand, may have changed it since)."""
        return list(self._last_lr)

    def state_dict(self):
        """``{"last_epoch": int, "base_lrs": [float, ...], "_last_lr": [...]}`` and the
        constructor's settings (StepLR's ``step_size`` and ``gamma``; as torch's keys; the
        groups' ``lr`` is the optimizer's state: save and load both, as with torch)."""
        self._adopt_new_groups()
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs),
                "_last_lr": list(self._last_lr),
                **{k: getattr(self, k) for k in self._settings}}

    def load_state_dict(self, state_dict):
        """Restore ``last_epoch``, ``base_lrs`` and the settings from :meth:`state_dict` (a state
        saved before groups were added leaves theirs as they are; one of an earlier release,
        without settings, keeps this scheduler's)."""
        if not isinstance(state_dict, dict) or not {"last_epoch", "base_lrs"} <= set(state_dict):
            raise ValueError(f"state_dict: expected a scheduler's state_dict() "
                             f"({{'last_epoch', 'base_lrs'}}), got "
                             f"{sorted(state_dict) if isinstance(state_dict, dict) else state_dict!r}")
        self._adopt_new_groups()
        base_lrs = list(state_dict["base_lrs"])
        if len(base_lrs) > len(self.optimizer.param_groups):
            raise ValueError(f"state_dict: base_lrs of {len(base_lrs)} groups, the optimizer has "
                             f"{len(self.optimizer.param_groups)}")
        last_epoch = _int_in(state_dict["last_epoch"], "state_dict['last_epoch']", 0)
        settings = self._checked_settings({k: state_dict[k] for k in self._settings
                                           if k in state_dict})
        # (a state of an earlier release has none; one saved before a group was added, fewer:
        # the groups' lr now, as the optimizer's state just loaded holds it)
        current = [g["lr"] for g in self.optimizer.param_groups]
        last_lr = [_nonnegative(v, "state_dict['_last_lr']")
                   for v in state_dict.get("_last_lr", [])][:len(current)]
        last_lr += current[len(last_lr):]
        self.last_epoch = last_epoch
        self.base_lrs = ([_nonnegative(b, "state_dict['base_lrs']") for b in base_lrs]
                         + self.base_lrs[len(base_lrs):])
        self._last_lr = last_lr
        for k, v in settings.items():
            setattr(self, k, v)


class StepLR(LRScheduler):
    """``lr *= gamma`` every ``step_size`` epochs (alone: ``initial_lr * gamma ** (epoch //
    step_size)``)."""

    _settings = ("step_size", "gamma")

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size, self.gamma = self._checked_settings(
            {"step_size": step_size, "gamma": gamma}).values()
        super().__init__(optimizer)

    def _checked_settings(self, values):
        out = {}
        if "step_size" in values:
            step_size = values["step_size"]
            if isinstance(step_size, bool) or not isinstance(step_size, numbers.Integral) \
                    or step_size < 1:
                raise ValueError(f"step_size: expected a positive int, got {step_size!r}")
            out["step_size"] = int(step_size)
        if "gamma" in values:
            out["gamma"] = _nonnegative(values["gamma"], "gamma")
        return out

    def next_lr(self, lr, base_lr, epoch):
        """``lr * gamma`` at multiples of ``step_size``, else ``lr``."""
        return lr * self.gamma if epoch % self.step_size == 0 else lr


class CosineAnnealingLR(LRScheduler):
    """Alone: ``lr = eta_min + (initial_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``,
    stepped as torch's recursive form (which a chained schedule or a change by hand scales)."""

    _settings = ("T_max", "eta_min")

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max, self.eta_min = self._checked_settings(
            {"T_max": T_max, "eta_min": eta_min}).values()
        super().__init__(optimizer)

    def _checked_settings(self, values):
        out = {}
        if "T_max" in values:
            out["T_max"] = _number_in(values["T_max"], "T_max", math.ulp(0.0), math.inf,
                                      "> 0 (epochs of the half cosine)")
        if "eta_min" in values:
            out["eta_min"] = _nonnegative(values["eta_min"], "eta_min")
        return out

    def next_lr(self, lr, base_lr, epoch):
        """torch's step: the ratio of consecutive closed-form values applied to ``lr - eta_min``
        (at the cosine's trough, where that ratio is 0/0, the closed form's rise)."""
        T, eta = self.T_max, self.eta_min
        if (epoch - 1 - T) % (2 * T) == 0:
            return lr + (base_lr - eta) * (1 - math.cos(math.pi / T)) / 2
        previous = 1 + math.cos(math.pi * (epoch - 1) / T)
        if previous < 1e-12:  # near a trough torch's test misses (a T_max that is no integer)
            return eta + (base_lr - eta) * (1 + math.cos(math.pi * epoch / T)) / 2
        return eta + (lr - eta) * (1 + math.cos(math.pi * epoch / T)) / previous


# ---------------------------------------------------------------------------- genetic algorithm
def parameters_to_vector(parameters):
    """All parameters' values concatenated into one float64 vector."""
    params = _param_list(parameters, "parameters")
    return np.concatenate([p.data.ravel().astype(np.float64) for p in params]) if params \
        else np.zeros(0)


def vector_to_parameters(vector, parameters):
    """Copy ``vector`` (from :func:`parameters_to_vector`) back into the parameters."""
    params = _param_list(parameters, "parameters")
    total = sum(p.data.size for p in params)
    vector = np.asarray(check_unmasked(vector, "vector"))
    if vector.shape != (total,):
        raise ValueError(f"vector: expected shape ({total},) (all parameters), got {vector.shape}")
    offset = 0
    for p in params:
        n = p.data.size
        p.writable_data()[...] = vector[offset:offset + n].reshape(p.data.shape)
        p.mark_written()
        offset += n


class GeneticAlgorithm:
    """Gradient-free training: a population of parameter vectors evolved by tournament
    selection, uniform crossover, Gaussian mutation and elitism.

    ``fitness()`` is called with a candidate's values loaded into the parameters and returns a
    number to maximise (e.g. minus the loss, or accuracy, from an inference-mode forward; when
    ``params`` is a Module it is put in eval mode while candidates are scored, so the fused
    kernels run without saving anything for backward). After each :meth:`step` the parameters
    hold the best individual found so far. Everything random comes from ``seed``. Frozen
    parameters (``requires_grad`` False) keep their values.

    ``elite`` (the best kept unchanged each generation) is 2 unless given, and
    ``tournament_size`` 3, each at most what ``population_size`` allows.
    """

    def __init__(self, params, fitness, population_size=50, elite=None, tournament_size=None,
                 crossover_rate=0.9, mutation_rate=0.1, mutation_std=0.1, init_std=None,
                 seed=None):
        self.module = params if isinstance(params, Module) else None
        listed = _param_list(params)
        if not listed:
            raise ValueError("params: the genetic algorithm got an empty parameter list")
        once = list({id(p): p for p in listed}.values())
        if len(once) != len(listed):  # (a tied weight listed under both its names)
            warnings.warn("params: a parameter appears more than once (a tied weight?): it is "
                          "evolved once", UserWarning, stacklevel=user_stacklevel())
            listed = once
        self.params = [p for p in listed if p.requires_grad]  # (frozen ones keep their values)
        if not self.params:
            raise ValueError(f"params: every one of the {len(listed)} parameters is frozen "
                             f"(requires_grad False): nothing to evolve")
        if not callable(fitness):
            raise TypeError(f"fitness: expected a callable returning a number, got "
                            f"{type(fitness).__name__}")
        self.fitness = fitness
        self.population_size = _int_in(population_size, "population_size", 2)
        # (the defaults fit any population; a size given that it cannot hold is named)
        settings = dict(
            elite=min(2, self.population_size - 1) if elite is None else elite,
            tournament_size=min(3, self.population_size) if tournament_size is None
            else tournament_size,
            crossover_rate=crossover_rate, mutation_rate=mutation_rate, mutation_std=mutation_std)
        for key, value in settings.items():
            setattr(self, key, self._checked_setting(key, value, key))
        if init_std is not None:
            _number_in(init_std, "init_std", 0.0, _FLOAT_MAX, ">= 0 and finite")
        self.rng = _seeded(seed)
        start = parameters_to_vector(self.params)
        std = float(np.std(start)) if init_std is None else float(init_std)
        std = std if std > 0 or init_std is not None else 0.1  # (all-equal start: spread it)
        self.population = start + self.rng.normal(0.0, std, (self.population_size, start.size))
        self.population[0] = start  # the current parameters take part too
        self.scores = np.full(self.population_size, np.nan)
        self.best_vector, self.best_fitness = start.copy(), -np.inf
        self.generation = 0
        self.history = []  # best fitness after each generation

    def _evaluate(self):
        modes = self.module._modes() if self.module is not None else []
        if self.module is not None:
            self.module.eval()
        before = parameters_to_vector(self.params)
        try:
            for i in np.flatnonzero(np.isnan(self.scores)):
                vector_to_parameters(self.population[i], self.params)
                score = self.fitness()
                try:  # a number or a 0-d array (a NumPy or CuPy loss), not a bool or a str
                    if isinstance(score, (bool, np.bool_, str, bytes)):
                        raise TypeError
                    score = float(score)  # NaN (a diverged candidate) ranks last; +inf first
                except (TypeError, ValueError):
                    raise TypeError(f"fitness: expected a number (higher is better), got "
                                    f"{type(score).__name__} {score!r}") from None
                self.scores[i] = -np.inf if math.isnan(score) else score
        except BaseException:  # fitness raised (or Ctrl-C): the model keeps what it held
            vector_to_parameters(before, self.params)
            raise
        finally:
            Module._restore_modes(modes)  # each module's own mode (they may differ)

    def _tournament(self):
        picks = self.rng.choice(self.population_size, self.tournament_size, replace=False)
        return picks[np.argmax(self.scores[picks])]

    def step(self):
        """Score the population, breed the next one; returns the best fitness so far."""
        self._evaluate()
        order = np.argsort(-self.scores, kind="stable")
        if self.scores[order[0]] > self.best_fitness:
            self.best_fitness = float(self.scores[order[0]])
            self.best_vector = self.population[order[0]].copy()
        n, size = self.population_size, self.population.shape[1]
        children = np.empty_like(self.population)
        scores = np.full(n, np.nan)
        children[:self.elite] = self.population[order[:self.elite]]
        scores[:self.elite] = self.scores[order[:self.elite]]  # elites are not scored again
        for i in range(self.elite, n):
            a = self.population[self._tournament()]
            if self.rng.random() < self.crossover_rate:
                b = self.population[self._tournament()]
                child = np.where(self.rng.random(size) < 0.5, a, b)
            else:
                child = a.copy()
            mutate = self.rng.random(size) < self.mutation_rate
            child = child + mutate * self.rng.normal(0.0, self.mutation_std, size)
            children[i] = child
        self.population, self.scores = children, scores
        self.generation += 1
        self.history.append(self.best_fitness)
        vector_to_parameters(self.best_vector, self.params)
        return self.best_fitness

    # The constructor's settings a state_dict carries (a resume goes on with the run's own).
    _settings = ("elite", "tournament_size", "crossover_rate", "mutation_rate", "mutation_std")

    def _checked_setting(self, key, value, name):
        """A setting's value, checked (for this population's size); an error naming ``name``."""
        n = self.population_size
        if key == "elite":
            return _int_in(value, name, 0, n - 1)
        if key == "tournament_size":
            return _int_in(value, name, 1, n)
        if key == "mutation_std":  # finite: an infinite spread makes NaN candidates (inf * 0
            return _number_in(value, name, 0.0, _FLOAT_MAX, ">= 0 and finite")  # unmutated)
        return _number_in(value, name, 0.0, 1.0, "in [0, 1]")  # the rates

    def state_dict(self):
        """Everything that evolves (copies): population, scores, the best so far, generation,
        history and the Generator's state, and the settings (elite, tournament_size, the
        rates, mutation_std); :meth:`load_state_dict` goes on from it exactly."""
        return {"population": self.population.copy(), "scores": self.scores.copy(),
                "best_vector": self.best_vector.copy(), "best_fitness": float(self.best_fitness),
                "generation": self.generation, "history": list(self.history),
                "rng": self.rng.bit_generator.state,
                **{k: getattr(self, k) for k in self._settings}}

    def load_state_dict(self, state_dict):
        """Restore what :meth:`state_dict` returned, from a run of the same population size
        and parameter shapes, and load its best individual into the parameters. Everything is
        checked first: a refused state changes nothing."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict: expected a dict, got {type(state_dict).__name__}")
        missing = [k for k in self.state_dict() if k not in state_dict and k not in
                   self._settings]  # (a state of an earlier release has no settings)
        if missing:
            raise ValueError(f"state_dict: missing {', '.join(map(repr, missing))}")
        new = {}
        for name, shape in (("population", self.population.shape), ("scores", self.scores.shape),
                            ("best_vector", self.best_vector.shape)):
            try:
                value = np.array(state_dict[name], dtype=np.float64)
            except (TypeError, ValueError):
                value = None
            if value is None or value.shape != shape:
                got = "not numbers" if value is None else f"shape {value.shape}"
                raise ValueError(f"state_dict[{name!r}]: expected float64 values of shape "
                                 f"{shape}, got {got}")
            new[name] = value
        try:
            new["best_fitness"] = float(state_dict["best_fitness"])
            new["history"] = [float(v) for v in state_dict["history"]]
        except (TypeError, ValueError):
            raise ValueError("state_dict['best_fitness'] and ['history']: expected numbers, got "
                             f"{state_dict['best_fitness']!r} and {state_dict['history']!r}"
                             ) from None
        new["generation"] = _int_in(state_dict["generation"], "state_dict['generation']", 0)
        for key in self._settings:
            if key in state_dict:
                new[key] = self._checked_setting(key, state_dict[key], f"state_dict[{key!r}]")
        rng = np.random.Generator(type(self.rng.bit_generator)())
        try:  # (the Generator refuses another bit generator's state, or a malformed one)
            rng.bit_generator.state = state_dict["rng"]
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"state_dict['rng']: not a state of this run's "
                             f"{type(self.rng.bit_generator).__name__} ({e})") from None
        self.rng.bit_generator.state = state_dict["rng"]
        for name, value in new.items():
            setattr(self, name, value)
        vector_to_parameters(self.best_vector, self.params)  # (what a step leaves there)

    def run(self, generations, callback=None):
        """``generations`` steps; ``callback(generation, best_fitness)`` after each. Returns the
        best fitness."""
        generations = _int_in(generations, "generations", 0)
        if callback is not None and not callable(callback):
            raise TypeError(f"callback: expected a callable(generation, best_fitness) or None, "
                            f"got {type(callback).__name__}")
        for _ in range(generations):
            best = self.step()
            if callback is not None:
                callback(self.generation, best)
        return self.best_fitness
