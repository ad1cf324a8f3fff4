"""Motion tools beyond the drawing tool: timing, speed curves, splines, camera anchors, event presets.

The tool's equal-frames rule stays the default, so the timing default is checked bit for bit against
``polyline_track``; everything built here must still write exactly the drawing tool's JSON.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from wclab.conditions import (CAMERA_PRESETS, SPEED_CURVES, camera_anchors, default_frames_at, eased,
                              enter_from_edge, leave_through_edge, load_json, ops, pass_behind, path_track,
                              spline_path, stop_at, timed_track, turn_back)
from wclab.errors import ConditionError

H, W, T = 128, 224, 17
BOX = np.zeros((H, W), bool)
BOX[10:30, 40:80] = True
POLY = [(20.0, 10.0), (120.0, 60.0), (200.0, 20.0)]


def ball(st=0, et=T, poly=POLY):
    return ops.make_trajectory(poly, st, et, obj_id=1, mask=BOX, frames=T, text="a ball")


def cross(a, b):
    """z of the 2-D cross product (rows of a with b)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def round_trip(*trajs):
    """Build a scene, write the tool's JSON, read it back: it must parse and give back the same trajectories."""
    scene = ops.new_scene(H, W, T)
    for t in trajs:
        scene = ops.add_trajectory(scene, t)
    back = load_json(scene.to_json())
    assert back.trajectories == scene.trajectories and back.to_json() == scene.to_json()
    return back


# ----------------------------------------------------------------------------- timing
@pytest.mark.parametrize("k, st, et, frames", [(1, 0, 17, 17), (2, 3, 9, 17), (3, 0, 17, 17), (4, 5, 81, 81),
                                               (5, 2, 10, 12), (6, 0, 81, 81)])
def test_default_frames_at_reproduces_the_tools_polyline_bit_for_bit(k, st, et, frames):
    pts = np.random.default_rng(k).uniform(0, 200, (k, 2))  # not float32-exact: the rounding must match too
    fa = default_frames_at(k, st, et)
    assert fa[0] == st and all(b > a for a, b in zip(fa, fa[1:])) and len(fa) == k
    got, ref = timed_track(pts, fa, frames, et=et), ops.polyline_track(pts, st, et, frames)
    assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])


def test_the_tool_reaches_its_last_point_early_and_holds_it():
    assert default_frames_at(3, 0, 9) == [0, 4, 7]  # 5 + 4 frames, the joint shared: the last point is held once
    assert default_frames_at(3, 0, 10) == [0, 4, 8]
    with pytest.raises(ConditionError, match="2 per segment"):
        default_frames_at(3, 0, 3)  # a segment with one frame: the tool never reaches the last point


def test_timed_track_hits_each_point_at_its_frame_and_is_linear_between():
    pts = [(10, 20), (50, 20), (50, 100), (0.5, 4.25)]
    track, vis = timed_track(pts, [2, 4, 12, 13], T)
    for p, f in zip(pts, [2, 4, 12, 13]):
        assert track[f].tolist() == list(p)
    assert track[3].tolist() == [30, 20] and track[8].tolist() == [50, 60]
    assert (track[:2] == -1).all() and (track[14:] == -1).all()
    assert vis.tolist() == [0, 0] + [1] * 12 + [0] * 3 and track.dtype == np.float64 and vis.dtype == np.int64
    held, _ = timed_track(pts, [2, 4, 12, 13], T, et=16)
    assert held[13:16].tolist() == [[0.5, 4.25]] * 3 and (held[16] == -1).all()


@pytest.mark.parametrize("frames_at, et, match", [([0, 5], None, "expected 3 frame"), ([0, 5, 5], None, "strictly"),
                                                  ([0, 5, 17], None, "et <= frames"), ([0, 5, 9], 8, "frames_at"),
                                                  ([0, 2.5, 4], None, r"frames_at\[1\]")])
def test_timed_track_bad_frames_name_the_field(frames_at, et, match):
    with pytest.raises(ConditionError, match=match):
        timed_track([(0, 0), (1, 1), (2, 2)], frames_at, T, et=et)


@pytest.mark.parametrize("curve", sorted(SPEED_CURVES) + [lambda t: t ** 3])
def test_eased_keeps_the_path_and_the_ends(curve):
    track, vis = ops.polyline_track(POLY, 2, 15, T)
    new, new_vis = eased(track, vis, curve)
    assert np.array_equal(new[2], track[2]) and np.array_equal(new[14], track[14])
    assert (new[:2] == -1).all() and (new[15:] == -1).all() and np.array_equal(new_vis, vis)
    seg_a, seg_b = np.array(POLY[:2]), np.array(POLY[1:])
    for p in new[2:15]:  # every point lies on one of the two drawn segments
        d = [abs(cross(b - a, p - a)) / np.linalg.norm(b - a) for a, b in (seg_a, seg_b)]
        assert min(d) < 1e-6
    progress = np.cumsum(np.r_[0, np.linalg.norm(np.diff(new[2:15], axis=0), axis=1)])
    assert (np.diff(progress) >= 0).all()


def test_eased_changes_the_speed_as_named():
    track, vis = ops.polyline_track([(0, 0), (120, 0)], 0, 13, 13)  # 10 px per frame
    assert np.array_equal(eased(track, vis, "linear")[0], track)
    slow_start = eased(track, vis, "ease_in")[0][:, 0]
    fast_start = eased(track, vis, "ease_out")[0][:, 0]
    assert slow_start[1] - slow_start[0] < 10 < slow_start[-1] - slow_start[-2]
    assert fast_start[1] - fast_start[0] > 10 > fast_start[-1] - fast_start[-2]


def test_eased_moves_an_erased_stretch_with_the_path():
    t = ops.erase(ball(), 10, 12)
    new, vis = eased(t.track, np.array(t.visibility), "ease_in")
    hidden = np.flatnonzero(vis == 0)
    assert len(hidden) and hidden.min() > 10  # slower start: the hidden place is reached later


@pytest.mark.parametrize("curve, match", [("bouncy", "expected one of"), (lambda t: 1 - t, "progress"),
                                          (lambda t: 0.5 * t, "progress\\(1\\) = 1"),
                                          (lambda t: math.sin(3 * t * math.pi / 2) ** 2, "non-decreasing|1"),
                                          (lambda t: 2 * t, r"\[0, 1\]"), (3, "callable")])
def test_bad_speed_curves_raise(curve, match):
    track, vis = ops.polyline_track(POLY, 0, T, T)
    with pytest.raises(ConditionError, match=match):
        eased(track, vis, curve)


# ----------------------------------------------------------------------------- splines
def test_spline_passes_through_its_control_points():
    pts = [(10, 10), (60, 90), (120, 20), (200, 100)]
    for tension in (0.0, 0.5, 1.0):
        path = spline_path(pts, tension=tension, samples_per_segment=8)
        assert path.shape == (25, 2)
        assert path[::8].tolist() == [list(map(float, p)) for p in pts]
    straight = spline_path(pts, tension=0.0, samples_per_segment=8)[:9]
    assert np.allclose(cross(straight - pts[0], np.subtract(pts[1], pts[0])), 0)  # tension 0: the polyline
    curved = spline_path(pts, samples_per_segment=8)[:9]
    assert not np.allclose(cross(curved - pts[0], np.subtract(pts[1], pts[0])), 0)


def test_arc_length_sampling_moves_at_nearly_constant_speed():
    path = spline_path([(10, 10), (70, 90), (140, 30), (210, 100)], samples_per_segment=64)
    track, vis = path_track(path, 0, 33, 40, by="arc_length")
    steps = np.linalg.norm(np.diff(track[:33], axis=0), axis=1)
    assert steps.max() / steps.min() < 1.05  # chords of a curve: a little under the arc where it bends
    by_time, _ = path_track(path, 0, 33, 40, by="time")
    time_steps = np.linalg.norm(np.diff(by_time[:33], axis=0), axis=1)
    assert time_steps.max() / time_steps.min() > 1.5  # equal time per segment: the speed varies
    for t in (track, by_time):
        assert t[0].tolist() == path[0].tolist() and t[32].tolist() == path[-1].tolist() and (t[33:] == -1).all()
    assert vis.tolist() == [1] * 33 + [0] * 7


def test_spline_and_path_bad_input():
    with pytest.raises(ConditionError, match="tension"):
        spline_path([(0, 0), (1, 1)], tension=-1)
    with pytest.raises(ConditionError, match="samples_per_segment"):
        spline_path([(0, 0), (1, 1)], samples_per_segment=0)
    with pytest.raises(ConditionError, match="by"):
        path_track(np.zeros((3, 2)), 0, 5, 5, by="speed")
    with pytest.raises(ConditionError, match=r"\[st, et\)"):
        path_track(np.zeros((3, 2)), 4, 4, 5)


# ----------------------------------------------------------------------------- camera anchors
def anchors(kind, amount=0.0, **kw):
    trajs = camera_anchors(H, W, T, kind, amount, obj_id=7, **kw)
    return trajs, np.stack([t.track for t in trajs], axis=1)  # [T, N, 2]


def test_static_camera_anchors_do_not_move():
    trajs, tr = anchors("static")
    assert len(trajs) == 9 and all(t.is_anchor and t.id == 7 for t in trajs)
    assert (tr == tr[0]).all() and all(t.visibility == (1,) * T for t in trajs)
    assert tr[0, 4].tolist() == [W / 2, H / 2]  # the 3x3 grid's middle anchor is the image centre


@pytest.mark.parametrize("kind, shift", [("pan_left", (1, 0)), ("pan_right", (-1, 0)), ("pan_up", (0, 1)),
                                         ("pan_down", (0, -1))])
def test_pans_move_every_anchor_by_amount_over_the_clip(kind, shift):
    _, tr = anchors(kind, 40.0)
    assert np.allclose(tr[-1] - tr[0], np.array(shift) * 40.0)
    assert np.allclose(tr[8] - tr[0], np.array(shift) * 20.0)  # linear in time: half way at the middle frame


@pytest.mark.parametrize("kind, factor", [("zoom_in", 1.5), ("zoom_out", 1 / 1.5)])
def test_zooms_scale_about_the_centre(kind, factor):
    _, tr = anchors(kind, 1.5)
    c = np.array([W / 2, H / 2])
    assert np.allclose(tr[:, 4], c)
    assert np.allclose(tr[-1] - c, (tr[0] - c) * factor)
    d = np.linalg.norm(tr - c, axis=-1)[:, 0]
    assert ((np.diff(d) > 0) if factor > 1 else (np.diff(d) < 0)).all()


@pytest.mark.parametrize("kind, screen_turn", [("rotate_cw", "ccw"), ("rotate_ccw", "cw")])
def test_rotations_keep_the_distance_to_the_centre(kind, screen_turn):
    _, tr = anchors(kind, 30.0, grid=(2, 2))
    c = np.array([W / 2, H / 2])
    d = np.linalg.norm(tr - c, axis=-1)
    assert np.allclose(d, d[0])
    a0, a1 = (np.arctan2(*(tr[i, 0] - c)[::-1]) for i in (0, -1))  # angle in image coords (y down)
    turned = (math.degrees(a1 - a0) + 180) % 360 - 180
    assert math.isclose(abs(turned), 30.0, abs_tol=1e-9)
    assert (turned < 0) == (screen_turn == "ccw")  # y down: a counter-clockwise screen turn lowers the angle


def test_camera_anchors_write_the_tools_json():
    trajs, _ = anchors("zoom_in", 1.3, grid=(2, 3))
    back = round_trip(ball(), *trajs)
    assert len(back.trajectories) == 7 and list(back.captions) == ["1"]  # anchors have no caption


@pytest.mark.parametrize("kwargs, match", [(dict(kind="dolly"), "kind"), (dict(kind="zoom_in", amount=0.5), "amount"),
                                           (dict(kind="pan_left", amount=float("nan")), "amount"),
                                           (dict(kind="static", grid=(0, 3)), "grid")])
def test_camera_anchor_bad_input(kwargs, match):
    with pytest.raises(ConditionError, match=match):
        camera_anchors(H, W, T, obj_id=7, **kwargs)


# ----------------------------------------------------------------------------- event presets
def test_enter_from_an_edge_starts_outside_for_the_given_frames():
    for edge, outside in [("left", lambda p: p[0] < 0), ("right", lambda p: p[0] >= W), ("top", lambda p: p[1] < 0),
                          ("bottom", lambda p: p[1] >= H)]:
        t = enter_from_edge(ball(2, 15), edge, 3)
        tr = t.track
        assert all(outside(tr[f]) for f in (2, 3, 4)) and not outside(tr[5])
        assert tr[5].tolist() == list(POLY[0]) and tr[14].tolist() == ball(2, 15).track[14].tolist()
        assert t.visibility == ball(2, 15).visibility and (tr[:2] == -1).all()
    entering = enter_from_edge(ball(), "left", 4)
    assert entering.starts_off_image(H, W) and round_trip(entering).entering_ids() == {"1"}


def test_leave_through_an_edge_ends_outside_for_the_given_frames():
    t = leave_through_edge(ball(), "right", 4)
    tr = t.track
    assert (tr[-4:, 0] >= W).all() and tr[-5].tolist() == list(POLY[-1]) and tr[0].tolist() == list(POLY[0])
    assert (np.diff(tr[-5:, 0]) > 0).all() and np.allclose(tr[-5:, 1], POLY[-1][1])
    round_trip(t)


def test_pass_behind_stop_and_turn_back():
    base = ball()
    hidden = pass_behind(base, 5, 8)
    assert hidden.visibility == (1,) * 5 + (0,) * 4 + (1,) * 8 and hidden.points == base.points
    stopped = stop_at(base, 6)
    assert (stopped.track[6:] == base.track[6]).all() and stopped.track[:7].tolist() == base.track[:7].tolist()
    back = turn_back(base, 10)
    assert back.track[10:].tolist() == base.track[10:3:-1].tolist()
    waits = turn_back(base, 3)  # back at the start after 3 frames: it waits there
    assert waits.track[6:].tolist() == [base.track[0].tolist()] * 11
    assert turn_back(hidden, 10).visibility[10:] == hidden.visibility[10:3:-1]
    round_trip(hidden, stopped.replace(id=2, text="a cat"), back.replace(id=3, text="a dog"))


@pytest.mark.parametrize("call, match", [(lambda t: enter_from_edge(t, "side", 2), "edge"),
                                         (lambda t: enter_from_edge(t, "left", 16), "frames_outside"),
                                         (lambda t: leave_through_edge(t, "top", 0), "frames_outside"),
                                         (lambda t: stop_at(t, 17), "frame"),
                                         (lambda t: turn_back(ball(2, 10), 12), r"active range \[2, 10\)"),
                                         (lambda t: pass_behind(t, 0, 17), "f1")])
def test_event_presets_bad_input(call, match):
    with pytest.raises(ConditionError, match=match):
        call(ball())


def test_every_preset_is_listed():
    assert CAMERA_PRESETS[0] == "static" and len(CAMERA_PRESETS) == 9
    assert set(SPEED_CURVES) == {"linear", "ease_in", "ease_out", "ease_in_out"}


def test_the_readme_motion_snippet_runs(tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Motion tools"):]
    start = section.index("```python") + len("```python")
    code = section[start: section.index("```\n", start)]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (Motion tools)", "exec"), {})
    assert (tmp_path / "scene_tracks.npy").exists() and (tmp_path / "scene_visibility.npy").exists()
