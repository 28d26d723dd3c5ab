"""`fusedrnn bench --attention additive,dot`: the fused step beside PyTorch's eager operators
(tiny sizes; speed is not asserted), both computing the same context and query gradient."""
import json

import pytest

from fusedrnn import benchmark


def test_bench_attention_rows(tmp_path, capsys):
    from fusedrnn import cli
    path = tmp_path / "a.json"
    code = cli.main(["bench", "--attention", "additive,dot", "--modes", "infer,train",
                     "--shapes", "3,5,10,9;1,4,3,2", "--budget", "0.02", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = json.loads(path.read_text())["rows"]
    assert [(r["score"], r["mode"], r["N"], r["S"], r["A"], r["K"]) for r in rows] == [
        (score, mode, *shape) for score in ("additive", "dot") for mode in ("infer", "train")
        for shape in ((3, 5, 10, 9), (1, 4, 3, 2))]
    torch_here = benchmark.installed_peers()["torch"]
    for r in rows:
        assert r["ours_us"] > 0
        if torch_here:
            assert r["torch_us"] > 0 and r["rel_diff_torch"] < 1e-5, r
            assert abs(r["x_torch"] - r["torch_us"] / r["ours_us"]) < 0.02 * r["x_torch"] + 0.01
        else:
            assert r["torch_us"] is None and r["x_torch"] is None
    assert "x torch" in out


def test_bench_attention_rejects_unknown_scores(capsys):
    from fusedrnn import cli
    assert cli.main(["bench", "--attention", "additive,general"]) != 0
    assert "--attention: expected names from additive,dot, got 'general'" in capsys.readouterr().err


@pytest.mark.parametrize("shapes", ["1,2,3", "1,2,3,0"])
def test_bench_attention_rejects_bad_shapes(shapes, capsys):
    from fusedrnn import cli
    assert cli.main(["bench", "--attention", "dot", "--shapes", shapes]) != 0
    assert "--shapes: expected N,S,A,K with positive integers" in capsys.readouterr().err
