"""`fusedrnn bench --regimes`: ours against the installed peers back to back and sporadically in
their own processes and alternating in one process (rows, the JSON file). Tiny sizes and budget;
speed is not asserted. Peers that are not installed are left out of the row (ms None)."""
import json
import time

import pytest

from fusedrnn import benchmark

REGIMES = ["b2b", "sporadic", "shared"]


def test_bench_regimes_writes_every_regime(tmp_path, capsys):
    from fusedrnn import cli
    path = tmp_path / "r.json"
    code = cli.main(["bench", "--regimes", ",".join(REGIMES), "--cells", "LSTM", "--shapes",
                     "1,5,8,8", "--budget", "0.05", "--json", str(path)])
    out = capsys.readouterr()
    assert code == 0, out
    data = json.loads(path.read_text())
    assert "thread_pool" in data["info"] and "blas" in data["info"] and data["cpu"]
    assert [r["name"] for r in data["regimes"]] == REGIMES
    [row] = data["rows"]
    assert (row["cell"], row["B"], row["T"], row["I"], row["H"]) == ("LSTM", 1, 5, 8, 8)
    peers = [p for p, ok in benchmark.installed_peers().items() if ok]
    assert row["agree"] and sorted(row["maxdiff"]) == sorted(peers)
    for regime in REGIMES:
        e = row[regime]
        assert e["ours_ms"] > 0
        for p in ("torch", "ort"):
            assert (e[f"{p}_ms"] > 0) if p in peers else (e[f"{p}_ms"] is None)
        if peers:
            faster = min(peers, key=lambda p: e[f"{p}_ms"])
            assert e["faster_peer"] == faster
            assert e["speedup"] == pytest.approx(e[f"{faster}_ms"] / e["ours_ms"], rel=1e-2)
        else:
            assert e["speedup"] is None and e["faster_peer"] is None
    table = out.out[out.out.rindex("cell "):]  # the table comes last
    assert "LSTM" in table and all(r in table for r in REGIMES)
    assert ("geomean" in table) == bool(peers)


def test_bench_regimes_refuses_unknown_regime(capsys):
    from fusedrnn import cli
    assert cli.main(["bench", "--regimes", "b2b,burst"]) == 2
    assert "--regimes" in capsys.readouterr().err


def test_median_ms_unsettled_alternates_single_calls():
    from fusedrnn import benchmark
    order = []
    fns = {k: (lambda k=k: order.append(k)) for k in "ab"}
    t0 = time.perf_counter()
    ms = benchmark.median_ms(fns, 0.01, settle=False)
    assert set(ms) == {"a", "b"} and time.perf_counter() - t0 < 1  # no settle pauses
    counted = order[2 * (1 + benchmark.CALIBRATION_CALLS):]  # after the warm-up, single calls
    assert counted == ["a", "b"] * (len(counted) // 2)


def test_median_ms_unsettled_puts_each_after_each_other_equally():
    from collections import Counter

    from fusedrnn import benchmark
    order = []
    fns = {k: (lambda k=k: order.append(k)) for k in "abc"}
    benchmark.median_ms(fns, 0.01, settle=False)
    counted = order[3 * (1 + benchmark.CALIBRATION_CALLS):]  # after the warm-up, single calls
    rounds = [counted[i:i + 3] for i in range(0, len(counted) - len(counted) % 6, 3)]
    assert rounds[:2] == [list("abc"), list("acb")] and len(rounds) >= 4
    pairs = Counter(zip(counted, counted[1:len(rounds) * 3]))
    after_other = [pairs[p, q] for p in "abc" for q in "abc" if p != q]
    assert max(after_other) - min(after_other) <= 1  # the last round's end left out
    assert not any(pairs[p, p] for p in "abc")  # never after itself


def test_bench_regimes_without_peers_gives_ours_ms(tmp_path, capsys, monkeypatch):
    from fusedrnn import cli
    monkeypatch.setattr(benchmark, "installed_peers", lambda: {"torch": False, "ort": False})
    path = tmp_path / "r.json"
    code = cli.main(["bench", "--regimes", "b2b,shared", "--cells", "RNN", "--shapes",
                     "1,3,4,4", "--budget", "0.02", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0 and "no peer installed" in out
    [row] = json.loads(path.read_text())["rows"]
    for regime in ("b2b", "shared"):
        assert row[regime]["ours_ms"] > 0 and row[regime]["speedup"] is None
        assert row[regime]["torch_ms"] is None and row[regime]["ort_ms"] is None


def test_own_processes_alternate_blocks(monkeypatch):
    """Every contestant's process lives for the row, and their blocks take turns (round by
    round), so drift of the machine hits each alike."""
    from fusedrnn import benchmark_regimes as br
    log = []

    class Fake:
        def __init__(self, who, *args):
            self.who, self.check = who, [[0.0]]

        def block(self, regime, calls, pause=0.0):
            log.append((self.who, regime))
            return [1.0 + (self.who == "b")] * calls

        def close(self):
            log.append((self.who, "closed"))

    monkeypatch.setattr(br, "_Contestant", Fake)
    res = br.own_processes(("a", "b"), "LSTM", 1, 2, 3, 4, 1, 0.01, ["b2b", "sporadic"])
    assert res["a"]["b2b"] == 1.0 and res["b"]["sporadic"] == 2.0
    timed = [e for e in log if e[1] != "closed"][2:]  # after each one's first (probe) block
    assert timed == [("a", "b2b"), ("b", "b2b"), ("a", "sporadic"), ("b", "sporadic")] * br.ROUNDS
    assert log[-2:] == [("a", "closed"), ("b", "closed")]


def test_own_process_failure_names_the_contestant():
    from fusedrnn import benchmark_regimes as br
    with pytest.raises(RuntimeError, match=r"the nobody process \(LSTM B=1 T=2 I=3 H=4\) failed"):
        br.own_processes(("nobody",), "LSTM", 1, 2, 3, 4, 1, 0.01, ["b2b"])


def test_own_process_blocks_share_the_budget_by_the_call_time(monkeypatch):
    """A block's call count comes from one call's time in seconds (the processes answer in ms):
    a 2 ms call with budget 0.5 s over ROUNDS rounds gets 0.1 s blocks, 50 calls back to back
    and 20 sporadic ones (each after its 3 ms pause)."""
    from fusedrnn import benchmark_regimes as br
    asked = []

    class Fake:
        check = [[0.0]]

        def __init__(self, *args, **kwargs):
            pass

        def block(self, regime, calls, pause=0.0):
            asked.append((regime, calls))
            return [2.0] * calls

        def close(self):
            pass

    monkeypatch.setattr(br, "_Contestant", Fake)
    monkeypatch.setattr(br.time, "sleep", lambda s: None)
    result = br.own_processes(["ours"], "LSTM", 1, 5, 8, 8, 1, 0.5, ["b2b", "sporadic"])
    assert result["ours"]["b2b"] == result["ours"]["sporadic"] == 2.0
    assert asked[0] == ("b2b", 1)  # the one timing call
    assert br.ROUNDS == 5
    assert sorted(set(asked[1:])) == [("b2b", 50), ("sporadic", 20)]


def test_the_sporadic_gap_is_an_option(tmp_path, monkeypatch, capsys):
    """--sporadic-ms sets the idle gap before each sporadic call (3 ms sat inside our idle
    threads' 5 ms linger: a server's calls 10 ms apart wake them), sent to every contestant's
    process and recorded; refused by name without a sporadic regime."""
    from fusedrnn import benchmark_regimes, cli
    asked = []
    real = benchmark_regimes._Contestant.block
    monkeypatch.setattr(benchmark_regimes._Contestant, "block",
                        lambda self, regime, calls, pause=0.0: asked.append((regime, pause))
                        or real(self, regime, calls, pause))
    path = tmp_path / "r.json"
    assert cli.main(["bench", "--regimes", "b2b,sporadic", "--sporadic-ms", "7", "--cells",
                     "RNN", "--shapes", "1,3,4,4", "--budget", "0.02", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    assert data["sporadic_ms"] == 7 and data["regimes"][1]["what"].startswith("7 ms idle")
    assert "sporadic = 7 ms idle before each call" in capsys.readouterr().out
    assert {p for r, p in asked if r == "sporadic"} == {0.007}
    assert {p for r, p in asked if r == "b2b"} == {0.0}
    assert cli.main(["bench", "--regimes", "sporadic", "--sporadic-ms", "0"]) == 2
    assert cli.main(["bench", "--regimes", "b2b", "--sporadic-ms", "7"]) == 2
    assert cli.main(["bench", "--regimes", "SPORADIC", "--sporadic-ms", "7", "--cells", "RNN",
                     "--shapes", "1,3,4,4", "--budget", "0.02"]) == 0  # (names in any case)
