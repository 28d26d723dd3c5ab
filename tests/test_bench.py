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
    rows = json.loads(path.read_text())["rows"]
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
