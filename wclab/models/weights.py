"""Reading checkpoint files safely: safetensors, or ``torch.load(weights_only=True)`` — never pickled code."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from wclab.errors import CheckpointError


def read_state_dict(path: Union[str, Path], device: Union[str, torch.device] = "cpu",
                    what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The flat ``{key: tensor}`` state dict in ``path`` (``.safetensors``, or ``.pth`` memory-mapped when the
    file allows). :class:`CheckpointError` names ``what`` and the file when it is missing, unreadable or not a
    flat state dict of tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device=str(device))
        else:
            try:
                sd = torch.load(str(path), map_location=device, weights_only=True, mmap=True)
            except RuntimeError as e:  # files in the legacy (non-zip) format cannot be memory-mapped
                if "mmap" not in str(e):
                    raise
                sd = torch.load(str(path), map_location=device, weights_only=True)
    except Exception as e:  # corrupt / wrong format / pickled code refused: name the file
        raise CheckpointError(f"cannot read {what} {path}: {type(e).__name__}: {e}") from e
    if isinstance(sd, dict) and "model_state" in sd:
        sd = sd["model_state"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{what} {path} is not a flat state dict of tensors")
    return sd
