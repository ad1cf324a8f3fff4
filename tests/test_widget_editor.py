"""Trajectory editor: the state's handlers and the widget, driven by synthetic mouse/keyboard events (no browser).

Expected trajectories are worked out by hand from the drawing tool's rules (equal frame counts per segment,
linspace within a segment, [-1, -1] outside [st, et)); the polylines used have exactly representable points,
so comparisons are exact unless a tolerance is stated.
"""
from __future__ import annotations

import importlib
import json
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import EXAMPLES
from wclab.conditions import load_json
from wclab.errors import CheckpointError, ConditionError
from widgets import EditorError, EditorState, FallbackSegmenter, SamSegmenter, TrajectoryEditor, fit_image
from widgets.segmenter import SegmenterError, default_segmenter, sam_type_of

H, W, T = 128, 224, 17
BOX = (slice(32, 80), slice(48, 112))  # rows, cols of the red object: 48 x 64 px
BOX_AREA = 48 * 64


def scene_image(h: int = H, w: int = W) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[...] = (40, 90, 40)
    img[32:80, 48:112] = (220, 60, 60)
    return img


@pytest.fixture
def state() -> EditorState:
    return EditorState(height=H, width=W, frames=T, segmenter=FallbackSegmenter(), image=scene_image())


@pytest.fixture
def editor() -> TrajectoryEditor:
    return TrajectoryEditor(scene_image(), height=H, width=W, frames=T, segmenter=FallbackSegmenter())


def mouse(editor: TrajectoryEditor, x: float, y: float, *, drag_to: tuple = ()) -> None:
    """What the browser sends when the canvas is clicked (through the widget's comm message handler): button
    down, moves to each point of ``drag_to`` with the button held, button up."""
    editor.canvas._handle_custom_msg({"event": "mouse_down", "x": x, "y": y}, [])
    for mx, my in drag_to:
        editor.canvas._handle_custom_msg({"event": "mouse_move", "x": mx, "y": my}, [])
        x, y = mx, my
    editor.canvas._handle_custom_msg({"event": "mouse_up", "x": x, "y": y}, [])


def key(editor: TrajectoryEditor, k: str, shift=False, ctrl=False) -> None:
    editor.canvas._handle_custom_msg({"event": "key_down", "key": k, "shift_key": shift, "ctrl_key": ctrl,
                                      "meta_key": False}, [])


def pick_box(s: EditorState) -> None:
    s.on_click(80, 56)
    s.confirm_mask()


# ---------------------------------------------------------------------------------------------- images
@pytest.mark.parametrize("src_hw", [(170, 300), (411, 97), (30, 50), (128, 224)])
def test_fit_image_matches_the_pipelines_cover_resize_and_centre_crop(src_hw):
    from wclab.image import crop_and_resize  # the pipeline's own preprocessing, to check drawn pixels line up

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (*src_hw, 3), dtype=np.uint8)
    expected = np.asarray(crop_and_resize(Image.fromarray(img), H, W))
    np.testing.assert_array_equal(fit_image(img, H, W), expected)


def test_loaded_image_is_fitted_to_the_scene_size(state):
    state.load_image(np.zeros((50, 400, 3), np.uint8))
    assert state.image.shape == (H, W, 3)


# ---------------------------------------------------------------------------------------------- segmenters
def test_fallback_segmenter_picks_the_clicked_flat_object():
    seg = FallbackSegmenter()
    img = scene_image()
    img[90:120, 150:200] = (220, 60, 60)  # a second object of the same colour elsewhere
    seg.set_image(img)
    mask, score = seg.predict([(80, 56)])
    expected = np.zeros((H, W), bool)
    expected[BOX] = True
    assert (mask & expected).sum() / (mask | expected).sum() > 0.97  # GrabCut may round the box's corners
    assert not mask[90:120, 150:200].any()
    assert 0 < score <= 1
    assert seg.label == "fallback (no SAM checkpoint)"


def test_fallback_negative_click_removes_that_region():
    seg = FallbackSegmenter()
    seg.set_image(scene_image())
    mask, _ = seg.predict([(80, 56)], [(100, 70)])
    assert not mask[70, 100]


def test_segmenters_need_a_positive_click_and_an_image():
    seg = FallbackSegmenter()
    with pytest.raises(SegmenterError, match="no image"):
        seg.predict([(1, 1)])
    seg.set_image(scene_image())
    with pytest.raises(SegmenterError, match="no positive click"):
        seg.predict([], [(3, 3)])


def test_default_segmenter_without_checkpoint_is_the_labelled_fallback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no checkpoints/sam_vit_h_4b8939.pth here
    assert default_segmenter().label == "fallback (no SAM checkpoint)"
    with pytest.raises(CheckpointError, match="not found"):
        default_segmenter(tmp_path / "sam_vit_b_missing.pth")


def _tiny_sam():
    """A SAM with a one-layer 32-wide image encoder (segment-anything's own builder), so tests run in a second."""
    from widgets.segmenter import _import_segment_anything

    _import_segment_anything()
    build = importlib.import_module("segment_anything.build_sam")
    import torch

    torch.manual_seed(0)
    return build._build_sam(encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=1,
                            encoder_global_attn_indexes=[0], checkpoint=None).eval()


def test_sam_segmenter_computes_the_image_embedding_once_per_image():
    pytest.importorskip("segment_anything")
    seg = SamSegmenter(_tiny_sam(), name="tiny SAM")
    img = scene_image()
    seg.set_image(img)
    m1, s1 = seg.predict([(80, 56)])
    seg.set_image(img.copy())  # same pixels: no new embedding
    m2, s2 = seg.predict([(80, 56)], [(10, 10)])
    assert seg.embeddings_computed == 1
    assert m1.shape == m2.shape == (H, W) and m1.dtype == bool and isinstance(s1, float)
    seg.set_image(scene_image()[::-1].copy())
    assert seg.embeddings_computed == 2


def test_sam_segmenter_drives_the_editor():
    pytest.importorskip("segment_anything")
    state = EditorState(height=H, width=W, frames=T, segmenter=SamSegmenter(_tiny_sam()), image=scene_image())
    state.on_click(80, 56)
    state.on_click(5, 5, negative=True)
    assert state.draft.mask.shape == (H, W) and state.segmenter.embeddings_computed == 1
    if state.draft.mask.any():  # random weights: the mask may be empty, which confirm_mask refuses
        state.confirm_mask()
        assert state.draft.mask_confirmed
    else:
        with pytest.raises(EditorError, match="empty mask"):
            state.confirm_mask()


def test_sam_from_checkpoint_builds_vit_b_without_torchvision():
    pytest.importorskip("segment_anything")
    seg = SamSegmenter.from_checkpoint(None, "vit_b", device="cpu")  # random weights: no download here
    assert seg.label == "SAM vit_b (random weights) (cpu)"
    tv = sys.modules.get("torchvision")
    assert tv is None or getattr(tv, "__file__", None)  # the import shim is not left behind


def test_sam_checkpoint_errors_name_the_file(tmp_path):
    pytest.importorskip("segment_anything")
    import torch

    with pytest.raises(CheckpointError, match="not found"):
        SamSegmenter.from_checkpoint(tmp_path / "sam_vit_b_01ec64.pth")
    bad = tmp_path / "sam_vit_b_bad.pth"
    torch.save({"not_sam.weight": torch.zeros(2)}, bad)
    with pytest.raises(CheckpointError, match=r"sam_vit_b_bad\.pth: not a SAM vit_b checkpoint"):
        SamSegmenter.from_checkpoint(bad)
    assert sam_type_of("checkpoints/sam_vit_h_4b8939.pth") == "vit_h"
    with pytest.raises(CheckpointError, match="model type"):
        sam_type_of("weights.pth")


# ---------------------------------------------------------------------------------------------- drawing
def test_click_confirm_draw_commit_gives_the_tools_trajectory(state):
    state.on_click(80, 56)                       # positive click on the object → mask preview
    assert state.draft.mask[BOX].all() and state.draft.mask.sum() >= BOX_AREA * 0.97
    state.confirm_mask()
    assert state.draft.mode == "draw"
    state.on_click(16, 100)
    state.on_click(80, 100)                      # one segment over [0, 17): x = 16 + 4k
    state.set_object(3, "  a red   box slides right ")
    traj = state.commit()
    scene = state.to_scene()
    assert scene.trajectories == (traj,)
    assert traj.points == tuple((16.0 + 4 * k, 100.0) for k in range(T))
    assert traj.visibility == (1,) * T
    assert traj.id == 3 and traj.text == "a red box slides right"
    assert traj.r == 5  # max(area * 320 // 399360, 5) with area ~3072 px
    assert traj.mask.decode().sum() == state.draft.mask.sum()
    assert scene.captions == {"3": "a red box slides right"} and scene.color_map == {"3": "red"}
    assert scene.size == (H, W, T)


def test_st_et_limits_the_trajectory_and_frames_outside_are_off(state):
    pick_box(state)
    # 9 frames over two segments: counts ceil(9/2) = 5 and 4; the second drops its first sample (the joint),
    # so 5 + 3 samples, padded with the last one.
    state.set_st_et(4, 13)
    for p in [(0, 8), (40, 8), (40, 38)]:
        state.on_click(*p)
    state.set_object(1, "box")
    traj = state.commit()
    expected = [(-1, -1)] * 4 + [(0, 8), (10, 8), (20, 8), (30, 8), (40, 8), (40, 18), (40, 28), (40, 38),
                                 (40, 38)] + [(-1, -1)] * 4
    np.testing.assert_allclose(traj.track, expected, rtol=0, atol=1e-12)  # thirds are inexact in binary
    assert traj.visibility == (0,) * 4 + (1,) * 9 + (0,) * 4


def test_erase_marks_frames_between_nearest_indices_invisible(state):
    pick_box(state)
    state.on_click(16, 100)
    state.on_click(80, 100)                       # x = 16 + 4k
    state.set_mode("erase")
    state.on_click(41, 90)                        # nearest frame 6 (x=40; 44 is farther)
    state.on_click(63, 110)                       # nearest frame 12 (x=64)
    state.set_object(1, "box")
    traj = state.commit()
    assert traj.visibility == (1,) * 6 + (0,) * 7 + (1,) * 4
    assert traj.points[6:13] == tuple((16.0 + 4 * k, 100.0) for k in range(6, 13))  # points are kept


def test_erase_applies_to_the_selected_committed_trajectory_when_nothing_is_drawn(state):
    pick_box(state)
    state.on_click(16, 100)
    state.on_click(80, 100)
    state.set_object(1, "box")
    state.commit()
    state.set_mode("erase")
    state.on_click(16, 100)
    state.on_click(24, 100)
    assert state.to_scene().trajectories[0].visibility == (0, 0, 0) + (1,) * 14


def test_single_click_over_all_frames_is_a_static_anchor_and_stays_out_of_the_captions(state):
    state.use_whole_image()
    state.on_click(200, 20)
    state.set_object(9, "None")
    traj = state.commit()
    assert traj.points == ((200.0, 20.0),) * T and traj.visibility == (1,) * T
    assert traj.is_anchor and traj.r == max(H * W * 320 // 399360, 5)
    assert state.draft.scene.captions == {}
    with pytest.raises(EditorError, match="no captioned object"):  # the reference refuses anchors-only files
        state.to_scene()
    state.new_object()
    pick_box(state)
    state.on_click(30, 40)
    state.set_object(1, "box")
    state.commit()
    assert state.to_scene().captions == {"1": "box"}


def test_an_anchor_and_a_captioned_object_cannot_share_an_id(state):
    state.use_whole_image()
    state.on_click(5, 5)
    state.set_object(4, "None")
    state.commit()
    state.on_click(9, 9)
    state.set_object(4, "a dog")
    with pytest.raises(EditorError, match="anchor's; give this object an id of its own"):
        state.commit()
    state.set_object(5, "a dog")
    state.commit()
    state.on_click(9, 9)
    state.set_object(5, "None")
    with pytest.raises(EditorError, match="has a caption; give this camera/background anchor an id of its own"):
        state.commit()


def test_several_trajectories_per_object_share_one_caption_entry(state):
    pick_box(state)
    state.set_object(2, "box")
    for line in [((0, 0), (50, 50)), ((60, 60), (100, 60))]:
        for p in line:
            state.on_click(*p)
        state.commit()
    scene = state.to_scene()
    assert [t.id for t in scene.trajectories] == [2, 2]
    assert scene.captions == {"2": "box"}


def test_committing_with_a_new_caption_renames_the_object(state):
    pick_box(state)
    state.set_object(2, "box")
    state.on_click(0, 0)
    state.commit()
    state.set_object(2, "a bigger box")
    state.on_click(5, 5)
    state.commit()
    scene = state.to_scene()
    assert scene.captions == {"2": "a bigger box"}
    assert [t.text for t in scene.trajectories] == ["a bigger box"] * 2


def test_switching_to_a_captioned_id_fills_in_its_caption(state):
    pick_box(state)
    state.set_object(2, "box")
    state.on_click(0, 0)
    state.commit()
    state.new_object()
    assert state.draft.obj_id == 3 and state.draft.caption == ""
    state.set_object(2)
    assert state.draft.caption == "box"


def test_delete_drops_the_caption_of_an_object_left_without_trajectories(state):
    pick_box(state)
    state.set_object(1, "box")
    state.on_click(0, 0)
    state.commit()
    state.new_object()
    state.use_whole_image()
    state.set_object(2, "background")
    state.on_click(9, 9)
    state.commit()
    state.delete(0)
    scene = state.to_scene()
    assert [t.id for t in scene.trajectories] == [2]
    assert scene.captions == {"2": "background"} and scene.color_map == {"2": "red"}


def test_undo_and_redo_walk_the_history(state):
    pick_box(state)
    state.on_click(0, 0)
    state.on_click(40, 40)
    state.set_object(1, "box")
    state.commit()
    committed = state.to_scene()
    state.undo()                                  # back before the commit: polyline still there
    assert state.draft.trajectories == () and len(state.draft.polyline) == 2
    state.undo()
    state.undo()                                  # caption, then the second point
    assert state.draft.polyline == ((0.0, 0.0),)
    state.redo()
    state.redo()
    state.redo()
    assert state.to_scene() == committed
    with pytest.raises(EditorError, match="nothing to redo"):
        state.redo()


def test_frame_slider_positions_follow_the_tracks(state):
    pick_box(state)
    state.on_click(16, 100)
    state.on_click(80, 100)
    assert state.positions_at(5) == [(-1, 36.0, 100.0, True)]  # the trajectory being drawn
    state.set_object(1, "box")
    state.commit()
    state.set_st_et(8, 17)
    state.on_click(0, 0)
    state.set_frame(3)
    assert state.positions_at() == [(0, 28.0, 100.0, True)]  # the new one starts at frame 8
    state.set_frame(99)
    assert state.frame == T - 1


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("action, message", [
    (lambda s: EditorState(height=H, width=W, frames=T, segmenter=FallbackSegmenter()).on_click(5, 5), "no image"),
    (lambda s: s.confirm_mask(), "no mask"),
    (lambda s: s.set_mode("draw"), "no mask"),
    (lambda s: s.commit(), "no mask"),
    (lambda s: s.set_st_et(5, 5), "st < et"),
    (lambda s: s.to_scene(), "nothing to export"),
    (lambda s: s.undo(), "nothing to undo"),
    (lambda s: s.delete(), "nothing to delete"),
])
def test_bad_actions_raise_a_clear_error_and_change_nothing(state, action, message):
    before = state.draft
    with pytest.raises(EditorError, match=message):
        action(state)
    assert state.draft is before


def test_empty_caption_is_refused_for_a_non_anchor(state):
    pick_box(state)
    state.on_click(3, 3)
    with pytest.raises(EditorError, match="empty caption"):
        state.commit()


def test_a_polyline_needing_more_frames_than_st_et_gives_is_refused(state):
    pick_box(state)
    state.set_st_et(0, 2)
    for p in [(0, 0), (10, 0), (20, 0), (30, 0)]:  # 3 segments over 2 frames: the tool still copes
        state.on_click(*p)
    with pytest.raises(ConditionError, match="segments"):
        state.on_click(40, 0)  # 4 segments over 2 frames: the tool would crash
    assert len(state.draft.polyline) == 4


def test_errors_show_in_the_widget_instead_of_raising(editor):
    editor.buttons["Add trajectory"].click()
    assert "no mask" in editor.feedback.message
    mouse(editor, 80, 56)
    assert editor.feedback.message == ""
    editor.st_et.value = (6, 6)
    assert "st < et" in editor.feedback.message
    assert editor.st_et.value == (0, T)            # the slider snaps back to the state
    editor.buttons["Confirm mask"].click()
    mouse(editor, 3, 3)
    editor.buttons["Add trajectory"].click()
    assert "empty caption" in editor.feedback.message
    assert editor.state.draft.trajectories == ()


def test_unexpected_exceptions_show_their_traceback_in_the_widget():
    class Broken(FallbackSegmenter):
        def predict(self, positive, negative=()):
            raise RuntimeError("segmenter exploded")

    editor = TrajectoryEditor(scene_image(), height=H, width=W, frames=T, segmenter=Broken())
    mouse(editor, 10, 10)
    assert "internal error: RuntimeError: segmenter exploded" in editor.feedback.message
    assert "Traceback" in editor.feedback.details.outputs[0]["text"]


# ---------------------------------------------------------------------------------------------- widget
def test_widget_mouse_and_keyboard_events_build_the_scene(editor, tmp_path):
    mouse(editor, 80, 56)
    key(editor, "Enter")                            # confirm mask
    mouse(editor, 16, 100)
    mouse(editor, 80, 100)
    key(editor, "Backspace")                        # drop the last point ...
    mouse(editor, 80, 100)                          # ... and click it again
    editor.caption.value = "a red box slides right"
    key(editor, "Enter")                            # add trajectory
    assert editor.feedback.message == ""
    traj, = editor.scene().trajectories
    assert traj.points[-1] == (80.0, 100.0) and traj.text == "a red box slides right"
    assert editor.trajectories.options[-1] == ("0: object 1 [0, 17) — a red box slides right", 0)
    key(editor, "z", ctrl=True)
    assert editor.state.draft.trajectories == ()
    key(editor, "z", ctrl=True, shift=True)
    assert len(editor.state.draft.trajectories) == 1
    key(editor, "ArrowRight")
    assert editor.frame.value == 1
    editor.save_path.value = str(tmp_path / "drawn.json")
    editor.buttons["Save JSON"].click()
    assert load_json(tmp_path / "drawn.json") == editor.scene()


def test_negative_clicks_and_mode_buttons_reach_the_state(editor):
    mouse(editor, 80, 56)
    editor.polarity.value = "negative"
    mouse(editor, 100, 70)
    assert editor.state.draft.clicks == ((80.0, 56.0, False), (100.0, 70.0, True))
    assert not editor.state.draft.mask[70, 100]
    editor.mode.value = "draw"
    assert "no mask" in editor.feedback.message and editor.mode.value == "mask"


def test_clicks_outside_the_image_are_clipped_to_it(state):
    pick_box(state)
    state.on_click(-20, 500)
    assert state.draft.polyline == ((0.0, H - 1.0),)


# ---------------------------------------------------------------------------------------------- files
@pytest.mark.parametrize("name", ["door.json", "mouse_dog.json"])
def test_loading_an_existing_json_exports_it_unchanged_and_continues_ids(name):
    path = EXAMPLES / name
    editor = TrajectoryEditor(scene=path, segmenter=FallbackSegmenter())
    original = json.loads(path.read_text())
    assert json.loads(editor.scene().to_json()) == original
    assert editor.state.draft.obj_id == max(t["id"] for t in original if "tracking" in t) + 1
    s = editor.state
    s.use_whole_image()
    s.on_click(400, 200)
    s.set_object(s.draft.obj_id, "a new thing")
    s.commit()
    assert list(s.to_scene().captions)[-1] == str(s.draft.obj_id)


def test_a_loaded_objects_mask_id_and_caption_can_be_reused_for_another_trajectory():
    editor = TrajectoryEditor(scene=EXAMPLES / "door.json", segmenter=FallbackSegmenter())
    s = editor.state
    editor.trajectories.value = 3                  # the man (id 4)
    key(editor, "r")
    assert editor.feedback.message == "" and s.draft.mode == "draw" and s.draft.obj_id == 4
    s.on_click(500, 300)
    s.on_click(600, 300)
    key(editor, "Enter")
    scene = editor.scene()
    new, man = scene.trajectories[-1], scene.trajectories[3]
    assert (new.id, new.text, new.mask, new.r) == (man.id, man.text, man.mask, man.r)
    assert scene.captions == load_json(EXAMPLES / "door.json").captions


def test_saved_json_is_the_original_tools_format(state, tmp_path):
    pick_box(state)
    state.on_click(0, 0)
    state.on_click(40, 40)
    state.set_object(1, "box")
    state.commit()
    text = state.save_json(tmp_path / "c.json")
    items = json.loads(text)
    assert set(items[0]) == {"tracking", "tracking_vis_value", "r", "id", "mask_cluster", "text"}
    assert [list(i)[0] for i in items[1:]] == ["color_map", "description_global", "description_motion_raw",
                                               "description_motion", "id_caption_map"]
    assert load_json(tmp_path / "c.json") == state.to_scene()


# ---------------------------------------------------------------------------------------------- properties
SMALL_H, SMALL_W, SMALL_T = 48, 64, 9

xs, ys = st.integers(-5, SMALL_W + 5), st.integers(-5, SMALL_H + 5)
points = st.tuples(xs, ys)
steps = st.one_of(  # single events
    st.tuples(st.just("click"), xs, ys, st.booleans()),
    st.tuples(st.just("mode"), st.sampled_from(["mask", "draw", "erase"])),
    st.tuples(st.just("st_et"), st.integers(0, SMALL_T), st.integers(0, SMALL_T)),
    st.tuples(st.just("object"), st.integers(0, 4), st.sampled_from(["", "None", "a cat", "a dog"])),
    st.sampled_from([("confirm",), ("whole",), ("commit",), ("undo",), ("redo",), ("delete",), ("new",),
                     ("backspace",), ("clear",), ("reuse",)]),
    st.tuples(st.just("select"), st.integers(-1, 4)),
    st.tuples(st.just("drag"), points, st.lists(points, min_size=1, max_size=6)),
    st.tuples(st.just("frame"), st.integers(-2, SMALL_T + 2)),
    st.tuples(st.just("direct"), st.sampled_from(["undo", "redo", "new", "select 0", "select none", "frame",
                                                  "negative", "confirm", "commit", "script"])),
)
# what a user does in a row, so that sequences reach committed and erased trajectories
pick = st.tuples(st.just("pick"), st.integers(20, 39), st.integers(10, 29), st.booleans())
draw = st.tuples(st.just("draw"), st.lists(points, min_size=1, max_size=5))
erase = st.tuples(st.just("erase"), points, points)
add = st.tuples(st.just("add"), st.integers(0, 4), st.sampled_from(["a cat", "a dog", "None"]))
flow = st.tuples(st.just("flow"), pick, draw, st.one_of(erase, st.none()), add)
actions = st.one_of(steps, pick, draw, erase, add, flow, flow, flow)


def _do(editor: TrajectoryEditor, a: tuple) -> None:
    s = editor.state
    kind = a[0]
    if kind == "click":
        editor.polarity.value = "negative" if a[3] else "positive"
        mouse(editor, a[1], a[2])
    elif kind == "mode":
        editor.mode.value = a[1]
    elif kind == "st_et":
        editor.st_et.value = (min(a[1], a[2]), max(a[1], a[2]))
    elif kind == "object":
        editor._act(lambda: s.set_object(a[1], a[2]))
    elif kind == "select":
        editor._act(lambda: s.select(a[1] if a[1] >= 0 else None))
    elif kind == "pick":
        editor.mode.value = "mask"
        if a[3]:
            editor.buttons["Whole-image mask"].click()
        else:
            editor.polarity.value = "positive"
            mouse(editor, a[1], a[2])
            editor.buttons["Confirm mask"].click()
    elif kind == "draw":
        editor.mode.value = "draw"
        for p in a[1]:
            mouse(editor, *p)
    elif kind == "erase":
        editor.mode.value = "erase"
        mouse(editor, *a[1])
        mouse(editor, *a[2])
    elif kind == "drag":
        mouse(editor, *a[1], drag_to=a[2])
    elif kind == "frame":
        editor.frame.value = max(0, min(SMALL_T - 1, a[1]))
    elif kind == "direct":  # a script changes the state behind the widget's back
        direct = {"undo": s.undo, "redo": s.redo, "new": s.new_object, "select 0": lambda: s.select(0),
                  "select none": lambda: s.select(None), "frame": lambda: s.set_frame(s.frame + 1),
                  "negative": lambda: s.set_negative_clicks(not s.negative_clicks), "confirm": s.confirm_mask,
                  "commit": s.commit, "script": lambda: s.add_object([(30, 20)], [(5, 5), (40, 30)], "a box")}
        try:
            direct[a[1]]()
        except (EditorError, ConditionError):
            pass
    elif kind == "flow":
        for m in a[1:]:
            if m is not None:
                _do(editor, m)
    elif kind == "add":
        editor._act(lambda: s.set_object(a[1], a[2]))
        editor.buttons["Add trajectory"].click()
    else:
        method = {"confirm": s.confirm_mask, "whole": s.use_whole_image, "commit": s.commit, "undo": s.undo,
                  "redo": s.redo, "delete": s.delete, "new": s.new_object, "backspace": s.backspace,
                  "clear": s.clear_points, "reuse": s.reuse_selected}[kind]
        editor._act(method)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(actions, min_size=3, max_size=30))
def test_random_edit_sequences_keep_the_state_valid_and_exportable(sequence):
    img = np.zeros((SMALL_H, SMALL_W, 3), np.uint8)
    img[10:30, 20:40] = (200, 50, 50)
    editor = TrajectoryEditor(img, height=SMALL_H, width=SMALL_W, frames=SMALL_T, segmenter=FallbackSegmenter())
    for a in sequence:
        _do(editor, a)
        assert editor.feedback.details.outputs == (), editor.feedback.details.outputs  # only expected errors
        assert editor.view_summary() == editor.state.summary()  # the view shows the state, whoever changed it
        d = editor.state.draft
        assert 0 <= d.st < d.et <= SMALL_T and d.mode in ("mask", "draw", "erase")
        assert d.selected is None or 0 <= d.selected < len(d.trajectories)
        assert d.mode != "draw" or d.mask_confirmed
        for f0, f1 in d.erased:
            assert 0 <= f0 <= f1 < SMALL_T
        if d.scene.captions:
            scene = editor.scene()
            assert set(scene.captions) <= {str(t.id) for t in scene.trajectories}
            assert load_json(scene.to_json()) == scene  # exportable: the loader's checks all pass
        else:
            with pytest.raises(EditorError):
                editor.scene()


# ---------------------------------------------------------------------------------------------- issue 17
def draw_box_path(s: EditorState, caption: str = "box") -> None:
    pick_box(s)
    s.on_click(16, 100)
    s.on_click(80, 100)
    s.set_object(1, caption)
    s.commit()


def test_a_scripted_change_is_shown_at_once_without_redraw(editor):
    s = editor.state
    draw_box_path(s, "a red box")                 # straight on the state, as a notebook cell does
    assert editor.view_summary() == s.summary()
    assert "trajectories: 1" in editor.view_summary()["status"]
    assert editor.trajectories.value == 0 and editor.caption.value == "a red box"


def test_a_rebound_state_is_followed_and_the_old_one_is_not(editor):
    old = editor.state
    other = EditorState(height=H, width=W, frames=T, segmenter=FallbackSegmenter(), image=scene_image())
    draw_box_path(other)
    editor.load_scene(other.to_scene())                  # continue another scene: a new state behind the view
    assert editor.state is not old and editor._on_state_change not in old.listeners
    assert editor.view_summary()["trajectories"] == ("0: object 1 [0, 17) — box",)
    editor.state.set_frame(3)
    assert editor.frame.value == 3 and editor.view_summary() == editor.state.summary()


def test_every_state_has_a_next_step_hint(state):
    assert "Click on object 1" in state.hint()
    state.on_click(80, 56)
    assert "Enter confirms the mask" in state.hint()
    state.confirm_mask()
    assert "Click the path of object 1" in state.hint()
    state.on_click(16, 100)
    assert "Write a caption" in state.hint()
    state.set_object(1, "box")
    assert state.hint().startswith("Add trajectory")
    state.commit()
    assert "another path for object 1" in state.hint()
    assert "Load a start image" in EditorState(height=H, width=W, frames=T, segmenter=FallbackSegmenter()).hint()


def test_undo_and_redo_say_what_they_took_back(state):
    draw_box_path(state)
    state.undo()
    assert state.message == "undone: added trajectory 0 (object 1)"
    state.redo()
    assert state.message == "redone: added trajectory 0 (object 1)"


def test_the_fallback_score_is_described_as_an_area_share_not_a_quality(state):
    state.on_click(80, 56)
    assert "mask score" not in state.message and "not a quality score" in state.message
    assert state.summary()["status"].count("not a quality score") == 1


def test_a_trajectory_starting_after_frame_0_warns_that_the_prompt_says_appears(state):
    pick_box(state)
    state.on_click(16, 100)
    state.on_click(80, 100)
    state.set_object(1, "box")
    assert state.notes() == []
    state.set_st_et(4, T)
    assert state.notes() == ['object 1 starts at frame 4 > 0: frames before it are off-image, so the prompt will '
                             'read "Object 1 appears: …"']
    state.commit()
    from wclab.conditions.prompt import build_prompt
    assert "Object 1 appears:" in build_prompt(state.to_scene()).text


def test_the_frame_sliders_are_labelled_first_and_end_exclusive(editor):
    texts = [c.value for c in editor.children if isinstance(c, type(editor.status))]
    assert any("first frame / end frame (exclusive)" in t for t in texts)


def test_selecting_a_trajectory_loads_it_for_editing_and_commit_saves_it_in_place(state):
    draw_box_path(state, "a red box")
    pick_box_again = state.new_object
    pick_box_again()
    state.use_whole_image()
    state.on_click(100, 20)
    state.set_object(2, "None")
    state.commit()
    state.select(0)
    d = state.draft
    assert (d.editing, d.obj_id, d.caption, d.st, d.et, d.mode) == (0, 1, "a red box", 0, T, "draw")
    assert d.polyline == ((16.0, 100.0), (80.0, 100.0)) and d.mask_confirmed
    state.set_st_et(2, 12)
    state.set_object(1, "a red box slides")
    state.commit()
    traj = state.draft.trajectories[0]
    assert len(state.draft.trajectories) == 2 and traj.active_frames().tolist() == [False] * 2 + [True] * 10 + [False] * 5
    assert state.draft.scene.captions == {"1": "a red box slides"} and state.draft.editing is None


def test_selecting_and_saving_unchanged_gives_the_same_scene(state):
    draw_box_path(state)
    before = state.to_scene()
    state.select(0)
    state.commit()
    assert state.to_scene() == before


def test_escape_cancels_an_edit(state):
    draw_box_path(state)
    before = state.to_scene()
    state.select(0)
    state.on_key("Escape")
    assert state.draft.editing is None and not state.draft.polyline and state.to_scene() == before


def test_dragging_a_point_moves_it_in_one_undo_step(editor):
    s = editor.state
    draw_box_path(s)
    editor.buttons["Edit selected"].click()              # the one just added is selected: load it
    mouse(editor, 81, 101, drag_to=[(90, 90), (100, 60)])
    assert s.draft.polyline == ((16.0, 100.0), (100.0, 60.0))
    s.undo()
    assert s.draft.polyline == ((16.0, 100.0), (80.0, 100.0)) and s.message == "undone: moved point 1"


def test_a_drag_draws_a_freehand_path(editor):
    s = editor.state
    pick_box(s)
    mouse(editor, 10, 10, drag_to=[(10 + 5 * k, 10 + 3 * k) for k in range(1, 30)])
    poly = s.draft.polyline
    assert poly[0] == (10.0, 10.0) and poly[-1] == (155.0, 97.0)
    assert 2 < len(poly) <= (T - 1) // 2 + 1           # thinned so every segment gets >= 2 frames
    assert s.pending().points[T - 1] == (155.0, 97.0)
    s.undo()
    assert s.draft.polyline == ()                       # the stroke was one step


def test_a_click_on_an_existing_point_still_adds_a_point(editor):
    s = editor.state
    pick_box(s)
    mouse(editor, 40, 40)
    mouse(editor, 40, 40)
    assert s.draft.polyline == ((40.0, 40.0), (40.0, 40.0))


def test_scripted_objects_never_clobber_hand_drawn_ones(state):
    draw_box_path(state, "a red box")
    state.set_mode("erase")                              # left in erase mode, as a user may
    traj = state.add_object([(80, 56)], [(30, 30), (90, 40)], "a red box moves up")
    assert traj.id == 2 and state.draft.scene.captions == {"1": "a red box", "2": "a red box moves up"}
    assert state.message.startswith("script: added trajectory 1 (object 2)")
    state.undo()                                         # the script's steps are ordinary undo steps
    assert len(state.draft.trajectories) == 1


def test_scripting_while_drawing_is_refused(state):
    pick_box(state)
    state.on_click(16, 100)
    with pytest.raises(EditorError, match="being drawn"):
        state.add_object([(80, 56)], [(30, 30)], "x")
    assert state.draft.polyline == ((16.0, 100.0),)


def test_the_canvas_is_zoomed_to_a_comfortable_width_and_clicks_stay_in_model_pixels(editor):
    from widgets.trajectory_editor import FIT_WIDTH, fit_zoom
    assert editor.canvas.width == W and editor.canvas.layout.width == f"{round(W * fit_zoom(W))}px"
    assert FIT_WIDTH / 2 < W * fit_zoom(W) <= FIT_WIDTH and fit_zoom(2000) == 1.0
    editor.zoom.value = 2
    assert editor.canvas.layout.width == f"{2 * W}px" and editor.canvas.layout.height == "auto"  # keeps aspect
    assert editor.canvas.layout.max_width == "100%"                                          # fits the notebook
    mouse(editor, 80, 56)                                # ipycanvas sends canvas (model) pixels
    assert editor.state.draft.clicks == ((80.0, 56.0, False),)


def test_editor_and_plots_share_one_palette(state):
    from wclab.colors import object_hex
    from wclab.inspect.display import object_colors
    from widgets.trajectory_editor import object_color
    draw_box_path(state)
    scene = state.to_scene()
    assert object_color(1) == object_hex(1) and object_colors(scene)["1"] == tuple(
        int(object_hex(1)[i:i + 2], 16) for i in (1, 3, 5))


def test_a_script_on_a_fresh_editor_starts_at_object_1(state):
    ball = state.add_object([(80, 56)], [(30, 30), (90, 40)], "a ball")
    cup = state.add_object([(80, 56)], [(150, 60)], "None")
    assert (ball.id, cup.id, cup.is_anchor) == (1, 2, True) and state.to_scene().captions == {"1": "a ball"}


def _tour_example_cell() -> str:
    import nbformat
    from conftest import REPO
    nb = nbformat.read(REPO / "notebooks" / "01_tour.ipynb", as_version=4)
    cell, = [c.source for c in nb.cells if c.cell_type == "code" and "add_object" in c.source]
    return cell


@pytest.mark.parametrize("drawn_by_hand", [False, True])
def test_tour_example_cell_loads_the_example_or_keeps_a_hand_drawing_untouched(editor, drawn_by_hand):
    """01_tour: 'draw it yourself' and 'load the example' never mix, however often the cell is run."""
    from types import SimpleNamespace
    if drawn_by_hand:
        draw_box_path(editor.state, "my own box")
        editor.state.set_mode("erase")                   # whatever mode the user left it in
    mine = editor.state.draft.scene
    env = {"editor": editor, "profile": SimpleNamespace(width=W, height=H),
           "example": SimpleNamespace(image=scene_image()), "plot_trajectories": lambda *a, **k: None}
    for _ in range(2):                                   # running it twice adds nothing the second time
        exec(_tour_example_cell(), env)
    scene = env["scene"]
    if drawn_by_hand:
        assert scene == mine
    else:
        assert len(scene.trajectories) == 2 and list(scene.captions) == ["1"] and scene.trajectories[1].is_anchor
        assert editor.view_summary() == editor.state.summary()


def test_a_drag_ends_where_the_button_goes_up_even_if_moves_were_dropped(state):
    pick_box(state)
    state.press(10, 10)
    state.drag(40, 20)                                   # the browser dropped the moves after this one
    state.release(100, 50)
    assert state.draft.polyline == ((10.0, 10.0), (40.0, 20.0), (100.0, 50.0))
    state.press(100, 50)                                 # grab the end point ...
    state.drag(110, 60)
    state.release(120, 70)                               # ... and let go further on
    assert state.draft.polyline[-1] == (120.0, 70.0)


def test_saving_an_untouched_edit_keeps_a_loaded_track_exactly(state):
    """A track from a JSON file need not be a clicked polyline: unless its path is edited, it is kept as is."""
    from wclab.conditions import ops
    rng = np.random.default_rng(0)
    wobbly = [(float(x), float(y)) for x, y in zip(np.linspace(20, 200, T).round(), 60 + rng.integers(-9, 9, T))]
    traj = ops.make_trajectory(wobbly, 0, T, obj_id=1, mask=np.ones((H, W), bool), frames=T, text="a fly")
    loaded = EditorState.from_scene(ops.add_trajectory(ops.new_scene(H, W, T), traj), segmenter=FallbackSegmenter())
    loaded.select(0)
    loaded.set_object(1, "a buzzing fly")
    loaded.commit()
    saved = loaded.to_scene().trajectories[0]
    assert saved.points == traj.points and saved.text == "a buzzing fly"


def test_a_closed_path_stays_closed_when_edited(state):
    pick_box(state)
    for p in [(20, 20), (100, 20), (100, 100), (20, 20)]:
        state.on_click(*p)
    state.set_object(1, "a fly circles")
    state.commit()
    state.select(0)
    assert state.draft.polyline == ((20.0, 20.0), (100.0, 20.0), (100.0, 100.0), (20.0, 20.0))


def test_the_play_preview_runs_the_frame_slider_and_the_dots_follow(editor):
    from widgets.trajectory_editor import PREVIEW_FPS
    s = editor.state
    draw_box_path(s)                                     # (16, 100) -> (80, 100) over frames [0, 17)
    assert editor.play.max == T - 1 and editor.play.interval == round(1000 / PREVIEW_FPS)
    editor.play.value = 8                                # a tick of the Play button in the browser
    assert s.frame == 8 and editor.frame.value == 8
    assert s.positions_at() == [(0, 48.0, 100.0, True)]  # where the dot is drawn at this frame
    assert editor.view_summary() == s.summary()
    s.set_frame(3)                                       # the slider (or a script) moves the preview too
    assert editor.play.value == 3
