"""Trajectories → the DiT's extra input channels (Gaussian + point latents) and per-object token masks.

Every trajectory is read per latent frame: frame 0 alone, then groups of 4 frames (1-4, 5-8, ...). The point
is the group's mean position (``[-1, -1]`` placeholders included, as the reference does) and the visibility
is read at the group's last frame ``j``; the latent frame is ``j // 4``. Boxes in pixels are clipped to the
image and mapped to cells (8 px for latents, 16 px for DiT tokens) with ``int(x1) // c .. int(x2 + 1) // c``,
at least one cell wide. Later trajectories overwrite earlier ones inside their whole box.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import cv2
import numpy as np
import torch

from wclab.conditions.prompt import Prompt, build_prompt
from wclab.conditions.scene import Scene, Trajectory
from wclab.conditions.validate import check_model_size
from wclab.encode.bias import BETA, BiasSpec
from wclab.errors import ConditionError
from wclab.sizes import FRAMES_PER_LATENT, LATENT_CHANNELS, TOKEN_CELL, VAE_STRIDE, latent_frames

GAUSSIAN_HALF_SIZE = 15  # pixels: half-size of the Gaussian/point box
ENTERING_TOKEN_HALF_SIZE = 120  # pixels: token-mask half-size for objects that start off-image
VIS_THRESHOLD = 0.8  # visibility above which the Gaussian/point box is drawn
TOKEN_VIS_THRESHOLD = 0.5  # visibility above which the token mask box is drawn

PointMode = Literal["point", "mask"]


@dataclass
class ConditionTensors:
    """Encoded conditions of one scene (float32, on the device of ``first_frame_latents``).

    gaussian: ``[1, 1, F', h, w]`` Gaussian blobs, values 0..255. point: ``[1, 16, F', h, w]`` first-frame latent
    features inside each blob (``mode`` "point" or "mask"). token_masks: captioned id → ``[1, 1, F', h/2, w/2]``
    0/1 mask on the DiT token grid, in caption order. F' = (T-1)/4 + 1, h = H/8, w = W/8.
    """

    gaussian: torch.Tensor
    point: torch.Tensor
    token_masks: dict[str, torch.Tensor]
    prompt: Prompt
    mode: PointMode = "point"

    @property
    def caption_order(self) -> dict[str, int]:
        """Object id → index of its caption line / span."""
        return self.prompt.caption_order

    def dit_channels(self) -> torch.Tensor:
        """``[1, 17, F', h, w]``: Gaussian then point channels, as appended after the DiT's 36 input channels."""
        return torch.cat([self.gaussian, self.point], dim=1)

    def bias_spec(self, spans: list[tuple[int, int]], beta: float = BETA) -> BiasSpec:
        """:class:`wclab.encode.bias.BiasSpec` binding caption span k to the object with caption order k."""
        return BiasSpec.from_token_masks(self.token_masks, self.caption_order, spans, beta=beta)

    def to(self, *args, **kwargs) -> "ConditionTensors":
        """A copy with every tensor moved/cast like ``Tensor.to``."""
        return ConditionTensors(self.gaussian.to(*args, **kwargs), self.point.to(*args, **kwargs),
                                {k: v.to(*args, **kwargs) for k, v in self.token_masks.items()},
                                self.prompt, self.mode)


# ---------------------------------------------------------------------------------------------- templates
@lru_cache(maxsize=1)
def gaussian_template(size: int = 200, sigma: float = 40.0) -> np.ndarray:
    """``uint8 [size, size]``: isotropic Gaussian (σ in pixels) cut to its inscribed circle, peak 255. Read-only."""
    d = np.arange(size, dtype=np.float64) - size / 2
    g = (np.exp(-0.5 * (d[:, None] ** 2 / sigma**2 + d[None, :] ** 2 / sigma**2)) / 2 / np.pi / sigma**2)
    circle = cv2.circle(np.zeros((size, size), np.float32), (size // 2, size // 2), size // 2, 1, -1)
    g = g.astype(np.float32) * circle
    g = (g / g.max()).astype(np.float32)
    out = (g / g.max() * 255).astype(np.uint8)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=4096)
def gaussian_box(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """The template resized (cv2 bilinear) to ``width`` × ``height`` cells.

    Returns ``(values float32 [height, width], inside float32 0/1)``, read-only and cached per size.
    """
    m = cv2.resize(gaussian_template(), (width, height)).astype(np.float32)
    inside = (m != 0).astype(np.float32)
    m.setflags(write=False)
    inside.setflags(write=False)
    return m, inside


# ---------------------------------------------------------------------------------------------- geometry
def group_means(track: np.ndarray) -> np.ndarray:
    """``[F', 2]`` mean (x, y) per latent frame of a ``[T, 2]`` track: frame 0, then frames 4f-3..4f.

    Summed left to right like the reference's ``sum(list) / len(list)`` (bit-identical float64).
    """
    g = track[1:].reshape(-1, FRAMES_PER_LATENT, 2)
    rest = (((g[:, 0] + g[:, 1]) + g[:, 2]) + g[:, 3]) / FRAMES_PER_LATENT
    return np.concatenate([track[:1], rest])


def boxes_to_cells(centre: np.ndarray, half: tuple[float, float], vis: np.ndarray, threshold: float,
                   height: int, width: int, cell: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell boxes ``int [F', 4]`` (x1, x2, y1, y2; end-exclusive) and ``bool [F']`` (drawn or not).

    centre: ``[F', 2]`` (x, y) pixels; half: (half-width, half-height) pixels; a box is drawn where
    ``vis > threshold`` and its clipped pixel extent is at least 1 px in x and y.
    """
    hx, hy = half
    x1 = np.maximum(centre[:, 0] - hx, 0)
    x2 = np.minimum(centre[:, 0] + hx, width - 1)
    y1 = np.maximum(centre[:, 1] - hy, 0)
    y2 = np.minimum(centre[:, 1] + hy, height - 1)
    drawn = (vis > threshold) & (x2 - x1 >= 1) & (y2 - y1 >= 1)
    return np.concatenate([_cells(x1, x2, cell, drawn), _cells(y1, y2, cell, drawn)], axis=1), drawn


def _cells(a: np.ndarray, b: np.ndarray, cell: int, drawn: np.ndarray) -> np.ndarray:
    a = np.where(drawn, a, 0)
    b = np.where(drawn, b, 0)  # undrawn rows are never used; keep them finite and non-negative
    c1 = np.trunc(a).astype(np.int64) // cell
    c2 = np.trunc(b + 1).astype(np.int64) // cell
    empty = c1 == c2
    c2 = np.where(empty & (c1 == 0), 1, c2)
    c1 = np.where(empty & (c1 != 0), c2 - 1, c1)
    return np.stack([c1, c2], axis=1)


def mask_reach(traj: Trajectory) -> tuple[float, float]:
    """(half-width, half-height) pixels: farthest mask pixel from the frame-0 point in x and in y.

    Computed like the reference (integer pixel coords minus the point, in float32 when the point is a float);
    ``(0, 0)`` for an empty mask.
    """
    mask = traj.mask.decode()
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return 0, 0
    cols = np.flatnonzero(mask.any(axis=0))
    x0, y0 = traj.points[0]
    ext = torch.tensor([[rows[0], cols[0]], [rows[-1], cols[-1]]])  # int64, same promotion as the reference
    return (ext[:, 1] - x0).abs().max().item(), (ext[:, 0] - y0).abs().max().item()


def mask_mean_latent(traj: Trajectory, latent: torch.Tensor) -> torch.Tensor:
    """``[16]``: first-frame latent ``[16, h, w]`` times the mask sampled at every 8th pixel (nearest 1/8
    downsampling), averaged over all h·w cells (not only the masked ones), as the reference does."""
    mask = torch.from_numpy(np.ascontiguousarray(traj.mask.decode()[::VAE_STRIDE, ::VAE_STRIDE]))
    return (latent * mask.float()).mean(dim=(1, 2))


# ---------------------------------------------------------------------------------------------- encode
def encode_conditions(scene: Scene, first_frame_latents: torch.Tensor,
                      point_mode: PointMode = "point") -> ConditionTensors:
    """Encode a scene's trajectories for the DiT.

    first_frame_latents: ``[1, 16, 1, H/8, W/8]`` VAE latent of the start image. point_mode: "point" puts the
    latent at each trajectory's frame-0 point ``(y//8, x//8)`` in its blobs (all ones for entering objects);
    "mask" puts the mask-averaged latent instead. Returns :class:`ConditionTensors` (float32).
    """
    check_model_size(scene)
    if point_mode not in ("point", "mask"):
        raise ConditionError(f"point_mode: expected 'point' or 'mask', got {point_mode!r}")
    H, W = scene.height, scene.width
    h, w, F = H // VAE_STRIDE, W // VAE_STRIDE, latent_frames(scene.frames)
    expected = (1, LATENT_CHANNELS, 1, h, w)
    if not isinstance(first_frame_latents, torch.Tensor):
        raise ConditionError(f"first_frame_latents: expected a tensor {list(expected)}, "
                             f"got {type(first_frame_latents).__name__}")
    if tuple(first_frame_latents.shape) != expected:
        raise ConditionError(f"first_frame_latents: expected shape {list(expected)} for a {H}x{W} scene "
                             f"(16 channels, H/8 x W/8 cells), got {list(first_frame_latents.shape)}")
    device = first_frame_latents.device
    latent = first_frame_latents[0, :, 0].detach().to("cpu", torch.float32)  # [16, h, w]

    prompt = build_prompt(scene)
    gaussian = np.zeros((F, h, w), np.float32)
    point = np.zeros((LATENT_CHANNELS, F, h, w), np.float32)
    tokens = {i: np.zeros((F, h // 2, w // 2), np.float32) for i in prompt.caption_order}

    for traj in scene.trajectories:
        entering = traj.starts_off_image(H, W)
        centre = group_means(traj.track)
        vis = traj.vis[::4]

        if str(traj.id) in tokens:
            half = (ENTERING_TOKEN_HALF_SIZE,) * 2 if entering else mask_reach(traj)
            cells, drawn = boxes_to_cells(centre, half, vis, TOKEN_VIS_THRESHOLD, H, W, TOKEN_CELL)
            grid = tokens[str(traj.id)]
            for f in np.flatnonzero(drawn):
                x1, x2, y1, y2 = cells[f]
                grid[f, y1:y2, x1:x2] = 1.0

        if entering:
            feature = np.ones(LATENT_CHANNELS, np.float32)
        elif point_mode == "point":
            x0, y0 = traj.points[0]
            feature = latent[:, int(y0 // VAE_STRIDE), int(x0 // VAE_STRIDE)].numpy()
        else:
            feature = mask_mean_latent(traj, latent).numpy()
        feature = feature[:, None, None]
        # point mode fills an entering object's whole box with ones; otherwise only where the blob is non-zero
        whole_box = entering and point_mode == "point"

        half = (GAUSSIAN_HALF_SIZE, GAUSSIAN_HALF_SIZE)
        cells, drawn = boxes_to_cells(centre, half, vis, VIS_THRESHOLD, H, W, VAE_STRIDE)
        for f in np.flatnonzero(drawn):
            x1, x2, y1, y2 = cells[f]
            values, inside = gaussian_box(int(x2 - x1), int(y2 - y1))
            gaussian[f, y1:y2, x1:x2] = values
            point[:, f, y1:y2, x1:x2] = feature if whole_box else feature * inside

    def out(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device)

    return ConditionTensors(
        gaussian=out(gaussian[None, None]),
        point=out(point[None]),
        token_masks={i: out(m[None, None]) for i, m in tokens.items()},
        prompt=prompt,
        mode=point_mode,
    )
