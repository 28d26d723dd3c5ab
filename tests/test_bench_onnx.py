"""`fusedrnn bench --framework onnx`: ONNX Runtime and fusedrnn's ONNX backend on one model."""
import json

import pytest


def test_bench_onnx_rows(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from fusedrnn import cli
    path = tmp_path / "onnx.json"
    code = cli.main(["bench", "--framework", "onnx", "--cells", "LSTM,GRU,RNN", "--shapes",
                     "2,6,8,16;1,3,4,5", "--budget", "0.05", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = json.loads(path.read_text())["rows"]
    assert [(r["cell"], r["B"]) for r in rows] == [(c, b) for c in ("LSTM", "GRU", "RNN")
                                                   for b in (2, 1)]
    for r in rows:
        assert r["ort_ms"] > 0 and r["ours_ms"] > 0 and r["max_abs_diff"] < 1e-5, r
        assert abs(r["x_ort"] - r["ort_ms"] / r["ours_ms"]) < 0.02 * r["x_ort"] + 0.01
    assert "x ORT" in out


def test_bench_onnx_names_the_missing_extra(monkeypatch, capsys):
    import sys

    from fusedrnn import cli
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert cli.main(["bench", "--framework", "onnx", "--quick"]) == 2
    assert 'pip install "fusedrnn[onnx]"' in capsys.readouterr().err


def test_bench_onnx_refuses_training_it_would_not_time(capsys):
    """--modes train timed inference silently."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from fusedrnn import cli
    assert cli.main(["bench", "--framework", "onnx", "--modes", "train", "--shapes",
                     "1,2,3,4"]) == 2
    assert "--framework onnx: times inference only" in capsys.readouterr().err
