"""The editor's state under random action sequences (Hypothesis rule-based state machine, no widget).

After every action: a view that re-renders only when the state notifies it shows exactly ``state.summary()``
(so no change goes unannounced); the summary says what the draft holds (trajectory labels from the tracks
themselves, counts, mode, frames, motion); every change is one undo step back to the draft before it; a
refused action leaves the state as it was; and the exported scene round-trips through the drawing tool's JSON
(``parse_scene`` of the text, ``load_json``, and writing it again gives the same text)."""
from __future__ import annotations

import json
import os

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from wclab.conditions import ANCHOR_TEXT, load_json, parse_scene
from wclab.conditions.motion import CAMERA_PRESETS, SPEED_CURVES
from wclab.errors import WclabError
from widgets import EditorError, EditorState, FallbackSegmenter

H, W, T = 48, 64, 9
TOOL_KEYS = {"tracking", "tracking_vis_value", "r", "id", "mask_cluster", "text"}
TEXT_ITEMS = ["color_map", "description_global", "description_motion_raw", "description_motion", "id_caption_map"]
xs, ys = st.integers(-3, W + 3), st.integers(-3, H + 3)


def driving_video(frames: int, height: int, width: int) -> np.ndarray:
    """A textured square moving right by a twentieth of the width per frame."""
    rng = np.random.default_rng(frames)
    v = np.full((frames, height, width, 3), 30, np.uint8)
    side, step = height // 3, max(1, width // 20)
    for t in range(frames):
        v[t, side:2 * side, step * t:step * t + side] = rng.integers(60, 255, (side, side, 3))
    return v


VIDEOS = {"scene size": driving_video(T, H, W), "larger, fewer frames": driving_video(5, 2 * H, 3 * W)}


class Editing(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        img = np.zeros((H, W, 3), np.uint8)
        img[10:30, 20:40] = (200, 50, 50)
        self.s = EditorState(height=H, width=W, frames=T, segmenter=FallbackSegmenter(), image=img)
        self.rendered = None
        self.s.subscribe(self.render)
        self.render()

    def render(self):  # the fake view: it only knows what the notifications tell it
        self.rendered = self.s.summary()

    def act(self, action, gesture: bool = False):
        """Run ``action``; check it is one undo step (a refused one changes nothing)."""
        s = self.s
        before, undo_len, redo_len, msg = s.draft, len(s.undo_stack), len(s.redo_stack), s.message
        undo_top = s.undo_stack[-1] if s.undo_stack else None
        redo_top = s.redo_stack[-1] if s.redo_stack else None
        try:
            action()
        except WclabError:
            assert s.draft is before and len(s.undo_stack) == undo_len and s.message == msg
            return
        if s.draft is undo_top and s.draft is not before:  # an undo: back to the draft before the last step
            assert len(s.undo_stack) == undo_len - 1 and s.redo_stack[-1] is before
            assert s.message == f"undone: {before.action or 'last edit'}"
        elif s.draft is redo_top and s.draft is not before:  # a redo: the step undone last comes back
            assert len(s.redo_stack) == redo_len - 1 and s.undo_stack[-1] is before
            assert s.message == f"redone: {redo_top.action or 'last edit'}"
        elif len(s.undo_stack) == undo_len + 1 or (undo_len == s.history_limit and s.draft is not before):
            assert s.undo_stack[-1] is before and not s.redo_stack  # a new step: undo goes back to `before`
        elif s.draft is not before:
            assert gesture and len(s.undo_stack) == undo_len  # only a drag's moves amend a step already taken

    # ------------------------------------------------------------------ what a user does
    @rule(x=xs, y=ys, negative=st.booleans())
    def click(self, x, y, negative):
        self.act(lambda: self.s.on_click(x, y, negative=negative if self.s.draft.mode == "mask" else None))

    @rule(p=st.tuples(xs, ys), moves=st.lists(st.tuples(xs, ys), max_size=5))
    def drag(self, p, moves):
        def gesture():
            self.s.press(*p)
            for q in moves:
                self.s.drag(*q)
            self.s.release(*(moves[-1] if moves else p))
        self.act(gesture, gesture=True)

    @rule(mode=st.sampled_from(["mask", "draw", "erase"]))
    def mode(self, mode):
        self.act(lambda: self.s.set_mode(mode))

    @rule(a=st.integers(0, T), b=st.integers(0, T))
    def frames(self, a, b):
        self.act(lambda: self.s.set_st_et(a, b))

    @rule(obj_id=st.integers(0, 4), caption=st.sampled_from([None, "", ANCHOR_TEXT, "a cat", "a dog"]))
    def object(self, obj_id, caption):
        self.act(lambda: self.s.set_object(obj_id, caption))

    @rule(index=st.one_of(st.none(), st.integers(0, 12)))
    def select(self, index):
        self.act(lambda: self.s.select(index))

    @rule(name=st.sampled_from(["confirm_mask", "use_whole_image", "commit", "undo", "redo", "delete", "new_object",
                                "backspace", "clear_points", "reuse_selected", "edit_selected"]))
    def button(self, name):
        self.act(getattr(self.s, name))

    @rule(key=st.sampled_from(["Enter", "Escape", "w", "n", "s", "r", "z", "y", "x", "Delete", "Backspace",
                               "ArrowLeft", "ArrowRight"]))
    def key(self, key):
        self.act(lambda: self.s.on_key(key))

    @rule(frame=st.integers(-2, T + 2))
    def frame(self, frame):
        self.act(lambda: self.s.set_frame(frame))

    @rule(caption=st.sampled_from(["a cat", ANCHOR_TEXT]), path=st.lists(st.tuples(xs, ys), min_size=1, max_size=3))
    def whole_object(self, caption, path):  # what a user does in a row, so sequences reach committed objects
        def flow():
            s = self.s
            if s.draft.polyline or s.draft.editing is not None:
                s.on_key("Escape")
            s.use_whole_image()
            for p in path:
                s.on_click(*p)
            s.set_object(max([t.id for t in s.draft.trajectories] + [0]) + 1, caption)
            s.commit()
        try:
            flow()
        except WclabError:
            pass

    # ------------------------------------------------------------------ motion tools
    @rule(shift=st.lists(st.integers(-2, 3), min_size=1, max_size=4))
    def timing(self, shift):
        s = self.s
        reach = s.reach_frames()  # move the points after the first (it is reached at st)
        frames = [reach[0]] + [f + d for f, d in zip(reach[1:], shift + [0] * 4)] if reach else shift
        self.act(lambda: s.set_timing(frames))

    @rule()
    def equal_timing(self):
        self.act(lambda: self.s.set_timing(None))

    @rule(curve=st.sampled_from(list(SPEED_CURVES)))
    def speed(self, curve):
        self.act(lambda: self.s.set_speed(curve))

    @rule(path=st.sampled_from(["polyline", "spline"]), tension=st.sampled_from([0.0, 0.5, 1.0]),
          by=st.sampled_from(["time", "arc_length"]))
    def path(self, path, tension, by):
        self.act(lambda: self.s.set_path(path, tension, by))

    @rule(kind=st.sampled_from(CAMERA_PRESETS))
    def camera(self, kind):
        self.act(lambda: self.s.add_camera(kind, None if kind == "static" else 2.0 if "rotate" in kind else 1.1
                                           if "zoom" in kind else 5.0, grid=(1, 2)))

    @rule(kind=st.sampled_from(["enter", "leave", "pass_behind", "stop", "turn_back"]),
          edge=st.sampled_from(["left", "right", "top", "bottom"]), frames=st.integers(1, 4))
    def event(self, kind, edge, frames):
        self.act(lambda: self.s.apply_event(kind, edge=edge, frames=frames))

    # ------------------------------------------------------------------ driving video
    @rule(which=st.sampled_from(list(VIDEOS)))
    def load_video(self, which):
        self.act(lambda: self.s.load_driving_video(VIDEOS[which], source=which))

    @rule(which=st.sampled_from(list(VIDEOS)), points=st.lists(st.tuples(xs, ys), min_size=1, max_size=3),
          caption=st.sampled_from(["", "a cat", ANCHOR_TEXT]))
    def tracked_points(self, which, points, caption):  # the whole flow in a row, so sequences reach tracked objects
        def flow():
            s = self.s
            if not s.draft.driving:
                s.load_driving_video(VIDEOS[which], source=which)
            for p in points:
                s.on_click(*p)
            s.set_object(s.draft.obj_id, caption)
            s.track_video()
        try:
            flow()
        except WclabError:
            pass

    @rule()
    def track_video(self):
        self.act(self.s.track_video)

    @rule()
    def cancel_video(self):
        self.act(self.s.cancel_video)

    # ------------------------------------------------------------------ what must always hold
    @invariant()
    def the_view_shows_the_state(self):
        assert self.rendered == self.s.summary()

    @invariant()
    def the_summary_says_what_the_draft_holds(self):
        s, d = self.s, self.s.draft
        v = s.summary()
        labels = []
        for i, t in enumerate(d.trajectories):
            active = np.flatnonzero(~np.all(t.track == -1, axis=1))
            what = "(anchor)" if t.text == ANCHOR_TEXT else f"— {t.text[:40]}"
            labels.append(f"{i}: object {t.id} [{active[0]}, {active[-1] + 1}) {what}")
        assert v["trajectories"] == tuple(labels)
        assert f"trajectories: {len(d.trajectories)}" in v["status"] and f"undo: {len(s.undo_stack)}" in v["status"]
        assert ("editing: " in v["status"]) == (d.editing is not None)
        assert (v["mode"], v["st_et"], v["obj_id"], v["caption"], v["selected"], v["frame"]) == \
            (d.mode, (d.st, d.et), d.obj_id, d.caption, d.selected, s.frame)
        assert (v["path"], v["speed"]) == (d.motion.path, d.motion.speed)
        assert v["hint"] and "\n" not in v["hint"]
        assert 0 <= d.st < d.et <= T and 0 <= s.frame < T
        assert d.selected is None or 0 <= d.selected < len(d.trajectories)
        assert d.mode != "draw" or d.mask_confirmed
        assert ("driving video:" in v["status"]) == d.driving == bool(v["video"])
        assert d.driving or not d.video_points
        assert all(0 <= x <= W - 1 and 0 <= y <= H - 1 for x, y in d.video_points)
        if v["reach_frames"]:  # where the trajectory being drawn is at those frames: its clicked points
            track = s.pending(with_erased=False).track if d.mask_confirmed else None
            if track is not None:
                np.testing.assert_allclose(track[list(v["reach_frames"])], np.array(d.polyline), atol=1e-4)

    @invariant()
    def the_scene_round_trips_through_the_tools_json(self):
        s = self.s
        if not s.draft.scene.captions:
            try:
                s.to_scene()
            except EditorError:
                return
            raise AssertionError("a scene without a captioned object was exported")
        scene = s.to_scene()
        text = scene.to_json(indent=4)
        items = json.loads(text)
        assert all(set(i) == TOOL_KEYS for i in items[:-5]) and [list(i)[0] for i in items[-5:]] == TEXT_ITEMS
        assert parse_scene(items) == scene and load_json(text) == scene
        assert load_json(text).to_json(indent=4) == text


Editing.TestCase.settings = settings(max_examples=int(os.environ.get("WCLAB_EXAMPLES", 30)), stateful_step_count=25, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])
test_random_action_sequences = Editing.TestCase
