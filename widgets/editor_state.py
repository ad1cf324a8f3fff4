"""The trajectory editor's state and event handlers, free of any widget so it can be driven in tests.

Workflow (as the original drawing tool): pick an object (``mask`` mode: positive/negative clicks, SAM preview,
``confirm_mask``), draw its polyline (``draw`` mode: clicks; ``set_st_et`` picks the frames ``[st, et)``),
optionally mark invisible stretches (``erase`` mode: two clicks on the trajectory), then ``commit`` it under an
object id and caption (``"None"`` for a camera/background anchor). One click with ``st = 0, et = T`` is a
static anchor. Several trajectories may share an object id. ``to_scene()`` exports a :class:`Scene`.

Mouse: ``press``/``drag``/``release`` (draw mode: a press on a path point grabs it and a drag moves it; a drag
elsewhere draws the path freehand, sampled and thinned so every segment keeps >= 2 frames); ``on_click`` is a
plain click. ``select`` loads a committed trajectory (points, frames, id, caption, mask) for editing and
``commit`` saves it in place. ``add_object`` scripts a whole object through the same steps (fresh id, undoable).
The view subscribes (``subscribe``) and renders ``summary()`` after every change, whoever made it; ``hint()``
says what to do next.

Coordinates are pixels of the H×W start image; frames are indices ``0..T-1``. Every edit replaces the
:class:`Draft` (an immutable snapshot), so undo/redo just swap snapshots. Bad actions raise
:class:`EditorError` (or ``ConditionError`` from ``wclab.conditions``) with a message for the user and leave
the state unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from wclab.conditions import ANCHOR_TEXT, RLEMask, Scene, Trajectory, load_json
from wclab.conditions import motion as mo
from wclab.conditions.ops import (_tuples, active_range, add_trajectory, erase, make_trajectory,
                                  nearest_track_index, new_scene, polyline_track, set_caption, static_anchor)
from wclab.conditions.tracks import Tracks, add_tracks, load_tracks, save_tracks, tracks_from_video
from wclab.errors import WclabError
from wclab.sizes import DEFAULT_FRAMES, DEFAULT_HEIGHT, DEFAULT_WIDTH, FRAMES_PER_LATENT, TOKEN_CELL
from widgets.driving_video import DrivingVideo, VideoLike
from widgets.images import ImageLike, fit_image
from widgets.segmenter import Point, Segmenter, default_segmenter

MODES = ("mask", "draw", "erase")
PATHS = ("polyline", "spline")
SAMPLE_BY = ("time", "arc_length")
EVENTS = ("enter", "leave", "pass_behind", "stop", "turn_back")
"""Event presets for the selected trajectory (:mod:`wclab.conditions.motion`)."""
CAMERA_AMOUNTS = {"static": 0.0, "pan": 0.25, "zoom": 1.25, "rotate": 10.0}
"""Default camera amounts: pans a quarter of the image width/height, zooms x1.25, rotations 10 degrees."""


class EditorError(WclabError, ValueError):
    """An editor action that cannot be done now (no image, no mask, et <= st, empty caption, ...)."""


def _frozen(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool).copy()
    mask.setflags(write=False)
    return mask


@dataclass(frozen=True)
class Motion:
    """How the trajectory being drawn moves along its clicked points. The default is the drawing tool's rule:
    a polyline, equal frames per segment, constant speed within a segment."""

    frames_at: Optional[tuple[int, ...]] = None
    """Frame at which each clicked point is reached (first = st, strictly increasing, last < et; the last point
    is held to et - 1). None: the tool's equal-frames rule (:func:`wclab.conditions.motion.default_frames_at`)."""
    speed: str = "linear"
    """A speed curve of :data:`wclab.conditions.motion.SPEED_CURVES` that re-times the whole path."""
    path: str = "polyline"
    """``"polyline"`` (straight segments, as the tool) or ``"spline"`` (Catmull-Rom through the points)."""
    tension: float = 0.5
    """Spline tension (0: straight segments, 0.5: Catmull-Rom)."""
    by: str = "time"
    """Spline sampling: ``"time"`` (equal time per segment) or ``"arc_length"`` (constant speed)."""

    @property
    def is_default(self) -> bool:
        return self == Motion()

    def describe(self) -> str:
        parts = [f"spline (tension {self.tension:g}, by {self.by.replace('_', ' ')})" if self.path == "spline"
                 else "polyline"]
        if self.frames_at is not None:
            parts.append(f"points at frames {', '.join(map(str, self.frames_at))}")
        if self.speed != "linear":
            parts.append(self.speed.replace("_", " "))
        return ", ".join(parts)


Recipe = tuple  # (polyline, st, et, erased, Motion): what redraws a trajectory in the editor


@dataclass(frozen=True)
class Draft:
    """Everything undo/redo restores: the committed scene and the work in progress."""

    scene: Scene
    """The committed trajectories, captions (prompt order), colour map and descriptions."""
    mode: str = "mask"
    clicks: tuple[tuple[float, float, bool], ...] = ()
    """Mask clicks in order: ``(x, y, negative)``."""
    mask: Optional[np.ndarray] = field(default=None, compare=False, repr=False)
    """``bool [H, W]`` read-only: the SAM preview, or the confirmed mask."""
    mask_score: Optional[float] = None
    mask_rle: Optional[RLEMask] = field(default=None, repr=False)
    """The confirmed mask, compressed (None until ``confirm_mask``)."""
    polyline: tuple[Point, ...] = ()
    st: int = 0
    et: int = 0
    erased: tuple[tuple[int, int], ...] = ()
    """Frame ranges ``(f0, f1)`` (inclusive) marked invisible on the trajectory being drawn."""
    erase_start: Optional[Point] = None
    obj_id: int = 1
    caption: str = ""
    selected: Optional[int] = None
    """Index of the selected committed trajectory (target of delete, and of erase when nothing is drawn)."""
    editing: Optional[int] = None
    """Index of the committed trajectory loaded into the draft for editing (``commit`` replaces it)."""
    motion: Motion = Motion()
    """Timing, speed curve and path shape of the trajectory being drawn."""
    video: Optional[DrivingVideo] = field(default=None, compare=False, repr=False)
    """The driving video whose first frame is shown (driving video mode) — None in the normal view."""
    video_points: tuple[Point, ...] = ()
    """Points clicked on the driving video's first frame (scene pixels), in order: the points to track."""
    drawn: dict = field(default_factory=dict, compare=False, repr=False)
    """Committed :class:`Trajectory` → the recipe ``(polyline, st, et, erased, Motion)`` it was drawn with here, so
    editing it again restores its timing and shape (trajectories changed otherwise fall back to their corners)."""
    action: str = field(default="", compare=False)
    """What made this snapshot (undo/redo report it)."""

    @property
    def trajectories(self) -> tuple[Trajectory, ...]:
        return self.scene.trajectories

    @property
    def mask_confirmed(self) -> bool:
        return self.mask_rle is not None

    @property
    def driving(self) -> bool:
        """True in driving video mode (the canvas shows the video's first frame; clicks add points to track)."""
        return self.video is not None

    @property
    def positive(self) -> list[Point]:
        return [(x, y) for x, y, neg in self.clicks if not neg]

    @property
    def negative(self) -> list[Point]:
        return [(x, y) for x, y, neg in self.clicks if neg]


@dataclass
class EditorState:
    """The editor's model. ``height``/``width`` (pixels, multiples of 16) and ``frames`` (T = 4k+1) fix the scene."""

    height: int = DEFAULT_HEIGHT
    width: int = DEFAULT_WIDTH
    frames: int = DEFAULT_FRAMES
    segmenter: Segmenter = field(default_factory=default_segmenter, repr=False, compare=False)
    image: Optional[np.ndarray] = field(default=None, repr=False, compare=False)
    """``uint8 [H, W, 3]`` start image, already fitted to the scene size."""
    draft: Optional[Draft] = None
    """The current snapshot (an empty scene of this size when not given)."""
    frame: int = 0
    """Frame shown by the frame slider (where each object is at that frame)."""
    negative_clicks: bool = False
    """Mask-mode clicks add negative points when True."""
    message: str = ""
    """What the last action did, for the status line."""
    history_limit: int = 200
    undo_stack: list = field(default_factory=list, repr=False)
    redo_stack: list = field(default_factory=list, repr=False)
    listeners: list = field(default_factory=list, repr=False, compare=False)
    """Callables run after every change (the widget re-renders itself from the state, whoever changed it)."""
    _drag: Optional[tuple] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0 or self.height % TOKEN_CELL or self.width % TOKEN_CELL:
            raise EditorError(f"scene size {self.height}x{self.width}: expected positive multiples of 16 pixels")
        if self.frames < 1 or (self.frames - 1) % FRAMES_PER_LATENT:
            raise EditorError(f"frames: expected 4k+1 frames (e.g. 17, 49, 81), got {self.frames}")
        if self.draft is None:
            self.draft = Draft(scene=new_scene(self.height, self.width, self.frames))
        if self.draft.scene.size != (self.height, self.width, self.frames):
            raise EditorError(f"draft scene size {self.draft.scene.size} differs from the editor's "
                              f"{(self.height, self.width, self.frames)}")
        if self.draft.et == 0:
            self.draft = replace(self.draft, et=self.frames)
        if self.image is not None:
            self.image = fit_image(self.image, self.height, self.width)

    # ------------------------------------------------------------------ change notification
    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change of the state (draft, frame, image, message, polarity)."""
        if listener not in self.listeners:
            self.listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    def _changed(self) -> None:
        for listener in list(self.listeners):
            listener()

    # ------------------------------------------------------------------ history
    def _apply(self, message: str = "", **changes: Any) -> None:
        self.undo_stack.append(self.draft)
        del self.undo_stack[:-self.history_limit]
        self.redo_stack.clear()
        self.draft, note = _fit_motion(replace(self.draft, action=message, **changes))
        self.message = message + note
        self._changed()

    def _amend(self, message: str, **changes: Any) -> None:
        """Change the draft without a new undo step (the moves of one drag are one step)."""
        self.draft, note = _fit_motion(replace(self.draft, action=message, **changes))
        self.message = message + note
        self._changed()

    def undo(self) -> None:
        if not self.undo_stack:
            raise EditorError("nothing to undo")
        self._drag = None
        undone = self.draft
        self.redo_stack.append(undone)
        self.draft = self.undo_stack.pop()
        self.message = f"undone: {undone.action or 'last edit'}"
        self._changed()

    def redo(self) -> None:
        if not self.redo_stack:
            raise EditorError("nothing to redo")
        self._drag = None
        self.undo_stack.append(self.draft)
        self.draft = self.redo_stack.pop()
        self.message = f"redone: {self.draft.action or 'last edit'}"
        self._changed()

    # ------------------------------------------------------------------ loading
    def load_image(self, image: ImageLike) -> None:
        """Set the start image (path, PIL or array), resized to cover the scene size and centre-cropped."""
        self.image = fit_image(image, self.height, self.width)
        d = self.draft
        if d.clicks and not d.mask_confirmed:  # a preview of the old image means nothing now
            self._apply(clicks=(), mask=None, mask_score=None)
        self.message = f"image loaded ({self.width}x{self.height})"
        self._changed()

    @classmethod
    def from_scene(cls, scene: Union[Scene, str, Path], image: Optional[ImageLike] = None,
                   segmenter: Optional[Segmenter] = None) -> "EditorState":
        """Continue editing a scene (a :class:`Scene` or a conditions JSON path/text)."""
        if not isinstance(scene, Scene):
            scene = load_json(scene)
        ids = [t.id for t in scene.trajectories]
        state = cls(height=scene.height, width=scene.width, frames=scene.frames,
                    segmenter=segmenter if segmenter is not None else default_segmenter(),
                    draft=Draft(scene=scene, obj_id=max(ids) + 1 if ids else 1))
        if image is not None:
            state.load_image(image)
        state.message = f"loaded {len(scene.trajectories)} trajectories"
        return state

    # ------------------------------------------------------------------ export
    def to_scene(self) -> Scene:
        """The committed trajectories as a :class:`Scene` (the work in progress is not included)."""
        scene = self.draft.scene
        if not scene.trajectories:
            raise EditorError("nothing to export: add at least one trajectory")
        if not scene.captions:
            raise EditorError("no captioned object: the model needs at least one object with a caption "
                              "(a scene of anchors only is refused)")
        load_json(scene.to_list(), name="editor scene")  # the loader's checks: what is exported loads back
        return scene

    def save_json(self, path: Union[str, Path]) -> str:
        """Write the scene in the original tool's JSON format (indent 4, as it does); returns the text."""
        text = self.to_scene().to_json(path, indent=4)
        self.message = f"saved {len(self.draft.trajectories)} trajectories to {path}"
        self._changed()
        return text

    # ------------------------------------------------------------------ settings
    def set_mode(self, mode: str) -> None:
        self._outside_video("changing mode")
        if mode not in MODES:
            raise EditorError(f"mode: expected one of {list(MODES)}, got {mode!r}")
        d = self.draft
        if mode == "draw" and not d.mask_confirmed:
            raise EditorError("no mask: pick the object in mask mode and confirm it (or use the whole image) first")
        if mode == "erase" and not d.polyline and d.selected is None:
            raise EditorError("nothing to erase: draw a trajectory (or select one) first")
        if mode != self.draft.mode:
            self._apply(f"{mode} mode", mode=mode, erase_start=None)

    def set_st_et(self, st: int, et: int) -> None:
        """Frames ``[st, et)`` of the trajectory being drawn (``0 <= st < et <= T``)."""
        self._outside_video("changing frames")
        st, et = int(st), int(et)
        if not 0 <= st < et <= self.frames:
            raise EditorError(f"st/et: need 0 <= st < et <= {self.frames} (et is exclusive), got st={st}, et={et}")
        if (st, et) != (self.draft.st, self.draft.et):
            self._check_buildable(self.draft.polyline, st, et, self.draft.motion)
            self._apply(f"frames [{st}, {et})", st=st, et=et)

    def set_object(self, obj_id: int, caption: Optional[str] = None) -> None:
        """Object id and caption for the next committed trajectory (caption ``"None"``: an anchor).

        Switching to an id that already has a caption fills it in when ``caption`` is None. Committing with a
        different caption changes that object's caption (on all its trajectories).
        """
        if isinstance(obj_id, bool) or not isinstance(obj_id, (int, np.integer)) or obj_id < 0:
            raise EditorError(f"object id: expected an integer >= 0, got {obj_id!r}")
        obj_id = int(obj_id)
        if caption is None:
            caption = self.draft.scene.captions.get(str(obj_id), self.draft.caption)
        caption = " ".join(str(caption).split())
        if (obj_id, caption) != (self.draft.obj_id, self.draft.caption):
            self._apply(f"object {obj_id}", obj_id=obj_id, caption=caption)

    def set_frame(self, frame: int) -> None:
        frame = int(np.clip(frame, 0, self.frames - 1))
        if frame != self.frame:
            self.frame = frame
            self._changed()

    def set_negative_clicks(self, negative: bool) -> None:
        """Mask-mode clicks add negative points (True) or positive ones (False)."""
        if bool(negative) != self.negative_clicks:
            self.negative_clicks = bool(negative)
            self.message = "mask clicks: " + ("negative (remove)" if negative else "positive (add)")
            self._changed()

    def select(self, index: Optional[int]) -> None:
        """Select a committed trajectory and load it for editing: its points, frames, id, caption and mask
        (drag points, change st/et or the caption, then ``commit`` saves it in place). While a new trajectory
        is being drawn, selecting only marks the trajectory (for delete / draw again). ``None``: deselect (and
        drop an unsaved edit)."""
        self._outside_video("selecting")
        d = self.draft
        if index is not None and (isinstance(index, bool) or not isinstance(index, (int, np.integer))
                                  or not 0 <= index < len(d.trajectories)):
            raise EditorError(f"select: no trajectory {index!r} (have {len(d.trajectories)})")
        if index is None:
            if d.selected is None and d.editing is None:
                return
            drop = {"polyline": (), "erased": (), "erase_start": None, "editing": None} if d.editing is not None else {}
            self._apply("edit cancelled" if drop else "nothing selected", selected=None, **drop)
            return
        index = int(index)
        if index == d.selected and (d.editing == index or d.polyline):
            return
        if d.polyline and d.editing is None:
            self._apply(f"selected trajectory {index} (finish or clear the drawing to edit it)", selected=index)
            return
        self._load_for_editing(index)

    def _load_for_editing(self, index: int) -> None:
        t = self.draft.trajectories[index]
        polyline, st, et, erased, motion = self._recipe(t)
        self._apply(f"editing trajectory {index} (object {t.id}): drag its points, change frames or caption, "
                    "then Add trajectory saves it", selected=index, editing=index, mode="draw", clicks=(),
                    mask=_frozen(t.mask.decode()), mask_score=None, mask_rle=t.mask, polyline=polyline,
                    st=st, et=et, erased=erased, erase_start=None, obj_id=int(t.id), caption=t.text, motion=motion)

    def _recipe(self, t: Trajectory) -> Recipe:
        """How ``t`` was drawn here, else its corners and the frames it reaches them (:func:`_editable`)."""
        recipe = self.draft.drawn.get(t)
        return recipe if recipe is not None else _editable(t)

    def edit_selected(self) -> None:
        """Load the selected trajectory for editing (as selecting it in the list does)."""
        self._outside_video("editing")
        d = self.draft
        if d.selected is None:
            raise EditorError("nothing selected: pick a trajectory in the list first")
        if d.polyline and d.editing is None:
            raise EditorError("a new trajectory is being drawn: add it or clear it (Escape) first")
        if d.editing != d.selected:
            self._load_for_editing(d.selected)

    # ------------------------------------------------------------------ clicks
    def on_click(self, x: float, y: float, negative: Optional[bool] = None) -> None:
        """A click at ``(x, y)`` pixels (clipped to the image); what it does depends on the mode."""
        x = float(np.clip(x, 0, self.width - 1))
        y = float(np.clip(y, 0, self.height - 1))
        mode = self.draft.mode
        if self.draft.driving:
            self._video_click((x, y))
        elif mode == "mask":
            self._mask_click((x, y), self.negative_clicks if negative is None else bool(negative))
        elif mode == "draw":
            self._draw_click((x, y))
        else:
            self._erase_click((x, y))

    # ------------------------------------------------------------------ mouse: press, drag, release
    def grab_radius(self) -> float:
        """Pixels around a polyline point within which a press grabs it (draw mode)."""
        return max(4.0, 0.04 * min(self.height, self.width))

    def press(self, x: float, y: float) -> None:
        """Mouse button down. Draw mode: on a point of the path, grab it (a drag moves it); elsewhere add a
        point there (a drag then continues it freehand). Other modes: a click."""
        x = float(np.clip(x, 0, self.width - 1))
        y = float(np.clip(y, 0, self.height - 1))
        self._drag = None
        d = self.draft
        if d.driving:
            self.on_click(x, y)
            return
        if d.mode == "draw" and d.polyline:
            dist = [np.hypot(px - x, py - y) for px, py in d.polyline]
            k = int(np.argmin(dist))
            if dist[k] <= self.grab_radius():
                self._drag = ("move", k, False)
                return
        self.on_click(x, y)
        if d.mode == "draw":
            self._drag = ("stroke", len(self.draft.polyline) - 1, [(x, y)])

    def drag(self, x: float, y: float) -> None:
        """Mouse moved with the button down: move the grabbed point, or sample the freehand path."""
        if self._drag is None:
            return
        p = (float(np.clip(x, 0, self.width - 1)), float(np.clip(y, 0, self.height - 1)))
        d = self.draft
        if self._drag[0] == "move":
            _, k, moved = self._drag
            if k >= len(d.polyline):
                self._drag = None
                return
            polyline = d.polyline[:k] + (p,) + d.polyline[k + 1:]
            if not moved:
                self._apply(f"moved point {k}", polyline=polyline)
                self._drag = ("move", k, True)
            else:
                self._amend(f"moved point {k}", polyline=polyline)
            return
        _, start, stroke = self._drag
        if np.hypot(p[0] - stroke[-1][0], p[1] - stroke[-1][1]) < self.stroke_step():
            return
        stroke.append(p)
        head = d.polyline[:start]
        room = max(1, self._max_points(d.st, d.et) - len(head))
        self._amend(f"freehand path: {len(head) + min(room, len(stroke))} points",
                    polyline=head + _thin(stroke, room))

    def release(self, x: Optional[float] = None, y: Optional[float] = None) -> None:
        """Mouse button up (or out of the canvas) at ``(x, y)``: the drag ends there (browsers may drop moves,
        so the release position is the last word); a press on a path point that did not move adds a point."""
        drag, self._drag = self._drag, None
        if drag is None or x is None or y is None:
            return
        p = (float(np.clip(x, 0, self.width - 1)), float(np.clip(y, 0, self.height - 1)))
        d = self.draft
        if drag[0] == "move":
            _, k, moved = drag
            if not moved:
                self.on_click(*p)
            elif k < len(d.polyline) and d.polyline[k] != p:
                self._amend(f"moved point {k}", polyline=d.polyline[:k] + (p,) + d.polyline[k + 1:])
            return
        _, start, stroke = drag
        if np.hypot(p[0] - stroke[-1][0], p[1] - stroke[-1][1]) < 1.0:
            return
        close = len(stroke) > 1 and np.hypot(p[0] - stroke[-1][0], p[1] - stroke[-1][1]) < self.stroke_step()
        stroke = stroke[:-1] + [p] if close else stroke + [p]  # the end sample is where the button went up
        head = d.polyline[:start]
        room = max(1, self._max_points(d.st, d.et) - len(head))
        self._amend(f"freehand path: {len(head) + min(room, len(stroke))} points", polyline=head + _thin(stroke, room))

    @property
    def dragging(self) -> bool:
        """True between a press that can drag (draw mode) and its release."""
        return self._drag is not None

    def stroke_step(self) -> float:
        """Pixels between samples of a freehand path."""
        return max(3.0, 0.03 * min(self.height, self.width))

    def _max_points(self, st: int, et: int) -> int:
        """Most path points that still give every segment >= 2 frames over ``[st, et)``."""
        return max(1, (et - st - 1) // 2 + 1)

    def _mask_click(self, p: Point, negative: bool) -> None:
        clicks = self.draft.clicks + ((p[0], p[1], negative),)
        mask, score = self._segment(clicks)
        kind = "negative" if negative else "positive"
        self._apply(f"{kind} point ({p[0]:.0f}, {p[1]:.0f}); {self.describe_score(score)}" if mask is not None
                    else f"{kind} point recorded; add a positive point on the object",
                    clicks=clicks, mask=mask, mask_score=score, mask_rle=None)

    def _segment(self, clicks: tuple[tuple[float, float, bool], ...]):
        if self.image is None:
            raise EditorError("no image: load a start image first")
        pos = [(x, y) for x, y, neg in clicks if not neg]
        if not pos:
            return None, None
        self.segmenter.set_image(self.image)
        mask, score = self.segmenter.predict(pos, [(x, y) for x, y, neg in clicks if neg])
        return _frozen(mask), float(score)

    def describe_score(self, score: Optional[float]) -> str:
        """What the segmenter's score means (SAM: predicted mask quality; fallback: an area fraction)."""
        if score is None:
            return "no score"
        describe = getattr(self.segmenter, "describe_score", None)
        return describe(score) if describe is not None else f"mask score {score:.3f}"

    def _draw_click(self, p: Point) -> None:
        d = self.draft
        if not d.mask_confirmed:
            raise EditorError("no mask: pick the object in mask mode and confirm it first")
        polyline = d.polyline + (p,)
        self._check_buildable(polyline, d.st, d.et, _fit_motion(replace(d, polyline=polyline))[0].motion)
        self._apply(f"polyline: {len(polyline)} points", polyline=polyline)

    def _erase_click(self, p: Point) -> None:
        d = self.draft
        if d.erase_start is None:
            if not d.polyline and d.selected is None:
                raise EditorError("nothing to erase: draw a trajectory (or select one) first")
            self._apply("erase: click the end of the stretch to hide", erase_start=p)
            return
        if d.polyline:
            target = self.pending(with_erased=False)
        else:
            target = d.trajectories[d.selected]
        i, j = sorted((nearest_track_index(target, d.erase_start), nearest_track_index(target, p)))
        if d.polyline:
            self._apply(f"frames {i}..{j} invisible", erased=d.erased + ((i, j),), erase_start=None)
        else:
            new = erase(target, i, j)
            recipe = d.drawn.get(target)
            drawn = d.drawn if recipe is None else {**d.drawn, new: recipe[:3] + (recipe[3] + ((i, j),), recipe[4])}
            self._apply(f"frames {i}..{j} of trajectory {d.selected} invisible",
                        scene=d.scene.with_trajectory(d.selected, new), erase_start=None, drawn=drawn)

    # ------------------------------------------------------------------ mask actions
    def confirm_mask(self) -> None:
        self._outside_video("confirming a mask")
        d = self.draft
        if d.mask is None:
            raise EditorError("no mask: click on the object (mask mode) before confirming")
        if not d.mask.any():
            raise EditorError("empty mask: add positive points on the object")
        self._apply(f"mask confirmed ({int(d.mask.sum())} px); click the trajectory", mode="draw",
                    mask_rle=RLEMask.from_array(d.mask))

    def use_whole_image(self) -> None:
        """Confirm a mask covering the whole image (for camera/background anchors without SAM)."""
        self._outside_video("a whole-image mask")
        mask = _frozen(np.ones((self.height, self.width), bool))
        self._apply("whole-image mask confirmed", mode="draw", clicks=(), mask=mask,
                    mask_score=None, mask_rle=RLEMask.full(self.height, self.width))

    def reuse_selected(self) -> None:
        """Draw another trajectory for the selected trajectory's object: take its mask, id and caption."""
        self._outside_video("drawing again")
        d = self.draft
        if d.selected is None:
            raise EditorError("nothing selected: select a trajectory whose object to draw again")
        t = d.trajectories[d.selected]
        self._apply(f"drawing object {t.id} again (its mask); click the trajectory", mode="draw", clicks=(),
                    mask=_frozen(t.mask.decode()), mask_score=None, mask_rle=t.mask, polyline=(), erased=(),
                    erase_start=None, obj_id=t.id, caption=t.text, editing=None)

    def clear_points(self) -> None:
        """Forget the mask clicks and mask (the confirmed mask too)."""
        self._outside_video("clearing mask points")
        self._apply("mask points cleared", mode="mask", clicks=(), mask=None, mask_score=None,
                    mask_rle=None, polyline=(), erased=(), erase_start=None, editing=None)

    def backspace(self) -> None:
        """Remove the last point: of the polyline (draw), the erase start (erase), or the mask clicks (mask)."""
        d = self.draft
        if d.driving:
            if not d.video_points:
                raise EditorError("no point to remove: click the points to track on the video's first frame")
            self._apply(f"driving video: {len(d.video_points) - 1} points", video_points=d.video_points[:-1])
        elif d.mode == "erase" and d.erase_start is not None:
            self._apply("erase start removed", erase_start=None)
        elif d.mode in ("draw", "erase") and d.polyline:
            self._apply(f"polyline: {len(d.polyline) - 1} points", polyline=d.polyline[:-1],
                        erased=() if len(d.polyline) == 1 else d.erased)
        elif d.mode == "mask" and d.clicks:
            mask, score = self._segment(d.clicks[:-1])
            self._apply("mask point removed", clicks=d.clicks[:-1], mask=mask, mask_score=score, mask_rle=None)
        else:
            raise EditorError("no point to remove")

    # ------------------------------------------------------------------ trajectories
    def _check_buildable(self, polyline: tuple[Point, ...], st: int, et: int, motion: Motion) -> None:
        if polyline:  # raises ConditionError when [st, et) is too short for the tool's rule
            _motion_track(polyline, st, et, _fit_motion_to(motion, polyline, st, et)[0], self.frames)

    def pending(self, with_erased: bool = True) -> Optional[Trajectory]:
        """The trajectory being drawn (None until the mask is confirmed and a point is clicked)."""
        d = self.draft
        if not d.polyline or not d.mask_confirmed:
            return None
        text = d.caption or ANCHOR_TEXT
        if len(d.polyline) == 1 and (d.st, d.et) == (0, self.frames):
            traj = static_anchor(d.polyline[0], obj_id=d.obj_id, mask=d.mask_rle, frames=self.frames, text=text)
        elif d.motion.is_default:  # the drawing tool's polyline, exactly
            traj = make_trajectory(list(d.polyline), d.st, d.et, obj_id=d.obj_id, mask=d.mask_rle,
                                   frames=self.frames, text=text)
        else:
            track, vis = _motion_track(d.polyline, d.st, d.et, d.motion, self.frames)
            base = make_trajectory(list(d.polyline[:1]), d.st, d.et, obj_id=d.obj_id, mask=d.mask_rle,
                                   frames=self.frames, text=text)
            traj = base.replace(points=_tuples(track, vis > 0, d.obj_id), visibility=tuple(int(v) for v in vis))
        if with_erased:
            for f0, f1 in d.erased:
                traj = erase(traj, f0, f1)
        return traj

    def commit(self) -> Trajectory:
        """Add the trajectory being drawn under the current object id and caption."""
        self._outside_video("adding a trajectory")
        d = self.draft
        if not d.mask_confirmed:
            raise EditorError("no mask: pick the object in mask mode and confirm it first")
        if not d.polyline:
            raise EditorError("no trajectory: click its points on the image (draw mode) first")
        if not d.caption:
            raise EditorError("empty caption: describe the object, or write None for a camera/background anchor")
        traj = self.pending()
        scene, note = d.scene, ""
        recipe = (d.polyline, d.st, d.et, d.erased, d.motion)
        if d.editing is not None:
            old_t = scene.trajectories[d.editing]
            if old_t.id == traj.id and old_t.is_anchor == traj.is_anchor:  # same object: save it in place
                if self._recipe(old_t) == recipe and old_t.mask == d.mask_rle:
                    traj = old_t.replace(text=traj.text)  # path untouched: keep the track exactly (loaded JSON)
                if not traj.is_anchor and scene.captions.get(str(traj.id)) != traj.text:
                    scene, note = set_caption(scene, traj.id, traj.text), f"; caption of object {traj.id} changed"
                self._apply(f"saved trajectory {d.editing} (object {traj.id}){note}",
                            scene=scene.with_trajectory(d.editing, traj), polyline=(), erased=(), erase_start=None,
                            mode="draw", selected=d.editing, editing=None, drawn={**d.drawn, traj: recipe})
                return traj
            scene = _without(scene, d.editing)  # another id or kind: it becomes a new trajectory at the end
        same_id = scene.trajectories_of(traj.id)
        if traj.is_anchor and str(traj.id) in scene.captions:
            raise EditorError(f"object id {traj.id} has a caption; give this camera/background anchor an id of its own")
        if not traj.is_anchor and any(t.is_anchor for t in same_id):
            raise EditorError(f"object id {traj.id} is a camera/background anchor's; give this object an id of its own")
        old = scene.captions.get(str(traj.id))
        if not traj.is_anchor and old is not None and old != traj.text:
            scene, note = set_caption(scene, traj.id, traj.text), f"; caption of object {traj.id} changed"
        scene = add_trajectory(scene, traj)
        index, what = len(scene.trajectories) - 1, "added"
        self._apply(f"{what} trajectory {index} (object {traj.id}){note}", scene=scene, polyline=(), erased=(),
                    erase_start=None, mode="draw", selected=index, editing=None, drawn={**d.drawn, traj: recipe})
        return traj

    def new_object(self) -> None:
        """Start the next object: clear the mask and drawing, pick a fresh id."""
        self._outside_video("a new object")
        d = self.draft
        next_id = max([t.id for t in d.trajectories] + [d.obj_id]) + 1
        self._apply(f"new object {next_id}: click on it", mode="mask", clicks=(), mask=None,
                    mask_score=None, mask_rle=None, polyline=(), erased=(), erase_start=None, obj_id=next_id,
                    caption="", st=0, et=self.frames, selected=None, editing=None)

    def delete(self, index: Optional[int] = None) -> None:
        """Delete a committed trajectory (the selected one by default); captions of ids left with none go too."""
        self._outside_video("deleting")
        d = self.draft
        index = d.selected if index is None else index
        if index is None or not 0 <= index < len(d.trajectories):
            raise EditorError("nothing to delete: select a trajectory first")
        scene = _without(d.scene, index)
        drop = {"polyline": (), "erased": (), "erase_start": None, "editing": None} if d.editing is not None else {}
        if d.editing is not None and d.editing != index:
            drop = {"editing": d.editing - (d.editing > index)}
        self._apply(f"deleted trajectory {index} (object {d.trajectories[index].id})", scene=scene, selected=None,
                    **drop)

    # ------------------------------------------------------------------ motion tools (beyond the drawing tool)
    def reach_frames(self) -> tuple[int, ...]:
        """Frames at which the trajectory being drawn reaches each of its points: the custom timing, else the
        tool's equal-frames rule; ``()`` with no points, for a spline, with a speed curve, or when ``[st, et)`` is
        too short."""
        d = self.draft
        if not d.polyline or d.motion.path == "spline" or d.motion.speed != "linear":
            return ()
        if d.motion.frames_at is not None:
            return d.motion.frames_at
        try:
            return tuple(mo.default_frames_at(len(d.polyline), d.st, d.et))
        except WclabError:
            return ()

    def set_timing(self, frames_at: Optional[Sequence[int]]) -> None:
        """Reach clicked point i at frame ``frames_at[i]`` (first = st, strictly increasing, last < et; the last
        point is held to et - 1; the speed curve goes back to linear); ``None``: back to the tool's equal frames
        per segment."""
        self._outside_video("timing")
        d = self.draft
        if frames_at is None:
            if d.motion.frames_at is not None:
                self._apply("timing: equal frames per segment (the drawing tool's rule)",
                            motion=replace(d.motion, frames_at=None))
            return
        if not d.polyline:
            raise EditorError("timing: click the trajectory's points first")
        if d.motion.path == "spline":
            raise EditorError("timing: per-point frames apply to a polyline; a spline is timed by time or arc length")
        try:
            fa = tuple(int(f) for f in frames_at)
        except (TypeError, ValueError):
            raise EditorError(f"timing: expected whole frame numbers, got {frames_at!r:.60}") from None
        if len(fa) != len(d.polyline):
            raise EditorError(f"timing: expected {len(d.polyline)} frames (one per point), got {len(fa)}")
        if fa[0] != d.st or fa[-1] >= d.et:
            raise EditorError(f"timing: the first point is reached at the first frame ({d.st}) and the last before "
                              f"the end frame ({d.et}, exclusive); got {list(fa)}")
        mo.timed_track(d.polyline, fa, self.frames, et=d.et)  # strictly increasing, else ConditionError
        try:
            default = tuple(mo.default_frames_at(len(d.polyline), d.st, d.et))
        except WclabError:
            default = None
        motion = replace(d.motion, frames_at=None if fa == default else fa, speed="linear")
        if motion != d.motion:
            self._apply(f"timing: points reached at frames {', '.join(map(str, fa))}", motion=motion)

    def set_speed(self, curve: str) -> None:
        """Re-time the trajectory being drawn with a speed curve (a name in ``SPEED_CURVES``; "linear": none).
        A speed curve replaces per-point timing (the points are then reached where the curve says)."""
        self._outside_video("speed curves")
        if curve not in mo.SPEED_CURVES:
            raise EditorError(f"speed: expected one of {list(mo.SPEED_CURVES)}, got {curve!r}")
        m = self.draft.motion
        if curve != m.speed:
            off = "; per-point timing off" if m.frames_at is not None and curve != "linear" else ""
            self._apply(f"speed curve: {curve.replace('_', ' ')}{off}",
                        motion=replace(m, speed=curve, frames_at=None if curve != "linear" else m.frames_at))

    def set_path(self, path: str, tension: Optional[float] = None, by: Optional[str] = None) -> None:
        """Path shape: ``"polyline"`` (the tool's) or ``"spline"`` (Catmull-Rom with ``tension``, sampled ``by``
        time or arc length). A spline drops per-point frames."""
        self._outside_video("path shapes")
        m = self.draft.motion
        tension = m.tension if tension is None else tension
        by = m.by if by is None else by
        if path not in PATHS:
            raise EditorError(f"path: expected one of {list(PATHS)}, got {path!r}")
        if by not in SAMPLE_BY:
            raise EditorError(f"spline sampling: expected one of {list(SAMPLE_BY)}, got {by!r}")
        if isinstance(tension, bool) or not isinstance(tension, (int, float, np.number)) or not 0 <= tension <= 2:
            raise EditorError(f"spline tension: expected a number in [0, 2], got {tension!r}")
        motion = replace(m, path=path, tension=round(float(tension), 4), by=by,
                         frames_at=None if path == "spline" else m.frames_at)
        if motion != m:
            self._apply(f"path: {motion.describe()}", motion=motion)

    def add_camera(self, kind: str, amount: Optional[float] = None, grid: tuple[int, int] = (3, 3)) -> list[Trajectory]:
        """Add background anchors (caption "None", a fresh id) that move as the scene would under a camera motion:
        one of ``CAMERA_PRESETS``; ``amount``: pixels for pans (default a quarter of the image), zoom factor
        (1.25), degrees for rotations (10). The work in progress is kept."""
        self._outside_video("camera presets")
        if kind not in mo.CAMERA_PRESETS:
            raise EditorError(f"camera: expected one of {list(mo.CAMERA_PRESETS)}, got {kind!r}")
        family = kind.split("_")[0]
        if amount is None:
            amount = CAMERA_AMOUNTS[family]
            if family == "pan":
                amount *= self.width if kind in ("pan_left", "pan_right") else self.height
        d = self.draft
        obj_id = max([t.id for t in d.trajectories] + [d.obj_id]) + 1
        anchors = mo.camera_anchors(self.height, self.width, self.frames, kind, amount, grid=grid, obj_id=obj_id)
        scene = d.scene
        for a in anchors:
            scene = add_trajectory(scene, a)
        unit = {"pan": " px", "zoom": "x", "rotate": " degrees"}.get(family, "")
        what = "static camera" if kind == "static" else f"camera {kind.replace('_', ' ')} {amount:g}{unit}"
        self._apply(f"{what}: added {len(anchors)} background anchors (object {obj_id})", scene=scene)
        return anchors

    def apply_event(self, kind: str, *, edge: str = "left", frames: Optional[int] = None,
                    frame: Optional[int] = None) -> Trajectory:
        """Change the selected committed trajectory with an event preset (``EVENTS``): ``enter`` from / ``leave``
        through ``edge`` spending ``frames`` frames off-image; ``pass_behind``: hidden for ``frames`` frames from
        ``frame``; ``stop`` / ``turn_back`` at ``frame``. ``frame`` defaults to the frame slider's, ``frames`` to a
        quarter of the active frames."""
        self._outside_video("event presets")
        d = self.draft
        if kind not in EVENTS:
            raise EditorError(f"event: expected one of {list(EVENTS)}, got {kind!r}")
        if d.selected is None:
            raise EditorError("event: select a trajectory first")
        if d.editing is not None:
            raise EditorError("event: save (Add trajectory) or cancel (Escape) the edit first")
        index, t = d.selected, d.trajectories[d.selected]
        st, et = active_range(t)
        frame = self.frame if frame is None else int(frame)
        frames = max(1, (et - st) // 4) if frames is None else int(frames)
        if kind == "enter":
            new, what = mo.enter_from_edge(t, edge, frames), f"enters from the {edge} edge over {frames} frames"
        elif kind == "leave":
            new, what = mo.leave_through_edge(t, edge, frames), f"leaves through the {edge} edge in {frames} frames"
        elif kind == "pass_behind":
            f0, f1 = frame, min(frame + frames, et) - 1
            if not st <= f0 <= f1:
                raise EditorError(f"pass behind: frame {frame} is outside trajectory {index}'s frames [{st}, {et})")
            new, what = mo.pass_behind(t, f0, f1), f"passes behind something on frames {f0}..{f1}"
        elif kind == "stop":
            new, what = mo.stop_at(t, frame), f"stops at frame {frame}"
        else:
            new, what = mo.turn_back(t, frame), f"turns back at frame {frame}"
        self._apply(f"trajectory {index} (object {t.id}) {what}", scene=d.scene.with_trajectory(index, new))
        return new

    # ------------------------------------------------------------------ tracks (ATI / Wan-Move arrays)
    def export_tracks(self, path: Union[str, Path], style: str = "ati", include_anchors: bool = True) -> list[Path]:
        """Write the committed trajectories as point tracks (``.npy``/``.pth``, ATI or Wan-Move layout, see
        :func:`wclab.conditions.tracks.save_tracks`); returns the files written."""
        tracks = Tracks.from_scene(self.to_scene(), include_anchors=include_anchors)
        files = save_tracks(tracks, path, style=style)
        self.message = f"saved {tracks.count} tracks ({style}) to {', '.join(map(str, files))}"
        self._changed()
        return files

    def import_tracks(self, source: Union[str, Path, Tracks], caption: str = ANCHOR_TEXT,
                      obj_id: Optional[int] = None) -> None:
        """Add point tracks (a :class:`Tracks` or an ATI/Wan-Move ``.npy``/``.pth`` file) as trajectories of one
        object: ``caption`` ("None": background anchors), a fresh id by default, the confirmed mask when there is
        one, else a small square around each track's first point. Tracks are resampled to the scene's frames."""
        self._outside_video("importing tracks")
        tracks = source if isinstance(source, Tracks) else load_tracks(source)
        caption = " ".join(str(caption).split())
        if not caption:
            raise EditorError("import tracks: give a caption, or None for background anchors")
        d = self.draft
        if obj_id is None:
            obj_id = max([t.id for t in d.trajectories] + [d.obj_id]) + 1
        if caption == ANCHOR_TEXT and str(obj_id) in d.scene.captions:
            raise EditorError(f"object id {obj_id} has a caption; give the anchors an id of their own")
        if caption != ANCHOR_TEXT and any(t.is_anchor for t in d.scene.trajectories_of(obj_id)):
            raise EditorError(f"object id {obj_id} is a camera/background anchor's; give this object an id of its own")
        masks = d.mask_rle if d.mask_rle is not None else [
            _square_mask(self.height, self.width, tracks.points[:, j]) for j in range(tracks.count)]
        scene = add_tracks(d.scene, tracks, masks, caption, [obj_id] * tracks.count, resample=True)
        where = "" if isinstance(source, Tracks) else f" from {source}"
        resampled = f", resampled {tracks.frames} -> {self.frames} frames" if tracks.frames != self.frames else ""
        self._apply(f"imported {tracks.count} tracks{where} as object {obj_id}{resampled}", scene=scene)

    def tracks_from_video(self, video: np.ndarray, points: Sequence[Point], caption: str = ANCHOR_TEXT,
                          obj_id: Optional[int] = None) -> Tracks:
        """Follow ``points`` (x, y pixels of the video's first frame) through a driving video uint8 ``[T, H, W, 3]``
        (OpenCV Lucas-Kanade, lost points invisible) and add them as trajectories (:meth:`import_tracks`). The
        video is expected at the scene's size; its frames are resampled to the scene's."""
        self._outside_video("scripted tracking")
        v = np.asarray(video)
        if v.ndim != 4 or v.shape[1:3] != (self.height, self.width):
            raise EditorError(f"driving video: expected [T, {self.height}, {self.width}, 3] (the scene's size), "
                              f"got {list(v.shape)}")
        tracks = tracks_from_video(v, points)
        self.import_tracks(tracks, caption=caption, obj_id=obj_id)
        self.message = f"{self.message} (tracked in a {v.shape[0]}-frame video)"
        self._changed()
        return tracks

    # ------------------------------------------------------------------ driving video mode
    def _outside_video(self, what: str) -> None:
        """Refuse an action of the normal view in driving video mode (there: clicks, Backspace, object id and
        caption, Track, Cancel, undo/redo and the frame slider)."""
        if self.draft.driving:
            raise EditorError(f"driving video mode: Track (Enter) or Cancel (Escape) first ({what} is for the "
                              "normal view)")

    def load_driving_video(self, video: VideoLike, source: str = "") -> None:
        """Enter driving video mode with ``video`` (a video file path, a ``.npy``, or uint8 ``[Tv, h, w, 3]``): the
        canvas shows its first frame fitted to the scene (as the start image; :mod:`widgets.driving_video` gives
        the exact map between scene and video pixels); clicks then add the points to track; ``track_video`` adds
        them as trajectories, ``cancel_video`` leaves without changes. One undo step; the drawing in progress is
        kept for when the mode ends."""
        if self.image is None:
            raise EditorError("no image: load the start image first (the tracks are drawn on it)")
        if self.draft.editing is not None:
            raise EditorError("a trajectory is being edited: save it (Add trajectory) or cancel (Escape) first")
        v = DrivingVideo.load(video, self.height, self.width, source=source)
        self._drag = None
        self._apply(f"driving video {v.describe()}: click the points to track", video=v, video_points=())

    def _video_click(self, p: Point) -> None:
        points = self.draft.video_points + (p,)
        self._apply(f"driving video: point {len(points)} at ({p[0]:.0f}, {p[1]:.0f})", video_points=points)

    def cancel_video(self) -> None:
        """Leave driving video mode without changing the scene (one undo step: undo comes back to the points)."""
        d = self.draft
        if not d.driving:
            raise EditorError("no driving video: load one first")
        self._apply(f"driving video closed, nothing added ({len(d.video_points)} points dropped)", video=None,
                    video_points=())

    def video_object(self) -> tuple[int, str]:
        """``(object id, caption)`` the tracks of the driving video will get: the caption field's value (empty:
        ``"None"``, background anchors) under the current object id — or a fresh id when that id already holds
        trajectories of another caption or kind (tracking never changes an object already drawn)."""
        d = self.draft
        caption = d.caption or ANCHOR_TEXT
        anchor = caption == ANCHOR_TEXT
        same = d.scene.trajectories_of(d.obj_id)
        clash = any(t.is_anchor != anchor or (not anchor and t.text != caption) for t in same)
        if clash:
            return max([t.id for t in d.trajectories] + [d.obj_id]) + 1, caption
        return d.obj_id, caption

    def track_video(self, fb_threshold: float = 1.0) -> Tracks:
        """Follow the clicked points through the driving video (OpenCV pyramidal Lucas-Kanade at the video's own
        size, forward-backward check ``fb_threshold`` video pixels; a lost point stays where it was last seen,
        invisible) and add one trajectory per point — a 9 × 9 px mask around its first point, the caption field's
        value (:meth:`video_object`; empty: background anchors) — resampled in time to the scene's frames when the
        video has another frame count. Leaves the mode with the new trajectories selected (the first) and shown;
        one undo step removes them all. Returns the tracks (scene pixels, the video's frames)."""
        d = self.draft
        if not d.driving:
            raise EditorError("no driving video: load one first")
        if not d.video_points:
            raise EditorError("no points: click the points to track on the video's first frame")
        tracks = d.video.track(d.video_points, fb_threshold=fb_threshold)
        obj_id, caption = self.video_object()
        masks = [_square_mask(self.height, self.width, tracks.points[:, j]) for j in range(tracks.count)]
        scene = add_tracks(d.scene, tracks, masks, caption, [obj_id] * tracks.count, resample=True)
        lost = int((~tracks.visibility[-1]).sum())
        what = "background anchors" if caption == ANCHOR_TEXT else f"\"{caption[:40]}\""
        notes = [f"{d.video.count} video frames resampled to the scene's {self.frames}"
                 if tracks.frames != self.frames else f"{self.frames} frames"]
        if lost:
            notes.append(f"{lost} lost before the end (invisible from there)")
        first, last = len(d.trajectories), len(scene.trajectories) - 1
        added = f"trajectory {first}" if first == last else f"trajectories {first}..{last}"
        self._apply(f"tracked {tracks.count} point{'s' if tracks.count > 1 else ''}: added {added} as object "
                    f"{obj_id} ({what}); {', '.join(notes)}",
                    scene=scene, video=None, video_points=(), selected=len(d.trajectories))
        return tracks

    # ------------------------------------------------------------------ scripting
    def add_object(self, mask_points: Sequence[Point], path: Sequence[Point], caption: str, *,
                   obj_id: Optional[int] = None, st: int = 0, et: Optional[int] = None,
                   negative_points: Sequence[Point] = ()) -> Trajectory:
        """Script one object through the same actions (and undo steps) as the clicks: new object, mask clicks,
        confirm, path clicks, frames, caption, commit. ``obj_id`` defaults to a fresh id, so a script never
        overwrites an object drawn by hand; ``path`` of one point over all frames is a static anchor/object.

        Refuses while a trajectory is being drawn or edited (it would be thrown away)."""
        self._outside_video("scripting an object")
        d = self.draft
        if d.polyline or d.editing is not None:
            raise EditorError("a trajectory is being drawn or edited: add it (Add trajectory) or clear it (Escape) "
                              "before scripting another")
        if not mask_points or not path:
            raise EditorError("add_object: give at least one mask point and one path point")
        if obj_id is None:
            obj_id = max([t.id for t in d.trajectories], default=0) + 1
        self.new_object()
        for x, y in mask_points:
            self.on_click(x, y, negative=False)
        for x, y in negative_points:
            self.on_click(x, y, negative=True)
        self.confirm_mask()
        self.set_st_et(st, self.frames if et is None else et)
        for x, y in path:
            self.on_click(x, y)
        self.set_object(obj_id, caption)
        traj = self.commit()
        self.message = f"script: {self.message}"
        self._changed()
        return traj

    # ------------------------------------------------------------------ what the view shows
    def mask_status(self) -> str:
        d = self.draft
        if d.mask_confirmed:
            return f"confirmed ({int(d.mask.sum())} px)" if d.mask is not None else "confirmed"
        if d.mask is not None:
            return f"preview ({self.describe_score(d.mask_score)})"
        return "none"

    def hint(self) -> str:
        """One line: what to do next, in the current state."""
        d = self.draft
        if d.driving:
            if not d.video_points:
                return ("Driving video: click the points to follow on its first frame, then Track (Enter); Cancel "
                        "(Escape) leaves without changes.")
            obj_id, caption = self.video_object()
            what = (f"background anchors (object {obj_id}; write a caption to make them an object)"
                    if caption == ANCHOR_TEXT else f"object {obj_id} \"{caption[:30]}\"")
            return (f"{len(d.video_points)} point(s): click more (Backspace removes the last); Track (Enter) adds them "
                    f"as {what}; Cancel (Escape) leaves.")
        if self.image is None:
            return "Load a start image (path + Load image, or Upload) — or Load JSON to continue a scene."
        if d.editing is not None:
            if d.mode == "erase":
                return ("Erase: click where the hidden stretch ends." if d.erase_start is not None else
                        "Erase: click where the hidden stretch starts.")
            return (f"Editing trajectory {d.editing}: drag its points, change first/end frame or caption, then "
                    "Add trajectory (Enter) saves it; Escape cancels.")
        if d.mode == "mask":
            if not d.clicks:
                return (f"Click on object {d.obj_id} to pick it (x: negative clicks), or w for a whole-image "
                        "mask (camera/background anchor).")
            if d.mask is None:
                return "Add a positive click on the object."
            return "Enter confirms the mask; more clicks refine it (x toggles negative clicks)."
        if d.mode == "erase":
            if d.erase_start is not None:
                return "Erase: click where the hidden stretch ends."
            return "Erase: click where the hidden stretch starts (on the trajectory)."
        if not d.polyline:
            if d.trajectories:
                return (f"Click (or drag freehand) another path for object {d.obj_id}; n: new object; s or the list "
                        "edits a trajectory; Save JSON when done.")
            return (f"Click the path of object {d.obj_id} point by point (or drag to draw it freehand); "
                    "first/end frame set when it moves.")
        if not d.caption:
            return "Write a caption (or tick anchor for a camera/background anchor), then Add trajectory (Enter)."
        return "Add trajectory (Enter) — drag a point to move it, Backspace removes the last one."

    def notes(self) -> list[str]:
        """Warnings about what the model will read from the trajectory being drawn or edited."""
        d, out = self.draft, []
        if d.polyline and d.st > 0 and d.caption and d.caption != ANCHOR_TEXT:
            out.append(f"object {d.obj_id} starts at frame {d.st} > 0: frames before it are off-image, so the "
                       f"prompt will read \"Object {d.obj_id} appears: …\"")
        return out

    def trajectory_labels(self) -> list[str]:
        """The selector's entries, one per committed trajectory."""
        out = []
        for i, t in enumerate(self.draft.trajectories):
            st, et = active_range(t)
            what = "(anchor)" if t.is_anchor else f"— {t.text[:40]}"
            out.append(f"{i}: object {t.id} [{st}, {et}) {what}")
        return out

    def summary(self) -> dict:
        """Everything the widget shows, as plain values (the view renders exactly this)."""
        d = self.draft
        return {"mode": d.mode, "negative_clicks": self.negative_clicks, "st_et": (d.st, d.et),
                "frame": self.frame, "obj_id": d.obj_id, "caption": d.caption, "selected": d.selected,
                "trajectories": tuple(self.trajectory_labels()),
                "status": (f"segmenter: {self.segmenter.label} · mode: {d.mode}"
                           f"{' (negative clicks)' if self.negative_clicks and d.mode == 'mask' else ''}"
                           f" · mask: {self.mask_status()} · trajectories: {len(d.trajectories)}"
                           f"{f' · editing: {d.editing}' if d.editing is not None else ''}"
                           f"{f' · driving video: {len(d.video_points)} points' if d.driving else ''}"
                           f" · undo: {len(self.undo_stack)}"),
                "message": self.message, "hint": self.hint(), "notes": tuple(self.notes()),
                "path": d.motion.path, "tension": d.motion.tension, "by": d.motion.by, "speed": d.motion.speed,
                "reach_frames": self.reach_frames(),
                "timing": "custom" if d.motion.frames_at is not None else "equal frames per segment",
                "video": self.video_status()}

    def video_status(self) -> str:
        """The driving video line ('' in the normal view): what is shown and the points clicked."""
        d = self.draft
        if not d.driving:
            return ""
        points = "; ".join(f"{i + 1}: ({x:.0f}, {y:.0f})" for i, (x, y) in enumerate(d.video_points))
        return f"driving video {d.video.describe()} · points {points or '(none yet)'}"

    # ------------------------------------------------------------------ views for drawing
    def positions_at(self, frame: Optional[int] = None) -> list[tuple[int, float, float, bool]]:
        """``(index, x, y, visible)`` of every committed trajectory active at ``frame`` (index -1: the pending one)."""
        t = self.frame if frame is None else frame
        out = []
        items = list(enumerate(self.draft.trajectories))
        p = self.pending()
        if p is not None:
            items.append((-1, p))
        for i, traj in items:
            if traj.active_frames()[t]:
                x, y = traj.track[t]
                out.append((i, float(x), float(y), bool(traj.vis[t] > 0)))
        return out

    # ------------------------------------------------------------------ keyboard
    def on_key(self, key: str, shift: bool = False, ctrl: bool = False, meta: bool = False) -> bool:
        """Keyboard shortcuts (see :data:`SHORTCUTS`); returns False for keys it does not use."""
        ctrl = ctrl or meta
        k = key.lower() if len(key) == 1 else key
        if ctrl and k == "z":
            action = "redo" if shift else "undo"
        elif ctrl and k == "y":
            action = "redo"
        elif ctrl:
            return False
        else:
            action = _KEYS.get(k)
        if action is None:
            return False
        _ACTIONS[action](self)
        return True


def _editable(t: Trajectory, tol: float = 1e-6) -> Recipe:
    """``(polyline, st, et, erased, motion)`` that redraw ``t`` in the editor: its corner points (the clicked
    polyline for a tool-drawn track; as :func:`wclab.conditions.ops.control_points`), active frames, invisible
    stretches, and the frames it reaches each corner (``Motion()`` when that is the tool's equal-frames rule)."""
    st, et = active_range(t)
    p = t.track[st:et]
    scale = tol * max(1.0, float(np.abs(p).max()))
    bend = np.abs(p[:-2] - 2 * p[1:-1] + p[2:]).max(axis=1) > scale if len(p) > 2 else np.zeros(0, bool)
    idx = np.flatnonzero(np.concatenate([[True], bend, [True]])[: len(p)])
    distinct = np.concatenate([[True], np.abs(np.diff(p[idx], axis=0)).max(axis=1) > scale])
    idx = idx[distinct]
    polyline = tuple((float(x), float(y)) for x, y in p[idx])
    frames_at = tuple(int(st + i) for i in idx)
    try:
        default = tuple(mo.default_frames_at(len(idx), st, et))
    except WclabError:
        default = None
    motion = Motion() if frames_at == default or len(idx) == 1 else Motion(frames_at=frames_at)
    hidden = np.flatnonzero(np.asarray(t.vis[st:et]) <= 0) + st
    runs = np.split(hidden, np.flatnonzero(np.diff(hidden) > 1) + 1) if len(hidden) else []
    return polyline, st, et, tuple((int(r[0]), int(r[-1])) for r in runs), motion


def _square_mask(height: int, width: int, track: np.ndarray, half: int = 4) -> np.ndarray:
    """``bool [H, W]``: a ``2 half + 1`` px square around the first real point of ``track`` ``[T, 2]``."""
    active = np.flatnonzero(~np.all(track == -1, axis=1))
    x, y = (np.asarray(track[active[0]]) if len(active) else np.zeros(2)).astype(int)
    x, y = int(np.clip(x, 0, width - 1)), int(np.clip(y, 0, height - 1))
    m = np.zeros((height, width), bool)
    m[max(y - half, 0):y + half + 1, max(x - half, 0):x + half + 1] = True
    return m


def _fit_motion_to(motion: Motion, polyline: tuple, st: int, et: int) -> tuple[Motion, bool]:
    """``motion`` without per-point frames that no longer fit the points or ``[st, et)``; True if it dropped them."""
    fa = motion.frames_at
    if fa is None or (len(fa) == len(polyline) and fa[0] == st and fa[-1] < et):
        return motion, False
    return replace(motion, frames_at=None), True


def _fit_motion(d: Draft) -> tuple[Draft, str]:
    motion, dropped = _fit_motion_to(d.motion, d.polyline, d.st, d.et)
    if not dropped:
        return d, ""
    return replace(d, motion=motion), ("; timing back to equal frames per segment" if d.polyline else "")


def _motion_track(polyline: Sequence[Point], st: int, et: int, motion: Motion, frames: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(track float64 [T, 2], vis int64 [T])`` of a path drawn with ``motion`` (:mod:`wclab.conditions.motion`)."""
    if motion.path == "spline":
        track, vis = mo.path_track(mo.spline_path(polyline, motion.tension), st, et, frames, by=motion.by)
    elif motion.frames_at is not None:
        track, vis = mo.timed_track(polyline, motion.frames_at, frames, et=et)
    else:
        track, vis = polyline_track(polyline, st, et, frames)
    if motion.speed != "linear":
        track, vis = mo.eased(track, vis, motion.speed)
    return track, vis


def _without(scene: Scene, index: int) -> Scene:
    """``scene`` less trajectory ``index``; the caption (and colour) of an id left with no trajectory goes too."""
    trajs = scene.trajectories[:index] + scene.trajectories[index + 1:]
    ids = {str(t.id) for t in trajs}
    return scene.replace(trajectories=trajs, captions={k: v for k, v in scene.captions.items() if k in ids},
                         color_map={k: v for k, v in scene.color_map.items() if k in ids})


def _thin(points: list, most: int) -> tuple:
    """At most ``most`` of ``points``, evenly spaced along the list, keeping the first and the last."""
    if len(points) <= most:
        return tuple(points)
    if most == 1:
        return (points[-1],)
    idx = np.unique(np.round(np.linspace(0, len(points) - 1, most)).astype(int))
    return tuple(points[i] for i in idx)


def _enter(s: EditorState) -> None:
    if s.draft.driving:
        s.track_video()
    elif s.draft.mode == "mask":
        s.confirm_mask()
    else:
        s.commit()


def _escape(s: EditorState) -> None:
    d = s.draft
    if d.driving:
        s.cancel_video()
    elif d.editing is not None:
        s._apply(f"edit of trajectory {d.editing} cancelled", polyline=(), erased=(), erase_start=None, editing=None)
    elif d.erase_start is not None or d.polyline or d.erased:
        s._apply("drawing cleared", polyline=(), erased=(), erase_start=None)
    elif d.mode == "mask" and d.clicks:
        s.clear_points()


_ACTIONS: dict[str, Callable[[EditorState], None]] = {
    "mask mode": lambda s: s.set_mode("mask"),
    "draw mode": lambda s: s.set_mode("draw"),
    "erase mode": lambda s: s.set_mode("erase"),
    "toggle negative clicks": lambda s: s.set_negative_clicks(not s.negative_clicks),
    "confirm mask / add trajectory / track": _enter,
    "whole-image mask": EditorState.use_whole_image,
    "remove last point": EditorState.backspace,
    "clear drawing / leave the driving video": _escape,
    "delete selected": EditorState.delete,
    "new object": EditorState.new_object,
    "draw the selected object again": EditorState.reuse_selected,
    "edit the selected trajectory": EditorState.edit_selected,
    "undo": EditorState.undo,
    "redo": EditorState.redo,
    "previous frame": lambda s: s.set_frame(s.frame - 1),
    "next frame": lambda s: s.set_frame(s.frame + 1),
}
_KEYS = {"m": "mask mode", "d": "draw mode", "e": "erase mode", "x": "toggle negative clicks",
         "Enter": "confirm mask / add trajectory / track", "w": "whole-image mask", "Backspace": "remove last point",
         "Escape": "clear drawing / leave the driving video", "Delete": "delete selected", "n": "new object",
         "r": "draw the selected object again", "s": "edit the selected trajectory", "z": "undo", "y": "redo",
         "ArrowLeft": "previous frame", "ArrowRight": "next frame"}
SHORTCUTS = {**{k: a for k, a in _KEYS.items()}, "Ctrl+Z": "undo", "Ctrl+Shift+Z / Ctrl+Y": "redo"}
"""Key → action, shown in the widget's help."""
