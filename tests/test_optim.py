"""Optimizers against hand-computed steps and torch.optim; clipping; schedules; state_dict
resume; the genetic algorithm (seeded, elitist, improves a fitness)."""
import math
import warnings

import numpy as np
import pytest

import fusedrnn as fr
from fusedrnn import optim
from fusedrnn.nn import Parameter


def param(values, grad):
    p = Parameter(np.array(values, dtype=np.float64))
    p.grad = np.array(grad, dtype=np.float64)
    return p


def test_sgd_hand_computed():
    p = param([1.0, -2.0], [0.5, 1.0])
    opt = optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)
    opt.step()  # g = grad + 0.01 p; buf = g
    g1 = np.array([0.5 + 0.01, 1.0 - 0.02])
    np.testing.assert_allclose(p.data, [1.0, -2.0] - 0.1 * g1)
    x1 = p.data.copy()
    opt.step()  # buf = 0.9 buf + g
    g2 = np.array([0.5, 1.0]) + 0.01 * x1
    np.testing.assert_allclose(p.data, x1 - 0.1 * (0.9 * g1 + g2))


def test_sgd_nesterov_hand_computed():
    p = param([1.0], [2.0])
    opt = optim.SGD([p], lr=0.5, momentum=0.5, nesterov=True)
    opt.step()  # buf = 2; g = 2 + 0.5 * 2 = 3
    np.testing.assert_allclose(p.data, [1.0 - 1.5])
    opt.step()  # buf = 0.5*2 + 2 = 3; g = 2 + 1.5
    np.testing.assert_allclose(p.data, [-0.5 - 0.5 * 3.5])


def test_adam_and_adamw_hand_computed():
    p = param([1.0], [0.5])
    optim.Adam([p], lr=0.1).step()
    # first step: m_hat = g, v_hat = g^2 -> update lr * g / (|g| + eps)
    np.testing.assert_allclose(p.data, [1.0 - 0.1 * 0.5 / (0.5 + 1e-8)])
    q = param([1.0], [0.5])
    optim.AdamW([q], lr=0.1, weight_decay=0.1).step()
    np.testing.assert_allclose(q.data, [1.0 * (1 - 0.01) - 0.1 * 0.5 / (0.5 + 1e-8)])


def test_rmsprop_hand_computed():
    p = param([1.0], [2.0])
    optim.RMSprop([p], lr=0.01, alpha=0.9).step()
    np.testing.assert_allclose(p.data, [1.0 - 0.01 * 2.0 / (math.sqrt(0.1 * 4.0) + 1e-8)])


TORCH_CASES = [
    ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=1e-2)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.1, momentum=0.5, dampening=0.3)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.95), weight_decay=1e-2)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=1e-2)),
    ("AdamW", dict(lr=0.01, amsgrad=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, centered=True, weight_decay=1e-3)),
    ("RMSprop", dict(lr=0.01)),
]


@pytest.mark.parametrize("name,kw", TORCH_CASES)
def test_optimizers_match_torch(name, kw, rng):
    torch = pytest.importorskip("torch")
    # a 0-d parameter too (a learnable temperature): its g + wd * p is a NumPy scalar, which
    # left SGD's momentum buffer at its first value
    init = [rng.standard_normal((3, 4)), rng.standard_normal(5), np.array(rng.standard_normal())]
    grads = [[np.asarray(rng.standard_normal(a.shape)) for a in init] for _ in range(5)]
    ours = [Parameter(a.copy()) for a in init]
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    o = getattr(optim, name)(ours, **kw)
    t = getattr(torch.optim, name)(theirs, **kw)
    for step in grads:
        for p, tp, g in zip(ours, theirs, step):
            p.grad = g.copy()
            tp.grad = torch.from_numpy(g.copy())
        o.step()
        t.step()
    for p, tp in zip(ours, theirs):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype, huge", [(np.float32, 1e30), (np.float64, 1e200)])
def test_centered_rmsprop_with_an_overflowing_gradient_matches_torch(dtype, huge):
    """The squared average overflows to inf: the step is 0 there, as torch.optim's (the
    variance was inf - inf = NaN, the parameter NaN)."""
    torch = pytest.importorskip("torch")
    for kw in (dict(lr=0.1, centered=True), dict(lr=0.1, centered=True, momentum=0.5)):
        p = Parameter(np.array([1.0, 2.0], dtype))
        t = torch.nn.Parameter(torch.from_numpy(p.data.copy()))
        o, to = optim.RMSprop([p], **kw), torch.optim.RMSprop([t], **kw)
        for _ in range(2):
            p.grad = np.array([huge, 1.0], dtype)
            t.grad = torch.from_numpy(p.grad.copy())
            with np.errstate(over="ignore"):
                o.step()
            to.step()
        assert p.data[0] == 1.0  # (no step where the average is inf)
        np.testing.assert_allclose(p.data, t.detach().numpy(),
                                   rtol=1e-6 if dtype == np.float32 else 1e-12)


def test_clip_grad_norm_returns_total_norm_and_scales():
    a, b = param([0.0, 0.0], [3.0, 0.0]), param([0.0], [4.0])
    total = optim.clip_grad_norm_([a, b], 1.0)
    assert total == pytest.approx(5.0)
    np.testing.assert_allclose(np.concatenate([a.grad, b.grad]), np.array([3, 0, 4]) / (5 + 1e-6))
    c = param([0.0], [0.5])
    assert optim.clip_grad_norm_([c], 1.0) == pytest.approx(0.5)
    np.testing.assert_allclose(c.grad, [0.5])  # below the threshold: unchanged
    d = param([0.0, 0.0], [-3.0, 2.0])
    assert optim.clip_grad_norm_([d], 1.0, norm_type=float("inf")) == pytest.approx(3.0)


def test_clip_grad_value():
    p = param([0.0, 0.0, 0.0], [-3.0, 0.2, 9.0])
    optim.clip_grad_value_([p], 1.0)
    np.testing.assert_allclose(p.grad, [-1.0, 0.2, 1.0])


def test_schedules():
    p = param([0.0], [0.0])
    opt = optim.SGD([p], lr=1.0)
    s = optim.StepLR(opt, step_size=2, gamma=0.5)
    lrs = []
    for _ in range(5):
        s.step()
        lrs.append(s.get_last_lr()[0])
    assert lrs == [1.0, 0.5, 0.5, 0.25, 0.25]
    opt2 = optim.SGD([param([0.0], [0.0])], lr=1.0)
    c = optim.CosineAnnealingLR(opt2, T_max=4, eta_min=0.0)
    for _ in range(2):
        c.step()
    assert c.get_last_lr()[0] == pytest.approx(0.5)
    for _ in range(2):
        c.step()
    assert c.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("schedules", [["step"], ["cosine"], ["step", "cosine"],
                                       ["step", "step"]])
def test_schedules_chain_and_keep_a_change_by_hand_as_torch_s(schedules):
    """Each step set lr from the initial one alone: a second scheduler on the optimizer, or a
    change by hand, was overwritten (StepLR + CosineAnnealingLR gave 0.079 where torch gives
    0.040). Now each scales the current lr, as torch's do."""
    torch = pytest.importorskip("torch")

    def lrs(lib, opt):
        made = [lib.StepLR(opt, 3 + i, 0.5) if k == "step" else lib.CosineAnnealingLR(opt, 10)
                for i, k in enumerate(schedules)]
        seen = []
        for epoch in range(25):
            seen.append([g["lr"] for g in opt.param_groups])
            if epoch == 4:
                opt.param_groups[0]["lr"] = 0.01
            for s in made:
                s.step()
        return np.array(seen)

    ours = optim.SGD([{"params": [param([0.0], [0.0])]},
                      {"params": [param([0.0], [0.0])], "lr": 0.3}], lr=0.1)
    theirs = torch.optim.SGD([{"params": [torch.zeros(1)]}, {"params": [torch.zeros(1)],
                                                             "lr": 0.3}], lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch: a scheduler step before an optimizer step)
        expected = lrs(torch.optim.lr_scheduler, theirs)
    np.testing.assert_allclose(lrs(optim, ours), expected, rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize("schedule", ["step", "cosine"])
def test_a_group_added_after_the_scheduler_is_scheduled_as_torch_s(schedule):
    """A group added by add_param_group (layers unfrozen in training) kept its lr for good
    (StepLR: [0.125, 1.0] where torch gives [0.125, 0.125]), and the scheduler's own state_dict
    then failed to load. A state saved before the group came still loads."""
    torch = pytest.importorskip("torch")

    def lrs(lib, opt, add):
        sched = lib.StepLR(opt, 1, 0.5) if schedule == "step" else lib.CosineAnnealingLR(opt, 8)
        saved = sched.state_dict()
        seen = []
        for epoch in range(7):
            if epoch == 2:
                opt.add_param_group({"params": [add], "lr": 0.6})
            sched.step()
            seen.append(sched.get_last_lr())
        if lib is optim:
            sched.load_state_dict(sched.state_dict())
            sched.load_state_dict(saved)  # (from before the group came: its base stays)
            assert sched.base_lrs == [1.0, 0.6]
        return np.array(seen[2:])

    ours = lrs(optim, optim.SGD([param([0.0], [0.0])], lr=1.0), param([0.0], [0.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch: a scheduler step before an optimizer step)
        theirs = lrs(torch.optim.lr_scheduler, torch.optim.SGD([torch.zeros(1)], lr=1.0),
                     torch.zeros(1))
    np.testing.assert_allclose(ours, theirs, rtol=1e-13)


@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop"])
def test_state_dict_resume_equals_uninterrupted(name, rng, tmp_path):
    kw = dict(lr=0.05, momentum=0.9) if name != "Adam" else dict(lr=0.05)
    init = rng.standard_normal(4)
    grads = [rng.standard_normal(4) for _ in range(6)]

    def run(steps, p, o):
        for g in steps:
            p.grad = g.copy()
            o.step()

    p1 = Parameter(init.copy())
    o1 = getattr(optim, name)([p1], **kw)
    run(grads, p1, o1)

    p2 = Parameter(init.copy())
    o2 = getattr(optim, name)([p2], **kw)
    run(grads[:3], p2, o2)
    fr.save({"param": p2.data, "opt": o2}, tmp_path / "ckpt.npz")
    saved = fr.load(tmp_path / "ckpt.npz")
    p3 = Parameter(saved["param"].copy())
    o3 = getattr(optim, name)([p3], lr=123.0)  # hyper-parameters come back from the file
    o3.load_state_dict(saved["opt"])
    run(grads[3:], p3, o3)
    np.testing.assert_array_equal(p3.data, p1.data)


def test_load_state_dict_rejects_mismatch():
    opt = optim.Adam([param([0.0, 0.0], [1.0, 1.0])])
    opt.step()
    other = optim.Adam([param([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])])
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(opt.state_dict())


@pytest.mark.parametrize("change, match", [
    (lambda d: d["param_groups"][0].update(lr="x"),
     r"^state_dict\['param_groups'\]\[0\]\['lr'\]: expected a number >= 0, got 'x'"),
    (lambda d: d["param_groups"][0].update(betas=(0.9, 2.0)),
     r"^state_dict\['param_groups'\]\[0\]\['betas'\]: expected two numbers"),
    (lambda d: d.update(state=[]), r"^state_dict\['state'\]: expected a dict"),
    (lambda d: d.update(state={"abc": {}}), r"^state_dict\['state'\]: expected parameter "
                                            r"indices as keys, got 'abc'"),
    (lambda d: d.update(state={0: 5}), r"^state_dict\['state'\]\[0\]: expected a dict"),
])
def test_load_state_dict_names_a_bad_value_and_changes_nothing(change, match):
    """A hyper-parameter or state entry of the wrong kind is named at load_state_dict (it
    failed at the next step, or with a bare AttributeError), and the optimizer keeps its own."""
    import copy
    opt = optim.Adam([param([0.0, 0.0], [1.0, 1.0])], lr=0.1)
    opt.step()
    saved, before = opt.state_dict(), copy.deepcopy(opt.state_dict())
    change(saved)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(saved)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    np.testing.assert_array_equal(after["state"][0]["exp_avg"], before["state"][0]["exp_avg"])


def test_genetic_algorithm_seeded_elitist_and_improving():
    target = np.linspace(-1, 1, 6)
    p = Parameter(np.zeros(6))

    def fitness():
        return -float(np.sum((p.data - target) ** 2))

    def evolve(seed):
        p.data[...] = 0
        ga = optim.GeneticAlgorithm([p], fitness, population_size=30, elite=2, mutation_rate=0.3,
                                    mutation_std=0.2, init_std=0.5, seed=seed)
        ga.run(40)
        return ga, p.data.copy()

    ga, best = evolve(5)
    assert all(b2 >= b1 for b1, b2 in zip(ga.history, ga.history[1:]))  # elitism: never worse
    assert ga.best_fitness > 0.1 * -np.sum(target ** 2)  # far better than the start (all zeros)
    np.testing.assert_allclose(fitness(), ga.best_fitness)  # parameters hold the best
    _, again = evolve(5)
    np.testing.assert_array_equal(best, again)  # reproducible


def test_genetic_algorithm_keeps_frozen_parameters():
    target = np.linspace(-1, 1, 6)
    p, frozen = Parameter(np.zeros(6)), Parameter(np.ones(3)).requires_grad_(False)

    def fitness():
        return -float(np.sum((p.data - target) ** 2) + np.sum(frozen.data ** 2))

    ga = optim.GeneticAlgorithm([p, frozen], fitness, population_size=10, seed=0)
    assert ga.population.shape == (10, 6)
    ga.run(5)
    np.testing.assert_array_equal(frozen.data, np.ones(3))
    assert p.data.any()
    with pytest.raises(ValueError, match="every one of the 1 parameters is frozen"):
        optim.GeneticAlgorithm([frozen], fitness)


def test_genetic_algorithm_trains_a_recurrent_model_with_inference_forward():
    """A tiny GRU classifier: the GA uses only inference-mode forwards and beats chance."""
    from fusedrnn.tasks.common import SequenceClassifier
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 64, 2)).astype(np.float32)
    y = (x[:, :, 0].sum(0) > 0).astype(np.int64)
    model = SequenceClassifier("gru", 2, 4, 2, seed=0)
    loss_fn = fr.nn.CrossEntropyLoss()

    def fitness():
        assert not model.training
        return -loss_fn(model(x), y)

    ga = optim.GeneticAlgorithm(model, fitness, population_size=20, mutation_rate=0.2,
                                mutation_std=0.3, seed=1)
    ga.run(25)
    model.eval()
    acc = np.mean(np.argmax(model(x), 1) == y)
    assert model.rnn._saved is None
    assert acc > 0.75


def test_genetic_algorithm_interrupted_step_keeps_the_parameters():
    """fitness raising (an error, or Ctrl-C) mid-generation leaves the model as it was, not
    holding whichever candidate was being scored."""
    p = Parameter(np.arange(4.0))
    calls = []

    def fitness():
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return -float(np.sum(p.data ** 2))

    ga = optim.GeneticAlgorithm([p], fitness, population_size=6, init_std=1.0, seed=0)
    with pytest.raises(KeyboardInterrupt):
        ga.step()
    np.testing.assert_array_equal(p.data, np.arange(4.0))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(population_size=2.5), TypeError, "population_size: expected an integer, got float"),
    (dict(population_size="10"), TypeError, "population_size: expected an integer, got str"),
    (dict(population_size=1), ValueError, "population_size: expected an integer >= 2"),
    (dict(population_size=10.0), TypeError, "population_size: expected an integer, got float"),
    (dict(elite=50), ValueError, r"elite: expected an integer in \[0, 49\]"),
    (dict(tournament_size=0), ValueError, "tournament_size"),
    (dict(mutation_rate=-1), ValueError, r"mutation_rate: expected a number in \[0, 1\]"),
    (dict(crossover_rate=1.5), ValueError, "crossover_rate"),
    (dict(mutation_std=-0.1), ValueError, "mutation_std: expected a number >= 0"),
    (dict(mutation_std=float("inf")), ValueError, "mutation_std: expected a number >= 0 and fin"),
    (dict(init_std=float("inf")), ValueError, "init_std: expected a number >= 0 and finite"),
    (dict(init_std=float("nan")), ValueError, "init_std"),
])
def test_genetic_algorithm_refuses_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        optim.GeneticAlgorithm([Parameter(np.zeros(3))], lambda: 0.0, **kwargs)
    optim.GeneticAlgorithm([Parameter(np.zeros(3))], lambda: 0.0, population_size=np.int64(4))


def test_genetic_algorithm_refuses_bad_run_arguments_and_empty_params():
    ga = optim.GeneticAlgorithm([Parameter(np.zeros(3))], lambda: 0.0, population_size=4, seed=0)
    for generations, error in ((2.7, TypeError), ("3", TypeError), (True, TypeError),
                               (None, TypeError), (-1, ValueError)):
        with pytest.raises(error, match="generations: expected an integer"):
            ga.run(generations)
    with pytest.raises(TypeError, match="callback: expected a callable"):
        ga.run(3, callback="not callable")
    assert ga.generation == 0  # refused before any work
    assert ga.run(np.int64(1)) == 0.0 and ga.generation == 1
    assert ga.run(np.array(1)) == 0.0 and ga.generation == 2  # (a 0-d array, as np.load gives)
    with pytest.raises(ValueError, match="params: the genetic algorithm got an empty"):
        optim.GeneticAlgorithm([], lambda: 0.0)


def test_clip_and_adam_refuse_bad_arguments():
    p = param([0.0, 0.0], [3.0, 4.0])
    for norm_type in (0, -1, "fro", None, float("nan")):
        with pytest.raises(ValueError, match="norm_type: expected a number > 0"):
            optim.clip_grad_norm_([p], 1.0, norm_type)
    assert optim.clip_grad_norm_([p], 100.0, "inf") == 4.0  # torch's spelling of inf
    for betas in (0.9, (0.9,), (0.9, 1.0), ("a", 0.9), "ab", (0.9, None)):
        with pytest.raises(ValueError, match="betas: expected two numbers"):
            optim.Adam([p], betas=betas)
    assert optim.Adam([p], betas=np.array([0.8, 0.99])).param_groups[0]["betas"] == (0.8, 0.99)
    with pytest.raises(ValueError, match="norm_type"):  # checked with no gradient too
        optim.clip_grad_norm_([Parameter(np.zeros(2))], 1.0, 0)
    with pytest.raises(ValueError, match="^momentum: expected a number >= 0, got 'a'"):
        optim.SGD([p], momentum="a", nesterov=True)  # (was a bare TypeError of the <=)
    # nesterov's rule holds for groups added or loaded later too (they ran plain SGD)
    sgd = optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True)
    saved = sgd.state_dict()
    saved["param_groups"][0]["momentum"] = 0
    for call in (lambda: sgd.load_state_dict(saved),
                 lambda: sgd.add_param_group({"params": [Parameter(np.ones(2))], "momentum": 0})):
        with pytest.raises(ValueError, match="^nesterov: requires momentum > 0"):
            call()
    assert len(sgd.param_groups) == 1 and sgd.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ValueError, match="^nesterov: requires momentum > 0"):  # as torch's
        optim.SGD([{"params": [p], "momentum": 0.9}], lr=0.1, nesterov=True)  # defaults: 0


def test_clipping_and_steps_refuse_what_torch_refuses_and_keep_nan():
    """The inf norm sees a NaN in any gradient (Python's max dropped one past the first) and a
    non-finite norm scales by NaN as torch's does (or raises on request); a gradient of
    another shape is named (NumPy broadcast it into the step silently)."""
    a, b = Parameter(np.zeros(2)), Parameter(np.zeros(2))
    a.grad, b.grad = np.array([1.0, 2.0]), np.array([np.nan, 4.0])
    assert math.isnan(optim.clip_grad_norm_([a, b], 1.0, norm_type=math.inf, foreach=None))
    assert np.isnan(a.grad).all()
    a.grad = np.array([1.0, np.inf])
    with pytest.raises(RuntimeError, match="total norm .* is inf"):
        optim.clip_grad_norm_([a], 1.0, error_if_nonfinite=True)
    w = Parameter(np.zeros(4))
    w.grad = np.ones(4)
    w.data = np.zeros((3, 4))  # (a gradient held from before; one assigned is checked then)
    for opt in (optim.SGD([w], lr=0.1), optim.Adam([w]), optim.RMSprop([w])):
        with pytest.raises(ValueError, match=r"\['params'\]\[0\]\.grad: expected the parameter's "
                                             r"shape \(3, 4\), got \(4,\)"):
            opt.step()
    assert not w.data.any()


def test_groups_schedulers_and_state_dicts_are_checked():
    p, q = Parameter(np.zeros(3)), Parameter(np.zeros(2))
    assert optim.SGD(p, lr=0.1).param_groups[0]["params"] == [p]  # a lone Parameter, as clip's
    assert optim.Adam([{"params": [p], "betas": [0.5, 0.6]}]).param_groups[0]["betas"] == (0.5, 0.6)
    with pytest.raises(ValueError, match=r"params\[0\]\['betas'\]: expected two numbers in \[0, 1\)"):
        optim.Adam([{"params": [p], "betas": (0.9, 1.5)}])
    with pytest.raises(ValueError, match=r"group 0 lacks \['betas', 'eps'\]: another optimizer's"):
        optim.Adam([p]).load_state_dict(optim.SGD([p], lr=0.1).state_dict())
    opt = optim.SGD([{"params": [p]}, {"params": [q], "lr": 0.5}], lr=0.1)
    for make, name in ((lambda: optim.CosineAnnealingLR(opt, "10"), "T_max"),
                       (lambda: optim.CosineAnnealingLR(opt, 10, eta_min=-1), "eta_min"),
                       (lambda: optim.StepLR(opt, 2, gamma=-1), "gamma")):
        with pytest.raises(ValueError, match=name):
            make()
    sched = optim.StepLR(opt, 2)
    for bad, words in (({}, "expected a scheduler's state_dict"),
                       ({"last_epoch": 1, "base_lrs": [0.1] * 3}, "base_lrs of 3 groups")):
        with pytest.raises(ValueError, match=words):
            sched.load_state_dict(bad)


def test_genetic_algorithm_defaults_fit_a_small_population_and_a_load_sets_the_best():
    """population_size=2 failed on elite, an argument not passed; a load_state_dict left the
    parameters as they were, not at the loaded run's best, where a step leaves them."""
    p = Parameter(np.zeros(3))
    ga = optim.GeneticAlgorithm([p], lambda: -float(np.sum((p.data - 1) ** 2)),
                                population_size=2, seed=0)
    assert (ga.elite, ga.tournament_size) == (1, 2)
    ga.run(3)
    state = ga.state_dict()
    other = Parameter(np.full(3, 5.0))
    optim.GeneticAlgorithm([other], lambda: 0.0, population_size=2, seed=1).load_state_dict(state)
    np.testing.assert_array_equal(other.data, state["best_vector"])
    with pytest.raises(ValueError, match=r"elite: expected an integer in \[0, 1\], got 2"):
        optim.GeneticAlgorithm([p], lambda: 0.0, population_size=2, elite=2)


@pytest.mark.parametrize("values", [np.arange(3), np.ones(2, complex), np.ones(2, bool)])
def test_a_parameter_holds_floating_point_values(values):
    """An integer parameter never moved (SGD's step truncated to 0), a complex one lost its
    imaginary part in the genetic algorithm and clipping; torch refuses both for training."""
    with pytest.raises(TypeError, match=f"data: a Parameter holds floating-point values, got "
                                        f"{values.dtype}"):
        Parameter(values)
    p = Parameter(np.zeros(2, np.float32))
    with pytest.raises(TypeError, match="floating-point"):
        p.data = values
    for other in ([1.0, 2.0], 3.0):  # (an AttributeError on .dtype)
        with pytest.raises(TypeError, match=r"data: expected a numpy.ndarray \(or a CuPy"):
            p.data = other
    assert p.data.dtype == np.float32


def test_genetic_algorithm_keeps_inf_and_an_explicit_zero_spread():
    p = Parameter(np.array([1.0, 2.0]))
    ga = optim.GeneticAlgorithm([p], lambda: float("inf") if p.data[0] == 1.0 else -1.0,
                                population_size=4, init_std=0.0, seed=0)
    assert (ga.population == p.data).all()  # init_std=0: every candidate the start
    ga.step()
    assert ga.best_fitness == math.inf
    with pytest.raises(TypeError, match="fitness: expected a number"):
        optim.GeneticAlgorithm([p], lambda: None, population_size=4, seed=0).step()


def test_a_tied_parameter_listed_twice_in_a_group_is_kept_once_with_a_warning():
    """Weight tying lists one parameter under two names: torch.optim warns (and steps it
    twice); ours warns at the user's line and keeps it once, so one step is one update."""
    emb, head = fr.nn.Embedding(10, 4, seed=0), fr.nn.Linear(4, 10, seed=1)
    head.weight = emb.weight
    with pytest.warns(UserWarning, match=r"params\[0\]\['params'\]: a parameter appears "
                                         r"more than once") as caught:
        opt = optim.SGD(list(emb.parameters()) + list(head.parameters()), lr=0.5)
    assert caught[0].filename == __file__
    assert opt.param_groups[0]["params"] == [emb.weight, head.bias]
    before = emb.weight.data.copy()
    emb.weight.grad = np.ones_like(before)
    head.bias.grad = np.zeros(10)
    opt.step()
    np.testing.assert_array_equal(emb.weight.data, before - 0.5)
    with pytest.warns(UserWarning, match="param_group") as caught:
        optim.SGD([head.bias], lr=0.1).add_param_group({"params": [emb.weight, emb.weight]})
    assert caught[0].filename == __file__
    with pytest.warns(UserWarning, match="more than once") as caught:
        optim.AdamW([emb.weight, emb.weight])
    assert caught[0].filename == __file__
    with pytest.raises(ValueError, match="more than one group"):
        optim.SGD([{"params": [emb.weight]}, {"params": [head.weight]}], lr=0.1)


def test_add_param_group_as_torch():
    p, q = Parameter(np.zeros(3)), Parameter(np.zeros(2))
    opt = optim.Adam([p])
    opt.add_param_group({"params": [q], "lr": 0.5})
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 0.5]
    q.grad = np.ones(2)
    opt.step()
    assert (q.data < 0).all()
    with pytest.raises(ValueError, match="param_group: a parameter appears in more than one"):
        opt.add_param_group({"params": [q]})


def test_an_array_for_the_parameters_is_named_as_such():
    """clip_grad_norm_(array) said "params[0]: expected a Parameter, got float64"."""
    for call in (lambda: optim.clip_grad_norm_(np.ones(3), 1.0),
                 lambda: optim.clip_grad_value_(np.ones(3), 1.0)):
        with pytest.raises(TypeError, match=r"^parameters: expected a Module, a Parameter or an "
                                            r"iterable of Parameters, got ndarray \(an array"):
            call()
    with pytest.raises(TypeError, match="^params: expected a Module.*got ndarray"):
        optim.SGD(np.ones(3), lr=0.1)


def test_a_fractional_cosine_period_and_a_closed_form_schedule_still_step():
    """A T_max of 1/3 made the chained step divide by zero near a trough its test missed; a
    scheduler of an earlier release defining lr_at alone raised NotImplementedError."""
    opt = optim.SGD([param([0.0], [0.0])], lr=0.1)
    cosine = optim.CosineAnnealingLR(opt, T_max=1 / 3)
    for _ in range(6):
        cosine.step()
        assert 0.0 <= opt.param_groups[0]["lr"] <= 0.1 + 1e-12

    class Halving(optim.LRScheduler):
        def lr_at(self, base_lr, epoch):
            return base_lr / 2 ** epoch
    opt = optim.SGD([param([0.0], [0.0])], lr=0.1)
    halving = Halving(opt)
    halving.step()
    halving.step()
    assert opt.param_groups[0]["lr"] == 0.025


@pytest.mark.parametrize("bad, error, match", [
    (lambda g: g.astype(complex), TypeError, r"\[1\]\.grad: expected an array of real "
                                             r"numbers \(NumPy, or CuPy for a CUDA parameter\), "
                                             r"got dtype complex128"),
    (lambda g: g.astype(object), TypeError, "got dtype object"),
    (lambda g: np.ma.MaskedArray(g, mask=g > 0), TypeError, r"\[1\]\.grad: expected a plain "
                                                            r"numpy.ndarray, got a masked array")])
@pytest.mark.parametrize("make", [lambda ps: optim.Adam(ps, lr=0.1),
                                  lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
                                  lambda ps: optim.RMSprop(ps, lr=0.1, centered=True)])
def test_a_step_with_a_bad_gradient_changes_no_parameter_and_no_state(make, bad, error, match):
    # refused before any update: the next good steps are those of a run that never saw it
    rng = np.random.default_rng(0)
    values = [rng.standard_normal(3), rng.standard_normal((2, 2))]
    grads = [rng.standard_normal(3), rng.standard_normal((2, 2))]
    runs = []
    for refused in (False, True):
        ps = [Parameter(v.copy()) for v in values]
        opt = make(ps)
        for step in range(3):
            if refused and step == 1:
                ps[0].grad, ps[1].grad = grads[0].copy(), bad(grads[1])
                with pytest.raises(error, match=match):
                    opt.step()
            for p, g in zip(ps, grads):
                p.grad = g.copy()
            opt.step()
        runs.append([p.data for p in ps])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make", [lambda ps: optim.Adam(ps, lr=0.1),
                                  lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9)])
def test_a_read_only_parameter_steps_as_a_writable_one(make):
    """A step writes the parameters in place: a read-only one (np.load's mmap, a broadcast)
    raised NumPy's error after Adam had counted the step and moved its moments. It is given a
    writable copy first, as load_state_dict does, and steps as a writable one."""
    rng = np.random.default_rng(0)
    values = [rng.standard_normal(3), rng.standard_normal(3)]
    runs = []
    for read_only in (False, True):
        ps = [Parameter(v.copy()) for v in values]
        if read_only:
            ps[1].data = np.broadcast_to(ps[1].data, (3,))
            assert not ps[1].data.flags.writeable
        opt = make(ps)
        for _ in range(2):
            for p in ps:
                p.grad = np.ones(3)
            opt.step()
        optim.vector_to_parameters(optim.parameters_to_vector(ps) * 2, ps)
        runs.append([p.data.copy() for p in ps])
        if read_only:  # (vector_to_parameters too)
            ps[0].data = np.broadcast_to(np.ones(1), (3,))
            optim.vector_to_parameters(np.arange(6.0), ps)
            np.testing.assert_array_equal(ps[0].data, [0, 1, 2])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_the_gradient_check_takes_a_cuda_array():
    # (a CUDA layer's gradients are CuPy arrays; the GPU tests step them: tests/test_cuda.py)
    class DeviceArray:
        __cuda_array_interface__ = {}
        shape, dtype = (3,), np.dtype(np.float32)
    p = Parameter(np.ones(3, np.float32))
    p.grad = DeviceArray()
    opt = optim.SGD([p], lr=0.1)
    assert [q for _, q, _ in opt._params_with_grad()] == [p]


def test_a_group_s_options_outside_the_optimizer_s_are_refused_by_name():
    # torch's maximize in a group was kept and ignored: the steps went the other way
    p = Parameter(np.ones(3))
    for make, bad in ((lambda g: optim.SGD(g, lr=0.1), "maximize"),
                      (lambda g: optim.Adam(g), "foreach"),
                      (lambda g: optim.Adam(g), "momentum")):
        with pytest.raises(TypeError, match=rf"takes no option '{bad}' \(its options: lr, "):
            make([{"params": [p], bad: True}])
        opt = make([p])
        with pytest.raises(TypeError, match=rf"^param_group: .* takes no option '{bad}'"):
            opt.add_param_group({"params": [Parameter(np.ones(2))], bad: True})
    with pytest.raises(TypeError, match="^centered: expected"):
        optim.RMSprop([p], centered=np.array([1, 0]))
    # a key of the user's own (a group's name) is kept, as torch keeps it; a subclass's
    # integer setting stays an int
    opt = optim.Adam([{"params": [p], "name": "encoder"}])
    assert opt.param_groups[0]["name"] == "encoder"
    opt.load_state_dict(opt.state_dict())

    class EveryK(optim.Optimizer):
        def __init__(self, params, lr=0.1, k=2):
            super().__init__(params, dict(lr=lr, k=k))

        def _update(self, group, p, grad, state):
            for _ in range(group["k"]):
                p.data -= group["lr"] * grad
    p.grad = np.ones(3)
    EveryK([p]).step()
    np.testing.assert_allclose(p.data, 0.8)


@pytest.mark.parametrize("make", [lambda t, ps, lr: t.Adam(ps, lr=lr, weight_decay=0.1),
                                  lambda t, ps, lr: t.AdamW(ps, lr=lr, amsgrad=True),
                                  lambda t, ps, lr: t.RMSprop(ps, lr=lr, centered=True)])
def test_a_float32_lr_or_gradient_steps_a_float64_parameter_in_float64(make):
    # the lr kept as given (np.float32) and a float32 gradient squared in float32 rounded the
    # steps to float32 (1e-8 off torch's, given the same values in float64)
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    start, grads = rng.standard_normal(5), [rng.standard_normal(5) for _ in range(4)]
    ours = Parameter(start.copy())
    theirs = torch.nn.Parameter(torch.from_numpy(start.copy()))
    a, b = make(optim, [ours], np.float32(0.1)), make(torch.optim, [theirs], float(np.float32(0.1)))
    for g in grads:
        ours.grad = g.astype(np.float32)
        theirs.grad = torch.from_numpy(g.astype(np.float32).astype(np.float64))
        a.step()
        b.step()
    np.testing.assert_allclose(ours.data, theirs.detach().numpy(), rtol=1e-14, atol=1e-15)


def test_clipping_refuses_integer_gradients():
    # clip_grad_norm_ truncated the scaled integers to 0; clip_grad_value_ raised NumPy's error
    p = Parameter(np.ones(3))
    p.grad = np.array([3, 4, 0])
    for clip in (lambda: optim.clip_grad_norm_([p], 1.0), lambda: optim.clip_grad_value_([p], 1.0)):
        with pytest.raises(TypeError, match=r"^parameters\[0\]\.grad: expected a floating-point "
                                            r"array \(clipping scales it in place\), got dtype int"):
            clip()
    assert p.grad.tolist() == [3, 4, 0]


def test_schedulers_last_lr_and_settings_as_torch_s():
    # get_last_lr gave the group's lr now (another scheduler's, or a change by hand), and a
    # state_dict left out the settings (a load kept the loading scheduler's)
    torch = pytest.importorskip("torch")
    got = {}
    for lib in (optim, torch.optim):
        p = Parameter(np.ones(2)) if lib is optim else torch.nn.Parameter(torch.ones(2))
        opt = lib.SGD([p], lr=0.1)
        sched = lib.lr_scheduler if lib is torch.optim else lib
        step, cosine = sched.StepLR(opt, 3, 0.5), sched.CosineAnnealingLR(opt, 7, 0.01)
        lasts = []
        for _ in range(5):
            opt.step()
            step.step()
            cosine.step()
            lasts.append((step.get_last_lr(), cosine.get_last_lr()))
        opt.param_groups[0]["lr"] = 7.0
        lasts.append((step.get_last_lr(), cosine.get_last_lr()))
        other = sched.StepLR(lib.SGD([p], lr=0.1), 7, 0.9)
        other.load_state_dict(step.state_dict())
        got[lib] = (lasts, other.step_size, other.gamma)
    np.testing.assert_allclose(np.array(got[optim][0]), np.array(got[torch.optim][0]), rtol=1e-15)
    assert got[optim][1:] == got[torch.optim][1:] == (3, 0.5)


def test_a_scheduler_state_of_an_earlier_release_gives_the_groups_lr_as_last():
    p = Parameter(np.ones(2))
    opt = optim.SGD([p], lr=0.1)
    sched = optim.StepLR(opt, 1, 0.5)
    opt.param_groups[0]["lr"] = 0.025  # (as the optimizer's loaded state would hold it)
    sched.load_state_dict({"last_epoch": 2, "base_lrs": [0.1]})  # (no _last_lr, no settings)
    assert sched.get_last_lr() == [0.025] and (sched.step_size, sched.gamma) == (1, 0.5)
    opt.add_param_group({"params": [Parameter(np.ones(1))], "lr": 0.3})
    sched.load_state_dict({"last_epoch": 2, "base_lrs": [0.1], "_last_lr": [0.025]})
    assert sched.get_last_lr() == [0.025, 0.3]


def test_genetic_algorithm_state_carries_its_settings_and_a_listed_twice_parameter_once():
    # a resume into a GA built with another mutation_std went on with that one; a parameter
    # listed twice took two places in the vector, the first never reaching the parameter
    def run(std, state=None):
        lin = fr.nn.Linear(3, 2, seed=0)
        ga = optim.GeneticAlgorithm(lin, lambda: -float(np.sum(lin.weight.data ** 2)),
                                    population_size=4, mutation_std=std, seed=1)
        if state is not None:
            ga.load_state_dict(state)
        ga.run(2)
        return ga
    first = run(0.1)
    resumed, straight = run(5.0, first.state_dict()), run(0.1)
    straight.run(2)
    assert resumed.mutation_std == 0.1
    np.testing.assert_array_equal(resumed.best_vector, straight.best_vector)
    old = {k: v for k, v in first.state_dict().items() if k not in optim.GeneticAlgorithm._settings}
    assert run(0.3, old).mutation_std == 0.3  # (a state of an earlier release: its own settings)
    with pytest.raises(ValueError, match=r"^state_dict\['mutation_rate'\]: expected a number in "
                                         r"\[0, 1\]"):
        run(0.1, {**first.state_dict(), "mutation_rate": 2.0})
    p = Parameter(np.zeros(3))
    with pytest.warns(UserWarning, match="params: a parameter appears more than once") as caught:
        ga = optim.GeneticAlgorithm([p, p], lambda: float(p.data.sum()), population_size=3)
    assert caught[0].filename == __file__ and ga.population.shape == (3, 3)


@pytest.mark.parametrize("switch", ["momentum", "centered"])
def test_rmsprop_takes_momentum_or_centered_switched_on_after_a_step(switch):
    """The buffers were made at the first step only: switching one on later raised KeyError
    after the step count and square_avg had moved (a refused step changed the state). They
    start from zeros then, as Adam's amsgrad does."""
    p = Parameter(np.array([1.0, -2.0]))
    opt = optim.RMSprop([p], lr=0.1, alpha=0.9)
    p.grad = np.array([0.5, 1.0])
    opt.step()
    opt.param_groups[0][switch] = 0.9 if switch == "momentum" else True
    before, sq = p.data.copy(), opt.state[p]["square_avg"].copy()
    g = np.array([0.25, -1.0])
    p.grad = g.copy()
    opt.step()
    sq = 0.9 * sq + 0.1 * g * g
    var = sq - (0.1 * g) ** 2 if switch == "centered" else sq
    np.testing.assert_allclose(p.data, before - 0.1 * g / (np.sqrt(var) + 1e-8), rtol=1e-14)
    assert opt.state[p]["step"] == 2
