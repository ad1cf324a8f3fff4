"""Motion timing: where along its drawn path each object is on each frame, and how many frames two runs differ
by (e.g. exact vs distilled sampling). The tracker is replaced by one that reports known positions, so the
timing arithmetic is checked exactly; lk_tracker itself is tested in tests/test_ablations.py."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import REPO
from wclab.conditions import load_json
from wclab.inspect.display import positions
from wclab.inspect.metrics import drawn_frame, timing_comparison, timing_lag, trajectory_timing

BALL = 0  # examples/ci/ball.json: trajectory 0 moves right on every frame until frame 7, then stops


@pytest.fixture(scope="module")
def scene():
    return load_json(REPO / "examples" / "ci" / "ball.json")


def delayed_tracker(scene, delay: float):
    """A tracker whose points follow the drawn path ``delay`` frames late (linear in between)."""
    def tracker(video, queries):
        tracks = []
        for t0, x, y in queries:
            k = next(i for i, tr in enumerate(scene.trajectories)
                     if np.allclose(positions(tr, len(video))[0][int(t0)], (x, y)))
            xy = positions(scene.trajectories[k], len(video))[0]
            f = np.clip(np.arange(len(video)) - delay, 0, len(video) - 1)
            tracks.append(np.stack([np.interp(f, np.arange(len(video)), xy[:, c]) for c in (0, 1)], 1))
        return np.array(tracks), np.ones((len(queries), len(video)), bool)
    return tracker


def test_drawn_frame_interpolates_along_the_nearest_segment():
    path = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]])
    frames = np.array([0.0, 1.0, 2.0])
    assert drawn_frame(np.array([15.0, 3.0]), path, frames) == pytest.approx(1.5)
    assert drawn_frame(np.array([-5.0, 0.0]), path, frames) == 0.0
    assert np.isnan(drawn_frame(np.array([np.nan, 0.0]), path, frames))


def test_an_object_two_frames_late_has_a_lag_of_two_frames_while_it_moves(scene):
    video = np.zeros((scene.frames, scene.height, scene.width, 3), np.uint8)
    timing = trajectory_timing(video, scene, delayed_tracker(scene, 2.0), trajectories=[BALL])
    moving = timing[(timing.frame >= 2) & (timing.frame <= 7)]
    np.testing.assert_allclose(moving.lag, 2.0, atol=1e-6)
    assert timing[timing.frame == 0].lag.item() == 0.0


def test_timing_lag_reports_each_run_against_the_reference(scene):
    """Each run's video carries its tracker delay in its first pixel (tenths of a frame)."""
    def tracker(video, queries):
        return delayed_tracker(scene, video[0, 0, 0, 0] / 10)(video, queries)

    def video(delay_tenths: int) -> np.ndarray:
        return np.full((scene.frames, scene.height, scene.width, 3), delay_tenths, np.uint8)

    videos = {"exact": video(0), "distilled": video(15)}
    table = timing_lag(videos, scene, tracker)
    table = table[table.trajectory == BALL].set_index("run")
    assert table.loc["exact", "lag_vs_reference"] == 0.0
    assert 0.9 < table.loc["distilled", "lag_vs_reference"] <= 1.5  # 1.5 frames late while moving, less at the ends
    with pytest.raises(Exception, match="reference 'none'"):
        timing_lag(videos, scene, tracker, reference="none")


def test_timing_comparison_gives_the_lag_between_two_runs_frame_by_frame(scene):
    def tracker(video, queries):
        return delayed_tracker(scene, video[0, 0, 0, 0] / 10)(video, queries)

    videos = {name: np.full((scene.frames, scene.height, scene.width, 3), tenths, np.uint8)
              for name, tenths in (("exact", 10), ("late", 30))}  # 1 and 3 frames behind the drawing
    table = timing_comparison(videos, scene, tracker)
    assert list(table.columns) == ["run", "trajectory", "id", "anchor", "frame", "drawn_frame", "lag",
                                   "lag_vs_reference"]
    ball = table[(table.trajectory == BALL) & table.frame.between(3, 7)]
    np.testing.assert_allclose(ball[ball.run == "exact"].lag_vs_reference, 0.0)
    np.testing.assert_allclose(ball[ball.run == "late"].lag_vs_reference, 2.0, atol=1e-6)
    np.testing.assert_allclose(ball[ball.run == "late"].lag, 3.0, atol=1e-6)
    again = timing_comparison(videos, {"exact": scene, "late": scene}, tracker, reference="late")
    late = again[(again.trajectory == BALL) & again.frame.between(3, 7)]
    np.testing.assert_allclose(late[late.run == "exact"].lag_vs_reference, -2.0, atol=1e-6)
    with pytest.raises(Exception, match="no scene"):
        timing_comparison(videos, {"exact": scene}, tracker)
