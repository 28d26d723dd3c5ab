"""CrossEntropyLoss and MSELoss: values against direct formulas and torch, backward against
central differences (float64)."""
import numpy as np
import pytest

import fusedrnn as fr
from conftest import TOLERANCES, relative_error
from test_layers import numeric_grad

FD_TOL = TOLERANCES["reference_vs_finite_differences"]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_backward_matches_finite_differences(reduction, rng):
    logits = rng.standard_normal((4, 3, 5))  # [T, N, C], classes last
    target = rng.integers(0, 5, (4, 3))
    target[0, 1] = target[2, 2] = -100  # ignored
    loss_fn = fr.nn.CrossEntropyLoss(reduction=reduction)
    R = rng.standard_normal(target.shape) if reduction == "none" else 1.7
    loss_fn(logits, target)
    d = loss_fn.backward(R)

    def f():
        return float(np.sum(loss_fn(logits, target) * R))

    assert relative_error(d, numeric_grad(f, logits)) < FD_TOL
    assert np.all(d[0, 1] == 0) and np.all(d[2, 2] == 0)


def test_cross_entropy_value_ignore_index_and_stability():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0], [5.0, 1.0, 2.0]])
    target = np.array([1, 2, 7])
    loss = fr.nn.CrossEntropyLoss(ignore_index=7)(logits, target)
    assert np.isfinite(loss)
    np.testing.assert_allclose(loss, (1000.0 + np.log(3.0)) / 2)  # averaged over 2 valid targets
    assert fr.nn.CrossEntropyLoss()(logits, np.full(3, -100)) == 0.0
    with pytest.raises(ValueError, match="target"):
        fr.nn.CrossEntropyLoss()(logits, np.array([0, 3, 1]))


def test_cross_entropy_matches_torch(rng):
    torch = pytest.importorskip("torch")
    logits = rng.standard_normal((6, 4))
    target = np.array([0, 3, 1, -100, 2, 2])
    ours = fr.nn.CrossEntropyLoss()
    loss = ours(logits, target)
    t = torch.from_numpy(logits).requires_grad_(True)
    tl = torch.nn.functional.cross_entropy(t, torch.from_numpy(target))
    tl.backward()
    assert abs(loss - tl.item()) < 1e-12
    assert relative_error(ours.backward(), t.grad.numpy()) < 1e-12


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_backward_matches_finite_differences(reduction, rng):
    x = rng.standard_normal((3, 4))
    y = rng.standard_normal((3, 4))
    loss_fn = fr.nn.MSELoss(reduction)
    R = rng.standard_normal(x.shape) if reduction == "none" else 0.3
    loss_fn(x, y)
    d = loss_fn.backward(R)
    assert relative_error(d, numeric_grad(lambda: float(np.sum(loss_fn(x, y) * R)), x)) < FD_TOL
    if reduction == "mean":
        np.testing.assert_allclose(loss_fn(x, y), np.mean((x - y) ** 2))


def test_float32_losses_keep_dtype(rng):
    logits = rng.standard_normal((5, 3)).astype(np.float32)
    ce = fr.nn.CrossEntropyLoss()
    ce(logits, np.array([0, 1, 2, 0, 1]))
    assert ce.backward().dtype == np.float32
    mse = fr.nn.MSELoss()
    mse(logits, np.zeros_like(logits))
    assert mse.backward().dtype == np.float32


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_label_smoothing_matches_torch(reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((4, 5, 7)), rng.integers(0, 7, (4, 5))
    t[0, 0] = -100
    for eps in (0.1, 0.5):
        f = fr.nn.CrossEntropyLoss(reduction=reduction, label_smoothing=eps)
        xt = torch.tensor(x, requires_grad=True)
        lt = torch.nn.functional.cross_entropy(xt.permute(0, 2, 1), torch.from_numpy(t),
                                               reduction=reduction, label_smoothing=eps)
        g = np.ones(t.shape) if reduction == "none" else 1.0
        lt.backward(torch.from_numpy(g) if reduction == "none" else None)
        np.testing.assert_allclose(f(x, t), lt.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(f.backward(g), xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="label_smoothing: expected a number in"):
        fr.nn.CrossEntropyLoss(label_smoothing=1.5)


def test_integer_inputs_and_misshapen_gradients_are_named():
    """Integer inputs are refused (MSELoss's gradient scale and Dropout's 1/(1-p) truncated to
    0 there: a zero gradient, NaN and inf), as torch refuses them; a "none" reduction's grad of
    another shape than the losses' is refused (it broadcast silently)."""
    with pytest.raises(TypeError, match="^input: expected a float array, got dtype int64"):
        fr.nn.MSELoss()(np.array([1, 1, 1]), np.array([0, 0, 0]))
    with pytest.raises(TypeError, match="^x: expected a float array, got dtype int64"):
        fr.nn.Dropout(0.5, seed=0)(np.arange(6))
    mse = fr.nn.MSELoss(reduction="none")
    mse(np.ones((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"^grad: expected shape \(2, 3\)"):
        mse.backward(np.ones(3))
    np.testing.assert_array_equal(mse.backward(2.0), np.full((2, 3), 4.0))
    ce = fr.nn.CrossEntropyLoss(reduction="none")
    ce(np.zeros((2, 3, 4)), np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match=r"^grad: expected shape \(2, 3\)"):
        ce.backward(np.ones(3))
    assert ce.backward(np.ones((2, 3))).shape == (2, 3, 4)


def test_logits_of_no_class_axis_or_no_class_are_named():
    """0-d logits were blamed on target ("expected shape () ... got ()"), [N, 0] logits gave
    NumPy's reduction error; softmax over no class is empty, as torch's."""
    ce = fr.nn.CrossEntropyLoss()
    for logits, target in ((np.array(1.0), np.array(0)), (np.zeros((2, 0)), np.array([0, 0]))):
        with pytest.raises(ValueError, match=r"^logits: expected classes on the last axis"):
            ce(logits, target)
    from fusedrnn.nn.loss import log_softmax
    assert fr.nn.softmax(np.zeros((2, 0))).shape == log_softmax(np.zeros((2, 0))).shape == (2, 0)


def test_a_reduced_loss_takes_a_number_and_gives_the_inputs_dtype():
    """An array grad for "mean"/"sum" scaled the classes it broadcast over (a plausible wrong
    gradient); Dropout took a dout of another shape the same way. MSELoss gave a float32 input
    a float64 gradient when the target was float64, and 0 for the mean of nothing (torch: NaN)."""
    ce = fr.nn.CrossEntropyLoss()
    ce(np.zeros((3, 3)), np.arange(3))
    with pytest.raises(ValueError,
                       match=r"^grad: expected a number for reduction 'mean', got shape \(3,\)"):
        ce.backward(np.array([1.0, 2.0, 3.0]))
    mse = fr.nn.MSELoss(reduction="sum")
    mse(np.ones(3, np.float32), np.zeros(3))
    assert mse.backward(np.float64(2.0)).dtype == np.float32
    with pytest.raises(ValueError, match="^grad: expected a number for reduction 'sum'"):
        mse.backward(np.ones(3))
    assert np.isnan(fr.nn.MSELoss()(np.ones(0, np.float32), np.zeros(0, np.float32)))
    drop = fr.nn.Dropout(0.5, seed=0)
    drop(np.ones((4, 5), np.float32))
    with pytest.raises(ValueError, match=r"^dout: expected shape \(4, 5\)"):
        drop.backward(np.ones((4, 1), np.float32))
    assert drop.backward(1.0).shape == (4, 5)  # (a number broadcasts, as before)


def test_mse_target_of_no_real_numbers_is_refused_and_integers_take_the_input_s_dtype():
    # a complex target's squared error came out 0 ((1 - 1j)^2 = -2j, its real part); an
    # integer one widened float32 losses to float64 (torch keeps the input's float32)
    torch = pytest.importorskip("torch")
    x = np.array([1.0, 2.5], np.float32)
    for bad in (np.array([1j, 0j]), np.array([None, 1.0]), np.array(["1", "2"])):
        with pytest.raises(TypeError, match="^target: expected an array of real numbers"):
            fr.nn.MSELoss()(x, bad)
    target = np.array([0, 2])
    loss = fr.nn.MSELoss(reduction="none")(x, target)
    want = torch.nn.MSELoss(reduction="none")(torch.from_numpy(x), torch.from_numpy(target))
    assert loss.dtype == np.float32 and str(want.dtype) == "torch.float32"
    np.testing.assert_array_equal(loss, want.numpy())
    target = np.array([False, True])  # (a bool target too, as torch's)
    loss = fr.nn.MSELoss(reduction="none")(x, target)
    want = torch.nn.MSELoss(reduction="none")(torch.from_numpy(x), torch.from_numpy(target))
    assert loss.dtype == np.float32
    np.testing.assert_array_equal(loss, want.numpy())


def test_the_losses_and_pass_through_modules_refuse_a_gradient_of_no_real_numbers():
    # None became NaN gradients, a complex one lost its imaginary part with a warning, a
    # string parsed as a number; Dropout and Identity passed them on (and Dropout(0) any shape)
    for reduction in ("none", "mean", "sum"):
        for loss, args in ((fr.nn.MSELoss(reduction), (np.ones(2), np.zeros(2))),
                           (fr.nn.CrossEntropyLoss(reduction=reduction),
                            (np.zeros((2, 3)), [0, 1]))):
            loss(*args)
            for bad in (None, [None, 1.0], 1 + 2j, "2.0", True):
                with pytest.raises(TypeError, match="^grad: expected an array of real numbers"):
                    loss.backward(bad)
            assert np.isfinite(loss.backward(2.0)).all()
    for module in (fr.nn.Dropout(0.5, seed=0), fr.nn.Dropout(0.0), fr.nn.Identity()):
        module(np.ones((2, 3)))
        for bad in (np.ones((2, 3), complex), np.ones((2, 3), bool), np.full((2, 3), None)):
            with pytest.raises(TypeError, match="^dout: expected an array of real numbers"):
                module.backward(bad)
    drop = fr.nn.Dropout(0.0)
    drop(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"^dout: expected shape \(2, 3\) \(the forward's\)"):
        drop.backward(np.ones(5))
    assert drop.backward(np.ones((2, 3), np.float32)).dtype == np.float64  # (the forward's)
