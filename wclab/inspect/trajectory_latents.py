"""What the latents do along each trajectory: samples on its path, token-mask region statistics, crops, and
the condition channels rendered as videos.

Positions follow the encoder (:mod:`wclab.encode.channels`): latent frame f holds the trajectory's mean
position over frame 0 (f = 0) or frames 4f-3..4f, ``[-1, -1]`` placeholders included, with the visibility of
frame 4f; the latent cell of pixel ``(x, y)`` is ``(x // 8, y // 8)``. Tensors of a session's history are
``[1, 16, F', h, w]`` (h = H/8, w = W/8 latent cells); ``field`` names a :class:`wclab.sampler.StepRecord`
tensor ("latents", "next_latents", "x0", "velocity", "cond", "uncond").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from wclab.conditions import Trajectory
from wclab.encode.channels import group_means
from wclab.inspect.attention import InspectError
from wclab.sizes import VAE_STRIDE
from wclab.inspect.display import (as_video, expand_latent_frames, heatmap_overlay, mask_overlay, object_colors,
                                   positions)

FIELDS = ("latents", "next_latents", "x0", "velocity", "cond", "uncond")


@dataclass(frozen=True)
class TrajectorySamples:
    """One trajectory's latent values along its path.

    index: position in ``scene.trajectories``; id: object id; centres: float64 ``[F', 2]`` (x, y) pixels;
    cells: int64 ``[F', 2]`` (x, y) latent cells, ``-1`` where the centre is off the image; visibility:
    float64 ``[F']``; steps: the history indices sampled; values: float32 ``[steps, F', 16]`` (NaN off-image).
    """

    index: int
    id: str
    centres: np.ndarray
    cells: np.ndarray
    visibility: np.ndarray
    steps: list[int]
    values: Tensor

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: one row per (step, latent frame) with the cell, visibility, channel norm and mean."""
        v = self.values
        rows = {"step": np.repeat(self.steps, v.shape[1]), "frame": np.tile(np.arange(v.shape[1]), len(self.steps)),
                "x_cell": np.tile(self.cells[:, 0], len(self.steps)), "y_cell": np.tile(self.cells[:, 1], len(self.steps)),
                "visibility": np.tile(self.visibility, len(self.steps)),
                "norm": v.norm(dim=-1).reshape(-1).numpy(), "mean": v.mean(dim=-1).reshape(-1).numpy()}
        return pd.DataFrame(rows).assign(trajectory=self.index, id=self.id)


def latent_path(traj: Trajectory, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(centres float64 [F', 2] px, cells int64 [F', 2] (x, y) latent cells or -1 off-image, vis [F'])``."""
    centres = group_means(traj.track)
    inside = (centres[:, 0] >= 0) & (centres[:, 0] < width) & (centres[:, 1] >= 0) & (centres[:, 1] < height)
    cells = np.where(inside[:, None], np.floor(centres / VAE_STRIDE), -1).astype(np.int64)
    return centres, cells, np.asarray(traj.vis[::4], np.float64)


def _stacked(session, field: str, steps: Optional[Sequence[int]]) -> tuple[list[int], Tensor]:
    """(step indices, float32 ``[n, 16, F', h, w]``) of a recorded field."""
    if field not in FIELDS:
        raise InspectError(f"field: expected one of {FIELDS}, got {field!r}")
    n = len(session.history)
    if n == 0:
        raise InspectError("the session has no recorded steps yet; run it first")
    idx = []
    for i in range(n) if steps is None else steps:
        if not -n <= int(i) < n:
            raise InspectError(f"steps: {i} is outside the {n} recorded steps")
        idx.append(int(i) % n)
    tensors = [getattr(session.history[i], field) for i in idx]
    if any(t is None for t in tensors):
        raise InspectError(f"{field!r} was not recorded for step(s) "
                           f"{[i for i, t in zip(idx, tensors) if t is None]} (Settings.record must be 'full', "
                           "and 'uncond' exists only with cfg != 1)")
    return idx, torch.cat([t.detach().float().cpu() for t in tensors])


def sample_trajectories(session, field: str = "x0", steps: Optional[Sequence[int]] = None
                        ) -> list[TrajectorySamples]:
    """For every trajectory of ``session.scene``, the 16 latent channels of ``field`` at its latent cell, per
    latent frame and recorded step (``steps``: history indices, default all)."""
    idx, stack = _stacked(session, field, steps)  # [n, 16, F', h, w]
    scene = session.scene
    out = []
    f_range = torch.arange(stack.shape[2])
    for k, traj in enumerate(scene.trajectories):
        centres, cells, vis = latent_path(traj, scene.height, scene.width)
        c = torch.from_numpy(np.clip(cells, 0, None))
        values = stack[:, :, f_range, c[:, 1], c[:, 0]].permute(0, 2, 1).contiguous()  # [n, F', 16]
        values[:, torch.from_numpy(cells[:, 0] < 0)] = float("nan")
        out.append(TrajectorySamples(k, str(traj.id), centres, cells, vis, idx, values))
    return out


def token_mask_stats(session, field: str = "x0", steps: Optional[Sequence[int]] = None) -> pd.DataFrame:
    """Statistics of ``field`` inside and outside each object's token mask, per step.

    The ``[F', h/2, w/2]`` token mask is upsampled ×2 (nearest) to latent cells. Columns: step, id, region
    ("inside"/"outside"), cells (latent cells × frames), mean and std over channels and cells, norm (mean
    over cells of the 16-channel L2 norm).
    """
    idx, stack = _stacked(session, field, steps)
    rows = []
    for obj_id, mask in session.conditions.token_masks.items():
        m = mask[0, 0].detach().cpu().bool().repeat_interleave(2, 1).repeat_interleave(2, 2)  # [F', h, w]
        for region, sel in (("inside", m), ("outside", ~m)):
            for step, t in zip(idx, stack):
                v = t[:, sel]  # [16, cells]
                n = v.shape[1]
                rows.append(dict(step=step, id=obj_id, region=region, cells=n,
                                 mean=float(v.mean()) if n else float("nan"),
                                 std=float(v.std()) if n > 1 else float("nan"),
                                 norm=float(v.norm(dim=0).mean()) if n else float("nan")))
    return pd.DataFrame(rows)


def crop_along(grid: Tensor, centres: np.ndarray, size: int) -> Tensor:
    """``[F, C, size, size]`` crops of ``grid`` ``[C, F, h, w]`` centred on ``centres`` int ``[F, 2]`` (x, y)
    cells, zero outside the grid (and for centres with a negative coordinate)."""
    C, F, h, w = grid.shape
    out = torch.zeros(F, C, size, size, dtype=grid.dtype)
    for f, (cx, cy) in enumerate(np.asarray(centres, np.int64)):
        if cx < 0 or cy < 0:
            continue
        x0, y0 = cx - size // 2, cy - size // 2
        xs, ys = slice(max(x0, 0), min(x0 + size, w)), slice(max(y0, 0), min(y0 + size, h))
        if xs.start < xs.stop and ys.start < ys.stop:
            out[f, :, ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0] = grid[:, f, ys, xs]
    return out


def path_crops(session, trajectory: int, field: str = "x0", step: int = -1, size: int = 8) -> Tensor:
    """float32 ``[F', 16, size, size]``: ``field`` of history step ``step`` around trajectory ``trajectory``
    (index in ``scene.trajectories``) per latent frame, ``size`` latent cells square (8 px each)."""
    _, stack = _stacked(session, field, [step])
    traj = _trajectory(session, trajectory)
    _, cells, _ = latent_path(traj, session.scene.height, session.scene.width)
    return crop_along(stack[0], cells, size)


def video_crops(video: np.ndarray, traj: Trajectory, size: int = 64) -> np.ndarray:
    """``uint8 [N, size, size, 3]``: crops of a video ``[N, H, W, 3]`` (N = T frames, or F' latent frames)
    centred on the trajectory (pixels; black outside the image and on frames without a point)."""
    v = as_video(video, "video")
    xy, _ = positions(traj, v.shape[0])
    grid = torch.from_numpy(v).permute(3, 0, 1, 2)  # [3, N, H, W]
    active = traj.active_frames() if v.shape[0] == traj.frames else traj.active_frames()[::4]
    centres = np.where(active[:, None], np.floor(xy), -1).astype(np.int64)
    return crop_along(grid, centres, size).permute(0, 2, 3, 1).numpy()


def condition_videos(session, frames: str = "latent", alpha: float = 0.6) -> dict[str, np.ndarray]:
    """The DiT's condition channels over the start image, ``uint8 [F', H, W, 3]`` each (``frames="video"``:
    ``[T, H, W, 3]``, each frame showing its latent frame).

    "gaussian": the Gaussian channel (0..255) as a heatmap; "point": the L2 norm over the 16 point channels
    as a heatmap; "token_masks": every object's token mask tinted in its colour.
    """
    if frames not in ("latent", "video"):
        raise InspectError(f"frames: expected 'latent' or 'video', got {frames!r}")
    c, image = session.conditions, np.asarray(session.image)
    videos = {
        "gaussian": heatmap_overlay(c.gaussian[0, 0], image, alpha=alpha, vmax=255.0, smooth=False),
        "point": heatmap_overlay(c.point[0].norm(dim=0), image, alpha=alpha, smooth=False),
        "token_masks": mask_overlay({i: m[0, 0] for i, m in c.token_masks.items()}, image,
                                    colors=object_colors(session.scene), alpha=alpha),
    }
    if frames == "video":
        videos = {k: expand_latent_frames(v, session.scene.frames) for k, v in videos.items()}
    return videos


def _trajectory(session, index: int) -> Trajectory:
    trajs = session.scene.trajectories
    if not -len(trajs) <= int(index) < len(trajs):
        raise InspectError(f"trajectory: expected an index in 0..{len(trajs) - 1}, got {index}")
    return trajs[int(index)]


__all__ = ["TrajectorySamples", "condition_videos", "crop_along", "latent_path", "path_crops", "sample_trajectories",
           "token_mask_stats", "video_crops"]
