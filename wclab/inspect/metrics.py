"""Numbers for comparing generations: does the video follow the trajectories, does attention stay in the
token masks, how different are two videos.

Trajectory following: a point tracker follows each trajectory's first visible on-image point through the
generated video, and the tracked path is compared with the drawn one on the frames where the trajectory is
visible (pixels). No learned point tracker (CoTracker, TAPIR) can be installed with weights offline, so the
default tracker is OpenCV's pyramidal Lucas-Kanade (``cv2.calcOpticalFlowPyrLK``) run forward and backward
from the query frame; any ``tracker(video, queries) -> (tracks, found)`` can be passed instead.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch

from wclab.conditions import Scene
from wclab.conditions.tracks import lk_track
from wclab.inspect.attention import InspectError
from wclab.inspect.display import as_video, positions

Tracker = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def lk_tracker(video: np.ndarray, queries: np.ndarray, win: int = 15, levels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Track query points through ``video`` uint8 ``[N, H, W, 3]`` with pyramidal Lucas-Kanade.

    queries: float ``[Q, 3]`` rows (frame, x, y) pixels. Returns ``tracks`` float64 ``[Q, N, 2]`` (x, y) and
    ``found`` bool ``[Q, N]``; each point is followed forward and backward from its query frame and marked
    lost (found False, position NaN) from the first frame LK fails or leaves the image on.
    """
    return lk_track(as_video(video, "video"), queries, win=win, levels=levels)


def track_trajectories(video: np.ndarray, scene: Scene, tracker: Optional[Tracker] = None,
                       trajectories: Optional[Sequence[int]] = None, vis_threshold: float = 0.5) -> pd.DataFrame:
    """Per-frame tracking of each trajectory in ``video`` uint8 ``[N, H, W, 3]`` (N = T, or F' latent frames,
    compared with per-latent-frame mean positions).

    Each trajectory (``trajectories``: indices, default all) is queried at its first frame that is active,
    visible (vis > ``vis_threshold``) and on the image. Columns: trajectory, id, anchor, frame, x, y (drawn),
    x_tracked, y_tracked, visible, query (the query frame), found, error (pixels; NaN on the query frame,
    where the trajectory is not visible, and where the tracker lost the point).
    """
    v = as_video(video, "video")
    N = v.shape[0]
    tracker = tracker or lk_tracker
    rows, queries, owners = [], [], []
    chosen = range(len(scene.trajectories)) if trajectories is None else trajectories
    for k in chosen:
        traj = scene.trajectories[k]
        xy, vis = positions(traj, N)
        active = traj.active_frames() if N == traj.frames else traj.active_frames()[::4]
        on = (xy[:, 0] >= 0) & (xy[:, 0] < scene.width) & (xy[:, 1] >= 0) & (xy[:, 1] < scene.height)
        visible = active & on & (vis > vis_threshold)
        first = np.flatnonzero(visible)
        query = np.arange(N) == (first[0] if len(first) else -1)
        rows.append((k, traj, xy, visible, query))
        if len(first):
            queries.append((first[0], *xy[first[0]]))
            owners.append(len(rows) - 1)
    tracks, found = (tracker(v, np.array(queries)) if queries else (np.zeros((0, N, 2)), np.zeros((0, N), bool)))
    tracked = {o: (tracks[i], found[i]) for i, o in enumerate(owners)}
    out = []
    for r, (k, traj, xy, visible, query) in enumerate(rows):
        tr, fd = tracked.get(r, (np.full((N, 2), np.nan), np.zeros(N, bool)))
        err = np.where(visible & fd & ~query, np.hypot(*(tr - xy).T), np.nan)
        out.append(pd.DataFrame({"trajectory": k, "id": str(traj.id), "anchor": traj.is_anchor,
                                 "frame": np.arange(N), "x": xy[:, 0], "y": xy[:, 1], "x_tracked": tr[:, 0],
                                 "y_tracked": tr[:, 1], "visible": visible, "query": query, "found": fd,
                                 "error": err}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def trajectory_following_error(video: np.ndarray, scene: Scene, tracker: Optional[Tracker] = None,
                               trajectories: Optional[Sequence[int]] = None, vis_threshold: float = 0.5
                               ) -> pd.DataFrame:
    """One row per trajectory: ``visible_frames``; mean / max / final tracking error (pixels) over the visible
    frames other than the query frame (final: the last of them, NaN if lost there); ``lost``, the fraction of
    those frames where the tracker had lost the point (see :func:`track_trajectories`)."""
    per_frame = track_trajectories(video, scene, tracker, trajectories, vis_threshold)

    def summary(g: pd.DataFrame) -> pd.Series:
        scored = g[g["visible"] & ~g["query"]]
        err = scored.error.dropna()
        return pd.Series({"id": g.id.iloc[0], "anchor": bool(g.anchor.iloc[0]), "visible_frames": int(g.visible.sum()),
                          "mean_error": err.mean() if len(err) else np.nan,
                          "max_error": err.max() if len(err) else np.nan,
                          "final_error": scored.error.iloc[-1] if len(scored) else np.nan,
                          "lost": float((~scored.found).mean()) if len(scored) else np.nan})

    return pd.DataFrame([{"trajectory": k, **summary(g)} for k, g in per_frame.groupby("trajectory", sort=True)])


def drawn_frame(point: np.ndarray, path: np.ndarray, frames: np.ndarray) -> float:
    """The (fractional) frame at which the drawn ``path`` passes closest to ``point`` (x, y pixels): ``path``
    float ``[K, 2]`` holds the drawn positions at the increasing ``frames`` [K]; the point is projected onto each
    segment between consecutive positions and the nearest projection's frame is interpolated (a path that
    revisits a place gives the earliest of equally near frames). NaN for a NaN point or an empty path."""
    if len(path) == 0 or not np.isfinite(point).all():
        return float("nan")
    if len(path) == 1:
        return float(frames[0])
    a, b = path[:-1], path[1:]
    d = b - a
    length2 = (d * d).sum(1)
    t = np.where(length2 > 0, ((point - a) * d).sum(1) / np.where(length2 > 0, length2, 1), 0.0).clip(0, 1)
    dist = np.hypot(*(a + t[:, None] * d - point).T)
    i = int(np.argmin(dist))
    return float(frames[i] + t[i] * (frames[i + 1] - frames[i]))


def trajectory_timing(video: np.ndarray, scene: Scene, tracker: Optional[Tracker] = None,
                      trajectories: Optional[Sequence[int]] = None, vis_threshold: float = 0.5) -> pd.DataFrame:
    """When does each object get where its path says? Per trajectory and frame of ``video`` uint8
    ``[N, H, W, 3]`` (N = T or F'), the tracked point (:func:`track_trajectories`) is placed on the drawn path:
    ``drawn_frame`` is the frame at which the drawing reaches the nearest place (:func:`drawn_frame`) and
    ``lag`` = frame - drawn_frame, in frames of ``video`` (positive: the object arrives late). Rows: trajectory,
    id, anchor, frame, drawn_frame, lag; NaN where the point is lost or the trajectory is not visible."""
    per_frame = track_trajectories(video, scene, tracker, trajectories, vis_threshold)
    out = []
    for k, g in per_frame.groupby("trajectory", sort=True):
        active = g[(g.x >= 0) & (g.y >= 0)]  # frames where the drawn trajectory exists
        path, frames = active[["x", "y"]].to_numpy(float), active.frame.to_numpy(float)
        tracked = g[["x_tracked", "y_tracked"]].to_numpy(float)
        usable = (g.visible & g.found).to_numpy()
        reached = np.array([drawn_frame(p, path, frames) if ok else np.nan for p, ok in zip(tracked, usable)])
        out.append(pd.DataFrame({"trajectory": k, "id": g.id.to_numpy(), "anchor": g.anchor.to_numpy(),
                                 "frame": g.frame.to_numpy(), "drawn_frame": reached,
                                 "lag": g.frame.to_numpy() - reached}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _runs(videos: Mapping[str, np.ndarray], reference: Optional[str], what: str) -> tuple[list[str], str]:
    """The run names and the reference run (default: the first); errors name ``what`` was called."""
    names = list(videos)
    if not names:
        raise InspectError(f"{what}: no videos given")
    reference = names[0] if reference is None else reference
    if reference not in videos:
        raise InspectError(f"{what}: reference {reference!r} is not one of {names}")
    return names, reference


def timing_lag(videos: Mapping[str, np.ndarray], scene: Scene, tracker: Optional[Tracker] = None,
               reference: Optional[str] = None) -> pd.DataFrame:
    """Compare the motion timing of several runs of one scene (e.g. 50-step exact vs 4-step distilled, cache
    on vs off): one row per (run, trajectory) with the mean ``lag`` behind the drawn schedule (frames, see
    :func:`trajectory_timing`), the last ``drawn_frame`` reached, and ``lag_vs_reference`` = mean lag minus the
    reference run's (default: the first run)."""
    names, reference = _runs(videos, reference, "timing_lag")
    rows = []
    for name in names:
        timing = trajectory_timing(videos[name], scene, tracker)
        for k, g in timing.groupby("trajectory", sort=True):
            reached = g.drawn_frame.dropna()
            rows.append({"run": name, "trajectory": k, "id": g.id.iloc[0], "anchor": bool(g.anchor.iloc[0]),
                         "mean_lag": g.lag.mean(), "final_drawn_frame": reached.iloc[-1] if len(reached) else np.nan})
    table = pd.DataFrame(rows)
    base = table[table.run == reference].set_index("trajectory").mean_lag
    table["lag_vs_reference"] = table.mean_lag - table.trajectory.map(base)
    return table


def timing_comparison(videos: Mapping[str, np.ndarray], scene: Union[Scene, Mapping[str, Scene]],
                      tracker: Optional[Tracker] = None, reference: Optional[str] = None) -> pd.DataFrame:
    """Frame-by-frame motion timing of several runs (e.g. exact vs distilled, cache off vs on): for each run,
    trajectory and frame of the videos (uint8 ``[N, H, W, 3]``, N = T or F'), where the tracked point is along
    the drawn path (``drawn_frame``, :func:`trajectory_timing`, frames), its ``lag`` behind the drawing, and
    ``lag_vs_reference`` = the reference run's drawn_frame minus this run's on the same frame (frames; positive:
    this run is behind the reference; NaN where either point is lost or hidden). ``scene``: one scene for all
    runs, or one per run (each run is tracked along its own drawn paths). Reference: the first run by default.
    Rows: run, trajectory, id, anchor, frame, drawn_frame, lag, lag_vs_reference."""
    names, reference = _runs(videos, reference, "timing_comparison")
    scenes = {n: scene for n in names} if isinstance(scene, Scene) else dict(scene)
    missing = [n for n in names if n not in scenes]
    if missing:
        raise InspectError(f"timing_comparison: no scene for run(s) {missing}")
    timing = {n: trajectory_timing(videos[n], scenes[n], tracker) for n in names}
    ref = timing[reference].set_index(["trajectory", "frame"]).drawn_frame
    out = []
    for n in names:
        t = timing[n].copy()
        if t.empty:
            continue
        keys = pd.MultiIndex.from_frame(t[["trajectory", "frame"]])
        t["lag_vs_reference"] = ref.reindex(keys).to_numpy() - t.drawn_frame.to_numpy()
        out.append(t.assign(run=n))
    columns = ["run", "trajectory", "id", "anchor", "frame", "drawn_frame", "lag", "lag_vs_reference"]
    return pd.concat(out, ignore_index=True)[columns] if out else pd.DataFrame(columns=columns)


def mask_mass_fraction(heat: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction (0..1) of the mass of a non-negative map inside a 0/1 ``mask`` of the same shape. The mask may live
    on another device than the map (a mask drawn on the CPU, maps recorded on the GPU)."""
    heat = torch.as_tensor(heat).float()
    mask = torch.as_tensor(mask).to(device=heat.device, dtype=torch.float32)
    if heat.shape != mask.shape:
        raise InspectError(f"map {list(heat.shape)} and mask {list(mask.shape)} must have the same shape")
    return float((heat * mask).sum() / heat.sum().clamp_min(1e-30))


def pixel_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 videos ``[N, H, W, 3]`` of the same shape, in 0..255 levels."""
    a, b = as_video(a, "a"), as_video(b, "b")
    if a.shape != b.shape:
        raise InspectError(f"videos differ in shape: {list(a.shape)} vs {list(b.shape)}")
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def pairwise_pixel_difference(videos: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Square table of :func:`pixel_difference` between every pair of named videos."""
    names = list(videos)
    return pd.DataFrame([[pixel_difference(videos[a], videos[b]) for b in names] for a in names],
                        index=names, columns=names)
