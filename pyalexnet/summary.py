"""Layer table of a network: each layer's output shape, parameters and multiply-adds.

    python -m pyalexnet.summary alexnet        # or alexnet-owt, cifar-small, path/to/net.toml
    python -m pyalexnet.summary --list

Pure shape arithmetic from the config: nothing is allocated or run. Multiply-adds are the
forward pass's, per image, counted for convolutions and fc layers (ReLU, LRN, pooling and
dropout are a fraction of a percent); a training step costs about three times as many.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from .config import ConfigError, list_configs, load_config


@dataclass(frozen=True)
class Row:
    name: str
    type: str
    output_shape: tuple   # per image: (C, H, W) or (F,)
    params: int
    macs: int             # forward multiply-adds per image
    note: str = ""


@dataclass(frozen=True)
class Summary:
    config_name: str
    input_shape: tuple
    rows: tuple
    total_params: int
    total_macs: int

    def __iter__(self):
        return iter(self.rows)

    def format(self) -> str:
        return format_summary(self)


def summary(config, num_classes=None) -> Summary:
    """Rows (name, type, output shape, params, multiply-adds, note) and the totals."""
    config = load_config(config, num_classes)
    rows = tuple(Row(layer.name, layer.type, tuple(layer.out_shape), layer.num_params,
                     layer.macs, layer.note(config.towers)) for layer in config.layers)
    return Summary(config.name, tuple(config.input_shape), rows,
                   sum(r.params for r in rows), sum(r.macs for r in rows))


def _shape(shape):
    return "x".join(str(v) for v in shape)


def format_summary(s: Summary) -> str:
    head = ("layer", "type", "output", "params", "mult-adds", "")
    body = [(r.name, r.type, _shape(r.output_shape), f"{r.params:,}", f"{r.macs:,}", r.note)
            for r in s.rows]
    body.insert(0, ("input", "", _shape(s.input_shape), "", "", ""))
    total = ("total", "", "", f"{s.total_params:,}", f"{s.total_macs:,}",
             f"{s.total_macs / 1e6:.1f} M mult-adds/image forward")
    widths = [max(len(r[i]) for r in [head, total] + body) for i in range(5)]

    def line(r):
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].rjust(widths[2]),
                 r[3].rjust(widths[3]), r[4].rjust(widths[4])]
        return ("  ".join(cells) + ("  " + r[5] if r[5] else "")).rstrip()

    rule = "-" * (sum(widths) + 8)
    return "\n".join([f"{s.config_name}", line(head), rule] + [line(r) for r in body]
                     + [rule, line(total)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyalexnet.summary",
                                     description="Print a network's layers: output shape, "
                                                 "parameters, multiply-adds, with totals.")
    parser.add_argument("config", nargs="?", help=f"one of {', '.join(list_configs())}, "
                                                  "or a path to a .toml file")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="override the number of classes (the last layer's outputs)")
    parser.add_argument("--list", action="store_true", help="list the bundled configs")
    args = parser.parse_args(argv)
    if args.list or not args.config:
        for name in list_configs():
            print(f"{name:14s} {load_config(name).description}")
        return 0 if args.list else 2
    try:
        print(format_summary(summary(args.config, args.num_classes)))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
