"""COCO run-length-encoded masks, kept compressed until a pixel array is needed.

The drawing tool stores each SAM mask as ``{"size": [H, W], "counts": base64(compressed RLE bytes)}``.
"""
from __future__ import annotations

import base64
import binascii
import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from pycocotools import mask as mask_util

from wclab.errors import ConditionError

MAX_SIDE = 1 << 15
"""Largest accepted mask side in pixels: a sanity bound (a few bytes of RLE can describe a gigapixel mask)."""

_MAX_RUN_CHARS = 7  # 35 bits: enough for any run of a mask within MAX_SIDE² = 2³⁰ pixels


@dataclass(frozen=True)
class RLEMask:
    """A binary mask of ``size = (H, W)`` pixels, stored as the file stores it (base64 of COCO compressed RLE).

    ``decode()`` gives a ``bool [H, W]`` array; the result is cached and returned read-only.
    """

    size: tuple[int, int]
    counts: str

    @classmethod
    def from_array(cls, mask: np.ndarray) -> "RLEMask":
        """Compress a ``[H, W]`` bool or 0/1 array (any other value raises: a mask is binary)."""
        mask = np.asarray(mask)
        if mask.ndim != 2 or mask.size == 0:
            raise ConditionError(f"mask: expected a non-empty 2-D [H, W] array, got shape {mask.shape}")
        if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
            raise ConditionError(f"mask: expected a binary (bool or 0/1) array, got values such as "
                                 f"{mask[~np.isin(mask, (0, 1))].flat[0]!r}")
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        return cls(size=(int(mask.shape[0]), int(mask.shape[1])), counts=base64.b64encode(rle["counts"]).decode("ascii"))

    @classmethod
    def full(cls, height: int, width: int) -> "RLEMask":
        """A mask covering the whole image (what the drawing tool gives camera/background anchors without SAM)."""
        return cls.from_array(np.ones((height, width), dtype=bool))

    @cached_property
    def _raw(self) -> bytes:
        try:
            return base64.b64decode(self.counts.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError) as e:
            raise ConditionError(
                f"mask_cluster.counts: expected base64 of COCO RLE bytes, got undecodable text ({e})") from None

    @cached_property
    def runs(self) -> tuple[int, ...]:
        """Run lengths in column-major order, starting with a run of 0s (checked to cover exactly H*W pixels)."""
        h, w = self.size
        return tuple(_parse_rle_bytes(self._raw, h * w))

    def validate(self) -> None:
        """Raise :class:`ConditionError` unless ``counts`` is valid base64 of a well-formed RLE covering H*W pixels."""
        self.runs  # noqa: B018 - parsing is the check

    @cached_property
    def _array(self) -> np.ndarray:
        self.validate()
        h, w = self.size
        with warnings.catch_warnings():  # pycocotools' numpy-2 copy= DeprecationWarning, not ours to fix
            warnings.simplefilter("ignore", DeprecationWarning)
            arr = mask_util.decode({"size": [h, w], "counts": self._raw}).astype(bool)
        arr.setflags(write=False)
        return arr

    def decode(self) -> np.ndarray:
        """``bool [H, W]``, read-only."""
        return self._array

    @property
    def area(self) -> int:
        """Number of mask pixels (summed from the runs, no decoding needed)."""
        return int(sum(self.runs[1::2]))

    def to_json(self) -> dict:
        return {"size": [int(self.size[0]), int(self.size[1])], "counts": self.counts}


def _parse_rle_bytes(raw: bytes, n_pixels: int) -> list[int]:
    """Parse COCO's compressed RLE string ourselves so corrupt data raises ConditionError, not a crash.

    Same decoding as pycocotools' ``rleFrString`` (5 bits per character from ``'0'``, bit 5 = more, sign bit
    on the last character, runs from the 4th on stored as a delta to the run two before). pycocotools decodes
    whatever it is given (runs past the end are clipped silently), so we also check that every run is >= 0
    and that the runs add up to exactly H*W pixels.
    """
    counts: list[int] = []
    p, n = 0, len(raw)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n:
                raise ConditionError("mask_cluster.counts: truncated RLE run at the end of the data")
            c = raw[p] - 48
            if c < 0 or c > 63:
                raise ConditionError(f"mask_cluster.counts: byte {raw[p]!r} at {p} is not a COCO RLE character")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if k > _MAX_RUN_CHARS and more:
                raise ConditionError(
                    f"mask_cluster.counts: RLE run {len(counts)} is longer than {_MAX_RUN_CHARS} characters")
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            raise ConditionError(f"mask_cluster.counts: RLE run {len(counts)} has negative length {x}")
        counts.append(x)
    total = sum(counts)
    if total != n_pixels:
        raise ConditionError(f"mask_cluster.counts: RLE runs cover {total} pixels, expected size[0]*size[1] = {n_pixels}")
    return counts
