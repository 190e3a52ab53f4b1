"""The `jaxconv` command line: `jaxconv summary MODEL`, `jaxconv train ...`."""

from __future__ import annotations

import argparse
import sys


def _shape(text: str) -> tuple:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape like 32,32,1 (n_H,n_W,n_C), got {text!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive sizes n_H,n_W,n_C, got {text!r}")
    return shape


def cmd_summary(args) -> int:
    from jaxconv.models import INPUT_SHAPES, MODELS
    from jaxconv.summary import format_summary, summary

    input_shape = (1, *args.input_shape) if args.input_shape else INPUT_SHAPES[args.model]
    model = MODELS[args.model](**({"in_channels": input_shape[3]} if args.model == "lenet5" else {}))
    try:
        rows = summary(model, input_shape)
    except ValueError as e:
        print(f"jaxconv summary: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.model}, input {input_shape[1:]}")
    print(format_summary(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from jaxconv.models import MODELS

    parser = argparse.ArgumentParser(prog="jaxconv", description="Convolutional networks as plain JAX functions.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("summary", help="print a model's layer table (activation shapes, sizes, parameters, MACs)",
                       description="Print the notes' table: activation shape, activation size, # parameters and "
                                   "multiply-accumulates of every layer, computed from shapes alone.")
    p.add_argument("model", choices=sorted(MODELS), help="which model")
    p.add_argument("--input-shape", type=_shape, default=None, metavar="H,W,C",
                   help="per-example input shape (default: the model's own, 32,32,1 for lenet5, 32,32,3 for seed_cnn)")
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
