"""Checkpoint file headers: key, shape and dtype of every tensor without reading the tensor data."""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from wclab.models.weights import read_state_dict


@dataclass
class TensorInfo:
    """Shape and dtype of one stored tensor."""

    shape: tuple[int, ...]
    dtype: str  # torch dtype name without "torch.", e.g. "bfloat16"


_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
              "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
              "U8": "uint8", "BOOL": "bool"}


def read_safetensors_header(path: str | Path) -> tuple[dict[str, TensorInfo], int]:
    """(key -> TensorInfo, number of bytes the header says the file needs), reading only the header."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError("file shorter than a safetensors header")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise ValueError(f"implausible safetensors header length {n}")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    end = max((v["data_offsets"][1] for v in header.values()), default=0)
    infos = {k: TensorInfo(tuple(v["shape"]), _ST_DTYPES.get(v["dtype"], v["dtype"].lower()))
             for k, v in header.items()}
    return infos, 8 + n + end


def read_torch_header(path: str | Path) -> dict[str, TensorInfo]:
    """Key -> TensorInfo of a ``.pth`` state dict, memory-mapped (tensor data is not read)."""
    sd = read_state_dict(path)
    return {k: TensorInfo(tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()}


def first_non_finite(path: str | Path) -> Optional[str]:
    """Read every tensor of a checkpoint file; the first key holding NaN/inf, or None."""
    path = Path(path)
    if path.suffix == ".safetensors":
        with safe_open(str(path), "pt") as f:
            for k in tqdm(list(f.keys()), desc=path.name, leave=False):
                t = f.get_tensor(k)
                if t.is_floating_point() and not torch.isfinite(t).all():
                    return k
        return None
    for k, t in tqdm(read_state_dict(path).items(), desc=path.name, leave=False):
        if t.is_floating_point() and not torch.isfinite(t).all():
            return k
    return None
