"""The PyTorch adapter inside a real torch program, against torch.nn, in one process: the torch
side of `fusedrnn bench --framework torch`.

Per cell and shape (B, T, I, H), a small language model

    nn.Embedding(1000, I) -> the recurrent layer (1 layer, one direction, input [T, B] token ids)
    -> nn.Linear(H, 1000) at every step -> nn.CrossEntropyLoss against random targets

and, for the cells (``--cells LSTMCell,GRUCell,RNNCell``, in the default run), a decoder's loop:

    nn.Embedding(1000, I) -> the cell stepped T times in Python, step t reading token t
    (teacher forcing), its state carried -> nn.Linear(H, 1000) at every step -> the loss

in two copies with the same weights: one with ``torch.nn.<Cell>``, the other converted with
``fusedrnn.torch.convert``. Timed (``fusedrnn.benchmark.median_ms``, same threads, alternating
blocks) per mode:

  infer  ``with torch.inference_mode(): model(tokens)`` (the logits);
  train  one optimizer step: zero_grad, forward, loss, backward, ``torch.optim.SGD(lr=0.01)``
         step; each contestant updates its own copy of the weights.

The embedding, the output layer, the loss and the optimizer are torch's on both sides, so the
speedup is the whole program's, not the recurrent layer's alone. Before timing, both copies'
logits (and, for train, the first step's gradients) are compared. Infer rows are also timed as a
sporadic caller (a server answering now and then): each call after a 3 ms idle sleep, the median
of the call alone (``median_ms(..., pause_s=...)``).

``--precision bf16``: both copies run under ``torch.autocast("cpu", dtype=torch.bfloat16)``
(torch's layer on oneDNN's bfloat16 path, ours on the kernels' bfloat16 products; the Embedding,
Linear and loss under autocast alike), logits checked to TOLERANCE_BF16.

Speedup columns are torch ms / fusedrnn ms (> 1 means the converted model is faster)."""
from __future__ import annotations

import copy
import os
import sys
import time

import numpy as np

from . import benchmark
from .cli_commands import to_json

VOCAB = 1000
LR = 0.01
SPORADIC_PAUSE_S = 0.003
# float32 logits of the two copies must agree to this (absolute) before a row is timed; under
# bfloat16 autocast both sides round differently (each ~3e-3 from float64 in the layer).
TOLERANCE = 1e-4
TOLERANCE_BF16 = 5e-2
# The decoder rows' shapes (B, T steps, I, H) per cell: the small steps of a seq2seq decoder,
# where each step's Python, not its arithmetic, is most of the time (--quick: the first).
DECODER_SHAPES = {"LSTMCell": [(1, 20, 128, 128), (16, 20, 256, 256)],
                  "GRUCell": [(8, 20, 128, 128)], "RNNCell": [(16, 20, 128, 128)]}
# Settings of torch's OpenMP pool that change how it shares the cores with fusedrnn's threads
# (its workers spin for milliseconds after each torch op unless OMP_WAIT_POLICY=PASSIVE):
# shown in the header and recorded in the JSON.
# Settings that change the figures: the OpenMP runtime's (torch's threads) and OpenBLAS's
# kernel choice (OPENBLAS_CORETYPE=Haswell: AVX2 kernels for our weight-gradient GEMMs).
OMP_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "KMP_BLOCKTIME",
           "OPENBLAS_CORETYPE")


def make_model(cell, I, H, vocab=VOCAB, seed=0):
    """The benchmark's torch model (with ``torch.nn.<cell>``: a layer, or a cell stepped as a
    decoder), weights drawn from ``seed``."""
    import torch
    from torch import nn

    class TinyLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(vocab, I)
            self.rnn = getattr(nn, cell)(I, H)
            self.out = nn.Linear(H, vocab)

        def forward(self, tokens):  # [T, B] -> logits [T, B, vocab]
            x = self.embedding(tokens)
            if not cell.endswith("Cell"):
                return self.out(self.rnn(x)[0])
            state, hs = None, []
            for t in range(tokens.shape[0]):  # a decoder's steps, teacher-forced
                state = self.rnn(x[t], state)
                hs.append(state[0] if isinstance(state, tuple) else state)
            return self.out(torch.stack(hs))

    torch.manual_seed(seed)
    return TinyLM()


def contestants(base):
    """(torch copy, fusedrnn copy) of ``base``: deep copies with the same weights, the second
    converted by ``fusedrnn.torch.convert``."""
    import fusedrnn.torch as frt
    ours = frt.convert(copy.deepcopy(base))
    if type(ours.rnn).__module__ != "fusedrnn.torch.modules":
        raise RuntimeError(f"fusedrnn.torch.convert left {type(ours.rnn).__name__} unconverted")
    return copy.deepcopy(base), ours


def _autocast(model, bf16):
    """torch's bfloat16 autocast (``bf16``) as torch can run the model's layer here: oneDNN
    off where it refuses the layer on this CPU (``benchmark_bf16.torch_autocast``), for both
    copies alike (one program)."""
    from .benchmark_bf16 import torch_autocast
    # the layer's class name ("LSTM", "GRU", "RNN") is the cell, torch.nn's or the adapter's
    return torch_autocast(type(model.rnn).__name__, enabled=bf16)


def infer_fn(model, tokens, bf16=False):
    """The model's logits without gradients (``bf16``: under torch's bfloat16 autocast), as
    float32."""
    import torch
    model.eval()

    def infer():
        with torch.inference_mode(), _autocast(model, bf16):
            return model(tokens).float()
    return infer


def train_fn(model, tokens, targets, vocab=VOCAB, bf16=False):
    """One optimizer step on ``model`` (SGD, lr=LR; ``bf16``: its forward and loss under torch's
    bfloat16 autocast); returns the step's logits (detached, float32)."""
    import torch
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=LR)  # after convert: the model's own parameters
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        with _autocast(model, bf16):
            logits = model(tokens)
            loss = loss_fn(logits.reshape(-1, vocab), targets.reshape(-1))
        loss.backward()
        opt.step()
        return logits.detach().float()
    return step


def _maxdiff(a, b):
    return float((a - b).abs().max())


def bench_row(cell, mode, B, T, I, H, threads, budget, bf16=False):
    """One row: the two copies of the model on one shape and mode, checked to agree, then timed
    side by side (infer rows also as a sporadic caller); ``bf16``: under bfloat16 autocast."""
    import torch
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (T, B), generator=g)
    targets = torch.randint(0, VOCAB, (T, B), generator=g)
    theirs, ours = contestants(make_model(cell, I, H))
    row = {"cell": cell, "mode": mode, "B": B, "T": T, "I": I, "H": H, "threads": threads,
           "precision": "bf16" if bf16 else "fp32"}
    if bf16:  # where oneDNN fails torch's bfloat16 layer here, both copies ran with it off
        from .benchmark_bf16 import onednn_refusal
        row["torch_onednn_refusal"] = onednn_refusal(cell)
    if mode == "infer":
        fns = {"torch": infer_fn(theirs, tokens, bf16), "fusedrnn": infer_fn(ours, tokens, bf16)}
        row["maxdiff"] = _maxdiff(fns["torch"](), fns["fusedrnn"]())
    else:
        fns = {"torch": train_fn(theirs, tokens, targets, bf16=bf16),
               "fusedrnn": train_fn(ours, tokens, targets, bf16=bf16)}
        # the first step of each starts from the same weights: same logits, same gradients
        row["maxdiff"] = _maxdiff(fns["torch"](), fns["fusedrnn"]())
        grads = dict(ours.named_parameters())
        row["maxdiff_grad"] = float(np.max([_maxdiff(p.grad, grads[n].grad)  # (np: a NaN
                                            for n, p in theirs.named_parameters()]))  # stays)
    ms = benchmark.median_ms(fns, budget)
    row["torch_ms"] = benchmark.figures(ms["torch"])
    row["fusedrnn_ms"] = benchmark.figures(ms["fusedrnn"])
    row["speedup"] = round(ms["torch"] / ms["fusedrnn"], 3)
    row.update(benchmark.measured(ms))
    row["torch_sporadic_ms"] = row["fusedrnn_sporadic_ms"] = row["speedup_sporadic"] = None
    if mode == "infer":
        sp = benchmark.median_ms(fns, budget, pause_s=SPORADIC_PAUSE_S)
        row["torch_sporadic_ms"] = benchmark.figures(sp["torch"])
        row["fusedrnn_sporadic_ms"] = benchmark.figures(sp["fusedrnn"])
        row["speedup_sporadic"] = round(sp["torch"] / sp["fusedrnn"], 3)
    tolerance = TOLERANCE_BF16 if bf16 else TOLERANCE  # the logits and (training) every gradient
    row["agree"] = row["maxdiff"] <= tolerance and row.get("maxdiff_grad", 0.0) <= tolerance
    row["alone"] = None if cell.endswith("Cell") else \
        layer_alone(cell, mode, theirs.rnn, ours.rnn, B, T, I, budget, bf16)
    return row


def layer_alone(cell, mode, torch_layer, adapter_layer, B, T, I, budget, bf16=False):
    """The recurrent layer alone, in this torch process, on one random input [T, B, I]:
    torch.nn's layer, the adapter's (torch tensors in and out) and fusedrnn standalone (NumPy
    arrays: ``fusedrnn.nn``'s layer in inference, the kernels' forward and BPTT in training, as
    ``fusedrnn bench`` times them) on a copy of torch.nn's layer's weights (after a train row's
    steps the adapter's own have trained apart: the same shapes, for timing only), alternating
    blocks (``benchmark.median_ms``); train = forward and backward with dy = 1 (the torch sides
    accumulate their weights' .grad). ``adapter_over_standalone`` is what the adapter costs
    over the kernels it calls: the issue's "standalone speedups kept within 10% inside the
    torch program" is this at most 1.1."""
    import numpy as np
    import torch

    import fusedrnn as fr
    from .benchmark_bf16 import torch_autocast
    x = np.random.default_rng(2).standard_normal((T, B, I)).astype(np.float32)
    w = {k: v.detach().numpy().copy() for k, v in torch_layer.state_dict().items()}
    standalone = benchmark.ours(cell, x, w, mode)
    xt = torch.from_numpy(x)
    xg = xt.clone().requires_grad_(True)
    fns = {}
    for name, layer in (("torch", torch_layer), ("adapter", adapter_layer)):
        layer.train(mode == "train")

        def run(layer=layer):
            if mode == "infer":
                with torch.inference_mode(), torch_autocast(cell, enabled=bf16):
                    return layer(xt)[0]
            xg.grad = None  # (a user's loop: each step's gradients alone)
            layer.zero_grad(set_to_none=True)
            with torch_autocast(cell, enabled=bf16):
                y = layer(xg)[0]
            y.backward(torch.ones_like(y))
            return y
        fns[name] = run

    def run_standalone():
        with fr.autocast("bfloat16", enabled=bf16):
            return standalone()
    fns["standalone"] = run_standalone
    ms = benchmark.median_ms(fns, budget)
    torch_layer.train(False)
    adapter_layer.train(False)
    return {"torch_ms": benchmark.figures(ms["torch"]),
            "adapter_ms": benchmark.figures(ms["adapter"]),
            "standalone_ms": benchmark.figures(ms["standalone"]),
            "speedup_standalone": round(ms["torch"] / ms["standalone"], 3),
            "speedup_adapter": round(ms["torch"] / ms["adapter"], 3),
            "adapter_over_standalone": round(ms["adapter"] / ms["standalone"], 3)}


def print_table(rows):
    f = benchmark._fmt
    print(f"\n{'cell':<9}{'mode':<6}{'B':>4}{'T':>6}{'I':>5}{'H':>5} |{'torch':>9}{'fusedrnn':>9}"
          f"{'x':>7} | {'sporadic: torch':>15}{'fusedrnn':>9}{'x':>7} | "
          f"{'layer alone: x standalone':>25}{'x adapter':>10}{'cost':>6} | {'maxdiff':>8}")
    for r in rows:
        alone = r.get("alone") or {}
        print(f"{r['cell']:<9}{r['mode']:<6}{r['B']:>4}{r['T']:>6}{r['I']:>5}{r['H']:>5} |"
              f"{f(r['torch_ms'], 9, 3)}{f(r['fusedrnn_ms'], 9, 3)}{f(r['speedup'], 7)} | "
              f"{f(r['torch_sporadic_ms'], 15, 3)}{f(r['fusedrnn_sporadic_ms'], 9, 3)}"
              f"{f(r['speedup_sporadic'], 7)} | {f(alone.get('speedup_standalone'), 25)}"
              f"{f(alone.get('speedup_adapter'), 10)}{f(alone.get('adapter_over_standalone'), 6)}"
              f" | {r['maxdiff']:>8.1e}{'' if r['agree'] else ' !'}")


def run(args) -> int:
    if getattr(args, "device", "cpu") != "cpu":
        raise ValueError("--framework torch: the adapter runs on the CPU; drop --device cuda")
    if getattr(args, "memory", False):
        raise ValueError("--memory: not measured with --framework torch (use --framework numpy)")
    import torch

    import fusedrnn as fr
    cells, modes, shapes = benchmark.selection(args, more_cells=tuple(DECODER_SHAPES))
    budget = benchmark.budget_of(args)
    bf16 = getattr(args, "precision", "fp32") == "bf16"
    fr.set_num_threads(args.threads)  # the adapter follows torch's count too, at every call
    torch.set_num_threads(args.threads)
    env = {k: os.environ[k] for k in OMP_ENV if k in os.environ}
    print(benchmark.cpu_header(args.threads))
    print(f"fusedrnn {fr.__version__}, torch {torch.__version__}; threads {args.threads}; "
          f"{' '.join(f'{k}={v}' for k, v in env.items()) + '; ' if env else ''}"
          f"model: Embedding({VOCAB}, I) -> <cell>(I, H) -> Linear(H, {VOCAB}) -> "
          f"CrossEntropyLoss; train = zero_grad + forward + loss + backward + SGD step; "
          f"sporadic = infer after a {SPORADIC_PAUSE_S * 1000:g} ms idle sleep"
          f"{'; both under torch.autocast(cpu, bfloat16)' if bf16 else ''}", flush=True)
    t0 = time.perf_counter()
    rows = []
    for cell in cells:
        cell_shapes = shapes
        if cell in DECODER_SHAPES and args.shapes is None:
            cell_shapes = DECODER_SHAPES[cell][:1 if args.quick else None]
        for (B, T, I, H) in cell_shapes:
            for mode in modes:
                r = bench_row(cell, mode, B, T, I, H, args.threads, budget, bf16)
                rows.append(r)
                print(f"  {cell} {mode} B={B} T={T} I={I} H={H}: torch {r['torch_ms']} ms, "
                      f"fusedrnn {r['fusedrnn_ms']} ms (x{r['speedup']}); maxdiff "
                      f"{r['maxdiff']:.1e}", flush=True)
    print_table(rows)
    refused = {r["cell"]: r["torch_onednn_refusal"] for r in rows
               if r.get("torch_onednn_refusal")}
    for cell, why in refused.items():
        print(f"{cell}: torch.nn's bfloat16 {cell} fails on this CPU with oneDNN on ({why}); "
              "both copies ran with torch.backends.mkldnn.enabled = False")
    print(f"x = torch ms / fusedrnn ms (> 1: the converted model is faster); layer alone: the "
          f"recurrent layer by itself in this process, torch.nn ms / fusedrnn standalone ms "
          f"(NumPy) and / the adapter's ms, cost = adapter ms / standalone ms; "
          f"{time.perf_counter() - t0:.0f} s")
    if args.json:
        from fusedrnn._atomic import write_text
        write_text(args.json, to_json({"info": fr.info(), "versions": benchmark.versions(),
                                       "framework": "torch",
                                       "precision": "bf16" if bf16 else "fp32",
                                       "torch_version": torch.__version__, "env": env,
                                       "rows": rows}, indent=1))  # (strict: a NaN is null)
        print(f"wrote {args.json}")
    bad = [r for r in rows if not r["agree"]]
    if bad:
        print(f"fusedrnn: {len(bad)} row(s) where the logits differ by more than "
              f"{TOLERANCE_BF16 if bf16 else TOLERANCE} (marked !)", file=sys.stderr)
        return 1
    return 0
