"""`fusedrnn bench --variants peephole,reset_before,proj,layernorm`: each variant beside the plain cell and its peer (tiny
sizes; speed is not asserted), the peer agreeing with ours."""
import json

from fusedrnn import benchmark


def test_bench_variants_rows(tmp_path, capsys):
    from fusedrnn import cli
    path = tmp_path / "v.json"
    code = cli.main(["bench", "--variants", "peephole,reset_before,proj,layernorm", "--modes",
                     "infer,train", "--shapes", "2,6,8,16", "--budget", "0.05", "--json",
                     str(path)])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = json.loads(path.read_text())["rows"]
    assert [(r["variant"], r["mode"], r["peer"]) for r in rows] == [
        ("peephole", "infer", "ORT"), ("peephole", "train", "ORT"),
        ("reset_before", "infer", "ORT"), ("reset_before", "train", "ORT"),
        ("proj", "infer", "torch"), ("proj", "train", "torch"),
        ("layernorm", "infer", "-"), ("layernorm", "train", "-")]
    have = benchmark.installed_peers()
    for r in rows:
        assert r["plain_ms"] > 0 and r["ours_ms"] > 0
        assert abs(r["cost"] - r["ours_ms"] / r["plain_ms"]) < 0.02 * r["cost"] + 0.01
        runs = have["ort"] if r["peer"] == "ORT" and r["mode"] == "infer" else \
            have["torch"] if r["peer"] == "torch" else False  # ORT does not train
        if r["mode"] == "infer":  # the variant under autocast too
            assert r["ours_bf16_ms"] > 0
            assert abs(r["bf16_speedup"] - r["ours_ms"] / r["ours_bf16_ms"]) < \
                0.02 * r["bf16_speedup"] + 0.01
        else:
            assert r["ours_bf16_ms"] is None and r["bf16_speedup"] is None
        if runs:  # the peer computes what we compute
            assert r["peer_ms"] > 0 and r["max_abs_diff_peer"] < 1e-5, r
        else:
            assert r["peer_ms"] is None and r["x_peer"] is None, r
    assert "x peer" in out


def test_bench_variants_refuses_unknown_names(capsys):
    from fusedrnn import cli
    assert cli.main(["bench", "--variants", "peephole,rope"]) == 2
    assert "--variants: expected names from peephole,reset_before,proj,layernorm, got 'rope'" in \
        capsys.readouterr().err
