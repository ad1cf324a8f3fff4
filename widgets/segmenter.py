"""Point-prompted object masks for the widgets: SAM when a checkpoint is present, an OpenCV fallback otherwise.

A segmenter takes an RGB image once (``set_image``) and then answers clicks: ``predict(positive, negative)``
gives a ``bool [H, W]`` mask of the image and a score. Points are ``(x, y)`` pixels of that image.
"""
from __future__ import annotations

import hashlib
import importlib
import re
import sys
import types
from pathlib import Path
from typing import Optional, Protocol, Sequence, Union

import cv2
import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from wclab.errors import CheckpointError, WclabError
from wclab.models.layout import SAM_FILE, default_checkpoint_dir

Point = tuple[float, float]

SAM_TYPES = ("vit_h", "vit_l", "vit_b")


class SegmenterError(WclabError, ValueError):
    """The segmenter cannot answer: no image set, no positive click, or segment-anything missing."""


class Segmenter(Protocol):
    label: str
    """Shown in the widgets, e.g. ``"SAM vit_h (cpu)"`` or ``"fallback (no SAM checkpoint)"``."""

    def set_image(self, image: np.ndarray) -> None:
        """Prepare for clicks on ``image`` (uint8 RGB [H, W, 3])."""

    def predict(self, positive: Sequence[Point], negative: Sequence[Point] = ()) -> tuple[np.ndarray, float]:
        """``(mask bool [H, W], score)`` for clicks on the current image; at least one positive click."""

    # Optional: ``describe_score(score) -> str`` says what the score means in the editor's status line
    # (SAM: predicted quality; the fallback: an area share). Without it the editor shows "mask score 0.xxx".


def _checked_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise SegmenterError(f"image: expected uint8 RGB [H, W, 3], got {image.dtype} {list(image.shape)}")
    return np.ascontiguousarray(image)


def _digest(image: np.ndarray) -> str:
    return hashlib.sha1(image.tobytes() + str(image.shape).encode()).hexdigest()


def _check_points(positive: Sequence[Point], shape: tuple[int, int]) -> None:
    if not positive:
        raise SegmenterError("no positive click: click on the object first (negative clicks only remove parts)")
    h, w = shape
    for x, y in positive:
        if not (0 <= x < w and 0 <= y < h):
            raise SegmenterError(f"click ({x}, {y}) lies outside the {w}x{h} image")


# ---------------------------------------------------------------------------------------------------- SAM
def _import_segment_anything() -> types.ModuleType:
    """``segment_anything``, importable without torchvision.

    segment-anything imports torchvision for two things only: PIL resizing in ``ResizeLongestSide`` (used by
    ``SamPredictor``) and NMS in the automatic mask generator (not used here). torchvision has no CPU wheel
    matching a CPU torch on PyPI, so when it is absent the two functions are provided for the import, with the
    same behaviour on PIL images (bilinear, antialiased), and removed from ``sys.modules`` again.
    """
    try:
        return importlib.import_module("segment_anything")
    except ModuleNotFoundError as e:
        if e.name == "segment_anything":
            raise SegmenterError("segment-anything is not installed: pip install segment-anything "
                                 "(or use FallbackSegmenter)") from None
        if e.name != "torchvision":
            raise

    def resize(img: "Image.Image", size: Sequence[int]) -> "Image.Image":  # torchvision semantics: size = (h, w)
        return img.resize((int(size[1]), int(size[0])), Image.BILINEAR)

    def to_pil_image(arr: np.ndarray) -> "Image.Image":
        return Image.fromarray(np.asarray(arr))

    def _no_nms(*args, **kwargs):
        raise SegmenterError("SamAutomaticMaskGenerator needs torchvision; wclab only uses SamPredictor")

    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional",
             "torchvision.ops", "torchvision.ops.boxes"]
    shim = {n: types.ModuleType(n) for n in names}
    shim["torchvision.transforms.functional"].resize = resize
    shim["torchvision.transforms.functional"].to_pil_image = to_pil_image
    shim["torchvision.ops.boxes"].batched_nms = _no_nms
    shim["torchvision.ops.boxes"].box_area = _no_nms
    sys.modules.update(shim)
    try:
        return importlib.import_module("segment_anything")
    finally:
        for n in names:
            if sys.modules.get(n) is shim[n]:
                del sys.modules[n]


def sam_type_of(path: Union[str, Path]) -> str:
    """``vit_h``/``vit_l``/``vit_b`` from a released checkpoint name such as ``sam_vit_h_4b8939.pth``."""
    m = re.search(r"vit_[hlb]", Path(path).name)
    if not m:
        raise CheckpointError(f"{path}: cannot tell the SAM model type from the file name; "
                              f"pass model_type= one of {list(SAM_TYPES)}")
    return m.group(0)


class SamSegmenter:
    """segment-anything's ``SamPredictor``; the image embedding is computed once per image (cached by content)."""

    def __init__(self, model, *, name: str = "SAM"):
        sa = _import_segment_anything()
        self.predictor = sa.SamPredictor(model)
        self.device = str(next(model.parameters()).device)
        self.label = f"{name} ({self.device})"
        self._image_key: Optional[str] = None
        self._shape: Optional[tuple[int, int]] = None
        self.embeddings_computed = 0
        """How many times an image embedding was computed (one per distinct image)."""

    @staticmethod
    def describe_score(score: float) -> str:
        """SAM's own estimate of the mask's quality (IoU), 0..1."""
        return f"SAM quality {score:.2f} (0..1)"

    @classmethod
    def from_checkpoint(cls, checkpoint: Union[str, Path, None], model_type: Optional[str] = None,
                        device: Optional[str] = None) -> "SamSegmenter":
        """Build ``model_type`` (inferred from the file name if not given) and load ``checkpoint`` with
        ``torch.load(weights_only=True)`` (or safetensors). ``checkpoint=None`` keeps random weights (tests only).
        ``device`` defaults to CUDA when available."""
        sa = _import_segment_anything()
        if model_type is None:
            model_type = sam_type_of(checkpoint) if checkpoint is not None else "vit_h"
        if model_type not in SAM_TYPES:
            raise CheckpointError(f"model_type: expected one of {list(SAM_TYPES)}, got {model_type!r}")
        model = sa.sam_model_registry[model_type](checkpoint=None)
        name = f"SAM {model_type}"
        if checkpoint is None:
            name += " (random weights)"
        else:
            path = Path(checkpoint)
            if not path.is_file():
                raise CheckpointError(f"{path}: SAM checkpoint not found "
                                      "(expected e.g. checkpoints/sam_vit_h_4b8939.pth)")
            try:
                if path.suffix == ".safetensors":
                    state = load_file(str(path))
                else:
                    state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 — any unreadable file is reported as a checkpoint error
                raise CheckpointError(f"{path}: cannot read SAM checkpoint ({e})") from None
            missing, unexpected = model.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise CheckpointError(
                    f"{path}: not a SAM {model_type} checkpoint: {len(missing)} missing keys (e.g. {missing[:3]}), "
                    f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device=device).eval()
        return cls(model, name=name)

    def set_image(self, image: np.ndarray) -> None:
        image = _checked_image(image)
        key = _digest(image)
        if key == self._image_key:
            return
        self.predictor.set_image(image, image_format="RGB")
        self._image_key, self._shape = key, image.shape[:2]
        self.embeddings_computed += 1

    def predict(self, positive: Sequence[Point], negative: Sequence[Point] = ()) -> tuple[np.ndarray, float]:
        if self._shape is None:
            raise SegmenterError("no image: call set_image(image) before predict()")
        _check_points(positive, self._shape)
        coords = np.array(list(positive) + list(negative), dtype=np.float32).reshape(-1, 2)
        labels = np.array([1] * len(positive) + [0] * len(negative), dtype=np.int32)
        masks, scores, _ = self.predictor.predict(point_coords=coords, point_labels=labels, multimask_output=True)
        best = int(np.argmax(scores))  # as the original drawing tool: the best of SAM's three proposals
        return masks[best].astype(bool), float(scores[best])


# ---------------------------------------------------------------------------------------------------- fallback
class FallbackSegmenter:
    """OpenCV GrabCut seeded by the clicks (flood fill where GrabCut cannot run), so the widgets work with
    no SAM download. Rougher than SAM: fine for flat-coloured objects, a starting point otherwise.

    Positive clicks seed sure-foreground discs, negative clicks sure-background discs; everything farther than
    ``reach`` (a fraction of the image diagonal) from the positive clicks is background. The result keeps the
    connected regions that contain a positive click. The score is the fraction of the candidate region chosen.
    """

    label = "fallback (no SAM checkpoint)"

    @staticmethod
    def describe_score(score: float) -> str:
        """The fallback's score is no quality estimate: it is the share of the candidate region kept."""
        return f"fallback: {score:.0%} of the area near the clicks kept, not a quality score"

    def __init__(self, reach: float = 0.25, iterations: int = 3, flood_tolerance: int = 24):
        self.reach, self.iterations, self.flood_tolerance = reach, iterations, flood_tolerance
        self.image: Optional[np.ndarray] = None

    def set_image(self, image: np.ndarray) -> None:
        self.image = _checked_image(image)

    def predict(self, positive: Sequence[Point], negative: Sequence[Point] = ()) -> tuple[np.ndarray, float]:
        if self.image is None:
            raise SegmenterError("no image: call set_image(image) before predict()")
        h, w = self.image.shape[:2]
        _check_points(positive, (h, w))
        pos = [(int(np.clip(round(x), 0, w - 1)), int(np.clip(round(y), 0, h - 1))) for x, y in positive]
        neg = [(int(np.clip(round(x), 0, w - 1)), int(np.clip(round(y), 0, h - 1))) for x, y in negative]
        seed_r = max(2, round(min(h, w) / 60))
        reach = self.reach * float(np.hypot(h, w))

        # candidate region: within `reach` of any positive click
        yy, xx = np.mgrid[0:h, 0:w]
        near = np.zeros((h, w), bool)
        for x, y in pos:
            near |= (xx - x) ** 2 + (yy - y) ** 2 <= reach ** 2
        gc = np.where(near, cv2.GC_PR_BGD, cv2.GC_BGD).astype(np.uint8)
        for x, y in pos:
            cv2.circle(gc, (x, y), seed_r, int(cv2.GC_FGD), -1)
        for x, y in neg:
            cv2.circle(gc, (x, y), seed_r, int(cv2.GC_BGD), -1)
        bgr = cv2.cvtColor(self.image, cv2.COLOR_RGB2BGR)
        try:
            bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
            cv2.grabCut(bgr, gc, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
            mask = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
        except cv2.error:  # e.g. a flat image: GrabCut cannot fit its colour models
            mask = self._flood(bgr, pos)
        for x, y in neg:
            cv2.circle(mask.view(np.uint8), (x, y), seed_r, 0, -1)
        mask = _components_containing(mask, pos)
        return mask, float(mask.sum() / max(1, near.sum()))

    def _flood(self, bgr: np.ndarray, pos: Sequence[tuple[int, int]]) -> np.ndarray:
        h, w = bgr.shape[:2]
        filled = np.zeros((h + 2, w + 2), np.uint8)
        t = (self.flood_tolerance,) * 3
        for x, y in pos:
            cv2.floodFill(bgr.copy(), filled, (x, y), (0, 0, 0), t, t,
                          4 | cv2.FLOODFILL_MASK_ONLY | cv2.FLOODFILL_FIXED_RANGE | (1 << 8))
        return filled[1:-1, 1:-1].astype(bool)


def _components_containing(mask: np.ndarray, points: Sequence[tuple[int, int]]) -> np.ndarray:
    """Keep the 8-connected regions of ``mask`` that contain one of ``points`` ((x, y) pixels)."""
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    keep = {int(labels[y, x]) for x, y in points if mask[y, x]}
    return np.isin(labels, sorted(keep)) if keep else np.zeros_like(mask, dtype=bool)


def default_sam_checkpoint() -> Path:
    """Where SAM vit_h is looked for: ``sam_vit_h_4b8939.pth`` in the checkpoint directory (``$WCLAB_CHECKPOINTS``
    or the repository's ``checkpoints/``, read at each call)."""
    return default_checkpoint_dir() / SAM_FILE


def default_segmenter(checkpoint: Union[str, Path, None] = None, device: Optional[str] = None) -> Segmenter:
    """SAM from ``checkpoint`` (a missing file raises :class:`CheckpointError`); with no checkpoint given, SAM
    from ``checkpoints/sam_vit_h_4b8939.pth`` when present, else :class:`FallbackSegmenter` (labelled as such)."""
    if checkpoint is None:
        checkpoint = default_sam_checkpoint()
        if not checkpoint.is_file():
            return FallbackSegmenter()
    return SamSegmenter.from_checkpoint(checkpoint, device=device)
