"""`fusedrnn translate`: run a date translator saved by `fusedrnn train dates --save PATH`.

(`fusedrnn train dates` and `fusedrnn train caption-digits` are tasks of the `train` command:
``fusedrnn.tasks.dates`` and ``fusedrnn.tasks.caption_digits``.)
"""
from __future__ import annotations

from . import path, positive_int


def add_commands(sub):
    p = sub.add_parser("translate", help="translate human-written dates to ISO with a model "
                                         "saved by `train dates --save`")
    p.add_argument("text", nargs="+", help='dates to translate, e.g. "3rd of May 1999"')
    p.add_argument("--model", required=True, type=path, metavar="PATH")
    p.add_argument("--beam", type=positive_int, default=3, help="beam size (1: greedy)")
    p.add_argument("--plot", type=path, metavar="PATH.png", help="save the attention map(s) (matplotlib)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_translate)


def run_translate(args):
    from fusedrnn.cli import print_json
    import reprlib
    import warnings
    from fusedrnn.tasks.dates import load_model, plot_attention, trained_date, translate
    from .train import check_outputs
    check_outputs(args)
    model = load_model(args.model)
    outputs, result = translate(model, args.text, beam=args.beam)
    for text, out in zip(args.text, outputs):
        if not trained_date(out):
            warnings.warn(f"{reprlib.repr(text)} -> {out!r} is not a date of the model's training data "
                          f"(1950-01-01 to 2049-12-31): a year outside them, or no date")
    if args.plot:
        plot_attention(args.plot, model, args.text, title="attention (rows: output characters, "
                                                          "columns: input characters)", beam=args.beam)
    if args.json:
        print_json({"inputs": args.text, "outputs": outputs,
                    "scores": [float(s) for s in result.scores],
                    **({"plot": args.plot} if args.plot else {})})
    else:
        for out in outputs:
            print(out)
    return 0
