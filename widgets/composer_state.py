"""The reference-image composer's state and handlers (replaces the original ``ref_image_generation.py``).

Build a start image for the ``_ref`` models: take a background, expand its canvas (top/bottom/left/right,
filled grey), cut a subject out of another image (SAM clicks, or the fallback segmenter), place it (top-left
``x, y`` pixels and ``scale``, or drag), paste, repeat. ``result()`` fits the composite to the target size the
way the pipeline does. As in the original tool, a pasted subject is its bounding box with grey outside the mask
(``paste_mode="box"``); ``"mask"`` pastes only the subject's pixels.

Images are ``uint8 [H, W, 3]`` RGB; coordinates are pixels. Bad actions raise :class:`ComposerError`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np
from PIL import Image

from wclab.errors import WclabError
from wclab.sizes import DEFAULT_HEIGHT, DEFAULT_WIDTH
from widgets.images import ImageLike, as_rgb, fit_image
from widgets.segmenter import Segmenter, default_segmenter

FILL = 128
"""Grey of expanded canvas and of the subject's box outside its mask (as the original tool)."""
RATIO_TOLERANCE = 0.05
PASTE_MODES = ("box", "mask")


class ComposerError(WclabError, ValueError):
    """A composer action that cannot be done now (no background, no subject, bad padding, ...)."""


def _notifies(method):
    """Tell the state's listeners after the action (also when it raised: its message may have changed)."""
    @functools.wraps(method)
    def action(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        finally:
            self._changed()
    return action


def aspect_hint(height: int, width: int, target_height: int, target_width: int) -> tuple[bool, str]:
    """``(ok, text)``: whether ``width/height`` is within 5% of the target ratio, and a line saying so."""
    ratio, target = width / height, target_width / target_height
    ok = abs(ratio - target) < RATIO_TOLERANCE
    text = (f"{width} (W) x {height} (H), ratio {ratio:.3f}; target {target_width}x{target_height} "
            f"(ratio {target:.3f}): " + ("good" if ok else "the image will be cropped to the target ratio"))
    return ok, text


@dataclass
class Subject:
    """A cut-out subject: ``pixels`` uint8 [h, w, 3] (grey outside the mask) and ``mask`` bool [h, w]."""

    pixels: np.ndarray
    mask: np.ndarray


def cut_subject(image: np.ndarray, mask: np.ndarray, fill: int = FILL) -> Subject:
    """The mask's bounding box of ``image`` with ``fill`` grey outside the mask."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise ComposerError("empty mask: click on the subject (positive point) first")
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    m = mask[y0:y1, x0:x1].astype(bool)
    pixels = np.full((y1 - y0, x1 - x0, 3), fill, np.uint8)
    pixels[m] = image[y0:y1, x0:x1][m]
    return Subject(pixels, m)


def paste(background: np.ndarray, subject: Subject, x: int, y: int, scale: float, mode: str = "box") -> np.ndarray:
    """``background`` with ``subject`` resized by ``scale`` (bilinear; mask nearest) and its top-left at
    ``(x, y)`` pixels; parts outside the background are clipped. ``mode``: "box" or "mask" (see module doc)."""
    if mode not in PASTE_MODES:
        raise ComposerError(f"paste mode: expected one of {list(PASTE_MODES)}, got {mode!r}")
    if not scale > 0:
        raise ComposerError(f"scale: expected > 0, got {scale}")
    h, w = subject.mask.shape
    nw, nh = int(w * scale), int(h * scale)
    out = background.copy()
    if nw <= 0 or nh <= 0:
        return out
    pix = cv2.resize(subject.pixels, (nw, nh), interpolation=cv2.INTER_LINEAR)
    msk = cv2.resize(subject.mask.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST).astype(bool)
    bh, bw = out.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + nw, bw), min(y + nh, bh)
    if x0 >= x1 or y0 >= y1:
        return out
    src = (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))
    if mode == "box":
        out[y0:y1, x0:x1] = pix[src]
    else:
        region = out[y0:y1, x0:x1]
        region[msk[src]] = pix[src][msk[src]]
    return out


@dataclass
class ComposerState:
    """Composer model. ``target_height``/``target_width``: the scene size the start image is for (pixels)."""

    target_height: int = DEFAULT_HEIGHT
    target_width: int = DEFAULT_WIDTH
    segmenter: Segmenter = field(default_factory=default_segmenter, repr=False)
    canvas: Optional[np.ndarray] = field(default=None, repr=False)
    """The composite so far, ``uint8 [H, W, 3]``."""
    source: Optional[np.ndarray] = field(default=None, repr=False)
    """The image the subject is cut from."""
    clicks: tuple[tuple[float, float, bool], ...] = ()
    """Clicks on ``source``: ``(x, y, negative)``."""
    mask: Optional[np.ndarray] = field(default=None, repr=False)
    """``bool`` mask of ``source`` from the clicks."""
    subject: Optional[Subject] = field(default=None, repr=False)
    x: int = 0
    y: int = 0
    scale: float = 1.0
    paste_mode: str = "box"
    history: list = field(default_factory=list, repr=False)
    """Earlier canvases, for undo."""
    message: str = ""
    _grab: Optional[tuple[float, float]] = field(default=None, repr=False)
    listeners: list = field(default_factory=list, repr=False, compare=False)
    """Called after every action, whoever called it (the widget re-renders from the state)."""

    def subscribe(self, listener) -> None:
        """Call ``listener()`` after every action on this state."""
        if listener not in self.listeners:
            self.listeners.append(listener)

    def unsubscribe(self, listener) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    def _changed(self) -> None:
        for listener in list(self.listeners):
            listener()

    # ------------------------------------------------------------------ background
    @_notifies
    def set_background(self, image: ImageLike) -> None:
        self._push(as_rgb(image), "background set")

    def _push(self, canvas: np.ndarray, message: str) -> None:
        if self.canvas is not None:
            self.history.append(self.canvas)
        self.canvas = canvas
        self.message = message

    def _need_canvas(self) -> np.ndarray:
        if self.canvas is None:
            raise ComposerError("no background: load a background image first")
        return self.canvas

    def expanded_size(self, top: int = 0, bottom: int = 0, left: int = 0, right: int = 0) -> tuple[int, int]:
        """``(H, W)`` after :meth:`expand` with these paddings (pixels, each >= 0)."""
        h, w = self._need_canvas().shape[:2]
        pads = {"top": top, "bottom": bottom, "left": left, "right": right}
        for name, v in pads.items():
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ComposerError(f"{name}: expected a whole number of pixels >= 0, got {v!r}")
        return h + top + bottom, w + left + right

    @_notifies
    def expand(self, top: int = 0, bottom: int = 0, left: int = 0, right: int = 0) -> None:
        """Grow the canvas by grey borders (pixels); earlier pastes keep their place in the picture."""
        h, w = self.expanded_size(top, bottom, left, right)
        self._push(np.pad(self.canvas, ((top, bottom), (left, right), (0, 0)), constant_values=FILL),
                   f"canvas expanded to {w}x{h}")
        self.x, self.y = self.x + left, self.y + top

    def hint(self, size: Optional[tuple[int, int]] = None) -> tuple[bool, str]:
        """Aspect-ratio hint for the canvas (or for ``size = (H, W)``) against the target size."""
        h, w = size if size is not None else self._need_canvas().shape[:2]
        return aspect_hint(h, w, self.target_height, self.target_width)

    # ------------------------------------------------------------------ subject
    @_notifies
    def set_source(self, image: ImageLike) -> None:
        """The image to cut the next subject from (clicks and mask are reset)."""
        self.source = as_rgb(image)
        self.clicks, self.mask = (), None
        self.message = "click the subject (positive) and what to leave out (negative)"

    @_notifies
    def on_source_click(self, x: float, y: float, negative: bool = False) -> None:
        if self.source is None:
            raise ComposerError("no subject image: load the image to cut the subject from first")
        h, w = self.source.shape[:2]
        clicks = self.clicks + ((float(np.clip(x, 0, w - 1)), float(np.clip(y, 0, h - 1)), bool(negative)),)
        self.clicks, self.mask = clicks, self._segment(clicks)
        self.message = f"{len(clicks)} clicks; mask {int(self.mask.sum()) if self.mask is not None else 0} px"

    @_notifies
    def undo_click(self) -> None:
        if not self.clicks:
            raise ComposerError("no click to remove")
        self.clicks = self.clicks[:-1]
        self.mask = self._segment(self.clicks)

    def _segment(self, clicks) -> Optional[np.ndarray]:
        pos = [(x, y) for x, y, neg in clicks if not neg]
        if not pos:
            return None
        self.segmenter.set_image(self.source)
        mask, _ = self.segmenter.predict(pos, [(x, y) for x, y, neg in clicks if neg])
        return np.asarray(mask, bool)

    @_notifies
    def cut(self) -> Subject:
        """Cut the masked subject out of the source; it is then placed at the canvas's top-left corner."""
        if self.mask is None:
            raise ComposerError("no mask: click on the subject in the subject image first")
        self.subject = cut_subject(self.source, self.mask)
        self.message = f"subject {self.subject.mask.shape[1]}x{self.subject.mask.shape[0]} cut; place it and paste"
        return self.subject

    # ------------------------------------------------------------------ placement
    @_notifies
    def place(self, x: Optional[int] = None, y: Optional[int] = None, scale: Optional[float] = None) -> None:
        """Top-left corner ``(x, y)`` in canvas pixels and ``scale`` of the subject (unchanged where None)."""
        if scale is not None and not scale > 0:
            raise ComposerError(f"scale: expected > 0, got {scale}")
        self.x = int(round(x)) if x is not None else self.x
        self.y = int(round(y)) if y is not None else self.y
        self.scale = float(scale) if scale is not None else self.scale

    def subject_box(self) -> Optional[tuple[int, int, int, int]]:
        """``(x, y, w, h)`` of the placed subject in canvas pixels (None without a subject)."""
        if self.subject is None:
            return None
        h, w = self.subject.mask.shape
        return self.x, self.y, int(w * self.scale), int(h * self.scale)

    @_notifies
    def drag_start(self, x: float, y: float) -> None:
        """Mouse down on the canvas: grab the subject (or, outside it, move its centre to the point)."""
        box = self.subject_box()
        if box is None:
            raise ComposerError("no subject: cut one from the subject image first")
        bx, by, bw, bh = box
        if not (bx <= x < bx + bw and by <= y < by + bh):
            self.place(x - bw / 2, y - bh / 2)
        self._grab = (x - self.x, y - self.y)

    @_notifies
    def drag_to(self, x: float, y: float) -> None:
        if self._grab is not None:
            self.place(x - self._grab[0], y - self._grab[1])

    @_notifies
    def drag_end(self) -> None:
        self._grab = None

    # ------------------------------------------------------------------ compositing
    def preview(self) -> np.ndarray:
        """The canvas with the subject at its current place (not pasted yet)."""
        canvas = self._need_canvas()
        if self.subject is None:
            return canvas
        return paste(canvas, self.subject, self.x, self.y, self.scale, self.paste_mode)

    @_notifies
    def paste(self) -> None:
        """Paste the subject where it is shown; it stays available for pasting again."""
        if self.subject is None:
            raise ComposerError("no subject: cut one from the subject image first")
        self._push(self.preview(), f"pasted at ({self.x}, {self.y}), scale {self.scale:.2f}")

    @_notifies
    def undo(self) -> None:
        if not self.history:
            raise ComposerError("nothing to undo")
        self.canvas = self.history.pop()
        self.message = "undone"

    def result(self) -> np.ndarray:
        """The composite fitted to the target size (cover + centre crop): ``uint8 [target_height, target_width, 3]``."""
        return fit_image(self._need_canvas(), self.target_height, self.target_width)

    @_notifies
    def save(self, path: Union[str, Path], fitted: bool = True) -> Path:
        """Write the composite (fitted to the target size unless ``fitted=False``) as an image file."""
        path = Path(path)
        Image.fromarray(self.result() if fitted else self._need_canvas()).save(path, quality=95)
        self.message = f"saved {path}"
        return path
