"""Data-parallel training across processes: ``torch.nn.parallel.DistributedDataParallel`` over
``fusedrnn.torch`` layers, and ``fusedrnn.distributed`` over ``fr.nn`` models.

Two local processes (gloo, loopback only) train on their halves of a fixed batch; their final
parameters must equal those of one process trained on the whole batch (float64, 1e-10).

This file is also the workers' script: ``python tests/test_distributed.py OUTDIR`` with RANK,
WORLD_SIZE and an init method in the environment (``torchrun --standalone --nproc_per_node=2
tests/test_distributed.py OUTDIR`` sets them) runs every scenario and writes each scenario's
final parameters to OUTDIR/<scenario>_rank<r>.npz. The tests start the two workers themselves
(a file:// rendezvous in a temporary folder: no port to race for) once per session.
"""
from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import time
import traceback

import numpy as np
import pytest

try:
    import torch
    import torch.distributed as dist
except ImportError:  # the tests that need torch skip
    torch = dist = None

WORLD = 2
STEPS = 4
LR, MOMENTUM = 0.5, 0.9
TOL = 1e-10
N, T = 8, 7                      # whole batch, steps per sequence
LENGTHS = [7, 3, 5, 1, 6, 7, 2, 4]
TIMEOUT_S = 120                  # the whole two-process run (it takes a few seconds)


def _skip_reason():
    if torch is None:
        return "torch is not installed"
    if not dist.is_available():
        return "this torch build has no torch.distributed"
    if not dist.is_gloo_available():
        return "this torch build has no gloo backend"
    try:
        import fusedrnn.torch  # noqa: F401
    except ImportError as e:
        return f"fusedrnn.torch does not import: {e}"
    return None


_SKIP = _skip_reason()
needs_torch = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")


def _cuda_skip_reason():
    if _SKIP is not None:
        return _SKIP
    from fusedrnn import cuda
    return None if cuda.is_available() else "fusedrnn's CUDA backend cannot run here"


_CUDA_SKIP = _cuda_skip_reason()


def _half(rank, world):
    """The batch rows of ``rank``: contiguous, equal parts."""
    per = N // world
    return slice(rank * per, (rank + 1) * per)


# ---------------------------------------------------------------------------- torch models
def _torch_lstm_model():
    """Embedding -> fusedrnn.torch.LSTM (2 layers, bidirectional, batch_first) -> Linear on
    [mean of the outputs over time, last layer's backward h_n]."""
    import fusedrnn.torch as frt

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(11, 6)
            self.lstm = frt.LSTM(6, 5, num_layers=2, bidirectional=True, batch_first=True)
            self.head = torch.nn.Linear(15, 3)

        def forward(self, tokens):
            out, (h_n, c_n) = self.lstm(self.embed(tokens))
            return self.head(torch.cat([out.mean(dim=1), h_n[-1] + c_n[-1]], dim=1))

    torch.manual_seed(0)
    return Net().double()


def _torch_lstm_batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 11, (N, T), generator=g), torch.randint(0, 3, (N,), generator=g)


def _torch_lstm_loss(model, batch, rows):
    tokens, labels = batch
    return torch.nn.functional.cross_entropy(model(tokens[rows]), labels[rows])


def _torch_gru_model():
    """Linear + tanh -> fusedrnn.torch.GRU (2 layers, bidirectional) on a PackedSequence of
    variable lengths -> Linear on [mean output over each sample's steps, both final states]."""
    import fusedrnn.torch as frt
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 6)
            self.gru = frt.GRU(6, 5, num_layers=2, bidirectional=True)
            self.head = torch.nn.Linear(20, 2)

        def forward(self, x, lengths):
            packed = pack_padded_sequence(torch.tanh(self.proj(x)), lengths, enforce_sorted=False)
            out, h_n = self.gru(packed)
            out, _ = pad_packed_sequence(out, total_length=x.shape[0])
            mean = out.sum(dim=0) / lengths.to(out.dtype)[:, None]
            return self.head(torch.cat([mean, h_n[-2], h_n[-1]], dim=1))

    torch.manual_seed(2)
    return Net().double()


def _torch_gru_batch():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(T, N, 4, generator=g, dtype=torch.float64)
    return x, torch.tensor(LENGTHS), torch.randn(N, 2, generator=g, dtype=torch.float64)


def _torch_gru_loss(model, batch, rows):
    x, lengths, target = batch
    return torch.nn.functional.mse_loss(model(x[:, rows], lengths[rows]), target[rows])


TORCH_SCENARIOS = {"torch_lstm": (_torch_lstm_model, _torch_lstm_batch, _torch_lstm_loss),
                   "torch_gru": (_torch_gru_model, _torch_gru_batch, _torch_gru_loss)}


def _train_torch(name, rank=0, world=1):
    """STEPS of SGD on this rank's rows; DDP around the model when world > 1. Returns the
    final state_dict as arrays."""
    make_model, make_batch, loss_fn = TORCH_SCENARIOS[name]
    model = make_model()
    batch = make_batch()
    wrapped = model
    if world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    params = list(model.parameters())
    buffers = [torch.zeros_like(p) for p in params]
    for _ in range(STEPS):
        for p in params:
            p.grad = None
        loss_fn(wrapped, batch, _half(rank, world)).backward()
        with torch.no_grad():  # SGD with momentum, as torch.optim.SGD (whose first use
            for p, buf in zip(params, buffers):  # imports torch._dynamo: 2 s per process)
                buf.mul_(MOMENTUM).add_(p.grad)
                p.sub_(LR * buf)
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------- fr.nn model
def _numpy_batch():
    rng = np.random.default_rng(4)
    return (rng.standard_normal((T, N, 4)), np.array(LENGTHS), rng.integers(0, 3, N))


def _train_numpy(rank=0, world=1, device="cpu"):
    """fr.nn.LSTM (2 layers, bidirectional, lengths) + fr.nn.Linear, CrossEntropyLoss, STEPS of
    fr.optim.SGD on this rank's part of the batch. With world > 1 the ranks start from
    different seeds (broadcast_parameters makes them rank 0's) and average their gradients
    with all_reduce_gradients (coalesced and per-parameter on alternate steps). Returns the
    final parameters, and with world > 1 the side checks under "check.*" keys.
    ``device="cuda"``: the LSTM on the CUDA backend (CuPy parameters; the head stays on the
    CPU, so the two are reduced in two calls)."""
    import fusedrnn as fr
    from fusedrnn.nn.module import to_device, to_host

    H = 5
    lstm = fr.nn.LSTM(4, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=100 + rank,
                      device=device)
    head = fr.nn.Linear(3 * H, 3, dtype=np.float64, seed=200 + rank)
    params = list(lstm.parameters()) + list(head.parameters())
    groups = [{"params": params}]
    checks = {}
    if world > 1:
        import fusedrnn.distributed as frd
        frd.broadcast_parameters(lstm)
        frd.broadcast_parameters(head)
        # a parameter with a gradient on rank 1 only (zeros elsewhere), one with none anywhere
        partial, never = fr.nn.Parameter(np.zeros(3)), fr.nn.Parameter(np.zeros(2))
        groups.append({"params": [partial, never], "momentum": 0.0})
    opt = fr.optim.SGD(groups, lr=LR, momentum=MOMENTUM)
    loss_fn = fr.nn.CrossEntropyLoss()
    x, lengths, y = _numpy_batch()
    rows = _half(rank, world)
    x, lengths, y = x[:, rows], lengths[rows], y[rows]
    x_on = to_device(x, device)
    for step in range(STEPS):
        out, (h_n, c_n) = lstm(x_on, lengths=lengths)
        out, h_n = to_host(out), to_host(h_n)
        mean = out.sum(axis=0) / lengths[:, None]
        logits = head(np.concatenate([mean, h_n[-1]], axis=1))
        loss_fn(logits, y)
        dfeat = head.backward(loss_fn.backward())
        dout = np.broadcast_to(dfeat[:, :2 * H] / lengths[:, None], out.shape).copy()
        dh_n = np.zeros_like(h_n)
        dh_n[-1] = dfeat[:, 2 * H:]
        lstm.backward(to_device(dout, device), (to_device(dh_n, device), None))
        if world > 1:
            if rank == 1:
                partial.grad = np.ones(3)
            frd.all_reduce_gradients(lstm, coalesce=step % 2 == 0)
            frd.all_reduce_gradients(list(head.parameters()) + [partial, never],
                                     coalesce=step % 2 == 0)
            checks["check.never_stays_none"] = np.array(
                checks.get("check.never_stays_none", True) and never.grad is None)
        opt.step()
        opt.zero_grad()
    state = {f"lstm.{k}": v for k, v in lstm.state_dict().items()}
    state.update({f"head.{k}": v for k, v in head.state_dict().items()})
    if world > 1:
        checks["check.partial"] = partial.data.copy()
        # a sum without averaging, in place
        g = np.full(4, float(rank + 1))
        p = fr.nn.Parameter(np.zeros(4))
        p.grad = g
        frd.all_reduce_gradients(p, average=False)
        checks["check.sum"] = g.copy()
        checks["check.sum_in_place"] = np.array(p.grad is g)
        # different parameters on the ranks: ValueError on every rank, no hang
        mismatch = [p] + ([fr.nn.Parameter(np.zeros(1))] if rank == 1 else [])
        try:
            frd.all_reduce_gradients(mismatch)
            checks["check.mismatch_raised"] = np.array(False)
        except ValueError:
            checks["check.mismatch_raised"] = np.array(True)
        # different options on the ranks: ValueError on every rank (different coalesce
        # aborted both processes in gloo; different average left the ranks apart)
        for option in ("coalesce", "average"):
            p.grad = np.ones(4)
            try:
                frd.all_reduce_gradients(p, **{option: rank == 0})
                checks[f"check.{option}_mismatch_raised"] = np.array(False)
            except ValueError:
                checks[f"check.{option}_mismatch_raised"] = np.array(True)
        # one .grad array shared by two parameters: reduced once, coalesced or not
        for coalesce in (False, True):
            shared = np.full(2, float(rank + 1))
            a, b = fr.nn.Parameter(np.zeros(2)), fr.nn.Parameter(np.zeros(2))
            a.grad = b.grad = shared
            frd.all_reduce_gradients([a, b], average=False, coalesce=coalesce)
            checks[f"check.shared_sum_{coalesce}"] = shared.copy()
            # ... and two views of one buffer (summed twice when uncoalesced: 6, not 3)
            buffer = np.full(4, float(rank + 1))
            a.grad, b.grad = buffer[:2], buffer[:2]
            frd.all_reduce_gradients([a, b], average=False, coalesce=coalesce)
            checks[f"check.view_sum_{coalesce}"] = np.concatenate([a.grad, b.grad])
            # an integer gradient averages in the parameter's dtype (it truncated: 1, not 1.5)
            a.grad = np.full(2, rank + 1)
            frd.all_reduce_gradients(a, coalesce=coalesce)
            checks[f"check.integer_grad_{coalesce}"] = a.grad.copy()
        # shared on one rank, missing on the other: the same collectives on both (gloo aborts
        # at a mismatch)
        a, b = fr.nn.Parameter(np.zeros(2)), fr.nn.Parameter(np.zeros(2))
        a.grad = b.grad = np.ones(2) if rank == 0 else None
        frd.all_reduce_gradients([a, b], average=False, coalesce=False)
        checks["check.shared_or_missing"] = np.concatenate([a.grad, b.grad])
        # a frozen parameter is left out (as DDP): a stale .grad on one rank gave the other
        # rank's frozen weight half of it, which an optimizer then stepped
        a, b = fr.nn.Parameter(np.zeros(2)), fr.nn.Parameter(np.zeros(2))
        a.requires_grad = False
        a.grad = np.ones(2) if rank == 1 else None
        b.grad = np.full(2, float(rank + 1))
        frd.all_reduce_gradients([a, b])
        checks["check.frozen_left_out"] = np.concatenate(
            [np.full(2, -1.0) if a.grad is None else a.grad, b.grad])
        # ranks passing different src, one out of range, or one holding a read-only array:
        # ValueError on every rank (they waited on each other in the broadcast until gloo's
        # timeout)
        for wrong, src in (("src", rank), ("read_only", 0), ("range", 2 * rank)):
            c = fr.nn.Parameter(np.full(2, float(rank)))
            if wrong == "read_only" and rank == 1:
                c.data.flags.writeable = False
            try:
                frd.broadcast_parameters(c, src=src)
                checks[f"check.{wrong}_broadcast_raised"] = np.array(False)
            except ValueError:
                checks[f"check.{wrong}_broadcast_raised"] = np.array(True)
    return {**state, **checks}


# ---------------------------------------------------------------------------- the worker
def _worker(outdir):
    """Join the process group, run every scenario, save each one's parameters."""
    import datetime

    import fusedrnn as fr

    torch.set_num_threads(1)  # two processes on the cores (fusedrnn.torch follows torch)
    fr.set_num_threads(1)
    init = os.environ.get("FUSEDRNN_TEST_INIT_METHOD")  # else env:// (torchrun)
    where = {} if init is None else dict(init_method=init, rank=int(os.environ["RANK"]),
                                         world_size=int(os.environ["WORLD_SIZE"]))
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60), **where)
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        results = {name: _train_torch(name, rank, world) for name in TORCH_SCENARIOS}
        results["numpy_lstm"] = _train_numpy(rank, world)
        if os.environ.get("FUSEDRNN_TEST_CUDA") == "1":
            results["numpy_lstm_cuda"] = _train_numpy(rank, world, device="cuda")
        for name, arrays in results.items():
            np.savez(os.path.join(outdir, f"{name}_rank{rank}.npz"), **arrays)
    finally:
        # DDP objects are in reference cycles: collect them while the group is alive. Left to
        # the interpreter's exit, torch 2.13's gloo threads sometimes abort the process then
        # (about 1 run in 10, with torch.nn.LSTM as with fusedrnn.torch).
        gc.collect()
        dist.destroy_process_group()


def _loopback_interface():
    """The loopback interface's name ('lo' on Linux, 'lo0' on macOS), for GLOO_SOCKET_IFNAME."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except (AttributeError, OSError):
        return None
    return next((n for n in names if n in ("lo", "lo0")), None)


def _run(tmp, commands):
    """Start ``commands`` ([(argv, extra env)], each in its own process group), wait for all;
    {scenario: [rank 0's arrays, rank 1's arrays]} from the files the workers wrote. Any
    process failing, or the run passing TIMEOUT_S, kills the others (and their children)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("FUSEDRNN_TEST_INIT_METHOD", None)
    ifname = _loopback_interface()
    if ifname:
        env["GLOO_SOCKET_IFNAME"] = ifname  # gloo's sockets on loopback only
    procs, logs = [], []
    start = time.monotonic()
    try:
        for i, (argv, extra) in enumerate(commands):
            log = open(tmp / f"process{i}.log", "w+")
            logs.append(log)
            procs.append(subprocess.Popen(argv, env=dict(env, **extra), stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True))
        while any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0) for p in procs):
                break  # one failed: the others would wait for it until their timeout
            if time.monotonic() - start > TIMEOUT_S:
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, 9)  # its own group: torchrun's workers too
                except (AttributeError, OSError):
                    p.kill()
            p.wait()
    wall = time.monotonic() - start
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    codes = [p.returncode for p in procs]
    report = "\n".join(f"--- process {i} (exit {c}):\n{o[-4000:]}"
                       for i, (c, o) in enumerate(zip(codes, outputs)))
    assert codes == [0] * len(procs), f"failed or timed out after {wall:.1f} s\n{report}"
    results = {}
    for name in [*TORCH_SCENARIOS, "numpy_lstm", "numpy_lstm_cuda"]:
        if not (tmp / f"{name}_rank0.npz").exists() and name == "numpy_lstm_cuda":
            continue  # (run where a GPU is)
        results[name] = []
        for rank in range(WORLD):
            with np.load(tmp / f"{name}_rank{rank}.npz") as f:
                results[name].append(dict(f))
    return results


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory):
    """The two workers, started once for the module (a file:// rendezvous: no port to pick)."""
    tmp = tmp_path_factory.mktemp("distributed")
    common = dict(WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                  FUSEDRNN_TEST_INIT_METHOD=(tmp / "rendezvous").as_uri(),
                  FUSEDRNN_TEST_CUDA="1" if _CUDA_SKIP is None else "0")
    return _run(tmp, [([sys.executable, os.path.abspath(__file__), str(tmp)],
                       dict(common, RANK=str(rank), LOCAL_RANK=str(rank)))
                      for rank in range(WORLD)])


def _compare(name, ranks, expected):
    for rank, got in enumerate(ranks):
        got = {k: v for k, v in got.items() if not k.startswith("check.")}
        assert sorted(got) == sorted(expected), name
        for key, value in expected.items():
            err = np.max(np.abs(got[key] - value)) / max(np.max(np.abs(value)), 1e-300)
            assert err <= TOL, f"{name}, rank {rank}, {key}: relative error {err:.3g}"
    # and training moved the weights: the equality is not trivial
    start = TORCH_SCENARIOS[name][0]().state_dict() if name in TORCH_SCENARIOS else None
    if start is not None:
        moved = max(float(np.max(np.abs(expected[k] - v.detach().numpy())))
                    for k, v in start.items())
        assert moved > 1e-3, f"{name}: training did not change the weights"


@needs_torch
@pytest.mark.parametrize("name", list(TORCH_SCENARIOS))
def test_ddp_matches_one_process_on_the_whole_batch(worker_results, name):
    """DDP (2 processes, gloo) over a fusedrnn.torch LSTM (Embedding input) or GRU (packed,
    variable lengths), each rank its half: the same parameters as one process, whole batch."""
    torch.set_num_threads(1)
    try:
        expected = _train_torch(name)
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    _compare(name, worker_results[name], expected)


@needs_torch
def test_numpy_all_reduce_matches_one_process_on_the_whole_batch(worker_results):
    """fusedrnn.distributed over fr.nn.LSTM + Linear (2 processes): broadcast_parameters from
    different seeds, all_reduce_gradients (coalesced or not) and SGD reach the parameters of
    one process on the whole batch."""
    expected = _train_numpy()
    _compare("numpy_lstm", worker_results["numpy_lstm"], expected)


@pytest.mark.skipif(_CUDA_SKIP is not None, reason=f"GPU: {_CUDA_SKIP}")
def test_numpy_all_reduce_on_cuda_matches_one_process(worker_results):
    """The same with the LSTM on the CUDA backend (CuPy parameters; gloo reduces the CUDA
    tensors the flat buffers are): the parameters of one process on the whole batch."""
    expected = _train_numpy(device="cuda")
    _compare("numpy_lstm_cuda", worker_results["numpy_lstm_cuda"], expected)


@needs_torch
def test_numpy_all_reduce_side_cases(worker_results):
    """None gradients (on one rank: zeros there; on every rank: stay None), average=False sums
    in place, a .grad two parameters share (or views of one buffer) is summed once, an integer
    .grad averages as floats, and ranks passing different parameters, options or src (or one
    holding read-only values) raise ValueError on every rank."""
    for rank, got in enumerate(worker_results["numpy_lstm"]):
        # rank 1's gradient 1, rank 0's None (zeros): 0.5 each step, plain SGD
        np.testing.assert_allclose(got["check.partial"], np.full(3, -LR * 0.5 * STEPS),
                                   rtol=0, atol=1e-15, err_msg=f"rank {rank}")
        assert bool(got["check.never_stays_none"]), rank
        np.testing.assert_array_equal(got["check.sum"], np.full(4, 3.0))
        assert bool(got["check.sum_in_place"]), rank
        assert bool(got["check.mismatch_raised"]), rank
        assert bool(got["check.coalesce_mismatch_raised"]), rank
        assert bool(got["check.average_mismatch_raised"]), rank
        for coalesce in (False, True):
            np.testing.assert_array_equal(got[f"check.shared_sum_{coalesce}"], [3.0, 3.0])
            np.testing.assert_array_equal(got[f"check.view_sum_{coalesce}"], np.full(4, 3.0))
            np.testing.assert_array_equal(got[f"check.integer_grad_{coalesce}"], [1.5, 1.5])
        np.testing.assert_array_equal(got["check.shared_or_missing"], np.ones(4))
        np.testing.assert_array_equal(got["check.frozen_left_out"],
                                      [1.0, 1.0, 1.5, 1.5] if rank == 1 else [-1, -1, 1.5, 1.5])
        assert bool(got["check.src_broadcast_raised"]), rank
        assert bool(got["check.read_only_broadcast_raised"]), rank
        assert bool(got["check.range_broadcast_raised"]), rank


@needs_torch
@pytest.mark.skipif(os.environ.get("FUSEDRNN_TEST_TORCHRUN") != "1",
                    reason="set FUSEDRNN_TEST_TORCHRUN=1: torchrun adds a launcher process and "
                           "a few seconds")
def test_under_torchrun(tmp_path):
    """The same workers launched by torchrun (c10d rendezvous on 127.0.0.1, a free port),
    the same results."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
            f"--nproc_per_node={WORLD}", "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0",
            os.path.abspath(__file__), str(tmp_path)]
    results = _run(tmp_path, [(argv, {})])
    for name in TORCH_SCENARIOS:
        _compare(name, results[name], _train_torch(name))
    _compare("numpy_lstm", results["numpy_lstm"], _train_numpy())


# ---------------------------------------------------------------------------- one process
def test_missing_torch_names_the_install_command(monkeypatch):
    """Without torch, the functions raise ImportError naming pip install "fusedrnn[torch]"."""
    import fusedrnn as fr
    import fusedrnn.distributed as frd

    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "torch.distributed", None)
    for call in (lambda: frd.broadcast_parameters(fr.nn.Linear(2, 2)),
                 lambda: frd.all_reduce_gradients(fr.nn.Linear(2, 2)),
                 lambda: frd.get_world_size()):
        with pytest.raises(ImportError, match=r'pip install "fusedrnn\[torch\]"'):
            call()


@needs_torch
def test_uninitialized_process_group_is_a_clear_error():
    import fusedrnn as fr
    import fusedrnn.distributed as frd

    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        frd.all_reduce_gradients(fr.nn.Linear(2, 2))
    assert frd.get_rank() == 0 and frd.get_world_size() == 1
    # bad arguments are named first, before any process group is needed
    for call in (frd.broadcast_parameters, frd.all_reduce_gradients):
        with pytest.raises(TypeError, match="^module_or_params: expected a fusedrnn.nn.Module, "
                                            "a Parameter or an iterable of them, got int"):
            call(5)
    with pytest.raises(TypeError,
                       match=r"^average: expected a bool \(True or False\), got str 'no'"):
        frd.all_reduce_gradients(fr.nn.Linear(2, 2), average="no")


def test_shard():
    import fusedrnn.distributed as frd

    x = np.arange(2 * 10 * 3).reshape(2, 10, 3)
    parts = [frd.shard(x, axis=1, rank=r, world_size=3) for r in range(3)]
    assert [p.shape[1] for p in parts] == [4, 3, 3]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), x)
    np.testing.assert_array_equal(frd.shard(x, rank=0, world_size=1), x)
    with pytest.raises(ValueError, match="rank"):
        frd.shard(x, rank=2, world_size=2)
    with pytest.raises(ValueError, match=r"axis: expected an integer in \[-3, 2\], got 3"):
        frd.shard(x, axis=3, rank=0, world_size=2)
    # integers only (int() took world_size=2.9 for 2 and rank=True for 1, silently)
    for kwargs, name in ((dict(rank=1, world_size=2.9), "world_size"),
                         (dict(rank=1.7, world_size=3), "rank"),
                         (dict(rank=True, world_size=3), "rank")):
        with pytest.raises(TypeError, match=f"^{name}: expected an integer"):
            frd.shard(x, **kwargs)
    with pytest.raises(ValueError, match="^world_size: expected an integer >= 1, got 0"):
        frd.shard(x, rank=0, world_size=0)
    np.testing.assert_array_equal(frd.shard(x, rank=np.int64(1), world_size=np.int32(2)),
                                  x[1:])
    np.testing.assert_array_equal(frd.shard(x, rank="1", world_size="2"), x[1:])  # (environ's)
    with pytest.raises(ValueError, match="^rank: expected an integer, got '1.5'"):
        frd.shard(x, rank="1.5", world_size="2")
    with pytest.raises(ValueError, match="^array: expected an array with a batch axis"):
        frd.shard(np.float32(3), rank=0, world_size=1)


if __name__ == "__main__":
    try:
        _worker(sys.argv[1])
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
