"""`fusedrnn info`: what this build holds."""


def add_commands(sub):
    p = sub.add_parser("info", help="what was built: compiler, SIMD, BLAS, threads, CUDA")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args):
    import fusedrnn
    from fusedrnn.cli import print_json
    d = fusedrnn.info()
    if args.json:
        print_json(d)
    else:
        width = max(map(len, d))
        for k in sorted(d):
            if isinstance(d[k], dict):  # the CPU table: one parameter a line
                print(f"{k:>{width}}:")
                for name, value in d[k].items():
                    print(f"{'':>{width}}  {name} = {value}")
            else:
                print(f"{k:>{width}}: {d[k]}")
    return 0
