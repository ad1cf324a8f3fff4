"""Display helpers (wclab.inspect.display): overlays, heatmaps, grids, figures, showing and saving videos.
No models: synthetic uint8 videos and a small hand-made scene."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import imageio_ffmpeg  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from wclab.conditions import ops  # noqa: E402
from wclab.inspect import (expand_latent_frames, heatmap_overlay, mask_overlay, overlay_trajectories,  # noqa: E402
                           plot_heatmaps, plot_step_grid, plot_trajectories, save_video, show_video, show_videos,
                           video_grid)
from wclab.inspect.display import DisplayError, object_colors, use_bundled_ffmpeg  # noqa: E402

H, W, T = 64, 96, 9


@pytest.fixture(scope="module")
def scene():
    """One captioned object moving right along y = 32, invisible over frames 3..5, plus one static anchor."""
    obj = ops.erase(ops.make_trajectory([(10, 32), (82, 32)], 0, T, obj_id=1, mask=np.ones((H, W), bool), frames=T),
                    3, 5)
    s = ops.add_trajectory(ops.new_scene(H, W, T), obj, caption="a ball rolls right")
    anchor = ops.static_anchor((48, 10), obj_id=2, mask=np.ones((H, W), bool), frames=T)
    return ops.add_trajectory(s, anchor)


def gray_video(n=T):
    return np.full((n, H, W, 3), 40, np.uint8)


def test_overlay_draws_a_dot_when_visible_and_a_ring_when_invisible(scene):
    out = overlay_trajectories(gray_video(), scene, radius=5, thickness=2)
    color = np.array(object_colors(scene)["1"])
    for t, (x, y) in enumerate(scene.trajectories[0].track):
        below = out[t, int(round(y)) + 3, int(round(x))]  # inside the marker, off the horizontal path line
        if 3 <= t <= 5:
            assert (below == 40).all(), t  # ring: its inside is untouched
        else:
            assert np.abs(below.astype(int) - color).max() <= 2, t
    assert (out[:, 60, 5] == 40).all()  # far from every track: unchanged
    assert (out[:, 10, 48] != 40).any(-1).all()  # the static anchor's dot on every frame


def test_overlay_on_latent_frames_uses_group_mean_positions(scene):
    out = overlay_trajectories(gray_video(3), scene, arrows=False)  # F' = 3 for T = 9
    x = scene.trajectories[0].track[5:9, 0].mean()  # latent frame 2 = frames 5..8
    assert (out[2, 32 + 3, int(round(x))] != 40).any()
    with pytest.raises(DisplayError, match="expected T=9 or F'=3"):
        overlay_trajectories(gray_video(4), scene)
    with pytest.raises(DisplayError, match="scene is 64x96"):
        overlay_trajectories(np.zeros((9, 32, 32, 3), np.uint8), scene)


def test_overlay_path_is_solid_where_visible_and_dashed_where_invisible(scene):
    last = overlay_trajectories(gray_video(), scene, arrows=False)[-1]
    track = scene.trajectories[0].track  # x = 10, 19, 28, ... along y = 32
    row = np.abs(last[32].astype(int) - 40).max(-1) > 30  # drawn (anti-aliased edges count as drawn)
    assert row[int(track[0, 0]) + 6: int(track[2, 0])].all()  # frames 0..2: solid
    dashes = row[int(track[2, 0]) + 6: int(track[6, 0]) - 6]  # frames 2..6 touch invisible 3..5
    assert not dashes.all() and dashes.mean() > 0.4  # gaps between dashes


def test_plot_trajectories_dashes_invisible_segments(scene):
    fig = plot_trajectories(scene, image=np.zeros((H, W, 3), np.uint8), tick_every=4)
    track = scene.trajectories[0].track
    dashed = [ln for ln in fig.axes[0].lines if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and np.allclose(dashed[0].get_xdata(), track[2:7, 0])  # frames 2..6
    solid = [ln for ln in fig.axes[0].lines if ln.get_linestyle() == "-"]
    assert len(solid) == 3  # the object's runs 0..2 and 6..8, and the anchor
    labels = [t.get_text() for t in fig.axes[0].texts if t.get_text()]
    assert labels == ["0", "4", "8", "0"]  # frame ticks; the static anchor labelled once


def test_heatmap_overlay_leaves_zero_heat_untouched():
    heat = torch.zeros(2, 4, 6)
    heat[1, 2, 3] = 5.0
    image = np.full((H, W, 3), 100, np.uint8)
    out = heatmap_overlay(heat, image, smooth=False)
    assert out.shape == (2, H, W, 3)
    assert (out[0] == 100).all()
    assert (out[1, 2 * 16 + 8, 3 * 16 + 8] != 100).any() and (out[1, 5, 5] == 100).all()


def test_mask_overlay_tints_only_inside():
    mask = np.zeros((1, 4, 6), np.float32)
    mask[0, 0, 0] = 1
    out = mask_overlay({"1": mask}, np.zeros((H, W, 3), np.uint8), colors={"1": (255, 0, 0)}, alpha=0.5)
    assert tuple(out[0, 5, 5]) == (128, 0, 0) and (out[0, 40, 40] == 0).all()


def test_expand_latent_frames_maps_video_frames_to_their_latent_frame():
    lat = np.arange(3)[:, None]
    assert expand_latent_frames(lat, 9)[:, 0].tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 2]


def test_video_grid_tiles_and_pads_shorter_videos():
    a, b = gray_video(9), np.full((5, H, W, 3), 200, np.uint8)
    grid = video_grid({"a": a, "b": b, "c": a}, columns=2, labels=False, gap=2)
    assert grid.shape == (9, 2 * H + 2, 2 * W + 2, 3)
    assert (grid[8, :H, W + 2:] == 200).all()  # b holds its last frame
    assert (grid[0, H + 2:, W + 2:] == 255).all()  # the empty fourth cell
    with pytest.raises(DisplayError, match="expected 64x96"):
        video_grid([a, np.zeros((9, 8, 8, 3), np.uint8)])


def test_save_video_by_extension(tmp_path):
    video = np.random.default_rng(0).integers(0, 255, (T, H, W, 3), dtype=np.uint8)
    mp4 = save_video(video, tmp_path / "v.mp4", fps=8)
    # (read back with imageio-ffmpeg: mediapy.read_video passes -vsync, which the bundled ffmpeg 9 dropped)
    reader = imageio_ffmpeg.read_frames(str(mp4))
    meta = next(reader)
    assert meta["size"] == (W, H) and len(list(reader)) == T
    gif = Image.open(save_video(video, tmp_path / "v.gif"))
    assert gif.n_frames == T and gif.size == (W, H)
    sheet = np.asarray(Image.open(save_video(video[:3], tmp_path / "v.png", columns=3)))
    assert sheet.shape == (H, 3 * W + 4, 3) and (sheet[:, :W] == video[0]).all()
    assert (np.asarray(Image.open(save_video(video[0], tmp_path / "f.png"))) == video[0]).all()
    with pytest.raises(DisplayError, match="unsupported extension '.avi'"):
        save_video(video, tmp_path / "v.avi")
    with pytest.raises(DisplayError, match="uint8"):
        save_video(video.astype(np.float32), tmp_path / "v.mp4")


def test_show_video_uses_the_bundled_ffmpeg():
    assert "imageio_ffmpeg" in use_bundled_ffmpeg()
    html = show_video(gray_video(), title="gray", return_html=True)
    assert "<video" in html and "gray" in html


def test_heatmap_figures_have_one_axis_per_map_and_frame_and_a_colour_bar_per_row():
    maps = {"1": torch.rand(3, 4, 6), "2": torch.rand(3, 4, 6)}
    fig = plot_heatmaps(maps, image=np.zeros((H, W, 3), np.uint8), masks={"1": torch.ones(3, 4, 6)}, frames=[0, 2])
    assert len(fig.axes) == 2 * 2 + 2                       # + one colour bar per row
    assert [a.get_label() for a in fig.axes[-2:]] == ["<colorbar>"] * 2
    grid = plot_step_grid({0: maps, 1: maps, 2: maps}, frame=None)
    assert len(grid.axes) == 2 * 3 + 2
    assert grid._suptitle.get_text() == "per denoising step, mean over latent frames"


def test_per_object_rows_are_labelled_with_captions_when_given_the_scene(scene):
    maps = {"1": torch.rand(3, 4, 6), "2": torch.rand(3, 4, 6)}
    grid = plot_step_grid({0: maps, 5: maps}, frame=1, labels=scene)
    labels = [grid.axes[0].get_ylabel(), grid.axes[2].get_ylabel()]
    assert labels[0].replace("\n", " ").startswith("1: " + scene.captions["1"][:5]) and labels[1] == "2 (anchor)"
    assert grid._suptitle.get_text() == "per denoising step, latent frame 1"
    fig = plot_heatmaps(maps, labels={"1": "a ball"}, title="t")
    assert fig.axes[0].get_ylabel() == "1: a ball" and fig.axes[3].get_ylabel() == "2"


def test_objects_have_one_colour_by_id_in_every_view(scene):
    from wclab.colors import ANCHOR_HEX, hex_to_rgb, object_hex
    from widgets.trajectory_editor import object_color

    assert object_colors(scene) == {"1": hex_to_rgb(object_hex(1)), "2": hex_to_rgb(ANCHOR_HEX)}
    assert object_color(1) == object_hex(1) == "#1f77b4" and object_color(2, anchor=True) == ANCHOR_HEX


def test_inline_videos_wider_than_the_limit_are_encoded_smaller():
    """A full-size video (or a grid of them) is downsampled before encoding: the inline HTML stays small."""
    import re

    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (9, 96, 400, 3), dtype=np.uint8)  # noise: encodes to its full size
    full = show_video(wide, return_html=True, max_width=400, bps=None)
    small = show_video(wide, return_html=True, max_width=100, bps=None)
    assert re.search(r'width="100"', small) and len(small) < len(full) / 4
    assert re.search(r'width="50"', show_videos({"a": wide, "b": wide}, return_html=True, max_width=50))


@pytest.mark.slow
def test_a_full_size_noise_video_stays_under_three_megabytes_inline():
    """81 frames of 480x832 noise (the worst case: random weights) at 8 fps: the bit rate cap bounds the HTML."""
    frames = np.random.default_rng(0).integers(0, 256, (81, 480, 832, 3), dtype=np.uint8)
    assert len(show_video(frames, fps=8, return_html=True)) < 3e6  # was 27 MB before the caps
