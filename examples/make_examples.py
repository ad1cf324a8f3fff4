"""Regenerate wclab's example scenes: a start image (PNG) and its conditions (the drawing tool's JSON) per size.

    python examples/make_examples.py            # rewrites examples/<size>/<scene>.png and <scene>.json
    python examples/make_examples.py --out DIR  # writes the same files under DIR instead

Every scene is described once, in fractions of the image (x of the width, y of the height) and of the clip
(0 = first frame, 1 = last), and drawn at each size in ``SIZES``. Images are painted with PIL (2x supersampled,
then box-filtered); each object's mask is the exact set of pixels its shapes cover in the final picture (a
label map painted alongside), so no segmenter is involved. Conditions are built with ``wclab.conditions.ops``,
the functions the trajectory editor uses. The output is byte-identical on every run.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from wclab.conditions import Scene, ops

HERE = Path(__file__).resolve().parent

SIZES = {"full": (480, 832, 81), "small": (128, 224, 17), "ci": (64, 112, 9)}
"""(H, W, T) per size name: the released model's size, the tiny-model notebooks' size, and CI's smallest."""

SUPERSAMPLE = 2

Color = tuple[int, int, int]


# ----------------------------------------------------------------------------------------------- painting
@dataclass
class Painter:
    """Paints shapes given in image fractions onto an RGB picture and, for named objects, a label map."""

    height: int
    width: int
    labels: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = SUPERSAMPLE
        self.rgb = Image.new("RGB", (self.width * s, self.height * s))
        self.label = Image.new("L", (self.width * s, self.height * s), 0)
        self._draw, self._draw_label = ImageDraw.Draw(self.rgb), ImageDraw.Draw(self.label)

    def _xy(self, points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        s = SUPERSAMPLE
        return [(x * self.width * s, y * self.height * s) for x, y in points]

    def _mark(self, shape: str, xy, name: str | None) -> None:
        value = self.labels.setdefault(name, len(self.labels) + 1) if name else 0
        getattr(self._draw_label, shape)(xy, fill=value)

    def gradient(self, y0: float, y1: float, top: Color, bottom: Color) -> None:
        """Horizontal band from ``y0`` to ``y1`` (fractions of the height) fading from ``top`` to ``bottom``."""
        s, h = SUPERSAMPLE, self.height * SUPERSAMPLE
        a, b = round(y0 * h), round(y1 * h)
        for row in range(a, b):
            t = (row - a) / max(b - a - 1, 1)
            c = tuple(round(p + (q - p) * t) for p, q in zip(top, bottom))
            self._draw.line([(0, row), (self.width * s, row)], fill=c)
            self._draw_label.line([(0, row), (self.width * s, row)], fill=0)

    def rect(self, x0: float, y0: float, x1: float, y1: float, color: Color, name: str | None = None) -> None:
        xy = self._xy([(x0, y0), (x1, y1)])
        self._draw.rectangle(xy, fill=color)
        self._mark("rectangle", xy, name)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, color: Color, name: str | None = None) -> None:
        """Ellipse centred at (cx, cy) with radii rx (fraction of the width) and ry (of the height)."""
        xy = self._xy([(cx - rx, cy - ry), (cx + rx, cy + ry)])
        self._draw.ellipse(xy, fill=color)
        self._mark("ellipse", xy, name)

    def circle(self, cx: float, cy: float, r: float, color: Color, name: str | None = None) -> None:
        """A round disc of radius ``r`` (fraction of the height)."""
        self.ellipse(cx, cy, r * self.height / self.width, r, color, name)

    def polygon(self, points: Sequence[tuple[float, float]], color: Color, name: str | None = None) -> None:
        xy = self._xy(points)
        self._draw.polygon(xy, fill=color)
        self._mark("polygon", xy, name)

    def picture(self) -> np.ndarray:
        """``uint8 [H, W, 3]``: the supersampled picture box-filtered to H×W."""
        return np.asarray(self.rgb.resize((self.width, self.height), Image.BOX))

    def mask(self, name: str) -> np.ndarray:
        """``bool [H, W]``: pixels whose supersampled 2×2 block is mostly (≥ 2 of 4) the object ``name``."""
        s = SUPERSAMPLE
        lab = np.asarray(self.label) == self.labels[name]
        votes = lab.reshape(self.height, s, self.width, s).sum(axis=(1, 3))
        return votes * 2 >= s * s


# ----------------------------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class Clip:
    """Maps the scene description's fractions to pixels and frames of one size."""

    height: int
    width: int
    frames: int

    def xy(self, x: float, y: float) -> tuple[float, float]:
        """Pixel ``(x, y)`` of a point given in fractions (values outside 0..1 lie off-image)."""
        return (round(x * self.width, 1), round(y * self.height, 1))

    def path(self, points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        return [self.xy(x, y) for x, y in points]

    def frame(self, f: float) -> int:
        """Frame index of the clip fraction ``f`` (0 → first frame, 1 → last)."""
        return round(f * (self.frames - 1))

    def span(self, f0: float, f1: float) -> tuple[int, int]:
        """``[st, et)`` covering the fractions ``f0..f1`` inclusive."""
        return self.frame(f0), self.frame(f1) + 1


def _room(p: Painter, wall: Color = (222, 208, 182), floor_top: Color = (150, 104, 66)) -> None:
    p.gradient(0.0, 0.62, (236, 226, 204), wall)
    p.gradient(0.62, 1.0, floor_top, (112, 74, 44))
    p.rect(0.0, 0.61, 1.0, 0.63, (96, 70, 50))  # skirting board
    p.rect(0.70, 0.10, 0.92, 0.42, (170, 205, 235))  # window
    p.rect(0.805, 0.10, 0.815, 0.42, (240, 240, 240))
    p.rect(0.70, 0.255, 0.92, 0.265, (240, 240, 240))


def ball(p: Painter, c: Clip) -> Scene:
    """A moving object: a red ball rolls along a table and stops next to a cup; the cup (captioned) and the table
    (an anchor) stay put."""
    _room(p)
    p.rect(0.12, 0.50, 0.88, 0.56, (120, 78, 40), "table")  # table top
    p.rect(0.16, 0.56, 0.19, 0.86, (100, 64, 34), "table")
    p.rect(0.81, 0.56, 0.84, 0.86, (100, 64, 34), "table")
    p.rect(0.70, 0.36, 0.76, 0.50, (40, 90, 200), "cup")
    p.circle(0.24, 0.42, 0.08, (210, 30, 30), "ball")
    scene = ops.new_scene(c.height, c.width, c.frames)
    ball = ops.make_trajectory(c.path([(0.24, 0.42), (0.45, 0.42), (0.62, 0.42)]), *c.span(0, 1), obj_id=1,
                               mask=p.mask("ball"), frames=c.frames)
    scene = ops.add_trajectory(scene, ball, "A red ball rolls to the right along the table and stops next to "
                                            "the blue cup.")
    cup = ops.static_anchor(c.xy(0.73, 0.43), obj_id=2, mask=p.mask("cup"), frames=c.frames)
    scene = ops.add_trajectory(scene, cup, "A blue cup stands still on the table.")
    return ops.add_trajectory(scene, ops.static_anchor(c.xy(0.50, 0.53), obj_id=3, mask=p.mask("table"),
                                                       frames=c.frames))


def car_enters(p: Painter, c: Clip) -> Scene:
    """An entering object: a car drives in from beyond the left edge and stops in front of the blue house."""
    p.gradient(0.0, 0.58, (120, 170, 230), (200, 225, 245))
    p.rect(0.05, 0.22, 0.30, 0.58, (200, 120, 90))  # red-brick building
    for i in range(3):
        for j in range(2):
            p.rect(0.08 + 0.08 * i, 0.27 + 0.14 * j, 0.12 + 0.08 * i, 0.36 + 0.14 * j, (250, 235, 170))
    p.polygon([(0.52, 0.30), (0.66, 0.16), (0.80, 0.30)], (90, 60, 60), "house")  # roof
    p.rect(0.54, 0.30, 0.78, 0.58, (70, 110, 190), "house")
    p.rect(0.63, 0.42, 0.69, 0.58, (60, 40, 30), "house")  # door
    p.rect(0.0, 0.58, 1.0, 0.66, (180, 180, 175))  # sidewalk
    p.rect(0.0, 0.66, 1.0, 1.0, (70, 70, 75), "road")
    for k in range(6):
        p.rect(0.02 + 0.18 * k, 0.82, 0.10 + 0.18 * k, 0.84, (240, 240, 240))
    p.rect(0.0, 0.66, 0.12, 0.80, (70, 70, 75), "entry")  # the stretch of road where the car enters
    scene = ops.new_scene(c.height, c.width, c.frames)
    drive = ops.make_trajectory(c.path([(0.12, 0.74), (0.64, 0.74)]), *c.span(0.1, 1), obj_id=1,
                                mask=p.mask("entry"), frames=c.frames)
    car = ops.entering(drive, c.xy(-0.12, 0.74))
    scene = ops.add_trajectory(scene, car, "A yellow car drives in from the left and stops in front of the blue "
                                           "house.")
    return ops.add_trajectory(scene, ops.static_anchor(c.xy(0.66, 0.36), obj_id=2, mask=p.mask("house"),
                                                       frames=c.frames))


def behind_box(p: Painter, c: Clip) -> Scene:
    """An invisible segment: a green ball rolls behind a box (hidden there) and comes out on the other side."""
    _room(p, wall=(200, 214, 222), floor_top=(160, 150, 140))
    p.rect(0.40, 0.40, 0.62, 0.90, (190, 150, 100), "box")
    p.rect(0.40, 0.40, 0.62, 0.44, (160, 120, 75), "box")  # lid
    p.circle(0.16, 0.82, 0.07, (40, 170, 60), "ball")
    scene = ops.new_scene(c.height, c.width, c.frames)
    ball = ops.make_trajectory(c.path([(0.16, 0.82), (0.86, 0.82)]), *c.span(0, 1), obj_id=1,
                               mask=p.mask("ball"), frames=c.frames)
    hidden = ops.erase_between(ball, c.xy(0.42, 0.82), c.xy(0.60, 0.82))  # the tool's two erase clicks
    scene = ops.add_trajectory(scene, hidden, "A green ball rolls to the right, disappears behind the box and "
                                              "comes out on the other side.")
    return ops.add_trajectory(scene, ops.static_anchor(c.xy(0.51, 0.65), obj_id=2, mask=p.mask("box"),
                                                       frames=c.frames))


def camera_pan(p: Painter, c: Clip) -> Scene:
    """Camera anchors: the camera pans right, so the house and the tree (anchors, caption "None") slide left
    together; a balloon rises meanwhile, swaying left and right."""
    p.gradient(0.0, 0.60, (90, 150, 225), (190, 220, 245))
    p.circle(0.86, 0.16, 0.07, (255, 220, 90))
    p.ellipse(0.25, 0.68, 0.45, 0.16, (90, 160, 80), "hill")
    p.ellipse(0.80, 0.70, 0.40, 0.14, (70, 145, 70), "hill")
    p.rect(0.0, 0.66, 1.0, 1.0, (80, 150, 70), "hill")
    p.polygon([(0.28, 0.46), (0.37, 0.36), (0.46, 0.46)], (150, 50, 40), "house")
    p.rect(0.30, 0.46, 0.44, 0.64, (235, 225, 200), "house")
    p.rect(0.35, 0.54, 0.39, 0.64, (110, 70, 40), "house")
    p.rect(0.685, 0.46, 0.705, 0.66, (110, 75, 40), "tree")
    p.circle(0.695, 0.40, 0.12, (40, 110, 50), "tree")
    p.circle(0.58, 0.52, 0.045, (220, 40, 60), "balloon")
    p.rect(0.579, 0.565, 0.581, 0.64, (80, 80, 80), "balloon")  # string
    scene = ops.new_scene(c.height, c.width, c.frames)
    pan = -0.25  # the background moves a quarter of the width to the left
    for obj_id, name, (x, y) in ((1, "house", (0.37, 0.55)), (2, "tree", (0.695, 0.40)), (3, "hill", (0.40, 0.85))):
        anchor = ops.make_trajectory(c.path([(x, y), (x + pan, y)]), *c.span(0, 1), obj_id=obj_id,
                                     mask=p.mask(name), frames=c.frames)
        scene = ops.add_trajectory(scene, anchor)
    sway = [(0.58, 0.52), (0.50, 0.40), (0.57, 0.28), (0.49, 0.17), (0.55, 0.07)]
    balloon = ops.make_trajectory(c.path(sway), *c.span(0, 1), obj_id=4, mask=p.mask("balloon"), frames=c.frames)
    return ops.add_trajectory(scene, balloon, "The camera pans to the right while a red balloon rises into the "
                                              "sky, swaying left and right.")


SCENES: dict[str, Callable[[Painter, Clip], Scene]] = {
    "ball": ball, "car_enters": car_enters, "behind_box": behind_box, "camera_pan": camera_pan,
}

FEATURES = {
    "ball": {"moving object"},
    "car_enters": {"entering object"},
    "behind_box": {"moving object", "invisible segment"},
    "camera_pan": {"camera anchors", "moving object"},
}
"""What each scene demonstrates (checked by tests/test_examples.py)."""


# ----------------------------------------------------------------------------------------------- files
def build(name: str, height: int, width: int, frames: int) -> tuple[np.ndarray, Scene]:
    """``(uint8 [H, W, 3] start image, Scene)`` of example ``name`` at one size."""
    painter = Painter(height, width)
    scene = SCENES[name](painter, Clip(height, width, frames))
    return painter.picture(), scene


def write_all(out: Path) -> list[Path]:
    """Write every scene at every size as ``out/<size>/<scene>.png`` and ``.json``; returns the files written."""
    written = []
    for size, (height, width, frames) in SIZES.items():
        folder = out / size
        folder.mkdir(parents=True, exist_ok=True)
        for name in SCENES:
            image, scene = build(name, height, width, frames)
            png, js = folder / f"{name}.png", folder / f"{name}.json"
            Image.fromarray(image).save(png, optimize=False, compress_level=9)
            scene.to_json(js, indent=4)
            written += [png, js]
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: examples/)")
    args = parser.parse_args(argv)
    files = write_all(args.out)
    print(f"wrote {len(files)} files under {args.out}")


if __name__ == "__main__":
    main()
