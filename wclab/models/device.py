"""Where models run: a device string checked against what this torch build can use."""
from __future__ import annotations

from typing import Union

import torch

from wclab.errors import WclabError


class DeviceError(WclabError, ValueError):
    """A device this torch build cannot use (e.g. CUDA on a CPU-only torch)."""


def check_device(device: Union[str, torch.device]) -> torch.device:
    """``torch.device(device)``; a CUDA device on a torch without usable CUDA raises a one-line DeviceError."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"device {device!r}: not a torch device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {str(device)!r}: this torch ({torch.__version__}) has no usable CUDA; "
                          "use device='cpu'")
    return dev
