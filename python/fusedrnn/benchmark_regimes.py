"""fusedrnn against its peers in the regimes real programs call it in: `fusedrnn bench --regimes
b2b,sporadic,shared`. fp32 inference of one layer (``fusedrnn.benchmark.ours``) against PyTorch
(``torch.nn.<Cell>``) and ONNX Runtime (``fusedrnn.benchmark.ort_peer``), same weights and
input, per cell and shape (B, T, I, H):

  b2b       back to back, own process: each contestant alone in a fresh process (one per
            contestant and shape, so no other library's threads live in it), timed in steady
            state back to back, in blocks that alternate with the other contestants' processes
            (``own_processes``);
  sporadic  3 ms idle before each call, own process: the same processes, each call after an
            idle sleep (``median_ms(..., pause_s=SPORADIC_PAUSE_S)``), as a server answering now
            and then;
  shared    all in one process, default settings, alternating: ours, torch and ORT in this
            process, called in turn with no settle pause (``median_ms(..., settle=False)``), so
            each call comes right after another library's, whose threads may still spin, as in
            a program that mixes them; the order turns every other round (ours, torch, ORT;
            ours, ORT, torch), so each comes after each of the others equally often.

Every process sets its contestant's threads to --threads (``fusedrnn.set_num_threads``,
``torch.set_num_threads``, ORT's ``intra_op_num_threads``); otherwise every library keeps its
defaults (``ort_peer`` also sets ``inter_op_num_threads=1``, which ORT's default sequential
execution ignores). Outputs are checked against ours before they count (the full output in the
shared regime, the last step of the first rows from the own processes).

A table cell is the speedup: the faster peer's ms / our ms (> 1: fusedrnn wins); the JSON file
(--json) holds every contestant's ms per regime."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import numpy as np

from . import benchmark
from .cli_commands import parse_names, to_json

REGIMES = {"b2b": "back to back, own process",
           "sporadic": "3 ms idle before each call, own process",
           "shared": "all in one process, default settings, alternating"}
OWN_PROCESS = ("b2b", "sporadic")
PEERS = {"torch": "PyTorch", "ort": "ONNX Runtime"}
SPORADIC_PAUSE_S = 0.003
# Outputs must agree with ours to this (absolute, float32) for a row to count.
TOLERANCE = 1e-3
# Batch rows of the last step an own-process contestant sends back for the agreement check.
CHECK_ROWS = 4
WORKER_TIMEOUT_S = 900
# Alternating rounds of the own-process regimes: each contestant's block of calls in turn.
ROUNDS = 5
# --quick: seconds of timing per contestant, regime and row (every row also starts three
# processes, one importing torch), for a run of about a minute.
QUICK_BUDGET = 0.15
# The settings that change how the libraries' threads share the cores, and OpenBLAS's kernels.
ENV = ("OPENBLAS_CORETYPE", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS",
       "KMP_BLOCKTIME")


# ---------------------------------------------------------------------------- the contestants
def _inputs(cell, B, T, I, H):
    """The row's input x [T, B, I] and weights: the same in every process."""
    x = np.random.default_rng(1).standard_normal((T, B, I)).astype(np.float32)
    return x, benchmark._weights(cell, I, H)


def contestant(who, cell, x, w, threads, mode="infer"):
    """A call of ``who`` on x, its threads set to ``threads``: "ours", "torch" or "ort"
    (inference only), in ``mode`` "infer" or "train" (a forward and a backward); the bfloat16
    bench's "ours_bf16" and "torch_bf16" come from ``benchmark_bf16.contestant``."""
    if who.endswith("_bf16"):
        from . import benchmark_bf16
        return benchmark_bf16.contestant(who, cell, x, w, threads, mode)
    if who == "ours":
        import fusedrnn as fr
        fr.set_num_threads(threads)
        return benchmark.ours(cell, x, w, mode)
    if who == "torch":
        return benchmark.torch_peer(cell, x, w, mode, threads)
    if who == "ort":
        if mode != "infer":
            raise ValueError(f"'ort': inference only, got mode {mode!r}")
        return benchmark.ort_peer(cell, x, w, threads)
    raise ValueError(f"unknown contestant {who!r}")


def serve(who, cell, B, T, I, H, threads, mode="infer"):
    """Run in a fresh process: ``who`` alone (:func:`contestant`). Sends the last step's first
    CHECK_ROWS batch rows, then times blocks on request, one JSON line each way: {"regime",
    "calls"} in, the calls' ms out. Between blocks it waits on the pipe, idle, while the other contestants' processes run
    theirs."""
    x, w = _inputs(cell, B, T, I, H)
    fn = contestant(who, cell, x, w, threads, mode)
    print(json.dumps({"check": np.asarray(fn())[-1, :CHECK_ROWS].tolist()}), flush=True)
    for line in sys.stdin:
        ask = json.loads(line)
        pause = ask.get("pause", 0.0)
        if not pause:
            fn()  # a back-to-back block's first call is not counted (benchmark.median_ms)
        ms = []
        for _ in range(ask["calls"]):
            if pause:
                time.sleep(pause)
            t0 = time.perf_counter()
            fn()
            ms.append(1000 * (time.perf_counter() - t0))
        print(json.dumps(ms), flush=True)


_SERVER = ("import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
           "from fusedrnn.benchmark_regimes import serve; serve(**json.loads(sys.argv[2]))")


class _Contestant:
    """A contestant's own process (this one's interpreter and path), alive for a row."""

    def __init__(self, who, cell, B, T, I, H, threads, mode="infer"):
        self.who, self.what = who, f"{cell} B={B} T={T} I={I} H={H}"
        spec = dict(who=who, cell=cell, B=B, T=T, I=I, H=H, threads=threads, mode=mode)
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER, json.dumps(sys.path),
                                      json.dumps(spec)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            self.check = self._reply()["check"]
        except BaseException:
            self.close()
            raise

    def _reply(self):
        line = self.proc.stdout.readline()
        if not line:
            self.proc.kill()
            err = self.proc.stderr.read()[-3000:]
            raise RuntimeError(f"the {self.who} process ({self.what}) failed "
                               f"(exit {self.proc.wait()}):\n{err}")
        return json.loads(line)

    def block(self, regime, calls, pause=0.0):
        self.proc.stdin.write(json.dumps({"regime": regime, "calls": calls, "pause": pause})
                              + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self):
        """Ends the process (its stdin closed, it returns) and closes the pipes."""
        try:
            self.proc.communicate(timeout=WORKER_TIMEOUT_S)
        except (subprocess.TimeoutExpired, ValueError):
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()


def own_processes(who_all, cell, B, T, I, H, threads, budget, regimes, mode="infer",
                  sporadic_s=SPORADIC_PAUSE_S):
    """The own-process regimes: each contestant alone in its own process, all of them alive
    for the row and timed in alternating blocks (ROUNDS rounds: every contestant's block of
    every regime in turn, after a settle pause), so that the machine's drift, which on a shared
    VM moves a call's time by 1.5x from one second to the next, hits every contestant alike.
    ``mode``: "infer", or "train" for the bfloat16 bench's training steps. ``sporadic_s``:
    the idle seconds before each sporadic call.
    Returns {who: {"check": rows, regime: median ms}}."""
    procs = {}
    try:
        for who in who_all:
            procs[who] = _Contestant(who, cell, B, T, I, H, threads, mode)
        # a call's seconds (blocks answer in ms); also a warm-up
        one = {who: min(p.block("b2b", 1)) / 1000 for who, p in procs.items()}
        times = {who: {r: [] for r in regimes} for who in procs}
        previous = None
        for i in range(ROUNDS):
            for r in regimes:
                for who, p in procs.items():
                    # each block's share of the budget (a sporadic call's pause included);
                    # back-to-back blocks of fast calls run at least MIN_BLOCK_S
                    # (benchmark.median_ms)
                    pause = sporadic_s if r == "sporadic" else 0.0
                    calls = max(1, int(budget / ROUNDS / (one[who] + pause)))
                    if r == "b2b":
                        calls = max(calls, int(benchmark.MIN_BLOCK_S / one[who]))
                    # the previous contestant's threads, in their own process, stop spinning
                    time.sleep(benchmark.SETTLE_AFTER_S.get(previous, benchmark.SETTLE_S))
                    previous = who
                    times[who][r] += p.block(r, calls, pause)
        return {who: {"check": p.check, **{r: float(np.median(times[who][r])) for r in regimes}}
                for who, p in procs.items()}
    finally:
        for p in procs.values():
            p.close()


def shared_process_ms(cell, x, w, threads, budget, peers):
    """The shared regime, in this process: ours and ``peers`` called in turn, no settle pause
    (each call of ours right after torch's or ORT's). Returns ({who: ms}, {peer: maxdiff})."""
    fns = {who: contestant(who, cell, x, w, threads) for who in ("ours", *peers)}
    y = np.asarray(fns["ours"]())
    maxdiff = {k: float(np.max(np.abs(np.asarray(fn()) - y))) for k, fn in fns.items()
               if k != "ours"}
    return benchmark.median_ms(fns, budget, settle=False), maxdiff


# ---------------------------------------------------------------------------- a row
def _sig(v):
    return float(f"{v:.4g}")


def regime_entry(ms: dict) -> dict:
    """{ours_ms, torch_ms, ort_ms, faster_peer, speedup} of one regime from {who: ms}
    (speedup = the faster peer's ms / ours, from the rounded ms; None without peers)."""
    e = {f"{k}_ms": (_sig(ms[k]) if k in ms else None) for k in ("ours", *PEERS)}
    timed = {k: e[f"{k}_ms"] for k in PEERS if e[f"{k}_ms"] is not None}
    e["faster_peer"] = min(timed, key=timed.get) if timed else None
    e["speedup"] = round(timed[e["faster_peer"]] / e["ours_ms"], 3) if timed else None
    return e


def bench_row(cell, B, T, I, H, threads, budget, regimes, peers, sporadic_s=SPORADIC_PAUSE_S):
    """One (cell, shape): every contestant in its own process for the own-process regimes,
    then all of them in this one for the shared regime."""
    row = {"cell": cell, "B": B, "T": T, "I": I, "H": H, "threads": threads}
    maxdiff = {}
    own = [r for r in regimes if r in OWN_PROCESS]
    if own:
        res = own_processes(("ours", *peers), cell, B, T, I, H, threads, budget, own,
                            sporadic_s=sporadic_s)
        ref = np.asarray(res["ours"]["check"])
        for p in peers:
            maxdiff[p] = float(np.max(np.abs(np.asarray(res[p]["check"]) - ref)))
        for r in own:
            row[r] = regime_entry({who: res[who][r] for who in res})
    if "shared" in regimes:
        x, w = _inputs(cell, B, T, I, H)
        ms, diff = shared_process_ms(cell, x, w, threads, budget, peers)
        row["shared"] = regime_entry(ms)
        for p, d in diff.items():
            maxdiff[p] = float(np.max([d, maxdiff.get(p, 0.0)]))  # (a NaN stays: no agreement)
    row["maxdiff"] = maxdiff
    row["agree"] = all(d <= TOLERANCE for d in maxdiff.values())
    return row


# ---------------------------------------------------------------------------- the run
def _versions(peers):
    known = benchmark.versions()
    return {p: known[{"torch": "torch", "ort": "onnxruntime"}[p]] or "?" for p in peers}


def geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def print_table(rows, regimes, peers):
    """One row per (cell, shape), one column per regime: the speedup and the faster peer's
    initial (t: torch, o: ORT); our ms instead when no peer is installed. Then the geomean over
    rows and the count of cells below 1 per regime."""
    key = "speedup" if peers else "ours_ms"
    head = f"{'cell':<5}{'B':>4}{'T':>6}{'I':>5}{'H':>5} |"
    print("\n" + head + "".join(f"{r:>11}" for r in regimes))
    for row in rows:
        cells = []
        for r in regimes:
            e = row[r]
            tag = e["faster_peer"][0] if e["faster_peer"] else " "
            cells.append(f"{benchmark._fmt(e[key], 9, 2 if peers else 4)} {tag}")
        mark = "" if row["agree"] else "  ! outputs differ"
        print(f"{row['cell']:<5}{row['B']:>4}{row['T']:>6}{row['I']:>5}{row['H']:>5} |"
              + "".join(cells) + mark)
    if not peers:
        return
    width = len(head) - 1
    counted = [row for row in rows if row["agree"]]  # (a wrong answer's speed is no figure)
    print("-" * width + "+" + "-" * (11 * len(regimes)))
    print(f"{'geomean':<{width}}|" + "".join(
        f"{benchmark._fmt(geomean([row[r][key] for row in counted]), 9)}  " for r in regimes))
    below = {r: sum(row[r][key] < 1 for row in counted) for r in regimes}
    print(f"{'below 1':<{width}}|" + "".join(f"{below[r]:>9}  " for r in regimes)
          + f"   ({sum(below.values())} of {len(counted) * len(regimes)} cells)"
          + (f"; {len(rows) - len(counted)} rows whose outputs differ left out"
             if len(counted) < len(rows) else ""))


def parse_regimes(text):
    return parse_names("--regimes", text, REGIMES)


def run(args) -> int:
    regimes = parse_regimes(args.regimes)
    if getattr(args, "device", "cpu") != "cpu":
        raise ValueError("--regimes: CPU only; drop --device cuda")
    if getattr(args, "framework", "numpy") != "numpy":
        raise ValueError("--regimes: times the NumPy API; drop --framework")
    if getattr(args, "memory", False):
        raise ValueError("--memory: not measured with --regimes")
    if "infer" not in parse_names("--modes", args.modes, ["infer", "train"]):
        raise ValueError("--regimes: times inference only; drop --modes or include infer")
    import fusedrnn as fr
    cells, _, shapes = benchmark.selection(args)
    budget = benchmark.budget_of(args, quick=QUICK_BUDGET)
    sporadic_ms = getattr(args, "sporadic_ms", None) or 1000 * SPORADIC_PAUSE_S
    what = {r: t.replace("3 ms", f"{sporadic_ms:g} ms") for r, t in REGIMES.items()}
    have = benchmark.installed_peers()
    peers = [p for p in PEERS if have[p]]
    fr.set_num_threads(args.threads)
    info = fr.info()
    cpu = info["cpu"]
    env = {k: os.environ[k] for k in ENV if k in os.environ}
    versions = _versions(peers)
    print(benchmark.cpu_header(args.threads), flush=True)
    print(f"fusedrnn {fr.__version__}" + "".join(f"; {k}={v}" for k, v in env.items()),
          flush=True)
    print("fusedrnn.info(): " + "; ".join(f"{k} {v}" for k, v in info.items()
                                          if k not in ("cpu", "cpu_table")), flush=True)
    if peers:
        print("peers: " + ", ".join(f"{PEERS[p]} {versions[p]}" for p in peers)
              + "; fp32 inference, one layer", flush=True)
    else:
        print("no peer installed (PyTorch; ONNX Runtime with onnx): fusedrnn's ms only",
              flush=True)
    t0 = time.perf_counter()
    rows = []
    for cell in cells:
        for (B, T, I, H) in shapes:
            row = bench_row(cell, B, T, I, H, args.threads, budget, regimes, peers,
                            sporadic_s=sporadic_ms / 1000)
            rows.append(row)
            print(f"  {cell} B={B} T={T} I={I} H={H}: " + "; ".join(
                f"{r} " + " ".join(f"{k} {row[r][k + '_ms']}" for k in ("ours", *peers))
                for r in regimes) + " ms", flush=True)
    seconds = time.perf_counter() - t0
    if args.json:
        from fusedrnn._atomic import write_text
        write_text(args.json, to_json(
            {"info": info, "versions": benchmark.versions(), "cpu": cpu,
             "threads": args.threads, "env": env, "peers": versions, "budget": budget,
             "sporadic_ms": sporadic_ms,
             "regimes": [{"name": r, "what": what[r]} for r in regimes], "rows": rows},
            indent=1))  # (strict: a NaN is null)
        print(f"wrote {args.json}")
    bad = [r for r in rows if not r["agree"]]
    if bad:
        print(f"fusedrnn: {len(bad)} row(s) where a peer's output differs from ours by more "
              f"than {TOLERANCE} (marked !)", file=sys.stderr)
    print(f"{seconds:.0f} s. Regimes: " + "; ".join(f"{r} = {what[r]}" for r in regimes))
    if peers:
        print("cell = the faster peer's ms / our ms (> 1: fusedrnn wins); "
              "t / o: the faster peer was torch / ORT")
    else:
        print("cell = our ms (no peer installed)")
    print_table(rows, regimes, peers)
    return 1 if bad else 0
