"""Tracks from a driving video in the trajectory editor (issue 17): load a video, click points on its first frame,
Track turns them into trajectories through the state's undo/redo; Cancel changes nothing; the exported JSON is the
drawing tool's. The videos are synthetic: a textured square moving a known number of pixels per frame."""
from __future__ import annotations

import json

import numpy as np
import pytest

from wclab.conditions import load_json
from widgets import EditorError, EditorState, FallbackSegmenter, TrajectoryEditor, fit_image
from widgets.driving_video import DrivingVideo, read_video
from widgets.images import ImageError

H, W, T = 128, 224, 17
TOOL_KEYS = {"tracking", "tracking_vis_value", "r", "id", "mask_cluster", "text"}
TEXTURE = np.random.default_rng(0).integers(40, 255, (8, 8, 3)).astype(np.uint8)


def square_video(frames: int, height: int, width: int, x0: int, y0: int, size: int, step: int) -> np.ndarray:
    """``uint8 [frames, height, width, 3]``: a textured ``size``-px square at ``(x0, y0)`` (top left) moving ``step``
    px right per frame over a dark background."""
    patch = np.kron(TEXTURE, np.ones((size // 8, size // 8, 1), np.uint8))
    v = np.full((frames, height, width, 3), 20, np.uint8)
    for t in range(frames):
        v[t, y0:y0 + size, x0 + step * t:x0 + step * t + size] = patch
    return v


def start_image() -> np.ndarray:
    img = np.full((H, W, 3), (40, 90, 40), np.uint8)
    img[32:80, 48:112] = (220, 60, 60)
    return img


@pytest.fixture
def state() -> EditorState:
    return EditorState(height=H, width=W, frames=T, segmenter=FallbackSegmenter(), image=start_image())


def with_one_object(s: EditorState) -> None:
    s.on_click(80, 56)
    s.confirm_mask()
    s.on_click(16, 100)
    s.on_click(80, 100)
    s.set_object(1, "a red box")
    s.commit()


def test_clicked_points_on_a_moving_square_follow_it_within_a_pixel(state):
    video = square_video(T, H, W, x0=40, y0=40, size=32, step=2)  # scene-sized, the scene's frame count
    state.load_driving_video(video)
    assert state.draft.driving and state.hint().startswith("Driving video: click the points")
    clicked = [(50.0, 50.0), (64.0, 60.0), (60.0, 66.0)]
    for p in clicked:
        state.on_click(*p)
    assert "3 point(s)" in state.hint() and "Track (Enter)" in state.hint()
    state.set_object(1, "a patch")
    tracks = state.track_video()
    assert tracks.points.shape == (T, 3, 2) and tracks.visibility.all()
    d = state.draft
    assert not d.driving and d.selected == 0 and len(d.trajectories) == 3
    assert state.message == ("tracked 3 points: added trajectories 0..2 as object 1 (\"a patch\"); 17 frames")
    for (x, y), t in zip(clicked, d.trajectories):
        truth = np.stack([x + 2.0 * np.arange(T), np.full(T, y)], axis=1)
        np.testing.assert_allclose(t.track, truth, atol=1.0)
        assert t.id == 1 and t.text == "a patch" and t.visibility == (1,) * T
        mask = t.mask.decode()                       # a small square around the first point
        assert mask[int(y), int(x)] and mask.sum() == 81
    assert state.to_scene().captions == {"1": "a patch"}


def test_undo_removes_all_the_tracked_trajectories_in_one_step_and_returns_to_the_points(state):
    with_one_object(state)
    state.load_driving_video(square_video(9, H, W, 40, 40, 32, 3))
    state.on_click(50, 50)
    state.on_click(60, 60)
    state.track_video()
    assert len(state.draft.trajectories) == 3
    state.undo()
    assert len(state.draft.trajectories) == 1 and state.draft.driving
    assert state.draft.video_points == ((50.0, 50.0), (60.0, 60.0))
    assert state.message.startswith("undone: tracked 2 points")
    state.redo()
    assert len(state.draft.trajectories) == 3 and not state.draft.driving


def test_cancel_leaves_the_mode_and_changes_nothing(state):
    with_one_object(state)
    state.on_click(100, 20)                           # a path being drawn stays as it was
    before = state.draft
    state.load_driving_video(square_video(5, H, W, 40, 40, 32, 3))
    state.on_click(50, 50)
    state.cancel_video()
    d = state.draft
    assert not d.driving and d.scene is before.scene and d.polyline == before.polyline and d.mode == before.mode
    assert state.message == "driving video closed, nothing added (1 points dropped)"
    assert state.to_scene() == before.scene


def test_keys_in_driving_video_mode_track_cancel_and_remove_points(state):
    state.load_driving_video(square_video(5, H, W, 40, 40, 32, 3))
    for p in [(50, 50), (60, 60)]:
        state.on_click(*p)
    state.on_key("Backspace")
    assert state.draft.video_points == ((50.0, 50.0),)
    state.on_key("z")                                 # undo takes the point removal back
    assert len(state.draft.video_points) == 2
    state.on_key("Escape")
    assert not state.draft.driving and not state.draft.trajectories
    state.on_key("z")
    state.on_key("Enter")                             # Track
    assert len(state.draft.trajectories) == 2 and all(t.is_anchor for t in state.draft.trajectories)


def test_drawing_actions_are_refused_in_driving_video_mode(state):
    state.load_driving_video(square_video(5, H, W, 40, 40, 32, 3))
    before = state.draft
    for action in (lambda: state.set_mode("draw"), state.use_whole_image, state.new_object,
                   lambda: state.add_camera("static"), lambda: state.on_key("w")):
        with pytest.raises(EditorError, match="driving video mode: Track"):
            action()
        assert state.draft is before
    with pytest.raises(EditorError, match="no points"):
        state.track_video()
    with pytest.raises(EditorError, match="no point to remove"):
        state.backspace()


def test_an_empty_caption_makes_background_anchors_and_a_used_id_is_never_changed(state):
    with_one_object(state)                           # object 1: "a red box"
    state.load_driving_video(square_video(5, H, W, 40, 40, 32, 3))
    state.on_click(50, 50)
    state.set_object(1, "")                           # empty caption, but id 1 is the box's
    assert "background anchors (object 2" in state.hint()
    state.track_video()
    box, anchor = state.draft.trajectories
    assert box.text == "a red box" and anchor.is_anchor and anchor.id == 2
    assert state.to_scene().captions == {"1": "a red box"}


def test_a_video_of_another_size_and_length_maps_points_exactly_and_is_resampled(state):
    # 160 x 448 video for a 128 x 224 scene: fitted as the start image is (x0.8 to 358 x 128, 67 px cropped each
    # side); the square moves 4 video px per frame over 9 frames (resampled to the scene's 17).
    video = square_video(9, 160, 448, x0=200, y0=40, size=64, step=4)
    state.load_driving_video(video, source="clip")
    np.testing.assert_array_equal(state.draft.video.first_frame(), fit_image(video[0], H, W))
    dv = state.draft.video
    click = dv.to_scene(np.array([232.0, 72.0]))     # the square's centre in the video
    state.on_click(*click)
    state.set_object(1, "a patch")
    state.track_video()
    assert "9 video frames resampled to the scene's 17" in state.message
    t, = state.draft.trajectories
    truth = dv.to_scene(np.stack([232.0 + 4 * np.arange(9), np.full(9, 72.0)], axis=1))
    np.testing.assert_allclose(t.track[::2], truth, atol=1.0)         # scene frame 2k = video frame k
    np.testing.assert_allclose(truth[1] - truth[0], (4 * 358 / 448, 0), atol=1e-9)


def test_the_pixel_map_is_the_one_fit_image_applies():
    # a bright blob at a known video point lands where to_scene says, in the fitted first frame
    h, w = 100, 300
    yy, xx = np.mgrid[:h, :w]
    xv, yv = 171.3, 42.6
    blob = np.exp(-((xx - xv) ** 2 + (yy - yv) ** 2) / (2 * 4.0 ** 2))
    frame = np.repeat((255 * blob).astype(np.uint8)[..., None], 3, axis=2)
    dv = DrivingVideo.load(frame[None], H, W)
    fitted = dv.first_frame()[..., 0].astype(float)
    cy, cx = (np.mgrid[:H, :W] * fitted).reshape(2, -1).sum(axis=1) / fitted.sum()
    np.testing.assert_allclose((cx, cy), dv.to_scene(np.array([xv, yv])), atol=0.15)
    np.testing.assert_allclose(dv.to_video(dv.to_scene(np.array([[xv, yv]]))), [[xv, yv]], atol=1e-9)


def test_the_exported_json_is_the_drawing_tools_format(state, tmp_path):
    with_one_object(state)
    state.load_driving_video(square_video(9, H, W, 40, 40, 32, 3))
    state.on_click(50, 50)
    state.on_click(60, 60)
    state.set_object(2, "a patch")
    state.track_video()
    text = state.save_json(tmp_path / "scene.json")
    items = json.loads(text)
    assert all(set(i) == TOOL_KEYS for i in items[:-5]) and len(items) == 3 + 5
    scene = load_json(tmp_path / "scene.json")
    assert scene == state.to_scene() and scene.to_json(indent=4) == text
    assert scene.captions == {"1": "a red box", "2": "a patch"}


def test_a_video_file_loads_from_the_path_field(tmp_path):
    mediapy = pytest.importorskip("mediapy")
    pytest.importorskip("imageio_ffmpeg")
    import imageio_ffmpeg
    mediapy.set_ffmpeg(imageio_ffmpeg.get_ffmpeg_exe())
    video = square_video(5, H, W, 40, 40, 32, 3)
    mediapy.write_video(tmp_path / "clip.mp4", video, fps=16)
    np.save(tmp_path / "clip.npy", video)
    assert read_video(tmp_path / "clip.mp4").shape == video.shape
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(ImageError, match="notes.mp4: cannot read as a video"):
        read_video(tmp_path / "notes.mp4")
    editor = TrajectoryEditor(start_image(), height=H, width=W, frames=T, segmenter=FallbackSegmenter())
    assert editor.buttons["Track"].disabled and editor.view_summary() == editor.state.summary()
    editor.path.value = str(tmp_path / "clip.npy")
    editor.buttons["Load video"].click()
    assert editor.view_summary()["video"].startswith(f"driving video {tmp_path / 'clip.npy'}: 5 frames 224x128")
    assert not editor.buttons["Track"].disabled and editor.view_summary() == editor.state.summary()
    editor._on_mouse_down(50, 50)
    editor._on_mouse_up(50, 50)
    assert "points 1: (50, 50)" in editor.view_summary()["video"]
    editor.buttons["Track"].click()
    assert editor.feedback.message == "" and editor.trajectories.value == 0
    assert editor.view_summary() == editor.state.summary() and editor.view_summary()["video"] == ""
    editor.path.value = str(tmp_path / "missing.mp4")
    editor.buttons["Load video"].click()
    assert "no such video file" in editor.feedback.message and not editor.state.draft.driving
    with pytest.raises(ImageError, match="expected uint8"):
        DrivingVideo.load(np.zeros((2, 8, 8, 3), np.float32), H, W)


def test_a_point_lost_in_the_video_is_invisible_from_there_and_the_message_says_so(state):
    video = square_video(T, H, W, x0=40, y0=40, size=32, step=2)
    video[9:, 30:90, 40:120] = 20                    # the square vanishes from frame 9 on
    state.load_driving_video(video)
    state.on_click(56, 56)
    state.track_video()
    t, = state.draft.trajectories
    assert t.is_anchor and "1 lost before the end (invisible from there)" in state.message
    assert t.visibility[:9] == (1,) * 9 and t.visibility[-1] == 0
    np.testing.assert_allclose(t.track[-1], t.track[np.flatnonzero(t.vis)[-1]])  # held where last seen
