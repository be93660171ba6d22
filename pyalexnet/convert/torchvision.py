"""torchvision.models.alexnet state dicts <-> our grouped-layout parameters.

torchvision's keys: features.{0,3,6,8,10}.{weight,bias} (conv1..conv5) and
classifier.{1,4,6}.{weight,bias} (fc6..fc8); the shapes are ours. torchvision normalises
inputs by a per-channel std as well as the mean; our input pipeline subtracts the mean
only, so conv1's weights are divided by the std on import and multiplied on export (exact
up to float32 rounding: zero padding is zero in both).
"""
from __future__ import annotations

import io
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..checkpoint import atomic_write_bytes
from .safetensors_io import SafetensorsError, read_safetensors, write_safetensors

CONV_KEYS = ("features.0", "features.3", "features.6", "features.8", "features.10")
FC_KEYS = ("classifier.1", "classifier.4", "classifier.6")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SUFFIXES = (".pth", ".pt", ".safetensors")


class ConvertError(ValueError):
    """A weights file or config that cannot be converted; the message names what and why."""


def key_map(config) -> dict:
    """{our "<layer>.<w|b>": torchvision key} for a config shaped like torchvision's."""
    convs = [layer.name for layer in config.layers if layer.type == "conv"]
    fcs = [layer.name for layer in config.layers if layer.type == "fc"]
    if config.towers != 1 or len(convs) != 5 or len(fcs) != 3:
        raise ConvertError(f"config {config.name} is not torchvision's AlexNet (one tower, 5 conv "
                           f"and 3 fc layers); use --config alexnet-torchvision")
    out = {}
    for ours, theirs in zip(convs + fcs, CONV_KEYS + FC_KEYS):
        out[f"{ours}.w"], out[f"{ours}.b"] = f"{theirs}.weight", f"{theirs}.bias"
    return out


def _fold(w, inverse=False):
    std = np.asarray(STD, np.float64).reshape(1, -1, 1, 1)
    w = np.asarray(w, np.float64)
    return (w * std if inverse else w / std).astype(np.float32)


def from_torchvision(state: dict, config, where="state dict") -> dict:
    """Our grouped-layout params from a torchvision state dict (checked key by key)."""
    names = key_map(config)
    theirs = set(names.values())
    missing = sorted(theirs - set(state))
    extra = sorted(set(state) - theirs)
    if missing or extra:
        what = (f"missing key(s) {', '.join(missing[:4])}" if missing else "") + \
               ("; " if missing and extra else "") + \
               (f"unexpected key(s) {', '.join(extra[:4])}" if extra else "")
        raise ConvertError(f"{where}: {what}; torchvision's AlexNet has "
                           f"{', '.join(sorted(theirs))}")
    shapes = config.param_shapes
    out = {}
    for ours, key in names.items():
        a = np.asarray(state[key])
        if a.shape != tuple(shapes[ours]):
            raise ConvertError(f"{where}: {key} has shape {tuple(a.shape)}, config "
                               f"{config.name} needs {tuple(shapes[ours])}")
        out[ours] = np.array(a, dtype=np.float32)
    first = next(iter(names))
    out[first] = _fold(out[first])
    return out


def to_torchvision(params: dict, config) -> "OrderedDict":
    names = key_map(config)
    out = OrderedDict((key, np.array(params[ours], dtype=np.float32)) for ours, key in names.items())
    first = names[next(iter(names))]
    out[first] = _fold(out[first], inverse=True)
    return out


def _torch(path, doing):
    try:
        import torch
    except ImportError:
        raise ConvertError(f"{doing} {path} needs PyTorch: pip install 'pyalexnet[torch]' "
                           "(or use a .safetensors file, which needs nothing)") from None
    return torch


def _check_suffix(path, flag):
    if Path(path).suffix not in SUFFIXES:
        raise ConvertError(f"{flag} {path}: the file must end in {', '.join(SUFFIXES)}")


def read_state_dict(path) -> dict:
    """{key: float32 NumPy array} from a .pth/.pt (needs torch) or .safetensors file."""
    path = Path(path)
    _check_suffix(path, "--from-torchvision")
    if not path.is_file():
        raise ConvertError(f"--from-torchvision {path}: no such file")
    if path.suffix == ".safetensors":
        try:
            return read_safetensors(path)
        except SafetensorsError as e:
            raise ConvertError(str(e)) from None
    torch = _torch(path, "reading")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConvertError(f"{path}: not a readable PyTorch state dict ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(hasattr(v, "numpy") for v in obj.values()):
        raise ConvertError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors "
                           "(save model.state_dict())")
    return {k: v.detach().cpu().float().numpy() for k, v in obj.items()}


def write_state_dict(path, state: dict):
    """Write a torchvision state dict atomically as .pth (needs torch) or .safetensors."""
    path = Path(path)
    _check_suffix(path, "--to-torchvision")
    if path.suffix == ".safetensors":
        write_safetensors(path, state, write=lambda p, blob: atomic_write_bytes(
            p, lambda f: f.write(blob)))
        return path
    torch = _torch(path, "writing")
    buf = io.BytesIO()
    torch.save(OrderedDict((k, torch.from_numpy(np.ascontiguousarray(v))) for k, v in state.items()),
               buf)
    return atomic_write_bytes(path, lambda f: f.write(buf.getbuffer()))
