"""`fusedrnn bench`: fusedrnn against the installed peers (see bench/ and fusedrnn.benchmark)."""


def add_commands(sub):
    from fusedrnn.benchmark import add_arguments
    p = sub.add_parser("bench", help="time fusedrnn against PyTorch, ONNX Runtime, NumPy")
    add_arguments(p)
    p.set_defaults(func=run)


def run(args):
    from fusedrnn.benchmark import run as run_bench
    return run_bench(args)
