"""``fusedrnn bench --attention additive,dot``: one decoder step of attention, fused (the
C++ kernel behind ``fusedrnn.nn.BahdanauAttention`` and ``LuongAttention``), against the same
step in PyTorch's eager operators, on the same arrays, in one process, alternating.

A step: scores over the S source positions (additive ``v . tanh(q + k_s)``, or dot ``k_s . q``;
the keys already projected, as both modules keep them), a masked softmax, the context
``sum_s w_s values_s``. ``infer`` times the forward; ``train`` the forward and the gradients of
the query, the keys, the values (and v). Shapes are N,S,A,K: batch, source positions, the
score's width, the values' width."""
import numpy as np

from . import benchmark
from .cli_commands import parse_names

SCORES = ("additive", "dot")
# (N, S, A, K): one sentence at a time (decoding), small and larger batches (training)
SHAPES = [(1, 20, 64, 128), (8, 30, 128, 256), (32, 30, 128, 256), (64, 50, 256, 512)]
QUICK_SHAPES = [(1, 20, 64, 128), (32, 30, 128, 256)]


def _arrays(N, S, A, K, seed=0):
    rng = np.random.default_rng(seed)
    f = np.float32
    return dict(query=rng.standard_normal((N, A)).astype(f),
                keys_proj=rng.standard_normal((N, S, A)).astype(f),
                values=rng.standard_normal((N, S, K)).astype(f),
                v=rng.standard_normal(A).astype(f),
                mask=(np.arange(S)[None, :] < rng.integers(1, S + 1, N)[:, None]),
                dcontext=rng.standard_normal((N, K)).astype(f))


def ours_fn(score, a, mode):
    """Our step (``mode`` infer: forward; train: forward and backward); returns the context,
    then (train) the query's gradient."""
    from .nn.attention import attention_step_backward, attention_step_forward
    v = a["v"] if score == "additive" else None

    def infer():
        return attention_step_forward(score, a["query"], a["keys_proj"], a["values"], a["mask"],
                                      v)[0]

    def train():
        context, _, saved = attention_step_forward(score, a["query"], a["keys_proj"],
                                                   a["values"], a["mask"], v)
        return context, attention_step_backward(saved, a["dcontext"])[0]
    return infer if mode == "infer" else train


def torch_fn(score, a, mode):
    """The same step in PyTorch's eager operators (what a torch model of the decoder runs)."""
    import torch
    t = {k: torch.from_numpy(np.ascontiguousarray(x)) for k, x in a.items()}
    masked = ~t["mask"]

    def forward(q, kp, values, v):
        if score == "additive":
            e = torch.tanh(q[:, None, :] + kp) @ v
        else:
            e = torch.bmm(kp, q[:, :, None])[..., 0]
        w = torch.softmax(e.masked_fill(masked, float("-inf")), dim=1)
        return torch.bmm(w[:, None, :], values)[:, 0]

    def infer():
        with torch.inference_mode():
            return forward(t["query"], t["keys_proj"], t["values"], t["v"]).numpy()

    leaves = [t[k].clone().requires_grad_() for k in ("query", "keys_proj", "values", "v")]

    def train():  # (leaves made once: ours copies no input per step either)
        for leaf in leaves:
            leaf.grad = None
        context = forward(*leaves)
        context.backward(t["dcontext"])
        return context.detach().numpy(), leaves[0].grad.numpy()
    return infer if mode == "infer" else train


# The fused step's outputs (and gradients) against torch's, relative to their largest value.
RELATIVE_TOLERANCE = 1e-4


def _relative_diff(x, y):
    """The largest |x - y| over the largest |y|, over the outputs (a tuple of arrays, or one)."""
    x, y = (x if isinstance(x, tuple) else (x,)), (y if isinstance(y, tuple) else (y,))
    return max(float(np.abs(np.asarray(p) - np.asarray(q)).max() /
                     max(float(np.abs(np.asarray(q)).max()), 1e-30)) for p, q in zip(x, y))


def bench_row(score, mode, N, S, A, K, threads, budget, have_torch):
    a = _arrays(N, S, A, K)
    fns = {"ours": ours_fn(score, a, mode)}
    if have_torch:
        fns["torch"] = torch_fn(score, a, mode)
    row = {"score": score, "mode": mode, "N": N, "S": S, "A": A, "K": K, "threads": threads}
    if have_torch:
        import torch
        torch.set_num_threads(threads)
        row["rel_diff_torch"] = _relative_diff(fns["ours"](), fns["torch"]())
        row["agree"] = row["rel_diff_torch"] <= RELATIVE_TOLERANCE  # (NaN: False)
    ms = benchmark.median_ms(fns, budget)
    row["ours_us"] = round(1000 * ms["ours"], 2)
    row["torch_us"] = round(1000 * ms["torch"], 2) if have_torch else None
    row["x_torch"] = round(ms["torch"] / ms["ours"], 2) if have_torch else None
    row.update(benchmark.measured(ms))
    return row


def _shapes(args):
    if args.shapes:
        return benchmark.parse_shapes(args.shapes, "N,S,A,K")
    return QUICK_SHAPES if args.quick else SHAPES


def run(args) -> int:
    if getattr(args, "device", "cpu") != "cpu":
        raise ValueError("--attention: CPU only; drop --device cuda")
    scores = parse_names("--attention", args.attention, SCORES)
    shapes = _shapes(args)  # (before selection(), which reads --shapes as B,T,I,H)
    _, modes, _ = benchmark.selection(args)
    import fusedrnn as fr
    fr.set_num_threads(args.threads)
    have_torch = benchmark.installed_peers()["torch"]
    budget = benchmark.budget_of(args)
    print(benchmark.cpu_header(args.threads))
    print(f"fusedrnn {fr.__version__}; PyTorch: {'yes' if have_torch else 'not installed'}",
          flush=True)
    rows = []
    for score in scores:
        for mode in modes:
            for (N, S, A, K) in shapes:
                rows.append(bench_row(score, mode, N, S, A, K, args.threads, budget, have_torch))
    print(f"\n{'score':<9}{'mode':>6}{'N':>4}{'S':>5}{'A':>5}{'K':>5} | {'ours us':>9}"
          f"{'torch us':>10}{'x torch':>9} | {'rel diff':>8}")
    for r in rows:
        diff = r.get("rel_diff_torch")
        print(f"{r['score']:<9}{r['mode']:>6}{r['N']:>4}{r['S']:>5}{r['A']:>5}{r['K']:>5} | "
              f"{benchmark._fmt(r['ours_us'], 9)}{benchmark._fmt(r['torch_us'], 10)}"
              f"{benchmark._fmt(r['x_torch'], 9)} | "
              f"{'-' if diff is None else f'{diff:.1e}':>8}")
    print("x torch = torch us / ours us (> 1: the fused step is faster); us per step")
    benchmark.write_json(args.json, threads=args.threads, rows=rows)
    return benchmark.report_disagreement(rows, benchmark.describe_row)
