"""COCO run-length-encoded masks, kept compressed until a pixel array is needed.

The drawing tool stores each SAM mask as ``{"size": [H, W], "counts": base64(compressed RLE bytes)}``.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from pycocotools import mask as mask_util

from wclab.errors import ConditionError


@dataclass(frozen=True)
class RLEMask:
    """A binary mask of ``size = (H, W)`` pixels, stored as the file stores it (base64 of COCO compressed RLE).

    ``decode()`` gives a ``bool [H, W]`` array; the result is cached and returned read-only.
    """

    size: tuple[int, int]
    counts: str

    @classmethod
    def from_array(cls, mask: np.ndarray) -> "RLEMask":
        """Compress a ``[H, W]`` boolean/0-1 array."""
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise ConditionError(f"mask: expected a 2-D [H, W] array, got shape {mask.shape}")
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        return cls(size=(int(mask.shape[0]), int(mask.shape[1])), counts=base64.b64encode(rle["counts"]).decode("ascii"))

    @classmethod
    def full(cls, height: int, width: int) -> "RLEMask":
        """A mask covering the whole image (what the drawing tool gives camera/background anchors without SAM)."""
        return cls.from_array(np.ones((height, width), dtype=bool))

    @cached_property
    def _array(self) -> np.ndarray:
        try:
            raw = base64.b64decode(self.counts.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError) as e:
            raise ConditionError(f"mask_cluster.counts: expected base64 of COCO RLE bytes, got undecodable text ({e})") from None
        h, w = self.size
        _check_rle_bytes(raw, h * w)
        arr = mask_util.decode({"size": [h, w], "counts": raw}).astype(bool)
        arr.setflags(write=False)
        return arr

    def decode(self) -> np.ndarray:
        """``bool [H, W]``, read-only."""
        return self._array

    @property
    def area(self) -> int:
        """Number of mask pixels."""
        return int(self._array.sum())

    def to_json(self) -> dict:
        return {"size": [int(self.size[0]), int(self.size[1])], "counts": self.counts}


def _check_rle_bytes(raw: bytes, n_pixels: int) -> None:
    """Parse COCO's compressed RLE string ourselves so corrupt data raises ConditionError, not a crash.

    pycocotools decodes whatever it is given (runs past the end are clipped silently), so we check that
    the runs are well-formed and add up to exactly H*W pixels.
    """
    counts: list[int] = []
    p = 0
    n = len(raw)
    while p < n:
        x = 0
        k = 0
        more = True
        while more:
            if p >= n:
                raise ConditionError("mask_cluster.counts: truncated RLE run")
            c = raw[p] - 48
            if c < 0 or c > 63:
                raise ConditionError(f"mask_cluster.counts: byte {raw[p]!r} at {p} is not a COCO RLE character")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            raise ConditionError(f"mask_cluster.counts: negative run length {x} in RLE")
        counts.append(x)
    total = sum(counts)
    if total != n_pixels:
        raise ConditionError(f"mask_cluster.counts: RLE runs cover {total} pixels, expected size[0]*size[1] = {n_pixels}")
