"""Start images: load, cover-resize + centre-crop to the model size, and convert to [-1, 1] tensors.

Matches the reference ``crop_and_resize`` (torchvision ``resize`` on a PIL image = PIL bilinear at the rounded
size, then torchvision ``center_crop``) and the pipeline's ``preprocess_image`` (``x * (2 / 255) - 1``),
using PIL only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

from wclab.errors import WclabError
from wclab.sizes import FRAMES_PER_LATENT, TOKEN_CELL


class SizeError(WclabError, ValueError):
    """A target size the model cannot take (not a multiple of 16 pixels, or frames not 4k+1)."""


class ImageLoadError(WclabError, OSError):
    """An image file is missing or cannot be decoded."""


def check_size(height: int, width: int, frames: int | None = None, where: str = "size") -> None:
    """Raise :class:`SizeError` unless H, W are positive multiples of 16 pixels and ``frames`` (if given) is 4k+1."""
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0 or v % TOKEN_CELL:
            raise SizeError(f"{where}: {name}: expected a positive multiple of 16 pixels, got {v!r}")
    if frames is not None and (isinstance(frames, bool) or not isinstance(frames, (int, np.integer))
                               or frames < 1 or (frames - 1) % FRAMES_PER_LATENT):
        raise SizeError(f"{where}: frames: expected 4k+1 frames (e.g. 17, 49, 81), got {frames!r}")


def load_image(path: Union[str, Path]) -> Image.Image:
    """Read an image file as an RGB PIL image (alpha dropped, palettes expanded)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError as e:
        raise ImageLoadError(f"{path}: image file not found") from e
    except OSError as e:  # PIL.UnidentifiedImageError is an OSError
        raise ImageLoadError(f"{path}: cannot read as an image ({e})") from e


def crop_and_resize(image: Image.Image, height: int, width: int) -> Image.Image:
    """Scale ``image`` (bilinear) so it covers ``height`` × ``width`` pixels, then centre-crop to exactly that.

    The scaled size is ``(round(h * s), round(w * s))`` with ``s = max(width / w, height / h)``, as the reference.
    """
    check_size(height, width, where="crop_and_resize")
    w, h = image.size
    scale = max(width / w, height / h)
    new_h, new_w = round(h * scale), round(w * scale)
    if (new_h, new_w) != (h, w):
        image = image.resize((new_w, new_h), Image.BILINEAR)
    return center_crop(image, height, width)


def center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """torchvision ``center_crop`` on a PIL image: zero-pad if smaller, then crop at ``int(round((h - th) / 2))``."""
    w, h = image.size
    if width > w or height > h:
        left, top = max(width - w, 0) // 2, max(height - h, 0) // 2
        padded = Image.new(image.mode, (max(w, width), max(h, height)), 0)
        padded.paste(image, (left, top))
        image, (w, h) = padded, padded.size
        if (w, h) == (width, height):
            return image
    top = int(round((h - height) / 2.0))
    left = int(round((w - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


def solid_image(height: int, width: int, rgb: Sequence[int]) -> Image.Image:
    """A ``height`` × ``width`` RGB picture of one colour (the e2e golden uses (90, 120, 150))."""
    return Image.new("RGB", (width, height), tuple(int(c) for c in rgb))


def image_to_tensor(image: Image.Image, dtype: torch.dtype = torch.float32,
                    device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """RGB PIL image → ``[1, 3, H, W]`` in [-1, 1] (``pixel * (2 / 255) - 1``, computed in ``dtype``)."""
    x = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.float32)).to(dtype=dtype, device=device)
    x = x * (2 / 255) - 1
    return x.permute(2, 0, 1).unsqueeze(0)


def video_to_tensor(frames: Sequence[Image.Image], dtype: torch.dtype = torch.float32,
                    device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """List of T RGB PIL frames → ``[1, 3, T, H, W]`` in [-1, 1]."""
    if len(frames) == 0:
        raise SizeError("video_to_tensor: frames: expected at least one frame, got 0")
    sizes = {f.size for f in frames}
    if len(sizes) > 1:
        raise SizeError(f"video_to_tensor: frames: expected one size for all frames, got {sorted(sizes)} (W, H)")
    return torch.stack([image_to_tensor(f, dtype, device) for f in frames], dim=2)
