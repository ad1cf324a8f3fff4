"""Fast latent -> RGB previews: one linear projection (16 -> 3, plus bias) per latent cell, no VAE decode.

The projection maps *normalised* Wan latents to RGB in [-1, 1], one pixel per latent cell and one image per latent
frame. ``LatentPreview.wan21()`` carries the widely used coefficients for the released Wan 2.1 VAE (the
``latent_rgb_factors`` published with ComfyUI's ``Wan21`` latent format); ``LatentPreview.fit`` estimates them
by least squares against any VAE's own decode (tiny random test VAEs included).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from wclab.errors import CheckpointError, WclabError
from wclab.sizes import FRAMES_PER_LATENT, VAE_STRIDE

# Rows: latent channels 0..15; columns: R, G, B (as published, ComfyUI latent_formats.Wan21).
_WAN21_RGB_FACTORS = (
    (-0.1299, -0.1692, 0.2932), (0.0671, 0.0406, 0.0442), (0.3568, 0.2548, 0.1747), (0.0372, 0.2344, 0.1420),
    (0.0313, 0.0189, -0.0328), (0.0296, -0.0956, -0.0665), (-0.3477, -0.4059, -0.2925), (0.0166, 0.1902, 0.1975),
    (-0.0412, 0.0267, -0.1364), (-0.1293, 0.0740, 0.1636), (0.0680, 0.3019, 0.1128), (0.0032, 0.0581, 0.0639),
    (-0.1251, 0.0927, 0.1699), (0.0060, -0.0633, 0.0005), (0.3477, 0.2275, 0.2950), (0.1984, 0.0913, 0.1861),
)
_WAN21_RGB_BIAS = (-0.1835, -0.0868, -0.3360)


def video_on_latent_grid(video: torch.Tensor) -> torch.Tensor:
    """video [B, 3, 4F'-3, 8h, 8w] -> [B, 3, F', h, w]: frame 0 alone, then the mean of each 4 frames, and the
    mean of each 8x8 pixel block — the pixels each latent cell stands for."""
    b, c, t, h, w = video.shape
    if (t - 1) % FRAMES_PER_LATENT or h % VAE_STRIDE or w % VAE_STRIDE:
        raise WclabError(f"video must be [B, 3, 4k+1, 8h, 8w], got {tuple(video.shape)}")
    first = video[:, :, :1]
    rest = video[:, :, 1:].reshape(b, c, (t - 1) // FRAMES_PER_LATENT, FRAMES_PER_LATENT, h, w).mean(dim=3)
    frames = torch.cat([first, rest], dim=2)  # [B, 3, F', H, W]
    f = frames.shape[2]
    pooled = F.avg_pool2d(frames.transpose(1, 2).reshape(b * f, c, h, w), VAE_STRIDE)
    return pooled.reshape(b, f, c, h // VAE_STRIDE, w // VAE_STRIDE).transpose(1, 2)


@dataclass
class LatentPreview:
    """``rgb = weight @ latent + bias`` per cell; weight [3, C], bias [3], RGB in [-1, 1]."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __post_init__(self):
        self.weight = torch.as_tensor(self.weight, dtype=torch.float32).cpu()
        self.bias = torch.as_tensor(self.bias, dtype=torch.float32).cpu()
        if self.weight.ndim != 2 or self.weight.shape[0] != 3 or tuple(self.bias.shape) != (3,):
            raise WclabError(f"LatentPreview: weight must be [3, C] and bias [3], got "
                             f"{tuple(self.weight.shape)} and {tuple(self.bias.shape)}")

    @property
    def channels(self) -> int:
        return self.weight.shape[1]

    @classmethod
    def wan21(cls) -> LatentPreview:
        """Published coefficients for the released Wan 2.1 VAE (normalised latents)."""
        return cls(torch.tensor(_WAN21_RGB_FACTORS).T, torch.tensor(_WAN21_RGB_BIAS))

    @classmethod
    @torch.no_grad()
    def fit(cls, vae, samples: torch.Tensor | Iterable[torch.Tensor], tiled: bool = False) -> LatentPreview:
        """Least-squares fit against ``vae.decode``. Each sample is either normalised latents [B, C, F', h, w]
        (C = the VAE's latent channels) or videos [B, 3, 4k+1, H, W] in [-1, 1], which are encoded first.
        The target of each latent cell is its decoded pixels averaged as in :func:`video_on_latent_grid`."""
        z_dim = vae.config.z_dim
        xs, ys = [], []
        for s in [samples] if isinstance(samples, torch.Tensor) else samples:
            if s.ndim != 5 or s.shape[1] not in (z_dim, 3):
                raise WclabError(f"LatentPreview.fit: samples must be [B, {z_dim}, F', h, w] latents or "
                                 f"[B, 3, T, H, W] videos, got {tuple(s.shape)}")
            latents = s if s.shape[1] == z_dim else vae.encode(s, tiled=tiled)
            target = video_on_latent_grid(vae.decode(latents, tiled=tiled).float())
            xs.append(latents.float().movedim(1, -1).reshape(-1, z_dim).cpu())
            ys.append(target.movedim(1, -1).reshape(-1, 3).cpu())
        x, y = torch.cat(xs).double(), torch.cat(ys).double()
        x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)  # [N, C+1]: last column fits the bias
        sol = torch.linalg.lstsq(x1, y).solution  # [C+1, 3]
        return cls(sol[:-1].T.float(), sol[-1].float())

    def project(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, C, F', h, w] -> RGB [B, 3, F', h, w] in [-1, 1] (float32, not clamped)."""
        if latents.ndim != 5 or latents.shape[1] != self.channels:
            raise WclabError(f"LatentPreview: latents must be [B, {self.channels}, F', h, w], "
                             f"got {tuple(latents.shape)}")
        w, b = self.weight.to(latents.device), self.bias.to(latents.device)
        return torch.einsum("oc,bcfhw->bofhw", w, latents.float()) + b.view(1, 3, 1, 1, 1)

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor, upscale: int = 1) -> torch.Tensor:
        """latents [1, C, F', h, w] or [C, F', h, w] -> uint8 frames [F', h*upscale, w*upscale, 3] on CPU
        (nearest upsampling; same uint8 mapping as ``VAE.to_uint8``)."""
        if latents.ndim == 4:
            latents = latents[None]
        if latents.ndim == 5 and latents.shape[0] != 1:
            raise WclabError(f"LatentPreview: expected one sample, got batch {latents.shape[0]}")
        rgb = self.project(latents)[0].transpose(0, 1)  # [F', 3, h, w]
        if upscale > 1:
            rgb = F.interpolate(rgb, scale_factor=upscale, mode="nearest")
        return ((rgb.permute(0, 2, 3, 1) + 1) * 127.5).clip(0, 255).to(device="cpu", dtype=torch.uint8)

    def save(self, path: str | Path) -> None:
        save_file({"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> LatentPreview:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"latent preview file not found: {path}")
        try:
            t = load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"cannot read latent preview {path}: {type(e).__name__}: {e}") from e
        if set(t) != {"weight", "bias"}:
            raise CheckpointError(f"{path}: expected keys ['bias', 'weight'], got {sorted(t)}")
        try:
            return cls(t["weight"], t["bias"])
        except WclabError as e:
            raise CheckpointError(f"{path}: {e}") from e
