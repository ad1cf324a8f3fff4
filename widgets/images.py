"""Reading start images and fitting them to the scene size the way the pipeline does."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from wclab.errors import WclabError

ImageLike = Union[str, Path, Image.Image, np.ndarray]


class ImageError(WclabError, ValueError):
    """An image cannot be read or has an unusable shape/dtype."""


def as_rgb(image: ImageLike) -> np.ndarray:
    """``uint8 [H, W, 3]`` from a path, a PIL image, or an array (uint8 gray [H, W], RGB or RGBA [H, W, 3|4])."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB")).copy()
        except FileNotFoundError:
            raise ImageError(f"{path}: no such image file") from None
        except OSError as e:
            raise ImageError(f"{path}: cannot read image ({e})") from None
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB")).copy()
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ImageError(f"image: expected a uint8 array, got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(f"image: expected [H, W], [H, W, 3] or [H, W, 4], got shape {list(arr.shape)}")
    return np.ascontiguousarray(arr[:, :, :3])


def fit_image(image: ImageLike, height: int, width: int) -> np.ndarray:
    """Resize so the image covers ``height × width`` pixels (PIL bilinear, sizes rounded) and centre-crop:
    the start-image preprocessing of the WorldCanvas pipeline, so drawn pixels match what the model sees.

    Returns ``uint8 [height, width, 3]``.
    """
    rgb = as_rgb(image)
    h, w = rgb.shape[:2]
    if (h, w) == (height, width):
        return rgb
    nh, nw, top, left = fit_geometry(h, w, height, width)
    resized = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))
    return np.ascontiguousarray(resized[top:top + height, left:left + width])


def fit_geometry(h: int, w: int, height: int, width: int) -> tuple[int, int, int, int]:
    """How :func:`fit_image` maps an ``h × w`` image onto ``height × width``: ``(nh, nw, top, left)`` — resized
    to ``nh × nw`` pixels (covering the scene), then cropped from row ``top`` and column ``left``.

    A point ``(x, y)`` of the image lands at ``((x + 0.5) nw / w - 0.5 - left, (y + 0.5) nh / h - 0.5 - top)``
    in the scene (pixel centres map to pixel centres, as PIL's resize does).
    """
    if (h, w) == (height, width):
        return h, w, 0, 0
    scale = max(width / w, height / h)
    nh, nw = round(h * scale), round(w * scale)
    return nh, nw, int(round((nh - height) / 2.0)), int(round((nw - width) / 2.0))
