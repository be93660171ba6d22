"""``python -m pyalexnet.convert``: one conversion a run (see the package doc)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .. import checkpoint as ckpt
from ..cliargs import ArgumentParser
from ..classnames import ClassNamesError, read_class_names
from ..config import load_config
from ..layers import ConfigError
from ..model import check_state
from ..net import DROPOUT_MODES, config_from_options
from .torchvision import MEAN, ConvertError


def build_parser():
    ap = ArgumentParser(
        prog="python -m pyalexnet.convert",
        description="Import torchvision AlexNet weights as a checkpoint, or export a "
                    "checkpoint to torchvision (.pth, .safetensors) or ONNX.")
    act = ap.add_mutually_exclusive_group(required=True)
    act.add_argument("--from-torchvision", metavar="FILE",
                     help="a torchvision alexnet state dict (.pth/.pt needs torch; "
                          ".safetensors does not) to write as a checkpoint (--out)")
    act.add_argument("--to-torchvision", metavar="FILE",
                     help="write --checkpoint as a torchvision state dict (.pth or .safetensors)")
    act.add_argument("--to-onnx", metavar="FILE", help="write --checkpoint as an ONNX model")
    ap.add_argument("--checkpoint", metavar="PATH", default=os.path.join("runs", "latest"),
                    help="checkpoint file or run directory to export (default: runs/latest)")
    ap.add_argument("--out", metavar="CKPT.npz", help="with --from-torchvision: the checkpoint to write")
    ap.add_argument("--config", default="alexnet-torchvision",
                    help="with --from-torchvision: the config the weights fit (default: "
                         "alexnet-torchvision)")
    ap.add_argument("--class-names", metavar="FILE",
                    help="with --from-torchvision: class names, one a line, or an ImageNet "
                         "'wnid words' file (default: class 0, class 1, ...)")
    ap.add_argument("--dropout-mode", choices=DROPOUT_MODES, default=None,
                    help="with --to-onnx: inverted = dropout is the identity at inference, "
                         "classic = multiply by 1-p (default: as the checkpoint was trained)")
    return ap


def _import(args):
    from .torchvision import from_torchvision, read_state_dict

    if not args.out:
        raise ConvertError("--from-torchvision needs --out CKPT.npz")
    if Path(args.out).suffix != ".npz":
        raise ConvertError(f"--out {args.out}: a checkpoint file must end in .npz")
    state = read_state_dict(args.from_torchvision)
    config = load_config(args.config)
    fc8 = state.get("classifier.6.weight")
    if fc8 is not None and fc8.ndim == 2:
        config = config.with_num_classes(fc8.shape[0])
    params = from_torchvision(state, config, args.from_torchvision)
    n = config.num_classes
    classes = (read_class_names(args.class_names, count=n) if args.class_names
               else [f"class {i}" for i in range(n)])
    options = {"config": args.config, "crop": config.input.size, "resize": config.input.resize,
               "seed": 0, "bias_init": "paper", "dropout_mode": "inverted", "batch_size": 128,
               "workers": 0, "num_classes": n, "source": None}
    meta = {"kind": "weights", "converted_from": str(args.from_torchvision), "options": options,
            "num_classes": n, "classes": classes, "mean": list(MEAN), "epoch": 0, "step": 0}
    path = ckpt.save(args.out, params, {}, meta)
    print(f"wrote {path}: {config.name} ({config.num_params:,} parameters, {n} classes) from "
          f"{args.from_torchvision}")


def load_weights(path):
    """(config, params, meta) of a checkpoint file or run directory."""
    c = ckpt.load(path)
    config = config_from_options(c.meta["options"], c.meta.get("num_classes"))
    try:
        params = check_state(config, c.params, f"checkpoint {ckpt.resolve(path)}")
    except ValueError as e:
        raise ConvertError(str(e)) from None
    return config, params, c.meta


def _export(args):
    from .onnx_export import export_onnx
    from .torchvision import to_torchvision, write_state_dict

    config, params, meta = load_weights(args.checkpoint)
    if args.to_onnx:
        mode = args.dropout_mode or meta["options"].get("dropout_mode", "inverted")
        path = export_onnx(args.to_onnx, config, params, mode)
        print(f"wrote {path}: {config.name} as ONNX (input 'images' N x "
              f"{'x'.join(map(str, config.input_shape))}, output 'logits'; dropout {mode})")
    else:
        path = write_state_dict(args.to_torchvision, to_torchvision(params, config))
        print(f"wrote {path}: {config.name} as a torchvision state dict")


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        _import(args) if args.from_torchvision else _export(args)
    except (ConvertError, ConfigError, ClassNamesError, ckpt.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
