"""Weights in and out: torchvision state dicts (.pth, .safetensors) and ONNX models.

    python -m pyalexnet.convert --from-torchvision alexnet.pth --out ckpt.npz
    python -m pyalexnet.convert --checkpoint ckpt.npz --to-torchvision alexnet.safetensors
    python -m pyalexnet.convert --checkpoint runs/latest --to-onnx model.onnx
"""
from .onnx_export import build_model, export_onnx
from .torchvision import (ConvertError, from_torchvision, key_map, read_state_dict,
                          to_torchvision, write_state_dict)

__all__ = ["ConvertError", "build_model", "export_onnx", "from_torchvision", "key_map",
           "read_state_dict", "to_torchvision", "write_state_dict"]
