"""resize_scene: re-targeting a drawn scene to another image size and frame count."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import EXAMPLES, FIXTURES
from wclab.conditions import load_json
from wclab.conditions.resize import resize_scene
from wclab.errors import ConditionError


@pytest.fixture(scope="module")
def door():
    return load_json(EXAMPLES / "door.json")


def test_same_size_returns_the_scene_unchanged(door):
    assert resize_scene(door) is door
    assert resize_scene(door, 480, 832, 81) is door


def test_points_scale_with_the_image_and_placeholders_stay(door):
    small = resize_scene(door, 240, 416)
    assert small.size == (240, 416, 81)
    for a, b in zip(door.trajectories, small.trajectories):
        active = a.active_frames()
        np.testing.assert_allclose(b.track[active], a.track[active] * 0.5)
        assert np.all(b.track[~active] == -1)
        assert b.mask.size == (240, 416)
        np.testing.assert_array_equal(b.vis, a.vis)


def test_masks_are_resized_nearest(door):
    small = resize_scene(door, 240, 416)
    for a, b in zip(door.trajectories, small.trajectories):
        assert abs(b.mask.area * 4 - a.mask.area) <= 0.05 * a.mask.area + 50


def test_time_resampling_keeps_endpoints_and_interpolates(door):
    short = resize_scene(door, frames=21)  # old frame 4j for new frame j
    for a, b in zip(door.trajectories, short.trajectories):
        np.testing.assert_allclose(b.track, a.track[::4])
        np.testing.assert_array_equal(b.vis, a.vis[::4])


def test_entering_objects_still_enter_and_prompt_is_kept(door):
    small = resize_scene(door, 128, 224, 17)
    assert small.entering_ids() == door.entering_ids()
    assert small.captions == door.captions


def test_resized_scene_round_trips_through_json(door):
    small = resize_scene(door, 128, 224, 17)
    again = load_json(json.loads(small.to_json()))
    assert again == small


def test_bad_size_is_a_clear_error(door):
    with pytest.raises(ConditionError, match="frames"):
        resize_scene(door, frames=0)


def test_synth_small_upscales(door):
    s = load_json(FIXTURES / "synth_small.json")
    big = resize_scene(s, 256, 448, 33)
    assert big.size == (256, 448, 33)
    assert big.trajectories[0].track[0] == pytest.approx(s.trajectories[0].track[0] * 2)
