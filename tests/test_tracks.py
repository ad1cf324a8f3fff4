"""Point tracks: scene <-> arrays, ATI / Wan-Move track files both ways, tracks from a driving video (LK)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from wclab.conditions import Tracks, add_tracks, load_json, load_tracks, ops, save_tracks, tracks_from_video
from wclab.conditions.tracks import ATI_QUANT
from wclab.errors import ConditionError

H, W, T = 64, 96, 9
BOX = np.zeros((H, W), bool)
BOX[10:20, 10:30] = True


def scene():
    s = ops.new_scene(H, W, T)
    s = ops.add_trajectory(s, ops.erase(ops.make_trajectory([(10, 20), (50, 40)], 1, 6, obj_id=1, mask=BOX, frames=T,
                                                            text="a ball"), 4, 5))
    return ops.add_trajectory(s, ops.static_anchor((80, 8), obj_id=2, mask=BOX, frames=T))


def random_tracks(frames=T, n=3, seed=0):
    rng = np.random.default_rng(seed)
    pts = np.round(rng.uniform(0, 90, (frames, n, 2)) * 4) / 4  # quarter pixels: exact in float32 and × 8
    return Tracks(pts, rng.random((frames, n)) > 0.3)


def same(a: Tracks, b: Tracks):
    return np.array_equal(a.points, b.points) and np.array_equal(a.visibility, b.visibility)


# ----------------------------------------------------------------------------- scenes
def test_tracks_from_a_scene_and_back_write_the_same_json():
    s = scene()
    tr = Tracks.from_scene(s)
    assert tr.points.shape == (T, 2, 2) and tr.points.dtype == np.float32 and tr.visibility.dtype == bool
    assert tr.visibility[:, 0].tolist() == [False, True, True, True, False, False, False, False, False]
    assert tr.points[:, 0, 0].tolist() == [-1, 10, 20, 30, 40, 50, -1, -1, -1]
    assert Tracks.from_scene(s, include_anchors=False).count == 1
    trajs = tr.to_trajectories([BOX, BOX], ["a ball", "None"], obj_ids=[1, 2])
    assert tuple(trajs) == s.trajectories  # erased frames keep their points, inactive ones are (-1, -1)
    rebuilt = add_tracks(ops.new_scene(H, W, T), tr, BOX, ["a ball", "None"], obj_ids=[1, 2])
    assert rebuilt.to_json() == s.to_json() and load_json(rebuilt.to_json()) == rebuilt


def test_add_tracks_gives_new_ids_and_needs_the_scenes_frame_count():
    s = add_tracks(scene(), random_tracks(), BOX, "a leaf")
    assert [t.id for t in s.trajectories] == [1, 2, 3, 4, 5] and s.captions["3"] == "a leaf"
    load_json(s.to_json())
    with pytest.raises(ConditionError, match="resample=True"):
        add_tracks(scene(), random_tracks(frames=5), BOX, "a leaf")
    longer = add_tracks(scene(), random_tracks(frames=5), BOX, "a leaf", resample=True)
    assert longer.trajectories[-1].frames == T


def test_resampling_keeps_the_ends_and_interpolates_linearly():
    tr = Tracks(np.array([[[0, 0]], [[10, 20]]], float), np.array([[True], [False]]))
    r = tr.resampled(5)
    assert r.points[:, 0, 0].tolist() == [0, 2.5, 5, 7.5, 10] and r.visibility[:, 0].tolist() == [1, 1, 0, 0, 0]


# ----------------------------------------------------------------------------- files
@pytest.mark.parametrize("style", ["ati", "wanmove"])
@pytest.mark.parametrize("ext", ["npy", "pth"])
def test_track_files_round_trip(tmp_path, style, ext):
    tr = random_tracks()
    written = save_tracks(tr, tmp_path / f"clip_tracks.{ext}", style=style)
    assert same(load_tracks(written[0]), tr)
    if style == "wanmove" and ext == "npy":
        assert [p.name for p in written] == ["clip_tracks.npy", "clip_visibility.npy"]
    raw = save_tracks(tr, tmp_path / f"raw_tracks.{ext}", style=style, ati_rate=False)
    assert same(load_tracks(raw[0], ati_rate=False), tr)


def test_ati_files_have_atis_layout_and_rate(tmp_path):
    tr = random_tracks(frames=81, n=2)
    save_tracks(tr, tmp_path / "a.pth", style="ati")
    blob = torch.load(tmp_path / "a.pth", weights_only=True)
    assert isinstance(blob, bytes)
    arr = np.load(io.BytesIO(blob))["array"]
    assert arr.shape == (2, 121, 1, 3) and arr.dtype == np.float32  # [N, 121 frames at 24 fps, 1, (x, y, vis)]
    assert np.array_equal(arr[:, 0, 0, :2] / ATI_QUANT, tr.points[0]) and set(np.unique(arr[..., 2])) <= {0, 8}
    # ATI's loader: frame 0, then repeat_interleave(2)[1::3] of the other 120 frames -> our 81 frames exactly
    rest = np.repeat(arr[:, 1:], 2, axis=1)[:, 1::3]
    model = np.concatenate([arr[:, :1], rest], axis=1)[:, :, 0] / ATI_QUANT
    assert np.array_equal(model[..., :2].transpose(1, 0, 2), tr.points)
    assert np.array_equal(model[..., 2].T > 0.5, tr.visibility)
    np.save(tmp_path / "a.npy", arr)  # the bare ATI array as .npy reads the same
    assert same(load_tracks(tmp_path / "a.npy"), tr)


def test_wanmove_files_have_wanmoves_layout(tmp_path):
    tr = random_tracks()
    save_tracks(tr, tmp_path / "tracks.npy", style="wanmove")
    pts, vis = np.load(tmp_path / "tracks.npy"), np.load(tmp_path / "visibility.npy")
    assert pts.shape == (1, T, 3, 2) and vis.shape == (1, T, 3)
    np.save(tmp_path / "b_tracks.npy", pts[0])  # without the batch axis, float visibility as Wan-Move's demo writes
    np.save(tmp_path / "b_visibility.npy", vis[0].astype(np.float64))
    assert same(load_tracks(tmp_path / "b_tracks.npy"), tr)


def test_bad_track_files_raise_naming_the_problem(tmp_path):
    tr = random_tracks()
    with pytest.raises(ConditionError, match="style"):
        save_tracks(tr, tmp_path / "x.npy", style="cotracker")
    with pytest.raises(ConditionError, match=r"\.npy or \.pth"):
        save_tracks(tr, tmp_path / "x.json")
    with pytest.raises(ConditionError, match="tracks.npy"):
        save_tracks(tr, tmp_path / "x.npy", style="wanmove")
    with pytest.raises(ConditionError, match="odd frame count"):
        save_tracks(random_tracks(frames=8), tmp_path / "x.npy", style="ati")
    np.save(tmp_path / "lonely_tracks.npy", np.zeros((T, 2, 2)))
    with pytest.raises(ConditionError, match="visibility"):
        load_tracks(tmp_path / "lonely_tracks.npy")
    np.save(tmp_path / "odd.npy", np.zeros((2, 11, 1, 3), np.float32))
    with pytest.raises(ConditionError, match="divisible by 3"):
        load_tracks(tmp_path / "odd.npy")
    np.save(tmp_path / "m_tracks.npy", np.zeros((T, 2, 2)))
    np.save(tmp_path / "m_visibility.npy", np.zeros((T, 3)))
    with pytest.raises(ConditionError, match="does not match"):
        load_tracks(tmp_path / "m_tracks.npy")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "w.pth")
    with pytest.raises(ConditionError, match="'tracks' and 'visibility'"):
        load_tracks(tmp_path / "w.pth")
    with pytest.raises(ConditionError, match="no such"):
        load_tracks(tmp_path / "missing.pth")
    with pytest.raises(ConditionError, match="points"):
        Tracks(np.zeros((T, 2, 3)), np.zeros((T, 2), bool))
    with pytest.raises(ConditionError, match="visibility"):
        Tracks(np.zeros((T, 2, 2)), np.zeros((T, 3), bool))


# ----------------------------------------------------------------------------- tracks from a video
def textured_square_video(frames=12, occlude=range(5, 8)):
    """A textured 32 px square moving 2 px right and 1 px down per frame over a textured background; a flat grey
    patch covers the square's lower-right quarter on the ``occlude`` frames."""
    rng = np.random.default_rng(0)
    bg = np.kron((rng.random((24, 36)) * 120).astype(np.uint8), np.ones((4, 4), np.uint8))  # 96 x 144
    tex = np.kron((rng.random((16, 16)) * 255).astype(np.uint8), np.ones((2, 2), np.uint8))
    video = []
    for f in range(frames):
        img = bg.copy()
        x, y = 20 + 2 * f, 20 + f
        img[y:y + 32, x:x + 32] = tex
        if f in occlude:
            img[y + 16:y + 32, x + 16:x + 32] = 200
        video.append(np.repeat(img[..., None], 3, axis=-1))
    return np.stack(video)


def test_tracks_from_video_recover_the_motion_and_mark_occlusion():
    video = textured_square_video()
    tr = tracks_from_video(video, [(28, 28), (44, 44)])  # in the upper-left quarter (never covered), lower-right
    truth = np.array([(28 + 2 * f, 28 + f) for f in range(12)], float)
    assert tr.points.shape == (12, 2, 2)
    assert tr.visibility[:, 0].all() and np.abs(tr.points[:, 0] - truth).max() < 1.0
    hidden = tr.visibility[:, 1]
    assert hidden[:5].all() and not hidden[5:8].any()  # lost when covered (and stays lost: LK follows from frame 0)
    assert np.abs(tr.points[:5, 1] - (truth[:5] + 16)).max() < 1.0
    assert np.isfinite(tr.points).all()  # a lost point holds its last position
    s = add_tracks(ops.new_scene(96, 144, 12), tr, np.ones((96, 144), bool), ["a box", "a box corner"])
    assert load_json(s.to_json()).trajectories[1].visibility[4:8] == (1, 0, 0, 0)


def test_tracks_from_video_bad_input():
    video = textured_square_video(frames=3)
    with pytest.raises(ConditionError, match="video"):
        tracks_from_video(video.astype(np.float32), [(24, 24)])
    with pytest.raises(ConditionError, match=r"points\[1\]"):
        tracks_from_video(video, [(24, 24), (500, 24)])
    with pytest.raises(ConditionError, match="points"):
        tracks_from_video(video, [24, 24])
