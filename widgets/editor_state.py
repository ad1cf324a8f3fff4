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
from wclab.conditions.ops import (active_range, add_trajectory, control_points, erase, make_trajectory,
                                  nearest_track_index, new_scene, polyline_track, set_caption, static_anchor)
from wclab.errors import WclabError
from wclab.sizes import DEFAULT_FRAMES, DEFAULT_HEIGHT, DEFAULT_WIDTH, FRAMES_PER_LATENT, TOKEN_CELL
from widgets.images import ImageLike, fit_image
from widgets.segmenter import Point, Segmenter, default_segmenter

MODES = ("mask", "draw", "erase")


class EditorError(WclabError, ValueError):
    """An editor action that cannot be done now (no image, no mask, et <= st, empty caption, ...)."""


def _frozen(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool).copy()
    mask.setflags(write=False)
    return mask


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
    action: str = field(default="", compare=False)
    """What made this snapshot (undo/redo report it)."""

    @property
    def trajectories(self) -> tuple[Trajectory, ...]:
        return self.scene.trajectories

    @property
    def mask_confirmed(self) -> bool:
        return self.mask_rle is not None

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
        self.draft = replace(self.draft, action=message, **changes)
        self.message = message
        self._changed()

    def _amend(self, message: str, **changes: Any) -> None:
        """Change the draft without a new undo step (the moves of one drag are one step)."""
        self.draft = replace(self.draft, action=message, **changes)
        self.message = message
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
        st, et = int(st), int(et)
        if not 0 <= st < et <= self.frames:
            raise EditorError(f"st/et: need 0 <= st < et <= {self.frames} (et is exclusive), got st={st}, et={et}")
        if (st, et) != (self.draft.st, self.draft.et):
            self._check_buildable(self.draft.polyline, st, et)
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
        polyline, st, et, erased = _editable(t)
        self._apply(f"editing trajectory {index} (object {t.id}): drag its points, change frames or caption, "
                    "then Add trajectory saves it", selected=index, editing=index, mode="draw", clicks=(),
                    mask=_frozen(t.mask.decode()), mask_score=None, mask_rle=t.mask, polyline=polyline,
                    st=st, et=et, erased=erased, erase_start=None, obj_id=int(t.id), caption=t.text)

    def edit_selected(self) -> None:
        """Load the selected trajectory for editing (as selecting it in the list does)."""
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
        if mode == "mask":
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
        self._check_buildable(polyline, d.st, d.et)
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
            self._apply(f"frames {i}..{j} of trajectory {d.selected} invisible",
                        scene=d.scene.with_trajectory(d.selected, erase(target, i, j)), erase_start=None)

    # ------------------------------------------------------------------ mask actions
    def confirm_mask(self) -> None:
        d = self.draft
        if d.mask is None:
            raise EditorError("no mask: click on the object (mask mode) before confirming")
        if not d.mask.any():
            raise EditorError("empty mask: add positive points on the object")
        self._apply(f"mask confirmed ({int(d.mask.sum())} px); click the trajectory", mode="draw",
                    mask_rle=RLEMask.from_array(d.mask))

    def use_whole_image(self) -> None:
        """Confirm a mask covering the whole image (for camera/background anchors without SAM)."""
        mask = _frozen(np.ones((self.height, self.width), bool))
        self._apply("whole-image mask confirmed", mode="draw", clicks=(), mask=mask,
                    mask_score=None, mask_rle=RLEMask.full(self.height, self.width))

    def reuse_selected(self) -> None:
        """Draw another trajectory for the selected trajectory's object: take its mask, id and caption."""
        d = self.draft
        if d.selected is None:
            raise EditorError("nothing selected: select a trajectory whose object to draw again")
        t = d.trajectories[d.selected]
        self._apply(f"drawing object {t.id} again (its mask); click the trajectory", mode="draw", clicks=(),
                    mask=_frozen(t.mask.decode()), mask_score=None, mask_rle=t.mask, polyline=(), erased=(),
                    erase_start=None, obj_id=t.id, caption=t.text, editing=None)

    def clear_points(self) -> None:
        """Forget the mask clicks and mask (the confirmed mask too)."""
        self._apply("mask points cleared", mode="mask", clicks=(), mask=None, mask_score=None,
                    mask_rle=None, polyline=(), erased=(), erase_start=None, editing=None)

    def backspace(self) -> None:
        """Remove the last point: of the polyline (draw), the erase start (erase), or the mask clicks (mask)."""
        d = self.draft
        if d.mode == "erase" and d.erase_start is not None:
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
    def _check_buildable(self, polyline: tuple[Point, ...], st: int, et: int) -> None:
        if polyline:
            polyline_track(polyline, st, et, self.frames)  # raises ConditionError when [st, et) is too short

    def pending(self, with_erased: bool = True) -> Optional[Trajectory]:
        """The trajectory being drawn (None until the mask is confirmed and a point is clicked)."""
        d = self.draft
        if not d.polyline or not d.mask_confirmed:
            return None
        text = d.caption or ANCHOR_TEXT
        if len(d.polyline) == 1 and (d.st, d.et) == (0, self.frames):
            traj = static_anchor(d.polyline[0], obj_id=d.obj_id, mask=d.mask_rle, frames=self.frames, text=text)
        else:
            traj = make_trajectory(list(d.polyline), d.st, d.et, obj_id=d.obj_id, mask=d.mask_rle,
                                   frames=self.frames, text=text)
        if with_erased:
            for f0, f1 in d.erased:
                traj = erase(traj, f0, f1)
        return traj

    def commit(self) -> Trajectory:
        """Add the trajectory being drawn under the current object id and caption."""
        d = self.draft
        if not d.mask_confirmed:
            raise EditorError("no mask: pick the object in mask mode and confirm it first")
        if not d.polyline:
            raise EditorError("no trajectory: click its points on the image (draw mode) first")
        if not d.caption:
            raise EditorError("empty caption: describe the object, or write None for a camera/background anchor")
        traj = self.pending()
        scene, note = d.scene, ""
        if d.editing is not None:
            old_t = scene.trajectories[d.editing]
            if old_t.id == traj.id and old_t.is_anchor == traj.is_anchor:  # same object: save it in place
                if _editable(old_t) == (d.polyline, d.st, d.et, d.erased) and old_t.mask == d.mask_rle:
                    traj = old_t.replace(text=traj.text)  # path untouched: keep the track exactly (loaded JSON)
                if not traj.is_anchor and scene.captions.get(str(traj.id)) != traj.text:
                    scene, note = set_caption(scene, traj.id, traj.text), f"; caption of object {traj.id} changed"
                self._apply(f"saved trajectory {d.editing} (object {traj.id}){note}",
                            scene=scene.with_trajectory(d.editing, traj), polyline=(), erased=(), erase_start=None,
                            mode="draw", selected=d.editing, editing=None)
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
                    erase_start=None, mode="draw", selected=index, editing=None)
        return traj

    def new_object(self) -> None:
        """Start the next object: clear the mask and drawing, pick a fresh id."""
        d = self.draft
        next_id = max([t.id for t in d.trajectories] + [d.obj_id]) + 1
        self._apply(f"new object {next_id}: click on it", mode="mask", clicks=(), mask=None,
                    mask_score=None, mask_rle=None, polyline=(), erased=(), erase_start=None, obj_id=next_id,
                    caption="", st=0, et=self.frames, selected=None, editing=None)

    def delete(self, index: Optional[int] = None) -> None:
        """Delete a committed trajectory (the selected one by default); captions of ids left with none go too."""
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

    # ------------------------------------------------------------------ scripting
    def add_object(self, mask_points: Sequence[Point], path: Sequence[Point], caption: str, *,
                   obj_id: Optional[int] = None, st: int = 0, et: Optional[int] = None,
                   negative_points: Sequence[Point] = ()) -> Trajectory:
        """Script one object through the same actions (and undo steps) as the clicks: new object, mask clicks,
        confirm, path clicks, frames, caption, commit. ``obj_id`` defaults to a fresh id, so a script never
        overwrites an object drawn by hand; ``path`` of one point over all frames is a static anchor/object.

        Refuses while a trajectory is being drawn or edited (it would be thrown away)."""
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
                           f" · undo: {len(self.undo_stack)}"),
                "message": self.message, "hint": self.hint(), "notes": tuple(self.notes())}

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


def _editable(t: Trajectory) -> tuple[tuple[Point, ...], int, int, tuple[tuple[int, int], ...]]:
    """``(polyline, st, et, erased)`` that redraw ``t`` in the editor: its corner points (the clicked polyline
    for a tool-drawn track), active frames and invisible stretches."""
    st, et = active_range(t)
    polyline = tuple((float(x), float(y)) for x, y in control_points(t))
    hidden = np.flatnonzero(np.asarray(t.vis[st:et]) <= 0) + st
    runs = np.split(hidden, np.flatnonzero(np.diff(hidden) > 1) + 1) if len(hidden) else []
    return polyline, st, et, tuple((int(r[0]), int(r[-1])) for r in runs)


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
    if s.draft.mode == "mask":
        s.confirm_mask()
    else:
        s.commit()


def _escape(s: EditorState) -> None:
    d = s.draft
    if d.editing is not None:
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
    "confirm mask / add trajectory": _enter,
    "whole-image mask": EditorState.use_whole_image,
    "remove last point": EditorState.backspace,
    "clear drawing": _escape,
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
         "Enter": "confirm mask / add trajectory", "w": "whole-image mask", "Backspace": "remove last point",
         "Escape": "clear drawing", "Delete": "delete selected", "n": "new object",
         "r": "draw the selected object again", "s": "edit the selected trajectory", "z": "undo", "y": "redo",
         "ArrowLeft": "previous frame", "ArrowRight": "next frame"}
SHORTCUTS = {**{k: a for k, a in _KEYS.items()}, "Ctrl+Z": "undo", "Ctrl+Shift+Z / Ctrl+Y": "redo"}
"""Key → action, shown in the widget's help."""
