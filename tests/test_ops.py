"""Trajectory operations: the drawing tool's resampling/erase/radius, time and space edits, scene building.

Positions are compared exactly (``==`` on float64) where the operation is meant to reproduce the tool bit for
bit; tolerances appear only for arithmetic the tool never does (interpolating in time, scaling).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import EXAMPLES, FIXTURES
from wclab.conditions import Trajectory, load_json, ops
from wclab.conditions.rle import RLEMask
from wclab.errors import ConditionError

H, W, T = 128, 224, 17
BOX = np.zeros((H, W), bool)
BOX[10:30, 40:80] = True  # 800 px


def line(st_=0, et_=T, poly=((20.0, 10.0), (120.0, 60.0), (200.0, 20.0)), text="a ball") -> Trajectory:
    return ops.make_trajectory(list(poly), st_, et_, obj_id=1, mask=BOX, frames=T, text=text)


def vis_str(t: Trajectory) -> str:
    return "".join(str(int(v)) for v in t.visibility)


# ----------------------------------------------------------------------------- polyline_track (the tool's resampling)
def test_polyline_track_splits_frames_equally_between_segments_not_by_length():
    # 9 frames, 2 segments: 5 frames for the short one, then 4 (minus the shared joint) for the long one, then padding
    track, vis = ops.polyline_track([(0, 0), (10, 0), (1000, 0)], 0, 9, 9)
    assert track[:, 0].tolist() == [0, 2.5, 5, 7.5, 10, 340, 670, 1000, 1000]
    assert track[:, 1].tolist() == [0] * 9 and vis.tolist() == [1] * 9


def test_polyline_track_outside_st_et_is_minus_one_and_invisible():
    track, vis = ops.polyline_track([(5, 6), (15, 26)], 3, 6, 8)
    assert track.tolist() == [[-1, -1]] * 3 + [[5, 6], [10, 16], [15, 26]] + [[-1, -1]] * 2
    assert vis.tolist() == [0, 0, 0, 1, 1, 1, 0, 0]
    assert track.dtype == np.float64 and track.shape == (8, 2) and vis.shape == (8,)


def test_segment_with_one_frame_contributes_its_start_so_the_joint_repeats():
    p = [(0, 0), (10, 0), (20, 0)]
    assert ops.polyline_track(p, 0, 4, 4)[0][:, 0].tolist() == [0, 10, 20, 20]  # counts 2, 2
    assert ops.polyline_track(p, 0, 3, 3)[0][:, 0].tolist() == [0, 10, 10]  # counts 2, 1: end never reached


def test_one_frame_fewer_than_segments_is_what_the_tool_gives_not_an_error():
    # 3 segments over 2 frames: counts 1, 1, 0 -> the first two clicks; the tool does not crash here
    track, _ = ops.polyline_track([(0, 0), (10, 0), (20, 0), (30, 0)], 0, 2, 2)
    assert track[:, 0].tolist() == [0, 10]


def test_too_few_frames_for_the_segments_raises_instead_of_crashing_like_the_tool():
    with pytest.raises(ConditionError, match=r"polyline has 4 segments but \[st, et\) = \[5, 7\) has only 2 frames; "
                                             r"the drawing tool needs at least 3"):
        ops.polyline_track([(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)], 5, 7, 17)


def test_control_points_are_rounded_to_float32_but_a_single_point_is_not():
    track, _ = ops.polyline_track([(0.1, 0.2), (1.1, 0.2)], 0, 2, 2)
    assert track[0].tolist() == [float(np.float32(0.1)), float(np.float32(0.2))]
    assert track[1].tolist() == [float(np.float32(1.1)), float(np.float32(0.2))]
    static, _ = ops.polyline_track([(0.1, 0.2)], 0, 3, 3)
    assert static.tolist() == [[0.1, 0.2]] * 3


@pytest.mark.parametrize("st_, et_", [(-1, 5), (3, 3), (5, 2), (0, T + 1)])
def test_st_et_outside_the_clip_raise_instead_of_being_clipped(st_, et_):
    with pytest.raises(ConditionError, match=r"expected 0 <= st < et <= frames = 17"):
        ops.polyline_track([(0, 0), (1, 1)], st_, et_, T)


@pytest.mark.parametrize("poly", [[], [(1, 2, 3)], [(0, float("nan"))], "ab"])
def test_bad_polyline_raises(poly):
    with pytest.raises(ConditionError, match=r"polyline: expected"):
        ops.polyline_track(poly, 0, 5, 5)


def _tool_polyline(traj: Trajectory, segments: int):
    """The points a K-click polyline would need to give ``traj``: its track at the frames where each click lands."""
    st_, et_ = ops.active_range(traj)
    clicks = np.stack([np.arange(segments + 1.0), np.zeros(segments + 1)], 1)
    param = ops.polyline_track(clicks, st_, et_, traj.frames)[0][:, 0]
    frames = [np.flatnonzero(param == k) for k in range(segments + 1)]
    return None if any(len(f) == 0 for f in frames) else traj.track[[f[0] for f in frames]]


@pytest.mark.parametrize("name", ["door", "mouse_dog"])
def test_tool_drawn_tracks_in_example_files_are_reproduced_bit_for_bit(name):
    # every trajectory in the released files is polyline_track of some click list (found by trying 1..12 segments)
    scene = load_json(EXAMPLES / f"{name}.json")
    for i, traj in enumerate(scene.trajectories):
        st_, et_ = ops.active_range(traj)
        hits = [k for k in range(1, 13) if (p := _tool_polyline(traj, k)) is not None
                and np.array_equal(ops.polyline_track(p, st_, et_, traj.frames)[0], traj.track)]
        assert hits, f"{name} item {i}: no polyline reproduces the track"
        np.testing.assert_array_equal(ops.polyline_track(_tool_polyline(traj, hits[0]), st_, et_, traj.frames)[1],
                                      traj.active_frames().astype(int))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), frames=st.integers(1, 40), k=st.integers(1, 8))
def test_random_polylines_give_valid_trajectories(data, frames, k):
    coord = st.floats(-500, 1500, allow_nan=False, width=32)
    poly = data.draw(st.lists(st.tuples(coord, coord), min_size=k, max_size=k))
    st_ = data.draw(st.integers(0, frames - 1))
    et_ = data.draw(st.integers(st_ + 1, frames))
    if et_ - st_ < k - 2:
        with pytest.raises(ConditionError, match="segments"):
            ops.polyline_track(poly, st_, et_, frames)
        return
    track, vis = ops.polyline_track(poly, st_, et_, frames)
    inside = (np.arange(frames) >= st_) & (np.arange(frames) < et_)
    assert track.shape == (frames, 2) and vis.shape == (frames,)
    assert set(vis.tolist()) <= {0, 1} and (vis == inside).all()
    assert (track[~inside] == -1).all()
    p32 = np.asarray(poly, np.float32).astype(np.float64) if k > 1 else np.asarray(poly, np.float64)
    assert (track[inside] >= p32.min(0) - 1e-9).all() and (track[inside] <= p32.max(0) + 1e-9).all()
    assert track[st_].tolist() == p32[0].tolist()  # the first click is always frame st exactly
    if (track[inside] == -1).all(axis=1).any():  # a drawn point on the (-1, -1) placeholder cannot be saved
        with pytest.raises(ConditionError, match="placeholder"):
            ops.make_trajectory(poly, st_, et_, obj_id=0, mask=BOX, frames=frames)
        return
    traj = ops.make_trajectory(poly, st_, et_, obj_id=0, mask=BOX, frames=frames)
    assert traj.frames == frames and ops.active_range(traj) == (st_, et_)


# ----------------------------------------------------------------------------- radius, make_trajectory, anchors
def test_mask_radius_is_the_tools_formula():
    assert ops.mask_radius(np.zeros((480, 832), bool)) == 5
    assert ops.mask_radius(np.ones((480, 832), np.uint8)) == 320
    m = np.zeros((480, 832), bool)
    m[:100, :250] = True  # 25000 px -> 25000 * 320 // 399360 = 20
    assert ops.mask_radius(m) == ops.mask_radius(RLEMask.from_array(m)) == 20
    with pytest.raises(ConditionError, match="binary"):
        ops.mask_radius(np.full((4, 4), 0.5))


@pytest.mark.parametrize("name", ["door", "mouse_dog"])
def test_mask_radius_reproduces_r_of_every_example_trajectory(name):
    for t in load_json(EXAMPLES / f"{name}.json").trajectories:
        assert ops.mask_radius(t.mask) == t.r


def test_static_anchors_in_the_fixture_files_are_constant_and_equal_static_anchor():
    found = 0
    for path in (EXAMPLES / "mouse_dog.json", FIXTURES / "synth_small.json"):
        scene = load_json(path)
        for t in scene.trajectories:
            if t.is_anchor and len(set(t.points)) == 1:
                found += 1
                made = ops.static_anchor(t.points[0], obj_id=t.id, mask=t.mask, frames=t.frames)
                assert made.points == t.points and made.visibility == t.visibility and made.r == t.r
                assert made.to_json()["mask_cluster"] == t.to_json()["mask_cluster"] and made.text == "None"
    assert found == 3  # mouse_dog item 4, synth_small items 3 and 4


def test_make_trajectory_writes_the_tools_json_types():
    item = line(2, 15).to_json()
    assert [type(v) for v in item["tracking_vis_value"]] == [int] * T
    assert all(type(c) is float for p in item["tracking"] for c in p)
    assert item["r"] == 5 and type(item["r"]) is int and item["id"] == 1 and item["text"] == "a ball"
    assert RLEMask(tuple(item["mask_cluster"]["size"]), item["mask_cluster"]["counts"]).area == 800


@pytest.mark.parametrize("kwargs, match", [({"mask": np.full((H, W), 2)}, "binary"), ({"text": " "}, "text"),
                                           ({"obj_id": "1"}, "obj_id"), ({"r": -1}, "r: expected a radius")])
def test_make_trajectory_rejects_bad_arguments(kwargs, match):
    args = dict(obj_id=1, mask=BOX, frames=T, text="x") | kwargs
    with pytest.raises(ConditionError, match=match):
        ops.make_trajectory([(0, 0), (5, 5)], 0, T, **args)


# ----------------------------------------------------------------------------- nearest index, erase, restore
def test_nearest_track_index_picks_the_closest_frame_inside_the_active_range():
    t = line(2, 15)
    for f in (2, 7, 12):  # frames 13 and 14 both hold the last point (padding): ties go to 13
        x, y = t.points[f]
        assert ops.nearest_track_index(t, (x + 0.1, y - 0.1)) == f
    # the [-1, -1] placeholders outside [st, et) are never picked, even for a click at (-1, -1)
    assert ops.nearest_track_index(t, (-1, -1)) == 2


def test_nearest_track_index_ties_go_to_the_earliest_frame_and_negative_points_are_skipped():
    static = ops.static_anchor((50, 50), obj_id=2, mask=BOX, frames=T)
    assert ops.nearest_track_index(static, (0, 0)) == 0
    entering = ops.make_trajectory([(-40, 50), (40, 50)], 0, 9, obj_id=3, mask=BOX, frames=T)
    assert ops.nearest_track_index(entering, (-40, 50)) == 4  # frames 0-3 have x < 0, as the tool skips them


def test_erase_marks_frames_between_nearest_indices_invisible():
    t = line(2, 15)
    erased = ops.erase_between(t, t.points[11], t.points[5])  # clicks in either order
    assert vis_str(erased) == "00111000000011100"
    assert erased.points == t.points  # points are kept, only visibility changes


def test_erase_takes_frames_inclusive_in_either_order_and_checks_bounds():
    t = line()
    assert vis_str(ops.erase(t, 3, 1)) == vis_str(ops.erase(t, 1, 3)) == "10001111111111111"
    with pytest.raises(ConditionError, match=r"f1: expected a frame in \[0, 17\), got 17"):
        ops.erase(t, 0, 17)


def test_restore_makes_only_frames_with_a_point_visible_again():
    t = ops.erase(line(2, 15), 0, 16)
    assert vis_str(t) == "0" * 17
    assert vis_str(ops.restore(t, 0, 16)) == "00111111111111100"
    assert vis_str(ops.restore(t, 5, 6)) == "00000110000000000"


def test_operations_are_pure():
    t = line(2, 15)
    before = (t.points, t.visibility, t.to_json())
    poly = np.array([[1.0, 2.0], [30.0, 40.0]])
    ops.polyline_track(poly, 0, 5, 5)
    assert poly.tolist() == [[1.0, 2.0], [30.0, 40.0]]
    for fn in (lambda x: ops.erase(x, 3, 5), lambda x: ops.restore(x, 0, 3), lambda x: ops.time_shift(x, 2),
               lambda x: ops.time_stretch(x, 1.5), lambda x: ops.jitter(x, 3.0, 0), lambda x: ops.translate(x, 5, 5),
               lambda x: ops.scale(x, 2.0, (0, 0)), lambda x: ops.resample_density(x, keep_every=3),
               lambda x: ops.entering(x, (-30, 20)), lambda x: ops.leaving(x, (300, 20))):
        assert fn(t) is not t
        assert (t.points, t.visibility, t.to_json()) == before
    scene = load_json(FIXTURES / "synth_small.json")
    value = scene.to_list()
    ops.remove_object(scene, 1), ops.set_caption(scene, 2, "x"), ops.add_trajectory(scene, line(text="y").replace(id=9))
    assert scene.to_list() == value


# ----------------------------------------------------------------------------- control points and re-drawing
def test_control_points_recover_the_clicked_polyline():
    np.testing.assert_array_equal(ops.control_points(line()), [[20, 10], [120, 60], [200, 20]])
    static = ops.static_anchor((5, 6), obj_id=2, mask=BOX, frames=T)
    np.testing.assert_array_equal(ops.control_points(static), [[5, 6]])


def test_resample_density_redraws_through_every_kth_point_over_the_same_frames():
    t = ops.erase(line(1, 16), 4, 6)
    r = ops.resample_density(t, keep_every=7)  # active points 0, 7, 14 of 15
    expect, _ = ops.polyline_track([t.points[1], t.points[8], t.points[15]], 1, 16, T)
    assert r.track.tolist() == expect.tolist()
    assert r.visibility == t.visibility and ops.active_range(r) == (1, 16)


def test_resample_density_with_two_points_is_a_straight_line_from_first_to_last():
    t = line()
    r = ops.resample_density(t, n_points=2)
    np.testing.assert_array_equal(ops.control_points(r), [t.points[0], t.points[-1]])
    with pytest.raises(ConditionError, match="exactly one of keep_every, n_points"):
        ops.resample_density(t, keep_every=2, n_points=3)
    with pytest.raises(ConditionError, match=r"n_points: expected 1\.\.17"):
        ops.resample_density(t, n_points=18)


def test_entering_starts_off_image_so_the_scene_marks_the_object_as_appearing():
    t = line(0, T)
    e = ops.entering(t, (-40.0, 30.0))
    assert e.points[0] == (-40.0, 30.0) and e.starts_off_image(H, W) and not t.starts_off_image(H, W)
    np.testing.assert_array_equal(ops.control_points(e), [[-40, 30], [20, 10], [120, 60], [200, 20]])
    scene = ops.add_trajectory(ops.new_scene(H, W, T), e)
    assert scene.entering_ids() == {"1"}
    with pytest.raises(ConditionError, match=r"from_point: expected a point outside the 128x224 image"):
        ops.entering(t, (10, 10))


def test_leaving_ends_off_image_at_the_given_point():
    t = line(0, T)
    out = ops.leaving(t, (260.0, 20.0))
    assert out.points[-1] == (260.0, 20.0) and out.points[0] == t.points[0]
    assert out.visibility == t.visibility


# ----------------------------------------------------------------------------- time and space transforms
def test_time_shift_moves_frames_and_drops_those_pushed_out():
    t = line(2, 15)
    later = ops.time_shift(t, 4)
    assert ops.active_range(later) == (6, 17) and later.points[6:] == t.points[2:13]
    earlier = ops.time_shift(t, -5)
    assert ops.active_range(earlier) == (0, 10) and earlier.points[:10] == t.points[5:15]
    assert ops.time_shift(t, 0) == t
    with pytest.raises(ConditionError, match=r"moves every active frame \[2, 15\) outside \[0, 17\)"):
        ops.time_shift(t, 20)


def test_time_stretch_by_one_is_the_identity_and_by_two_doubles_the_duration():
    t = ops.erase(line(2, 10), 4, 4)
    assert ops.time_stretch(t, 1.0).points == t.points
    slow = ops.time_stretch(t, 2.0)  # anchored at st = 2: old frame 2 + k shows at new frame 2 + 2k
    assert ops.active_range(slow) == (2, 17)  # old frames 2..9 -> 2..16, the rest dropped
    for k in range(8):
        assert slow.points[2 + 2 * k] == t.points[2 + k]
    np.testing.assert_allclose(slow.track[3], (t.track[2] + t.track[3]) / 2, atol=1e-12)  # halfway, in pixels
    assert slow.visibility[6] == 0 and slow.visibility[5] == 0 and slow.visibility[7] == 1  # old frame 4, nearest


def test_time_stretch_faster_around_an_anchor_frame():
    t = line(0, T)
    fast = ops.time_stretch(t, 0.5, anchor_frame=8)  # new frame g shows old frame 8 + 2(g - 8)
    assert ops.active_range(fast) == (4, 13)
    assert fast.points[4] == t.points[0] and fast.points[8] == t.points[8] and fast.points[12] == t.points[16]
    with pytest.raises(ConditionError, match="factor: expected > 0"):
        ops.time_stretch(t, 0.0)


def test_jitter_is_seeded_and_moves_only_active_points():
    t = line(2, 15)
    a, b = ops.jitter(t, 2.0, seed=3), ops.jitter(t, 2.0, seed=3)
    assert a == b and a != ops.jitter(t, 2.0, seed=4)
    assert a.points[:2] == t.points[:2] == ((-1.0, -1.0),) * 2 and a.visibility == t.visibility
    d = a.track[2:15] - t.track[2:15]
    assert 0.5 < d.std() < 4.0  # pixels: noise of std 2 px over 26 values
    assert ops.jitter(t, 0.0, seed=0).points == t.points


def test_translate_and_scale_move_only_active_points():
    t = line(2, 15)
    moved = ops.translate(t, 10, -5)
    np.testing.assert_array_equal(moved.track[2:15], t.track[2:15] + [10, -5])
    assert moved.points[:2] == t.points[:2]
    big = ops.scale(t, 2.0, (20.0, 10.0))
    np.testing.assert_allclose(big.track[2:15], (t.track[2:15] - [20, 10]) * 2 + [20, 10], atol=1e-12)
    squashed = ops.scale(t, (1.0, 0.0), (0.0, 7.0))
    assert (squashed.track[2:15, 1] == 7).all() and squashed.points[15:] == t.points[15:]


# ----------------------------------------------------------------------------- scenes
def test_new_scene_builds_a_file_that_loads_back_identically(tmp_path):
    scene = ops.new_scene(H, W, T)
    assert scene.trajectories == () and scene.size == (H, W, T)
    scene = ops.add_trajectory(scene, line(2, 15))
    scene = ops.add_trajectory(scene, ops.static_anchor((5, 5), obj_id=2, mask=np.ones((H, W), bool), frames=T))
    scene = ops.add_trajectory(scene, line(text="x").replace(id=3), caption="a blue cube")
    assert scene.captions == {"1": "a ball", "3": "a blue cube"} and scene.trajectories[2].text == "a blue cube"
    assert scene.color_map == {"1": "red", "3": "red"}  # what the tool writes for captioned ids
    path = tmp_path / "built.json"
    scene.to_json(path)
    assert load_json(path) == scene
    assert json.loads(path.read_text())[-1] == {"id_caption_map": {"1": "a ball", "3": "a blue cube"}}


def test_add_trajectory_refuses_mismatched_sizes_and_caption_conflicts():
    scene = ops.add_trajectory(ops.new_scene(H, W, T), line())
    with pytest.raises(ConditionError, match=r"expected 17 frames \(the scene's\), got 9"):
        ops.add_trajectory(scene, ops.make_trajectory([(1, 1)], 0, 9, obj_id=5, mask=BOX, frames=9))
    with pytest.raises(ConditionError, match=r"mask size \[64, 64\], expected the scene's \[128, 224\]"):
        ops.add_trajectory(scene, ops.static_anchor((1, 1), obj_id=5, mask=np.ones((64, 64), bool), frames=T))
    with pytest.raises(ConditionError, match=r"id 1 already has caption 'a ball', got 'a cat'; use set_caption"):
        ops.add_trajectory(scene, line(text="a cat"))
    with pytest.raises(ConditionError, match=r"text 'None' marks an anchor, but id 1 has caption"):
        ops.add_trajectory(scene, ops.static_anchor((1, 1), obj_id=1, mask=BOX, frames=T))
    same = ops.add_trajectory(scene, line(3, 9))  # a second trajectory of the same object and caption is fine
    assert len(same.trajectories) == 2 and same.captions == {"1": "a ball"}


def test_remove_object_drops_its_trajectories_caption_and_color():
    scene = load_json(FIXTURES / "synth_small.json")
    out = ops.remove_object(scene, 2)
    assert [t.id for t in out.trajectories] == [1, 3, 4, 5]
    assert list(out.captions) == ["1", "3"] and "2" not in out.color_map
    with pytest.raises(ConditionError, match="no object with id 42"):
        ops.remove_object(scene, 42)
    empty = ops.remove_object(ops.add_trajectory(ops.new_scene(H, W, T), line()), 1)
    with pytest.raises(ConditionError, match="^empty scene"):
        empty.to_json()


def test_set_caption_keeps_prompt_order_and_updates_trajectory_text():
    scene = load_json(FIXTURES / "synth_small.json")
    out = ops.set_caption(scene, "2", "a red kite")
    assert list(out.captions.items())[1] == ("2", "a red kite")
    assert [t.text for t in out.trajectories_of(2)] == ["a red kite"]
    anchor_to_object = ops.set_caption(scene, 4, "the table")  # an anchor id becomes a captioned object
    assert list(anchor_to_object.captions)[-1] == "4" and not anchor_to_object.trajectories_of(4)[0].is_anchor
    assert load_json(anchor_to_object.to_json()) == anchor_to_object
    with pytest.raises(ConditionError, match="caption: expected a caption, got 'None'"):
        ops.set_caption(scene, 1, "None")
    with pytest.raises(ConditionError, match="no trajectory has id 9"):
        ops.set_caption(scene, 9, "x")


def test_a_drawn_point_on_the_minus_one_placeholder_raises_rather_than_vanishing_on_reload():
    with pytest.raises(ConditionError, match=r"frame 1: the point \(-1, -1\) is the file format's 'no point' placeholder"):
        ops.make_trajectory([(-2, -2), (0, 0)], 0, 3, obj_id=1, mask=BOX, frames=T)
    with pytest.raises(ConditionError, match="placeholder"):
        ops.translate(ops.static_anchor((4, 4), obj_id=1, mask=BOX, frames=T), -5, -5)
