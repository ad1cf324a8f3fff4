"""Ablation variants and runs (wclab.inspect.ablations) and the comparison metrics (wclab.inspect.metrics).

Variant builders run on synth_small (object ids 1, 2 (entering from frame 4), 3; anchors 4 and 5). The run
uses the shared tiny 2-step session (see test_inspect_attention) with decode="preview" (latent-frame videos,
[F'=5, 128, 224, 3]) to stay fast.
"""
from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import FIXTURES
from conftest import tiny_base_session
from wclab.conditions import load_json, ops
from wclab.encode import encode_conditions
from wclab.inspect import (InspectError, Variant, anchor_variants, base_variant, beta_variants, caption_variants,
                           density_variants, lk_tracker, mask_mass_fraction, pairwise_pixel_difference,
                           pixel_difference, run_ablations, sampling_variants, track_trajectories,
                           trajectory_following_error, uncaption, visibility_variants)
from wclab.models import fast


@pytest.fixture(scope="module")
def scene():
    return load_json(FIXTURES / "synth_small.json")


# ---------------------------------------------------------------------------------------------- variants
def test_density_variants_redraw_chosen_objects_through_fewer_points(scene):
    (v,) = density_variants(scene, keep_every=(4,), objects=[1])
    assert v.name == "every_4" and v.kind == "density"
    new, old = v.scene.trajectories[0], scene.trajectories[0]
    assert ops.active_range(new) == ops.active_range(old)
    assert len(ops.control_points(new)) < len(ops.control_points(old))
    assert v.scene.trajectories[1:] == scene.trajectories[1:]


def test_visibility_variants_erase_the_middle_or_the_start(scene):
    erased, hidden = visibility_variants(scene, objects=["3"])
    vis = np.asarray(erased.scene.trajectories[2].visibility)
    assert vis[5:11].tolist() == [0] * 6 and vis[:5].tolist() == [1] * 5  # frames 5..10 of 0..16
    assert np.asarray(hidden.scene.trajectories[2].visibility)[:9].tolist() == [0] * 9
    assert erased.scene.trajectories[:2] == scene.trajectories[:2]


def test_anchor_variants_keep_or_add_static_anchors(scene):
    counts = {v.name: sum(t.is_anchor for t in v.scene.trajectories) for v in anchor_variants(scene, (0, 1, 4))}
    assert counts == {"anchors_0": 0, "anchors_1": 1, "anchors_4": 4}
    added = [t for t in anchor_variants(scene, (3,))[0].scene.trajectories if t.is_anchor][-1]
    assert added.id == 6 and (added.track == added.track[0]).all() and added.vis.min() == 1
    with pytest.raises(InspectError, match="counts"):
        anchor_variants(scene, (11,))


def test_caption_removal_turns_the_object_into_an_anchor(scene):
    v = caption_variants(scene, objects=[2])[0]
    assert list(v.scene.captions) == ["1", "3"]
    assert [t.is_anchor for t in v.scene.trajectories] == [False, True, False, True, True]
    prompt = encode_conditions(v.scene, torch.zeros(1, 16, 1, 16, 28)).prompt
    assert prompt.lines == ["Object 1: object 1 moves along its path.", "Object 2: object 3 moves along its path."]
    only = uncaption(uncaption(scene, 1), 2)
    with pytest.raises(InspectError, match="only caption"):
        uncaption(only, 3)
    with pytest.raises(InspectError, match="objects"):
        density_variants(scene, objects=[4])  # an anchor


# ---------------------------------------------------------------------------------------------- running
@pytest.fixture(scope="module")
def result(scene):
    variants = [base_variant(scene), Variant("base_again", scene), *beta_variants(scene, (1.0,)),
                *density_variants(scene, (8,)), *caption_variants(scene, ["3"])]
    return run_ablations(tiny_base_session(), variants, decode="preview", progress=False)


def test_ablation_table_has_one_row_per_variant(result):
    t = result.table
    assert t.variant.tolist() == ["base", "base_again", "beta_1", "every_8", "no_caption_3"]
    for col in ["kind", "settings", "follow_error", "anchor_error", "lost", "attention_in_mask", "mask_area",
                "pixel_diff", "seconds"]:
        assert col in t.columns
    assert t.loc[2, "settings"] == {"beta": 1.0}
    assert set(result.attention.variant) == set(t.variant)
    assert set(result.tracking.columns) >= {"variant", "trajectory", "mean_error", "lost"}


def test_variants_share_the_seed_and_differ_only_by_their_change(result):
    diff = result.table.set_index("variant").pixel_diff
    assert diff["base"] == 0 and diff["base_again"] == 0  # same noise, same scene: identical
    assert (diff[["beta_1", "every_8", "no_caption_3"]] > 0).all()
    pairs = result.pixel_differences()
    assert pairs.loc["beta_1", "base"] == diff["beta_1"] and pairs.loc["beta_1", "every_8"] > 0
    assert tiny_base_session().step_index == 0  # the shared session itself never stepped


def test_bias_off_lowers_attention_inside_the_masks(result):
    a = result.table.set_index("variant").attention_in_mask
    assert a["beta_1"] < a["base"]
    ids = result.attention[result.attention.variant == "no_caption_3"].id.tolist()
    assert ids == ["1", "2"]


def test_comparison_grid_holds_every_variant(result):
    assert all(v.shape == (5, 128, 224, 3) for v in result.videos.values())
    assert result.grid.shape == (5, 2 * 128 + 2, 3 * 224 + 4, 3)


def test_sampling_variants_compare_motion_timing_in_the_ablation_table(scene):
    """Exact vs step-distilled vs step-cached sampling of one scene: each variant gets a row with how late its
    objects are (mean_lag: behind the drawing; lag_vs_first: behind the exact run) and per-frame timing rows."""
    variants = sampling_variants(scene, distilled=True, caches={"cached": fast.FixedCache(2)})
    assert [v.name for v in variants] == ["exact", "distilled", "cached"]
    assert variants[1].settings == {"steps": 4, "shift": 5.0, "cfg": 1.0, "step_list": (1000, 750, 500, 250)}
    result = run_ablations(tiny_base_session(), variants, decode="preview", progress=False, timing=True)
    table = result.table.set_index("variant")
    assert {"mean_lag", "lag_vs_first"} <= set(table.columns)
    timing = result.timing
    assert set(timing.variant) == {"exact", "distilled", "cached"}
    frames = 5  # preview: one frame per latent frame
    assert len(timing) == 3 * len(scene.trajectories) * frames
    exact = timing[timing.variant == "exact"]
    np.testing.assert_array_equal(exact.lag_vs_reference.dropna(), 0.0)
    assert exact.drawn_frame.notna().any()
    captioned = timing[(timing.variant == "distilled") & ~timing.anchor]
    assert table.loc["distilled", "lag_vs_first"] == pytest.approx(captioned.lag_vs_reference.mean(), nan_ok=True)
    assert table.loc["distilled", "pixel_diff"] > 0  # 4 steps without CFG: another video


def test_a_variants_around_context_is_held_while_it_runs(scene):
    seen = []

    class Around:
        def __init__(self, session):
            self.session = session

        def __enter__(self):
            seen.append(("enter", self.session.step_index))

        def __exit__(self, *exc):
            seen.append(("exit", self.session.step_index))

    run_ablations(tiny_base_session(), [Variant("around", scene, around=Around)], decode="preview",
                  tracking=False, progress=False)
    assert seen == [("enter", 0), ("exit", 2)]
    session = tiny_base_session().branch()
    (cached,) = sampling_variants(scene, distilled=False, caches={"c": fast.EasyCache()})[1:]
    with cached.around(session) as caches:
        assert [c.policy for c in caches] == [fast.EasyCache()] * 2
        assert session.models.high.forward == caches[0].forward
    assert "forward" not in vars(session.models.high)
    with pytest.raises(InspectError, match="caches"):
        sampling_variants(scene, caches={"c": {"threshold": 0.1}})


def test_bad_runs_raise(scene):
    with pytest.raises(InspectError, match="decode"):
        run_ablations(tiny_base_session(), [base_variant(scene)], decode="jpeg")
    with pytest.raises(InspectError, match="unique"):
        run_ablations(tiny_base_session(), [base_variant(scene), base_variant(scene)])
    stepped = tiny_base_session().branch()
    stepped.step()
    with pytest.raises(InspectError, match="not stepped"):
        run_ablations(stepped, [base_variant(scene)])


# ---------------------------------------------------------------------------------------------- metrics
def textured_video(track: np.ndarray, size=(96, 160), patch=15, seed=0) -> np.ndarray:
    """A fixed smooth-noise background with a noise patch (2·patch+1 px) centred on ``track`` [N, 2]."""
    rng = np.random.default_rng(seed)
    H, W = size
    bg = cv2.GaussianBlur(rng.integers(0, 255, (H, W, 3)).astype(np.uint8), (7, 7), 2)
    tex = cv2.GaussianBlur(rng.integers(0, 255, (2 * patch + 1, 2 * patch + 1, 3)).astype(np.uint8), (5, 5), 1)
    frames = []
    for x, y in track:
        f = bg.copy()
        x, y = int(round(x)), int(round(y))
        f[y - patch: y + patch + 1, x - patch: x + patch + 1] = tex
        frames.append(f)
    return np.stack(frames)


@pytest.fixture(scope="module")
def moving():
    """T = 9 frames, an object moving 8 px per frame to the right (integer positions), plus an anchor."""
    traj = ops.make_trajectory([(30, 48), (94, 48)], 0, 9, obj_id=1, mask=np.ones((96, 160), bool), frames=9)
    s = ops.add_trajectory(ops.new_scene(96, 160, 9), traj, caption="a patch")
    return ops.add_trajectory(s, ops.static_anchor((140, 20), obj_id=2, mask=np.ones((96, 160), bool), frames=9))


def test_lk_follows_a_patch_that_moves_along_the_trajectory(moving):
    video = textured_video(moving.trajectories[0].track)
    errors = trajectory_following_error(video, moving)
    obj = errors.set_index("id").loc["1"]
    assert obj.visible_frames == 9 and obj.mean_error < 1.0 and obj.lost == 0
    assert errors.set_index("id").loc["2"].mean_error < 1.0  # the background does not move


def test_a_video_that_ignores_the_trajectory_has_a_large_error(moving):
    still = textured_video(np.repeat(moving.trajectories[0].track[:1], 9, axis=0))
    obj = trajectory_following_error(still, moving).set_index("id").loc["1"]
    assert obj.final_error > 50  # the drawn path ends 64 px from where the patch stays


def test_invisible_frames_are_not_scored_and_latent_videos_use_group_means(moving):
    hidden = moving.with_trajectory(0, ops.erase(moving.trajectories[0], 2, 5))
    frames = track_trajectories(textured_video(moving.trajectories[0].track), hidden)
    obj = frames[frames.id == "1"]
    assert obj.error.isna().tolist() == [True, False, True, True, True, True, False, False, False]  # 0: query
    lat = textured_video(np.stack([moving.trajectories[0].track[0], moving.trajectories[0].track[1:5].mean(0),
                                   moving.trajectories[0].track[5:9].mean(0)]))
    assert trajectory_following_error(lat, moving).set_index("id").loc["1"].visible_frames == 3


def test_a_custom_tracker_can_replace_lk(moving):
    def oracle(video, queries):
        tracks = np.repeat(moving.trajectories[0].track[None], len(queries), axis=0)
        return tracks, np.ones(tracks.shape[:2], bool)

    errors = trajectory_following_error(np.zeros((9, 96, 160, 3), np.uint8), moving, tracker=oracle)
    assert errors.set_index("id").loc["1"].mean_error == 0
    tracks, found = lk_tracker(textured_video(moving.trajectories[0].track), np.array([[4, 62, 48]]))
    assert found.all() and np.abs(tracks[0, 0] - [30, 48]).max() < 1.0  # backward from the query frame too


def test_pixel_and_mask_metrics():
    a, b = np.zeros((2, 4, 4, 3), np.uint8), np.full((2, 4, 4, 3), 10, np.uint8)
    assert pixel_difference(a, b) == 10
    table = pairwise_pixel_difference({"a": a, "b": b})
    assert isinstance(table, pd.DataFrame) and table.loc["a", "b"] == 10 and table.loc["b", "b"] == 0
    heat, mask = np.array([[1.0, 3.0]]), np.array([[0, 1]])
    assert mask_mass_fraction(heat, mask) == 0.75
    with pytest.raises(InspectError, match="differ in shape"):
        pixel_difference(a, b[:1])
    with pytest.raises(InspectError, match="same shape"):
        mask_mass_fraction(heat, mask.T)
