"""Showing and saving what a session made: mediapy videos, trajectory overlays, heatmaps, matplotlib figures.

Videos are ``uint8 [N, H, W, 3]`` arrays: N = T video frames, or F' = (T-1)/4 + 1 latent frames (previews,
condition channels, attention maps). Positions are pixels ``(x, y)``. On a latent-frame video a trajectory is
drawn at its per-latent-frame mean position (frame 0, then the mean of frames 4f-3..4f, as the encoder reads
it) with the visibility of frame 4f. mediapy uses imageio-ffmpeg's bundled ffmpeg (no system ffmpeg needed).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import cv2
import numpy as np
import torch
from PIL import Image

from wclab.colors import ANCHOR_HEX, OBJECT_PALETTE, hex_to_rgb, object_rgb
from wclab.conditions import Scene, Trajectory
from wclab.encode.channels import group_means
from wclab.errors import WclabError
from wclab.sizes import FRAMES_PER_LATENT, latent_frames

ArrayLike = Union[np.ndarray, torch.Tensor]
ANCHOR_COLOR = hex_to_rgb(ANCHOR_HEX)


class DisplayError(WclabError, ValueError):
    """A video/map handed to a display function has the wrong shape, dtype or file extension."""


# ----------------------------------------------------------------------------------------------- basics
@functools.lru_cache(maxsize=1)
def use_bundled_ffmpeg() -> str:
    """Point mediapy at imageio-ffmpeg's ffmpeg binary (once); returns its path."""
    import imageio_ffmpeg
    import mediapy

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    mediapy.set_ffmpeg(exe)
    return exe


def as_video(frames: ArrayLike, name: str = "frames") -> np.ndarray:
    """``uint8 [N, H, W, 3]`` from a uint8 array/tensor ``[N, H, W, 3]`` or ``[H, W, 3]`` (one frame)."""
    a = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if a.ndim == 3:
        a = a[None]
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3:
        raise DisplayError(f"{name}: expected uint8 [N, H, W, 3], got {a.dtype} {list(a.shape)}")
    return a


def palette(n: int) -> list[tuple[int, int, int]]:
    """n distinct RGB colours (the object palette of :mod:`wclab.colors`, tab10, cycled)."""
    return [hex_to_rgb(OBJECT_PALETTE[i % len(OBJECT_PALETTE)]) for i in range(n)]


def object_colors(scene: Scene) -> dict[str, tuple[int, int, int]]:
    """id → RGB, as the trajectory editor shows them (:func:`wclab.colors.object_rgb`): by id, anchors grey."""
    return {str(t.id): object_rgb(t.id, anchor=str(t.id) not in scene.captions) for t in scene.trajectories}


def _id_colors(ids: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """Object colours for ids that are integers (as the editor shows them), palette order for other names."""
    try:
        return {i: object_rgb(i) for i in ids}
    except ValueError:
        return dict(zip(ids, palette(len(ids))))


def latent_frame_of(t: int) -> int:
    """Latent frame holding video frame ``t``: 0 for frame 0, then (t + 3) // 4."""
    return (t + FRAMES_PER_LATENT - 1) // FRAMES_PER_LATENT


def expand_latent_frames(video: ArrayLike, frames: int) -> np.ndarray:
    """``[F', ...]`` per-latent-frame array → ``[T, ...]`` with T = ``frames`` (each video frame shows its
    latent frame, see :func:`latent_frame_of`)."""
    a = video.detach().cpu().numpy() if isinstance(video, torch.Tensor) else np.asarray(video)
    if a.shape[0] != latent_frames(frames):
        raise DisplayError(f"expected {latent_frames(frames)} latent frames for T={frames}, got {a.shape[0]}")
    return a[[latent_frame_of(t) for t in range(frames)]]


def positions(traj: Trajectory, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """``(xy float [N, 2] pixels, vis float [N])`` of a trajectory on a video of N = T or F' frames."""
    T = traj.frames
    if n_frames == T:
        return np.asarray(traj.track), np.asarray(traj.vis)
    if n_frames == latent_frames(T):
        return group_means(traj.track), np.asarray(traj.vis[::FRAMES_PER_LATENT])
    raise DisplayError(f"video has {n_frames} frames; expected T={T} or F'={latent_frames(T)} for this scene")


def upsample(maps: ArrayLike, height: int, width: int, smooth: bool = False) -> np.ndarray:
    """float32 ``[N, h, w]`` → ``[N, height, width]`` (nearest; bilinear when ``smooth``)."""
    a = maps.detach().float().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps, np.float32)
    if a.ndim == 2:
        a = a[None]
    interp = cv2.INTER_LINEAR if smooth else cv2.INTER_NEAREST
    return np.stack([cv2.resize(np.ascontiguousarray(m, np.float32), (width, height), interpolation=interp)
                     for m in a])


def _background(image, n: int, height: int, width: int) -> np.ndarray:
    if image is None:
        return np.zeros((n, height, width, 3), np.uint8)
    bg = as_video(np.asarray(image) if isinstance(image, Image.Image) else image, "image")
    if bg.shape[0] == 1:
        bg = np.repeat(bg, n, axis=0)
    if bg.shape[0] != n:
        raise DisplayError(f"image/video: expected 1 or {n} frames, got {bg.shape[0]}")
    if bg.shape[1:3] != (height, width):
        bg = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in bg])
    return bg


def heatmap_overlay(heat: ArrayLike, image=None, cmap: str = "inferno", alpha: float = 0.7,
                    vmax: Optional[float] = None, size: Optional[tuple[int, int]] = None,
                    smooth: bool = True) -> np.ndarray:
    """``uint8 [N, H, W, 3]``: ``heat`` [N, h, w] (≥ 0) upsampled and blended over ``image``.

    image: PIL / uint8 ``[H, W, 3]`` or a video ``[N, H, W, 3]`` (None: black, then ``size`` = (H, W) is needed).
    Each pixel is blended with weight ``alpha · heat / vmax`` (vmax: default the maximum), so zero heat
    leaves the image unchanged.
    """
    h = heat.detach().float().cpu().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat, np.float32)
    if h.ndim == 2:
        h = h[None]
    if image is None and size is None:
        raise DisplayError("heatmap_overlay: give an image or size=(H, W)")
    if image is not None:
        ref = np.asarray(image) if isinstance(image, Image.Image) else as_video(image, "image")
        size = ref.shape[-3:-1]
    H, W = size
    bg = _background(image, len(h), H, W).astype(np.float32)
    up = np.clip(upsample(h, H, W, smooth=smooth) / max(float(vmax or h.max()), 1e-30), 0, 1)
    import matplotlib

    colors = matplotlib.colormaps[cmap](up)[..., :3] * 255
    weight = (alpha * up)[..., None]
    return (bg * (1 - weight) + colors * weight).round().astype(np.uint8)


def mask_overlay(masks: Mapping[str, ArrayLike], image=None, colors: Optional[Mapping[str, tuple]] = None,
                 alpha: float = 0.5, size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """``uint8 [N, H, W, 3]``: 0/1 masks ``{id: [N, h, w]}`` upsampled (nearest) and tinted over ``image``."""
    ids = list(masks)
    colors = dict(colors or _id_colors(ids))
    first = np.asarray(masks[ids[0]].detach().cpu() if isinstance(masks[ids[0]], torch.Tensor) else masks[ids[0]])
    n = 1 if first.ndim == 2 else first.shape[0]
    if image is None and size is None:
        raise DisplayError("mask_overlay: give an image or size=(H, W)")
    H, W = (np.asarray(image) if isinstance(image, Image.Image) else as_video(image, "image")).shape[-3:-1] \
        if image is not None else size
    out = _background(image, n, H, W).astype(np.float32)
    for i in ids:
        m = upsample(masks[i], H, W)[..., None] > 0.5
        out = np.where(m, out * (1 - alpha) + np.array(colors[i], np.float32) * alpha, out)
    return out.round().astype(np.uint8)


# ----------------------------------------------------------------------------------------------- trajectories
def path_runs(active: np.ndarray, visible: np.ndarray) -> list[tuple[bool, np.ndarray]]:
    """Split a path into runs of consecutive segments (frame j-1 → j, both active) of one style:
    ``(solid, frame indices)``; a segment is solid when both its ends are visible."""
    runs: list[tuple[bool, list[int]]] = []
    for j in range(1, len(active)):
        if not (active[j - 1] and active[j]):
            continue
        solid = bool(visible[j - 1] and visible[j])
        if runs and runs[-1][0] == solid and runs[-1][1][-1] == j - 1:
            runs[-1][1].append(j)
        else:
            runs.append((solid, [j - 1, j]))
    return [(solid, np.array(idx)) for solid, idx in runs]


def _dashed(img: np.ndarray, pts: np.ndarray, color, thickness: int, on: float = 6, off: float = 6) -> None:
    """Dashed polyline through ``pts`` [n, 2]; the dash pattern runs on across the vertices."""
    phase = 0.0  # distance into the current on+off period
    for p, q in zip(pts[:-1], pts[1:]):
        length = float(np.hypot(*(q - p)))
        s = 0.0
        while s < length:
            step = min((on - phase) if phase < on else (on + off - phase), length - s)
            if phase < on:
                a, b = p + (q - p) * (s / length), p + (q - p) * ((s + step) / length)
                cv2.line(img, _px(a), _px(b), color, thickness, cv2.LINE_AA)
            s += step
            phase = (phase + step) % (on + off)


def _px(p) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))


def overlay_trajectories(video: ArrayLike, scene: Scene, radius: int = 5, thickness: int = 2,
                         arrows: bool = True, vis_threshold: float = 0.5) -> np.ndarray:
    """``uint8 [N, H, W, 3]``: each trajectory drawn onto a copy of ``video`` (N = T or F' frames).

    Frame n shows the path up to frame n — solid where visible, dashed where invisible (vis ≤
    ``vis_threshold``) — and the current point: a filled dot when visible, a ring when invisible, with an
    arrow along the motion to the next frame. Captioned objects are coloured per id, anchors grey.
    """
    frames = as_video(video, "video").copy()
    N, H, W, _ = frames.shape
    if (H, W) != (scene.height, scene.width):
        raise DisplayError(f"video frames are {H}x{W}, the scene is {scene.height}x{scene.width}")
    colors = object_colors(scene)
    for traj in scene.trajectories:
        xy, vis = positions(traj, N)
        active = traj.active_frames() if N == traj.frames else traj.active_frames()[::4]
        visible = vis > vis_threshold
        color = colors[str(traj.id)]
        for n in range(N):
            img = frames[n]
            for solid, idx in path_runs(active[: n + 1], visible[: n + 1]):
                if solid:
                    cv2.polylines(img, [np.round(xy[idx]).astype(np.int32)], False, color, thickness, cv2.LINE_AA)
                else:
                    _dashed(img, xy[idx], color, thickness)
            if not active[n]:
                continue
            c = _px(xy[n])
            cv2.circle(img, c, radius, color, -1 if visible[n] else 1, cv2.LINE_AA)
            if arrows and n + 1 < N and active[n + 1]:
                d = xy[n + 1] - xy[n]
                norm = float(np.hypot(*d))
                if norm > 0.5:
                    tip = xy[n] + d / norm * (radius + 3 * thickness + 6)
                    cv2.arrowedLine(img, c, _px(tip), color, 1, cv2.LINE_AA, tipLength=0.4)
    return frames


def plot_trajectories(scene: Scene, image=None, ax=None, tick_every: int = 8, vis_threshold: float = 0.5):
    """matplotlib Figure: every trajectory over ``image`` — solid where visible, dashed where invisible, a
    circle at the start, direction arrows, and frame-number ticks every ``tick_every`` frames."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(6 * scene.width / max(scene.height, scene.width) + 1, 6 *
                                        scene.height / max(scene.height, scene.width) + 0.5))
    fig = ax.figure
    if image is not None:
        ax.imshow(np.asarray(image))
    colors = {k: tuple(c / 255 for c in v) for k, v in object_colors(scene).items()}
    for traj in scene.trajectories:
        xy, vis, act = traj.track, traj.vis, traj.active_frames()
        color = colors[str(traj.id)]
        label = f"{traj.id}" + (" (anchor)" if traj.is_anchor else f": {traj.text[:30]}")
        for r, (solid, idx) in enumerate(path_runs(act, vis > vis_threshold)):
            ax.plot(xy[idx, 0], xy[idx, 1], "-" if solid else "--", color=color, lw=2, label=None if r else label)
        idx = np.flatnonzero(act)
        if len(idx) == 0:
            continue
        ax.plot(*xy[idx[0]], "o", color=color, ms=7, mfc="none" if vis[idx[0]] <= vis_threshold else color)
        last = None
        for j in idx[::tick_every]:
            if last is None or np.hypot(*(xy[j] - last)) > 3:  # a static point gets one label, not a pile
                ax.annotate(str(j), xy[j], fontsize=7, color=color, xytext=(3, 3), textcoords="offset points")
                last = xy[j]
        for j in idx[tick_every // 2::tick_every]:
            if j + 1 < traj.frames and act[j + 1] and np.hypot(*(xy[j + 1] - xy[j])) > 1e-3:
                ax.annotate("", xy[j + 1], xy[j], arrowprops=dict(arrowstyle="->", color=color, lw=1.5))
    ax.set_xlim(0, scene.width)
    ax.set_ylim(scene.height, 0)
    ax.set_aspect("equal")
    if scene.trajectories:
        ax.legend(fontsize=7, loc="upper right")
    return fig


# ----------------------------------------------------------------------------------------------- heatmap figures
def row_labels(ids: Sequence, labels: Union[Scene, Mapping, None] = None, width: int = 28) -> list[str]:
    """Row labels for per-object figures: ``"1: a red ball rolls…"`` from a scene's captions (or a mapping
    ``{id: text}``), ``"2 (anchor)"`` for scene ids without a caption; the id itself when nothing is known."""
    if labels is None:
        return [str(i) for i in ids]
    known = dict(labels.captions) if isinstance(labels, Scene) else {str(k): str(v) for k, v in labels.items()}
    anchors = {str(t.id) for t in labels.trajectories} - set(known) if isinstance(labels, Scene) else set()
    out = []
    for i in ids:
        text = known.get(str(i))
        if text is None:
            out.append(f"{i} (anchor)" if str(i) in anchors else str(i))
        else:
            out.append(f"{i}: {text if len(text) <= width else text[:width - 1] + '…'}")
    return out


def _wrap(label: str, width: int = 16) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(label, width)[:3]) or label


def plot_heatmaps(maps: Mapping[str, ArrayLike], image=None, frames: Optional[Sequence[int]] = None,
                  masks: Optional[Mapping[str, ArrayLike]] = None, cmap: str = "inferno", title: str = "",
                  labels: Union[Scene, Mapping, None] = None, colorbar_label: str = "value"):
    """matplotlib Figure: one row per map ``{name: [F', h, w]}``, one column per latent frame (``frames``:
    which; default all), heat over ``image`` when given, token-mask outlines from ``masks`` (same shapes).

    Each row has its own colour scale (0 to its maximum), shown by a colour bar labelled ``colorbar_label``.
    ``labels``: a :class:`Scene` (or ``{id: text}``) to label rows by caption instead of the bare key."""
    import matplotlib.pyplot as plt

    names = list(maps)
    if not names:
        raise DisplayError("plot_heatmaps: no maps given")
    arrays = {k: np.asarray(v.detach().float().cpu() if isinstance(v, torch.Tensor) else v, np.float32)
              for k, v in maps.items()}
    n_frames = arrays[names[0]].shape[0]
    frames = list(range(n_frames)) if frames is None else list(frames)
    fig, axes = plt.subplots(len(names), len(frames), figsize=(2.2 * len(frames) + 1.0, 1.5 * len(names) + 0.6),
                             squeeze=False, layout="constrained")
    for r, (name, label) in enumerate(zip(names, row_labels(names, labels))):
        m = arrays[name]
        vmax = float(m.max()) or 1.0
        im = None
        for c, f in enumerate(frames):
            ax = axes[r, c]
            H, W = (np.asarray(image).shape[:2] if image is not None else (m.shape[1] * 16, m.shape[2] * 16))
            if image is not None:
                ax.imshow(np.asarray(image), extent=(0, W, H, 0))
            im = ax.imshow(m[f], cmap=cmap, alpha=0.65 if image is not None else 1.0, vmin=0, vmax=vmax,
                           extent=(0, W, H, 0), interpolation="nearest")
            if masks is not None and name in masks:
                mk = np.asarray(masks[name].detach().cpu() if isinstance(masks[name], torch.Tensor) else masks[name])
                if mk[f].any():
                    ax.contour(upsample(mk[f], H, W)[0], levels=[0.5], colors="cyan", linewidths=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"latent frame {f}", fontsize=8)
            if c == 0:
                ax.set_ylabel(_wrap(label), fontsize=8)
        cb = fig.colorbar(im, ax=list(axes[r]), shrink=0.9, pad=0.01)
        cb.ax.tick_params(labelsize=7)
        cb.set_label(colorbar_label, fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def plot_step_grid(per_step: Mapping[int, Mapping[str, ArrayLike]], frame: Optional[int] = None,
                   cmap: str = "inferno", title: Optional[str] = None, labels: Union[Scene, Mapping, None] = None,
                   colorbar_label: str = "value"):
    """matplotlib Figure: rows = objects, columns = steps, of maps ``{step: {id: [F', h, w]}}`` at latent
    ``frame`` (None: the mean over latent frames); each row shares one colour scale, shown by a colour bar.

    ``title``: default says which frame is shown; ``labels``: a :class:`Scene` (or ``{id: text}``) to label
    rows by caption instead of the bare id."""
    import matplotlib.pyplot as plt

    steps = list(per_step)
    if not steps:
        raise DisplayError("plot_step_grid: no steps given")
    ids = list(per_step[steps[0]])
    fig, axes = plt.subplots(len(ids), len(steps), figsize=(2 * len(steps) + 1.0, 1.4 * len(ids) + 0.7),
                             squeeze=False, layout="constrained")
    for r, (i, label) in enumerate(zip(ids, row_labels(ids, labels))):
        imgs = [np.asarray(per_step[s][i].detach().float().cpu() if isinstance(per_step[s][i], torch.Tensor)
                           else per_step[s][i]) for s in steps]
        imgs = [m.mean(0) if frame is None else m[frame] for m in imgs]
        vmax = max(float(m.max()) for m in imgs) or 1.0
        im = None
        for c, (s, m) in enumerate(zip(steps, imgs)):
            ax = axes[r, c]
            im = ax.imshow(m, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"step {s}", fontsize=8)
            if c == 0:
                ax.set_ylabel(_wrap(label), fontsize=8)
        cb = fig.colorbar(im, ax=list(axes[r]), shrink=0.9, pad=0.01)
        cb.ax.tick_params(labelsize=7)
        cb.set_label(colorbar_label, fontsize=7)
    if title is None:
        title = "per denoising step, " + ("mean over latent frames" if frame is None else f"latent frame {frame}")
    if title:
        fig.suptitle(title)
    return fig


# ----------------------------------------------------------------------------------------------- grids, show, save
def video_grid(videos: Union[Mapping[str, ArrayLike], Sequence[ArrayLike]], columns: Optional[int] = None,
               labels: bool = True, gap: int = 2) -> np.ndarray:
    """``uint8 [N, rows·(H+gap)-gap, cols·(W+gap)-gap, 3]``: videos of one size side by side, each labelled with
    its name (top-left). Shorter videos hold their last frame; N is the longest length."""
    items = list(videos.items()) if isinstance(videos, Mapping) else [(str(i), v) for i, v in enumerate(videos)]
    if not items:
        raise DisplayError("video_grid: no videos given")
    arrays = [(name, as_video(v, f"videos[{name!r}]")) for name, v in items]
    H, W = arrays[0][1].shape[1:3]
    for name, a in arrays:
        if a.shape[1:3] != (H, W):
            raise DisplayError(f"videos[{name!r}]: frames are {a.shape[1]}x{a.shape[2]}, expected {H}x{W} like the first")
    N = max(a.shape[0] for _, a in arrays)
    cols = columns or int(np.ceil(np.sqrt(len(arrays))))
    rows = int(np.ceil(len(arrays) / cols))
    out = np.full((N, rows * (H + gap) - gap, cols * (W + gap) - gap, 3), 255, np.uint8)
    for k, (name, a) in enumerate(arrays):
        r, c = divmod(k, cols)
        a = np.concatenate([a, np.repeat(a[-1:], N - a.shape[0], axis=0)]) if a.shape[0] < N else a
        tile = out[:, r * (H + gap): r * (H + gap) + H, c * (W + gap): c * (W + gap) + W]
        tile[:] = a
        if labels:
            for f in tile:
                cv2.putText(f, str(name), (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
                cv2.putText(f, str(name), (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return out


INLINE_MAX_WIDTH = 640  # pixels: widest inline video (one video or one grid)
INLINE_MAX_WIDTH_EACH = 416  # pixels: widest video of several shown side by side
INLINE_BITS_PER_S = 1_000_000  # h264 bit rate of inline videos: 81 frames of 480x832 noise at 8 fps: 2.8 MB of HTML


def _display_width(a: np.ndarray, max_width: int) -> int:
    """Width to show (and encode) ``a`` at: its own, or ``max_width`` when wider (mediapy downsamples to it)."""
    return min(a.shape[2], max_width)


def show_video(frames: ArrayLike, fps: float = 16, title: Optional[str] = None, return_html: bool = False,
               max_width: int = INLINE_MAX_WIDTH, **kwargs) -> Optional[str]:
    """Show ``uint8 [N, H, W, 3]`` inline in a notebook (mediapy); ``return_html`` gives the HTML instead.
    Videos wider than ``max_width`` pixels are downsampled to it before encoding and encoded at
    ``INLINE_BITS_PER_S`` (override with ``bps=``), so full-size videos and grids keep notebooks small and quick to
    render (save the full resolution with `save_video`)."""
    import mediapy

    use_bundled_ffmpeg()
    a = as_video(frames)
    kwargs.setdefault("width", _display_width(a, max_width))
    kwargs.setdefault("bps", INLINE_BITS_PER_S)
    return mediapy.show_videos([a], [title], fps=fps, return_html=return_html, **kwargs)


def show_videos(videos: Union[Mapping[str, ArrayLike], Sequence[ArrayLike]], fps: float = 16,
                columns: Optional[int] = None, return_html: bool = False, max_width: int = INLINE_MAX_WIDTH_EACH,
                **kwargs) -> Optional[str]:
    """Show several videos side by side (a mapping's keys become titles), each downsampled to at most
    ``max_width`` pixels wide and encoded at ``INLINE_BITS_PER_S`` (``bps=`` overrides)."""
    import mediapy

    use_bundled_ffmpeg()
    if isinstance(videos, Mapping):
        arrays = {k: as_video(v, k) for k, v in videos.items()}
        first = next(iter(arrays.values()), None)
    else:
        arrays = [as_video(v) for v in videos]
        first = arrays[0] if arrays else None
    if first is not None:
        kwargs.setdefault("width", _display_width(first, max_width))
    kwargs.setdefault("bps", INLINE_BITS_PER_S)
    return mediapy.show_videos(arrays, fps=fps, columns=columns, return_html=return_html, **kwargs)


def save_video(frames: ArrayLike, path: Union[str, Path], fps: float = 16, columns: Optional[int] = None) -> Path:
    """Write ``uint8 [N, H, W, 3]`` by extension: ``.mp4`` (h264 via mediapy/ffmpeg), ``.gif`` (looping, PIL),
    ``.png`` (one frame as is; several as a contact sheet, ``columns`` wide, default all in one row)."""
    a = as_video(frames)
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".mp4":
        import mediapy

        use_bundled_ffmpeg()
        mediapy.write_video(path, a, fps=fps)
    elif ext == ".gif":
        images = [Image.fromarray(f) for f in a]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0)
    elif ext == ".png":
        sheet = a[0] if len(a) == 1 else video_grid(list(a), columns=columns or len(a), labels=False)[0]
        Image.fromarray(sheet).save(path)
    else:
        raise DisplayError(f"save_video: unsupported extension {ext!r} of {path}; use .mp4, .gif or .png")
    return path
