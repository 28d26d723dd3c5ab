"""`fusedrnn bench` (the main CPU table): every row's outputs are checked against each peer's
before they count (a wrong result exits 1, named), shapes given twice run once, the stacked rows
belong to the default run, and the JSON holds what was printed."""
import json

import numpy as np

from fusedrnn import benchmark, cli


def test_rows_agree_and_a_wrong_result_is_named(tmp_path, capsys, monkeypatch):
    path = tmp_path / "bench.json"
    code = cli.main(["bench", "--cells", "gru", "--shapes", "1,6,4,4; 1,6,4,4", "--budget",
                     "0.02", "--json", str(path)])
    assert code == 0
    saved = json.loads(path.read_text())
    rows = saved["rows"]
    assert saved["versions"]["numpy"] == np.__version__ and saved["versions"]["python"]
    assert [(r["cell"], r["mode"]) for r in rows] == [("GRU", "infer"), ("GRU", "train")]
    assert all(r["agree"] for r in rows)  # (no stacked rows: --cells and --shapes narrowed it)
    real = benchmark.ours

    def off_by_one(cell, x, w, mode, **options):  # (the float64 reference calls it too)
        fn = real(cell, x, w, mode, **options)
        return (lambda: np.asarray(fn()) + 1.0) if not options else fn
    monkeypatch.setattr(benchmark, "ours", off_by_one)
    capsys.readouterr()
    assert cli.main(["bench", "--cells", "rnn", "--modes", "infer", "--shapes", "1,6,4,4",
                     "--budget", "0.02"]) == 1
    assert "RNN infer B=1 T=6 I=4 H=4: outputs differ from a peer's" in capsys.readouterr().err


def test_a_wrong_backward_fails_a_training_row(capsys, monkeypatch):
    """The training rows check the input gradient too (their outputs are the forward's)."""
    from fusedrnn import functional
    real = functional.gru_backward

    def halved(ctx, dy, dh_n=None):
        dx, *rest = real(ctx, dy, dh_n)
        return (dx * 0.5, *rest)
    monkeypatch.setattr(functional, "gru_backward", halved)
    assert cli.main(["bench", "--cells", "gru", "--modes", "train", "--shapes", "1,6,4,4",
                     "--budget", "0.02"]) == 1
    err = capsys.readouterr().err
    assert "GRU train B=1 T=6 I=4 H=4: outputs differ from a peer's" in err and "graddiff" in err


def test_the_other_benches_check_their_outputs(capsys, monkeypatch):
    """--framework onnx, --attention and --variants fail a row whose result is not the peer's
    (they printed the difference and exited 0)."""
    import pytest
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    from fusedrnn import benchmark_attention, nn
    from fusedrnn.onnx import Backend
    real_prepare = Backend.prepare

    def doubled(model, *args, **kwargs):
        rep = real_prepare(model, *args, **kwargs)
        run = rep.run
        rep.run = lambda inputs, **kw: [2 * np.asarray(run(inputs, **kw)[0])]
        return rep
    with monkeypatch.context() as m:
        m.setattr(Backend, "prepare", staticmethod(doubled))
        assert cli.main(["bench", "--framework", "onnx", "--cells", "GRU", "--shapes", "1,4,3,5",
                         "--budget", "0.02"]) == 1
    real_fn = benchmark_attention.ours_fn
    with monkeypatch.context() as m:
        m.setattr(benchmark_attention, "ours_fn",  # (inference: the context alone)
                  lambda *a: (lambda f: lambda: 2 * np.asarray(f()))(real_fn(*a)))
        assert cli.main(["bench", "--attention", "dot", "--modes", "infer", "--shapes",
                         "2,5,4,4", "--budget", "0.02"]) == 1
    with monkeypatch.context() as m:
        m.setattr(nn.LSTM, "__call__", lambda self, *a, **k: (
            lambda out: (2 * out[0], out[1]))(nn.Module.__call__(self, *a, **k)))
        assert cli.main(["bench", "--variants", "proj", "--modes", "infer", "--shapes",
                         "1,4,3,8", "--budget", "0.02"]) == 1
    assert capsys.readouterr().err.count("outputs differ from a peer's") == 3


def test_a_given_budget_holds_with_quick():
    """--quick chose its budget over a given --budget (silently, in every bench)."""
    from fusedrnn.benchmark import budget_of
    from fusedrnn.cli import build_parser
    parse = build_parser().parse_args
    assert budget_of(parse(["bench", "--quick", "--budget", "0.05"])) == 0.05
    assert budget_of(parse(["bench", "--quick"])) == 0.3
    assert budget_of(parse(["bench", "--quick"]), quick=0.15) == 0.15
    assert budget_of(parse(["bench"])) == 1.5


def test_peak_memory_is_measured_or_its_failure_said(capsys):
    mb = benchmark.training_peak_mb("ours", "GRU", 2, 30, 8, 64, 1)
    assert isinstance(mb, float) and mb >= 0
    assert benchmark.training_peak_mb("ours", "NOCELL", 2, 3, 4, 5, 1) is None
    assert "ours NOCELL B=2 T=3 I=4 H=5: peak memory not measured" in capsys.readouterr().err
