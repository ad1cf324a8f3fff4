"""Latents along trajectories, token-mask statistics, crops and condition-channel videos
(wclab.inspect.trajectory_latents), on one finished 2-step branch of the shared tiny session."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import tiny_base_session
from wclab.conditions import ops
from wclab.inspect import (InspectError, condition_videos, latent_path, path_crops, sample_trajectories,
                           token_mask_stats, video_crops)


@pytest.fixture(scope="module")
def done():
    return tiny_base_session().branch().run()


def test_samples_are_the_field_at_the_encoder_cell_of_each_latent_frame(done):
    samples = sample_trajectories(done, "x0")
    assert [s.id for s in samples] == ["1", "2", "3", "4", "5"]
    s = samples[0]
    assert tuple(s.values.shape) == (2, 5, 16) and s.steps == [0, 1]
    track = done.scene.trajectories[0].track
    for f in range(5):  # frame 0 alone, then the mean of frames 4f-3..4f
        x, y = track[0] if f == 0 else track[4 * f - 3: 4 * f + 1].mean(0)
        for step in (0, 1):
            expected = done.history[step].x0[0, :, f, int(y // 8), int(x // 8)]
            torch.testing.assert_close(s.values[step, f], expected, rtol=0, atol=1e-6)  # mean order: ±1 ulp px
    assert s.visibility.tolist() == [1, 1, 0, 0, 1]  # visibility of frames 0, 4, 8, 12, 16


def test_off_image_positions_give_nan(done):
    entering = sample_trajectories(done, "latents", steps=[-1])[1]  # id 2 has no point before frame 4
    assert entering.cells[0].tolist() == [-1, -1]
    assert torch.isnan(entering.values[0, 0]).all() and not torch.isnan(entering.values[0, 1:]).any()
    table = entering.to_frame()
    assert len(table) == 5
    assert list(table.columns) == ["step", "frame", "x_cell", "y_cell", "visibility", "norm", "mean", "trajectory",
                                   "id"]
    assert math.isnan(table.norm[0]) and (table.step == 1).all()


def test_token_mask_stats_match_masked_moments(done):
    table = token_mask_stats(done, "x0")
    assert len(table) == 3 * 2 * 2  # objects x regions x steps
    row = table[(table.id == "1") & (table.region == "inside") & (table.step == 1)].iloc[0]
    mask = done.conditions.token_masks["1"][0, 0] > 0.5  # [F', h/2, w/2]
    cells = torch.nn.functional.interpolate(mask[None, None].float(), scale_factor=(1, 2, 2))[0, 0] > 0.5
    values = done.history[1].x0[0][:, cells]  # [16, cells]
    assert row.cells == 4 * int(mask.sum())
    assert row["mean"] == pytest.approx(float(values.mean()), abs=1e-6)
    assert row["std"] == pytest.approx(float(values.std()), abs=1e-6)
    assert row["norm"] == pytest.approx(float(values.norm(dim=0).mean()), abs=1e-5)
    outside = table[(table.id == "1") & (table.region == "outside") & (table.step == 1)].iloc[0]
    assert outside.cells + row.cells == 5 * 16 * 28


def test_path_crops_centre_on_the_sample_and_pad_with_zeros(done):
    crops = path_crops(done, 2, "x0", step=-1, size=8)  # id 3, near the right side at first
    assert tuple(crops.shape) == (5, 16, 8, 8)
    s = sample_trajectories(done, "x0", steps=[1])[2]
    for f in range(5):
        torch.testing.assert_close(crops[f, :, 4, 4], s.values[0, f])
    corner = path_crops(done, 2, size=64)  # larger than the 16x28 grid: the outside is zero-padded
    assert float(corner[0, :, 0, 0].abs().max()) == 0


def test_video_crops_follow_the_track():
    traj = ops.make_trajectory([(20, 30), (100, 60)], 0, 9, obj_id=1, mask=np.ones((96, 128), bool), frames=9,
                               text="a dot")
    video = np.zeros((9, 96, 128, 3), np.uint8)
    for t, (x, y) in enumerate(traj.track):
        video[t, int(y), int(x)] = 255
    crops = video_crops(video, traj, size=9)
    assert crops.shape == (9, 9, 9, 3) and crops.dtype == np.uint8
    assert (crops[:, 4, 4] == 255).all() and crops.sum() == 9 * 3 * 255


def test_condition_videos_overlay_channels_on_the_start_image(done):
    videos = condition_videos(done)
    assert set(videos) == {"gaussian", "point", "token_masks"}
    image = np.asarray(done.image)
    for v in videos.values():
        assert v.shape == (5, 128, 224, 3) and v.dtype == np.uint8
    g = done.conditions.gaussian[0, 0].numpy().repeat(8, 1).repeat(8, 2)  # [F', H, W], 0..255
    assert (videos["gaussian"][g == 0] == image[None].repeat(5, 0)[g == 0]).all()
    assert (np.abs(videos["gaussian"].astype(int) - image.astype(int)).sum(-1)[g == 255] > 30).all()
    m = done.conditions.token_masks["1"][0, 0].numpy().repeat(16, 1).repeat(16, 2) > 0
    assert (videos["token_masks"][m] != image[None].repeat(5, 0)[m]).any(-1).all()
    assert condition_videos(done, frames="video")["point"].shape == (17, 128, 224, 3)


def test_latent_path_marks_off_image_cells():
    traj = ops.make_trajectory([(-20, 10), (60, 10)], 0, 9, obj_id=1, mask=np.ones((32, 64), bool), frames=9)
    centres, cells, vis = latent_path(traj, 32, 64)
    assert cells[0].tolist() == [-1, -1] and (cells[1:] >= 0).all() and vis.tolist() == [1, 1, 1]


def test_asking_for_unrecorded_things_raises(done):
    with pytest.raises(InspectError, match="field"):
        sample_trajectories(done, "noise")
    with pytest.raises(InspectError, match="outside"):
        sample_trajectories(done, steps=[2])
    with pytest.raises(InspectError, match="no recorded steps"):
        sample_trajectories(tiny_base_session())
    with pytest.raises(InspectError, match="trajectory"):
        path_crops(done, 7)
    light = tiny_base_session().branch()
    light.update(record="latents")
    light.run(until=1)
    with pytest.raises(InspectError, match="'x0' was not recorded"):
        token_mask_stats(light)
