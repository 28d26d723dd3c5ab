"""`fusedrnn bench --precision bf16`: ours and torch's float32 and bfloat16 autocast side by side
(tiny sizes; speed is not asserted), with each bfloat16 output's error against float64."""
import json

import pytest

from fusedrnn import benchmark, benchmark_bf16


def test_bench_bf16_rows(tmp_path, capsys):
    from fusedrnn import cli
    path = tmp_path / "b.json"
    code = cli.main(["bench", "--precision", "bf16", "--cells", "LSTM,GRU", "--modes", "infer",
                     "--shapes", "2,6,8,16", "--budget", "0.05", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0, out
    data = json.loads(path.read_text())
    assert data["info"]["bf16_products"] in out
    have_torch = benchmark.installed_peers()["torch"]
    assert [r["cell"] for r in data["rows"]] == ["LSTM", "GRU"]
    for r in data["rows"]:
        assert r["ours_ms"] > 0 and r["ours_bf16_ms"] > 0
        assert r["relerr_ours"] < 1e-6 < r["relerr_ours_bf16"] < 1e-2
        if have_torch:
            assert r["torch_bf16_ms"] > 0 and r["relerr_torch"] < 1e-6
            assert 1e-6 < r["relerr_torch_bf16"] < 1e-2  # torch's too ran bfloat16 products
            assert r["x_torch_bf16"] > 0
            refusal = benchmark_bf16.onednn_refusal(r["cell"])
            assert r["torch_bf16_onednn_refusal"] == refusal
            assert (f"torch bf16 {r['cell']}: torch's default path fails" in out) == bool(refusal)
        else:
            assert r["torch_bf16_ms"] is None and r["x_torch_bf16"] is None
    assert "rel. error bf16" in out


def test_bench_bf16_training_rows(tmp_path, capsys):
    """--modes train: a forward and a backward each, against the faster of torch's two."""
    from fusedrnn import cli
    path = tmp_path / "t.json"
    code = cli.main(["bench", "--precision", "bf16", "--cells", "GRU", "--modes", "train",
                     "--shapes", "3,5,4,8", "--budget", "0.05", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = json.loads(path.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["train"]
    train = rows[0]
    assert train["ours_ms"] > 0 and train["ours_bf16_ms"] > 0 and train["relerr_ours_bf16"] is None
    if benchmark.installed_peers()["torch"]:
        best = min(train["torch_ms"], train["torch_bf16_ms"]) / train["ours_bf16_ms"]
        assert abs(train["x_torch_best"] - best) < 0.02 * best + 0.01
    assert "x faster torch" in out


def test_bench_bf16_refuses_cuda(capsys):
    from fusedrnn import cli
    assert cli.main(["bench", "--precision", "bf16", "--device", "cuda"]) == 2
    assert "--precision" in capsys.readouterr().err


def test_bench_bf16_times_each_contestant_in_its_own_process(monkeypatch):
    """The issue's method: every contestant timed in its own process (ours without torch in
    it), the row's ratios from those processes' medians."""
    from fusedrnn import benchmark_bf16, benchmark_regimes
    seen = {}

    def fake(who_all, cell, B, T, I, H, threads, budget, regimes, mode):
        seen.update(who=who_all, regimes=regimes, mode=mode)
        ms = {"ours": 4.0, "ours_bf16": 2.0, "torch": 3.0, "torch_bf16": 5.0}
        return {k: {"check": [[0.0]], "b2b": ms[k]} for k in who_all}
    monkeypatch.setattr(benchmark_regimes, "own_processes", fake)
    have_torch = benchmark.installed_peers()["torch"]
    row = benchmark_bf16.bench_row("LSTM", 2, 3, 4, 5, 1, 0.01, have_torch, "train")
    assert seen == {"who": benchmark_bf16.CONTESTANTS if have_torch else ("ours", "ours_bf16"),
                    "regimes": ["b2b"], "mode": "train"}
    assert row["bf16_speedup"] == 2.0
    if have_torch:
        assert row["x_torch_bf16"] == 2.5 and row["x_torch_best"] == 1.5


def test_bench_bf16_ours_runs_without_torch():
    """Ours' process never imports torch (so no torch thread pool lives beside ours)."""
    import subprocess
    import sys
    code = ("import sys, numpy as np; from fusedrnn import benchmark, benchmark_bf16 as b; "
            "x = np.ones((3, 2, 4), np.float32); w = benchmark._weights('LSTM', 4, 5); "
            "b.contestant('ours_bf16', 'LSTM', x, w, 1, 'train')(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_torch_autocast_runs_where_torch_s_default_path_fails():
    """Where oneDNN refuses torch's bfloat16 LSTM (CPUs without bfloat16 instructions), the
    bench's torch_autocast runs torch's native path instead; oneDNN's switch comes back."""
    torch = pytest.importorskip("torch")
    m = torch.nn.LSTM(4, 8)
    x = torch.randn(3, 2, 4)
    before = torch.backends.mkldnn.enabled
    with torch.no_grad(), benchmark_bf16.torch_autocast("LSTM"):
        y = m(x)[0]
    assert torch.backends.mkldnn.enabled == before
    with torch.no_grad():
        exact = m.double()(x.double())[0]
    err = float((y.double() - exact).norm() / exact.norm())
    assert 1e-5 < err < 1e-2, err  # bfloat16 products ran
    refusal = benchmark_bf16.onednn_refusal("LSTM")
    if refusal is not None:
        assert "oneDNN" in refusal
        with pytest.raises(RuntimeError), torch.no_grad(), \
                torch.autocast("cpu", dtype=torch.bfloat16):
            m.float()(x)
