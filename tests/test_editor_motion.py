"""The editor's motion tools (issue 17): per-point timing, speed curves, splines, camera and event presets,
track import/export — all through the state's undo/redo, with the drawing tool's polyline as the default and the
exported JSON in the tool's format. Expected tracks come from :mod:`wclab.conditions.motion` itself (its own
tests check the maths); these tests check the editor wires the right call and keeps what it made editable."""
from __future__ import annotations

import numpy as np
import pytest

from wclab.conditions import load_json, polyline_track
from wclab.conditions import motion as mo
from wclab.conditions.tracks import Tracks, load_tracks
from widgets import EditorError, EditorState, FallbackSegmenter, TrajectoryEditor

H, W, T = 128, 224, 17
PATH = [(16.0, 100.0), (80.0, 100.0), (150.0, 60.0)]


def scene_image() -> np.ndarray:
    img = np.full((H, W, 3), (40, 90, 40), np.uint8)
    img[32:80, 48:112] = (220, 60, 60)
    return img


@pytest.fixture
def state() -> EditorState:
    s = EditorState(height=H, width=W, frames=T, segmenter=FallbackSegmenter(), image=scene_image())
    s.on_click(80, 56)
    s.confirm_mask()
    return s


@pytest.fixture
def editor() -> TrajectoryEditor:
    e = TrajectoryEditor(scene_image(), height=H, width=W, frames=T, segmenter=FallbackSegmenter())
    e.state.on_click(80, 56)
    e.state.confirm_mask()
    return e


def draw(s: EditorState, path=PATH) -> None:
    for p in path:
        s.on_click(*p)


def test_the_default_timing_is_the_tools_rule_and_round_trips(state):
    draw(state)
    assert state.reach_frames() == tuple(mo.default_frames_at(3, 0, T))
    state.set_timing(state.reach_frames())           # typing the default back changes nothing
    assert state.draft.motion.frames_at is None and state.summary()["timing"] == "equal frames per segment"
    track, _ = polyline_track(PATH, 0, T, T)
    np.testing.assert_array_equal(state.pending().track, track)


def test_per_point_timing_reaches_each_point_at_its_frame_and_undoes(state):
    draw(state)
    state.set_timing([0, 3, 12])
    assert state.message == "timing: points reached at frames 0, 3, 12"
    track = state.pending().track
    for p, f in zip(PATH, (0, 3, 12)):
        np.testing.assert_array_equal(track[f], p)
    np.testing.assert_array_equal(track[12:], np.repeat([PATH[-1]], T - 12, axis=0))  # held to the end
    state.undo()
    assert state.draft.motion.frames_at is None and state.message == "undone: timing: points reached at frames 0, 3, 12"


@pytest.mark.parametrize("frames, message", [([0, 3], "expected 3 frames"), ([1, 3, 12], "first point"),
                                             ([0, 3, 17], "before the end frame"), ([0, 5, 5], "increasing")])
def test_bad_timing_is_refused_and_changes_nothing(state, frames, message):
    draw(state)
    before = state.draft
    with pytest.raises(Exception, match=message):
        state.set_timing(frames)
    assert state.draft is before


def test_adding_a_point_puts_the_timing_back_to_equal_frames_and_says_so(state):
    draw(state, PATH[:2])
    state.set_timing([0, 10])
    state.on_click(*PATH[2])
    assert state.draft.motion.frames_at is None and "timing back to equal frames" in state.message


def test_speed_curve_and_spline_give_the_library_tracks(state):
    draw(state)
    state.set_speed("ease_in_out")
    expected = mo.eased(*polyline_track(PATH, 0, T, T), "ease_in_out")[0]
    np.testing.assert_array_equal(state.pending().track, expected)
    state.set_path("spline", tension=0.5, by="arc_length")
    track, vis = mo.path_track(mo.spline_path(PATH, 0.5), 0, T, T, by="arc_length")
    np.testing.assert_array_equal(state.pending().track, mo.eased(track, vis, "ease_in_out")[0])
    assert state.message == "path: spline (tension 0.5, by arc length), ease in out"


def test_a_committed_spline_is_edited_with_its_settings_and_saved_unchanged(state, tmp_path):
    draw(state)
    state.set_path("spline", tension=1.0)
    state.set_speed("ease_out")
    state.set_object(1, "a box")
    made = state.commit()
    state.set_path("polyline")                        # the next drawing's settings: not the committed one's
    state.select(0)
    assert state.draft.motion == mo_motion(path="spline", tension=1.0, speed="ease_out")
    assert state.draft.polyline == tuple(PATH)
    state.commit()
    assert state.to_scene().trajectories[0] == made
    state.save_json(tmp_path / "c.json")              # the drawing tool's format, loads back equal
    assert load_json(tmp_path / "c.json") == state.to_scene()


def mo_motion(**kw):
    from widgets.editor_state import Motion
    return Motion(**kw)


def test_a_trajectory_changed_by_an_event_is_edited_through_its_corners_exactly(state):
    draw(state)
    state.set_object(1, "a box")
    state.commit()
    state.apply_event("stop", frame=5)
    stopped = state.to_scene().trajectories[0]
    state.select(0)
    assert state.draft.motion.frames_at is not None   # the frames it reaches its corners
    np.testing.assert_allclose(state.pending().track, stopped.track, atol=1e-4)
    state.commit()
    assert state.to_scene().trajectories[0] == stopped  # untouched: kept exactly


def test_static_camera_in_one_click_keeps_the_drawing_and_undoes_in_one_step(editor):
    s = editor.state
    draw(s)
    editor.buttons["Static camera"].click()
    scene = s.draft.scene
    assert s.message == "static camera: added 9 background anchors (object 2)"
    assert len(scene.trajectories) == 9 and all(t.is_anchor and t.id == 2 for t in scene.trajectories)
    assert all(np.ptp(t.track, axis=0).max() == 0 for t in scene.trajectories)  # they stay put
    assert s.draft.polyline == tuple(PATH)            # the trajectory being drawn is untouched
    assert editor.view_summary() == s.summary()
    s.undo()
    assert s.draft.trajectories == () and s.draft.polyline == tuple(PATH)


def test_a_camera_pan_moves_the_anchors_by_the_amount(editor):
    s = editor.state
    editor.camera_amount.value = "40"
    editor.buttons["Pan left"].click()
    for t in s.draft.trajectories:
        np.testing.assert_allclose(t.track[-1] - t.track[0], (40, 0))  # the content moves right
    assert s.message == "camera pan left 40 px: added 9 background anchors (object 2)"


@pytest.mark.parametrize("button, kind", [("Enter from edge", "enter"), ("Leave through edge", "leave"),
                                          ("Pass behind", "pass_behind"), ("Stop here", "stop"),
                                          ("Turn back here", "turn_back")])
def test_event_buttons_change_the_selected_trajectory_as_the_library_does(editor, button, kind):
    s = editor.state
    draw(s)
    s.set_object(1, "a box")
    original = s.commit()
    s.set_frame(6)
    editor.edge.value = "right"
    editor.event_frames.value = "3"
    editor.buttons[button].click()
    assert editor.feedback.error.value == ""
    expected = {"enter": lambda t: mo.enter_from_edge(t, "right", 3),
                "leave": lambda t: mo.leave_through_edge(t, "right", 3),
                "pass_behind": lambda t: mo.pass_behind(t, 6, 8), "stop": lambda t: mo.stop_at(t, 6),
                "turn_back": lambda t: mo.turn_back(t, 6)}[kind](original)
    assert s.to_scene().trajectories[0] == expected and s.message.startswith("trajectory 0 (object 1) ")
    assert load_json(s.to_scene().to_json()) == s.to_scene()
    s.undo()
    assert s.to_scene().trajectories[0] == original


def test_an_event_needs_a_selected_trajectory(state):
    with pytest.raises(EditorError, match="select a trajectory"):
        state.apply_event("stop")


@pytest.mark.parametrize("style, name", [("ati", "t.pth"), ("ati", "t.npy"), ("wanmove", "tracks.npy"),
                                         ("wanmove", "t.pth")])
def test_tracks_export_and_import_round_trip(state, tmp_path, style, name):
    draw(state)
    state.set_object(1, "a box")
    state.commit()
    files = state.export_tracks(tmp_path / name, style=style)
    assert load_tracks(files[0]).points.shape == (T, 1, 2)
    state.import_tracks(files[0])
    a, b = state.to_scene().trajectories
    assert b.is_anchor and b.id == 2 and "imported 1 tracks" in state.message
    np.testing.assert_allclose(b.track, a.track, atol=0.13 if style == "ati" else 0)  # ATI quantises by 1/8 px


def test_tracks_from_a_driving_video_become_trajectories(state):
    video = np.zeros((9, H, W, 3), np.uint8)
    for t in range(9):                                # a textured square moving 3 px right per frame
        rng = np.random.default_rng(0)
        video[t, 40:72, 50 + 3 * t:82 + 3 * t] = rng.integers(60, 255, (32, 32, 3))
    tracks = state.tracks_from_video(video, [(66, 56)], caption="a patch")
    assert isinstance(tracks, Tracks) and tracks.visibility.all()
    t, = state.to_scene().trajectories
    assert t.text == "a patch" and state.to_scene().captions == {"2": "a patch"}
    np.testing.assert_allclose(t.track[-1] - t.track[0], (24, 0), atol=1.0)  # resampled 9 -> 17 frames


def test_the_timing_control_shows_and_sets_the_frames(editor):
    s = editor.state
    draw(s)
    assert editor.timing.value == ", ".join(map(str, mo.default_frames_at(3, 0, T)))
    editor.timing.value = "0, 4, 10"
    assert s.draft.motion.frames_at == (0, 4, 10) and editor.timing_kind.value == "<small>(custom)</small>"
    editor.timing.value = "0, x"
    assert "expected frame numbers" in editor.feedback.error.value and s.draft.motion.frames_at == (0, 4, 10)
    editor.buttons["Equal frames"].click()
    assert s.draft.motion.frames_at is None and editor.view_summary() == s.summary()
    editor.path_kind.value = "spline"
    assert editor.timing.disabled and not editor.tension.disabled and s.draft.motion.path == "spline"
