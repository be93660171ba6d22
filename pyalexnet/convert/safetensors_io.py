"""The .safetensors format read and written with NumPy alone (no torch, no safetensors
package): an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}}, then the raw little-endian tensor bytes."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I64": "<i8", "I32": "<i4", "U8": "u1"}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
MAX_HEADER = 100 << 20


class SafetensorsError(ValueError):
    """A file that is not a readable .safetensors file."""


def read_safetensors(path) -> dict:
    """{name: float/int NumPy array}; a SafetensorsError names the file and the problem."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 8:
        raise SafetensorsError(f"{path}: too short for a .safetensors file ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(MAX_HEADER, len(data) - 8):
        raise SafetensorsError(f"{path}: header length {n} does not fit the {len(data)}-byte "
                               "file (truncated, or not a .safetensors file)")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: the header is not JSON ({e})") from None
    body = memoryview(data)[8 + n:]
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = np.dtype(DTYPES[spec["dtype"]])
            start, end = (int(v) for v in spec["data_offsets"])
            shape = tuple(int(v) for v in spec["shape"])
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{path}: tensor {name!r} has an unsupported dtype or a bad "
                                   f"entry {spec!r}; dtypes: {', '.join(DTYPES)}") from None
        if not 0 <= start <= end <= len(body) or end - start != dtype.itemsize * int(np.prod(shape)):
            raise SafetensorsError(f"{path}: tensor {name!r} of shape {shape} does not fit its "
                                   f"bytes {start}..{end} (truncated file?)")
        out[name] = np.frombuffer(body[start:end], dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    return out


def write_safetensors(path, arrays: dict, write=None):
    """Write ``arrays`` as .safetensors; ``write(path, bytes)`` defaults to a plain write."""
    header, chunks, offset = {}, [], 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        if a.dtype not in NAMES:
            raise SafetensorsError(f"cannot store {name} of dtype {a.dtype} in .safetensors")
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": NAMES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    blob = struct.pack("<Q", len(text)) + text + b"".join(chunks)
    if write is None:
        Path(path).write_bytes(blob)
    else:
        write(path, blob)
