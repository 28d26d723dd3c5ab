"""An LSTM with a Linear head at every step (fr.nn), its products on NumPy's `@` against
fusedrnn.functional.matmul (the kernels' threads), each variant in its own process, in turn.
NumPy's OpenBLAS pool spins on the cores after each of its calls, where the recurrent kernels'
next call needs them; `matmul` runs on the kernels' own team instead. Example:
    python bench/dense_head.py --json head.json
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

SHAPES = ["32,100,64,256,100", "32,100,256,256,1000", "64,50,512,512,1000", "8,100,128,128,100"]


def child(shape, variant, threads, calls):
    """Runs in the child process: median ms of inference and of a training step."""
    import fusedrnn as fr
    from fusedrnn import functional as F
    if variant == "numpy":  # the products on NumPy's @, as before fr.nn used matmul
        F.matmul = lambda a, b, trans_a=False, trans_b=False: (
            (a.T if trans_a else a) @ (b.T if trans_b else b))
    fr.set_num_threads(threads)
    B, T, I, H, V = shape
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    lstm, head = fr.nn.LSTM(I, H, seed=0), fr.nn.Linear(H, V, seed=1)

    def infer():
        lstm.eval(), head.eval()
        return head(lstm(x)[0])

    def train():
        lstm.train(), head.train()
        z = head(lstm(x)[0])
        lstm.backward(head.backward(np.full_like(z, 1.0 / z.size)))

    out = {}
    for mode, fn in (("infer", infer), ("train", train)):
        fn()
        times = []
        for _ in range(calls):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        out[mode] = float(np.median(times) * 1e3)
    return out


def main():
    from fusedrnn.cli_commands import check_output_path, path, positive_int, threads
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=";".join(SHAPES),
                   help="B,T,I,H,V;... (V: the head's classes)")
    p.add_argument("--threads", type=threads, default=2)
    p.add_argument("--rounds", type=positive_int, default=3,
                   help="processes per variant, in turn")
    p.add_argument("--calls", type=positive_int, default=15)
    p.add_argument("--json", type=path, help="write every row here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    for shape in args.shapes.split(";"):
        sizes = shape.split(",")
        if len(sizes) != 5 or not all(v.isdigit() and int(v) > 0 for v in sizes):
            p.error(f"--shapes: expected B,T,I,H,V (positive integers), got {shape!r}")
    try:
        check_output_path("json", args.json)  # (before the timing, not after it)
    except ValueError as error:
        p.error(str(error))
    if args.child:
        shape, variant = args.child.split(":")
        print(json.dumps(child([int(v) for v in shape.split(",")], variant, args.threads,
                               args.calls)))
        return 0
    import fusedrnn as fr
    print(f"CPU {fr.info()['cpu']}; threads {args.threads}")
    print(f"{'B,T,I,H,V':22s} {'mode':5s} {'numpy @ ms':>11s} {'matmul ms':>10s} {'x':>6s}")
    rows = []
    for shape in args.shapes.split(";"):
        ms = {"numpy": {"infer": [], "train": []}, "matmul": {"infer": [], "train": []}}
        for _ in range(args.rounds):
            for variant in ms:
                cmd = [sys.executable, os.path.abspath(__file__), "--child", f"{shape}:{variant}",
                       "--threads", str(args.threads), "--calls", str(args.calls)]
                got = json.loads(subprocess.run(cmd, capture_output=True, text=True,
                                                check=True).stdout)
                for mode in got:
                    ms[variant][mode].append(got[mode])
        for mode in ("infer", "train"):
            a, b = (float(np.median(ms[v][mode])) for v in ("numpy", "matmul"))
            rows.append({"shape": shape, "mode": mode, "numpy_ms": a, "matmul_ms": b,
                         "speedup": a / b, "threads": args.threads})
            print(f"{shape:22s} {mode:5s} {a:11.2f} {b:10.2f} {a / b:6.2f}", flush=True)
    if args.json:
        from fusedrnn._atomic import write_text
        from fusedrnn.cli_commands import to_json
        write_text(args.json, to_json({"cpu": fr.info()["cpu"], "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
