"""The scene a user draws: objects, their trajectories, captions, and the image size / frame count.

A scene writes the original drawing tool's JSON (`wclab.conditions.load_json` reads it back; a list of trajectory items followed by
``color_map``, ``description_global``, ``description_motion_raw``, ``description_motion`` and
``id_caption_map`` dict items). Coordinates are pixels of the H×W start image; ``[-1, -1]`` marks frames
outside a trajectory's ``[st, et)``. All objects are immutable: edits return new objects.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np

from wclab.conditions.rle import RLEMask
from wclab.errors import ConditionError

ANCHOR_TEXT = "None"
"""Caption the drawing tool writes for camera/background anchor trajectories."""

OFF = (-1.0, -1.0)
"""Point written for frames outside a trajectory's ``[st, et)``."""

TEXT_FIELDS = ("color_map", "description_global", "description_motion_raw", "description_motion")

Number = Union[int, float]


@dataclass(frozen=True)
class Trajectory:
    """One drawn path of one object over all T frames.

    points: T pairs ``(x, y)`` in pixels, ``(-1, -1)`` outside the drawn time range. Values are kept
        exactly as given (int or float) so files round-trip to the same JSON.
    visibility: T values, 1 visible / 0 invisible.
    r: the drawing tool's radius (``max(mask_area * 320 // 399360, 5)``), pixels.
    id: object id; several trajectories may share one.
    mask: the object's SAM mask in the start image.
    text: the object's caption, or ``"None"`` for a camera/background anchor.
    """

    points: tuple[tuple[Number, Number], ...]
    visibility: tuple[Number, ...]
    r: Number
    id: int
    mask: RLEMask
    text: str = ANCHOR_TEXT

    @property
    def frames(self) -> int:
        return len(self.points)

    @cached_property
    def track(self) -> np.ndarray:
        """``float64 [T, 2]`` (x, y) pixels, read-only."""
        a = np.asarray(self.points, dtype=np.float64).reshape(len(self.points), 2)
        a.setflags(write=False)
        return a

    @cached_property
    def vis(self) -> np.ndarray:
        """``float64 [T]`` visibility, read-only."""
        a = np.asarray(self.visibility, dtype=np.float64)
        a.setflags(write=False)
        return a

    @property
    def is_anchor(self) -> bool:
        """True for camera/background anchors (caption ``"None"``)."""
        return self.text == ANCHOR_TEXT

    def starts_off_image(self, height: int, width: int) -> bool:
        """True when frame 0's point lies outside the H×W image (an entering object, or one drawn from st > 0)."""
        x, y = self.points[0]
        return x < 0 or x >= width or y < 0 or y >= height

    def active_frames(self) -> np.ndarray:
        """``bool [T]``: frames with a real point (not the ``(-1, -1)`` placeholder)."""
        return ~np.all(self.track == -1, axis=1)

    def replace(self, **changes: Any) -> "Trajectory":
        """A copy with some fields changed (``points``/``visibility`` accept arrays)."""
        if "points" in changes:
            changes["points"] = _points_tuple(changes["points"])
        if "visibility" in changes:
            changes["visibility"] = _vis_tuple(changes["visibility"])
        return replace(self, **changes)

    def to_json(self) -> dict:
        return {
            "tracking": [[x, y] for x, y in self.points],
            "tracking_vis_value": list(self.visibility),
            "r": self.r,
            "id": self.id,
            "mask_cluster": self.mask.to_json(),
            "text": self.text,
        }


@dataclass(frozen=True)
class Scene:
    """Everything the drawing tool saves, plus the size it was drawn at.

    height, width: pixels of the start image (multiples of 16 for the model). frames: T (4k+1 for the model).
    captions: ``id_caption_map`` — object id (str) → caption, in prompt order; anchors are absent.
    """

    trajectories: tuple[Trajectory, ...]
    captions: Mapping[str, str]
    height: int
    width: int
    frames: int
    color_map: Mapping[str, Any] = field(default_factory=dict)
    description_global: str = ""
    description_motion_raw: str = ""
    description_motion: str = ""

    # ------------------------------------------------------------------ views
    @property
    def size(self) -> tuple[int, int, int]:
        """``(H, W, T)``."""
        return (self.height, self.width, self.frames)

    @property
    def object_ids(self) -> list[str]:
        """Ids with a caption, in prompt order."""
        return list(self.captions)

    def trajectories_of(self, obj_id: Union[int, str]) -> list[Trajectory]:
        return [t for t in self.trajectories if str(t.id) == str(obj_id)]

    def entering_ids(self) -> set[str]:
        """Ids with any trajectory whose frame-0 point is off-image (prompt says ``Object k appears``)."""
        return {str(t.id) for t in self.trajectories if t.starts_off_image(self.height, self.width)}

    # ------------------------------------------------------------------ edits
    def replace(self, **changes: Any) -> "Scene":
        if "trajectories" in changes:
            changes["trajectories"] = tuple(changes["trajectories"])
        if "captions" in changes:
            changes["captions"] = dict(changes["captions"])
        return replace(self, **changes)

    def with_trajectory(self, index: int, traj: Trajectory) -> "Scene":
        trajs = list(self.trajectories)
        trajs[index] = traj
        return self.replace(trajectories=trajs)

    # ------------------------------------------------------------------ I/O
    def to_list(self) -> list:
        """The drawing tool's JSON value (a list). An empty scene (no trajectories) raises: it cannot be loaded back."""
        if not self.trajectories:
            raise ConditionError("empty scene: no trajectories to save (add at least one before writing)")
        items: list = [t.to_json() for t in self.trajectories]
        items.append({"color_map": dict(self.color_map)})
        items.append({"description_global": self.description_global})
        items.append({"description_motion_raw": self.description_motion_raw})
        items.append({"description_motion": self.description_motion})
        items.append({"id_caption_map": dict(self.captions)})
        return items

    def to_json(self, path: Union[str, Path, None] = None, indent: int | None = None) -> str:
        """Serialise to the drawing tool's format; also write to ``path`` when given."""
        items = self.to_list()
        try:
            text = json.dumps(items, ensure_ascii=False, indent=indent, allow_nan=False)
        except (ValueError, TypeError) as e:  # NaN/inf or a non-JSON value put in by hand
            raise ConditionError(f"scene: cannot be written as JSON ({e})") from None
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text


# ---------------------------------------------------------------------- helpers
def _points_tuple(points: Any) -> tuple[tuple[Number, Number], ...]:
    if isinstance(points, np.ndarray):
        return tuple((float(x), float(y)) for x, y in points.reshape(-1, 2))
    return tuple((p[0], p[1]) for p in points)


def _vis_tuple(vis: Any) -> tuple[Number, ...]:
    if isinstance(vis, np.ndarray):
        return tuple(float(v) for v in vis.reshape(-1))
    return tuple(vis)
