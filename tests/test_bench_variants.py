"""`fusedrnn bench --variants peephole,reset_before`: each variant beside the plain cell and its peer (tiny
sizes; speed is not asserted), the peer agreeing with ours."""
import json

from fusedrnn import benchmark


def test_bench_variants_rows(tmp_path, capsys):
    from fusedrnn import cli
    path = tmp_path / "v.json"
    code = cli.main(["bench", "--variants", "peephole,reset_before", "--modes", "infer,train",
                     "--shapes", "2,6,8,16", "--budget", "0.05", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = json.loads(path.read_text())["rows"]
    assert [(r["variant"], r["mode"]) for r in rows] == [
        ("peephole", "infer"), ("peephole", "train"), ("reset_before", "infer"),
        ("reset_before", "train")]
    have_ort = benchmark.installed_peers()["ort"]
    for r in rows:
        assert r["plain_ms"] > 0 and r["ours_ms"] > 0
        assert abs(r["cost"] - r["ours_ms"] / r["plain_ms"]) < 0.02 * r["cost"] + 0.01
    for infer, train in (rows[:2], rows[2:]):
        if have_ort:
            assert infer["ort_ms"] > 0 and infer["max_abs_diff_ort"] < 1e-5
        else:
            assert infer["ort_ms"] is None
        assert train["ort_ms"] is None and train["x_ort"] is None  # ORT does not train
    assert "x ORT" in out


def test_bench_variants_refuses_unknown_names(capsys):
    from fusedrnn import cli
    assert cli.main(["bench", "--variants", "peephole,rope"]) == 2
    assert "--variants: expected names from peephole,reset_before, got 'rope'" in \
        capsys.readouterr().err
