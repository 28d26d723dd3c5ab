"""`fusedrnn bench --framework torch`: the adapter in a small torch model against torch.nn (rows,
agreement, the JSON file). Tiny sizes and budget; speed is not asserted."""
import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("fusedrnn.torch")


def test_bench_framework_torch_writes_rows(tmp_path, capsys):
    from fusedrnn import cli
    path = tmp_path / "b.json"
    code = cli.main(["bench", "--framework", "torch", "--cells", "LSTM", "--shapes", "1,5,8,8",
                     "--modes", "infer,train", "--budget", "0.05", "--json", str(path)])
    assert code == 0, capsys.readouterr()
    data = json.loads(path.read_text())
    assert data["framework"] == "torch" and "info" in data
    rows = data["rows"]
    assert sorted(r["mode"] for r in rows) == ["infer", "train"]
    for r in rows:
        assert (r["cell"], r["B"], r["T"], r["I"], r["H"]) == ("LSTM", 1, 5, 8, 8)
        assert r["torch_ms"] > 0 and r["fusedrnn_ms"] > 0
        assert r["maxdiff"] < 1e-4
        assert r["speedup"] == pytest.approx(r["torch_ms"] / r["fusedrnn_ms"], rel=1e-2)
        if r["mode"] == "infer":
            assert r["torch_sporadic_ms"] > 0 and r["fusedrnn_sporadic_ms"] > 0
            assert r["speedup_sporadic"] == pytest.approx(
                r["torch_sporadic_ms"] / r["fusedrnn_sporadic_ms"], rel=1e-2)
        else:
            assert r["maxdiff_grad"] < 1e-4
        alone = r["alone"]  # the layer by itself: torch.nn, the adapter, fusedrnn standalone
        assert alone["torch_ms"] > 0 and alone["adapter_ms"] > 0 and alone["standalone_ms"] > 0
        assert alone["adapter_over_standalone"] == pytest.approx(
            alone["adapter_ms"] / alone["standalone_ms"], rel=1e-2)
        assert alone["speedup_adapter"] == pytest.approx(
            alone["torch_ms"] / alone["adapter_ms"], rel=1e-2)


def test_bench_framework_torch_decoder_rows(tmp_path, capsys):
    """--cells LSTMCell,...: the cell stepped as a decoder (T steps, teacher-forced) in both
    copies; the logits and every gradient agree; the layers' names still work beside them,
    and the numpy bench refuses the cells by name."""
    from fusedrnn import benchmark, benchmark_torch, cli
    path = tmp_path / "b.json"
    code = cli.main(["bench", "--framework", "torch", "--cells", "gru,LSTMCell,rnncell",
                     "--shapes", "2,3,8,8", "--modes", "infer,train", "--budget", "0.05",
                     "--json", str(path)])
    assert code == 0, capsys.readouterr()
    rows = json.loads(path.read_text())["rows"]
    assert [(r["cell"], r["mode"]) for r in rows] == [
        (c, m) for c in ("GRU", "LSTMCell", "RNNCell") for m in ("infer", "train")]
    for r in rows:
        assert r["maxdiff"] < 1e-4 and r.get("maxdiff_grad", 0.0) < 1e-4
        assert (r["alone"] is None) == r["cell"].endswith("Cell")  # layers alone: not the cells
    model = benchmark_torch.make_model("GRUCell", 8, 8)
    import torch
    logits = model(torch.zeros(3, 2, dtype=torch.long))
    assert logits.shape == (3, 2, benchmark_torch.VOCAB)
    assert set(benchmark_torch.DECODER_SHAPES) == {"LSTMCell", "GRUCell", "RNNCell"}
    for text in ("LSTMCell", ""):  # the cells only with --framework torch; no name: refused
        with pytest.raises(ValueError, match="--cells"):
            benchmark.selection(type("Args", (), {"cells": text, "modes": "infer",
                                                  "shapes": None, "quick": True})())


def test_bench_framework_torch_under_bfloat16_autocast(tmp_path, capsys):
    """--precision bf16: both models under torch.autocast; the logits agree to the bf16
    tolerance but not to float32's (the layers did round), and the JSON says so."""
    from fusedrnn import benchmark_torch, cli
    path = tmp_path / "b.json"
    code = cli.main(["bench", "--framework", "torch", "--precision", "bf16", "--cells", "GRU",
                     "--shapes", "4,6,16,16", "--modes", "infer,train", "--budget", "0.05",
                     "--json", str(path)])
    assert code == 0, capsys.readouterr()
    assert "torch.autocast(cpu, bfloat16)" in capsys.readouterr().out
    data = json.loads(path.read_text())
    assert data["precision"] == "bf16"
    for r in data["rows"]:
        assert r["precision"] == "bf16" and r["torch_ms"] > 0 and r["fusedrnn_ms"] > 0
        assert benchmark_torch.TOLERANCE < r["maxdiff"] < benchmark_torch.TOLERANCE_BF16


def test_bench_framework_torch_refuses_cuda_and_bad_modes(capsys):
    from fusedrnn import cli
    assert cli.main(["bench", "--framework", "torch", "--device", "cuda"]) == 2
    assert "--framework torch" in capsys.readouterr().err
    assert cli.main(["bench", "--framework", "torch", "--modes", "fit"]) == 2
    assert "--modes" in capsys.readouterr().err


def test_median_ms_pause_times_the_call_alone():
    import time

    from fusedrnn import benchmark
    ms = benchmark.median_ms({"a": lambda: time.sleep(0.001)}, 0.05, pause_s=0.003)["a"]
    assert 0.9 < ms < 3.5  # the 3 ms sleep before each call is not counted


def test_wanted_grads_bench_writes_a_row_per_case(tmp_path):
    # bench/wanted_grads.py on a tiny shape: every case's row, both sides timed
    import json
    import pathlib
    import subprocess
    import sys
    script = pathlib.Path(__file__).resolve().parents[1] / "bench" / "wanted_grads.py"
    out = tmp_path / "wanted.json"
    subprocess.run([sys.executable, str(script), "--shapes", "GRU,3,2,4,5", "--reps", "1",
                    "--json", str(out)], check=True, capture_output=True)
    rows = json.loads(out.read_text())["rows"]
    assert [r["case"] for r in rows] == ["every gradient", "input is data", "frozen layer"]
    assert all(r["torch_ms"] > 0 and r["ours_ms"] > 0 for r in rows)
    bad = subprocess.run([sys.executable, str(script), "--shapes", "GRU,3,2"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--shapes: expected cell,T,B,I,H" in bad.stderr
