"""Model inputs that do not depend on trajectories: start noise, latent sizes and the image condition ``y``.

Latent grid: F' = (T - 1) / 4 + 1 latent frames (frame 0 alone, then groups of 4), h = H / 8, w = W / 8 cells.
"""
from __future__ import annotations

from typing import Optional, Protocol, Sequence, Union

import torch

from wclab.image import SizeError, check_size
from wclab.sizes import FRAMES_PER_LATENT, LATENT_CHANNELS, TILE_SIZE, TILE_STRIDE, VAE_STRIDE, latent_frames

Shape5 = tuple[int, int, int, int, int]


class VideoEncoder(Protocol):
    """What :func:`image_condition` needs from a VAE (``wclab.models.vae``)."""

    def encode(self, video: torch.Tensor, *, tiled: bool = False, tile_size: tuple[int, int] = TILE_SIZE,
               tile_stride: tuple[int, int] = TILE_STRIDE) -> torch.Tensor:
        """``[B, 3, T, H, W]`` in [-1, 1] → ``[B, 16, F', H/8, W/8]``."""
        ...


def latent_shape(height: int, width: int, frames: int, z_dim: int = LATENT_CHANNELS) -> Shape5:
    """``(1, z_dim, F', H/8, W/8)`` for a ``height`` × ``width`` pixel, ``frames``-frame video (validated)."""
    check_size(height, width, frames, where="latent_shape")
    return (1, z_dim, latent_frames(frames), height // VAE_STRIDE, width // VAE_STRIDE)


def make_noise(shape: Sequence[int], seed: Optional[int], device: Union[str, torch.device, None] = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Start noise ``[1, 16, F', h, w]``, bit-identical to the reference for the same seed.

    ``shape`` is a latent shape (5 ints) or ``(frames, height, width)`` in pixels. Drawn with
    ``torch.randn(..., generator=torch.Generator("cpu").manual_seed(seed))`` in float32 on the CPU, then moved
    to ``device``/``dtype``. ``seed=None`` draws from torch's global generator (not reproducible).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3:
        frames, height, width = shape
        shape = latent_shape(height, width, frames)
    elif len(shape) != 5 or min(shape) < 1:
        raise SizeError(f"make_noise: shape: expected 5 positive latent sizes or (frames, height, width), got {shape}")
    generator = None if seed is None else torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(shape, generator=generator, device="cpu", dtype=torch.float32)
    return noise.to(device=device, dtype=dtype)


def frame_mask(known: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-pixel-frame ``known`` flags ``[T]`` → the 4-channel latent mask ``[1, 4, F', h, w]``.

    Frame 0 is repeated 4 times so every latent frame covers 4 pixel frames; channel c of latent frame f is the
    flag of pixel frame ``4f + c`` of that padded sequence (Wan's I2V mask layout).
    """
    flags = torch.cat([known[:1].repeat(FRAMES_PER_LATENT), known[1:]]).to(torch.float32)
    per_latent = flags.view(-1, FRAMES_PER_LATENT).T  # [4, F']
    h, w = height // VAE_STRIDE, width // VAE_STRIDE
    return per_latent[None, :, :, None, None].expand(1, FRAMES_PER_LATENT, per_latent.shape[1], h, w).clone()


@torch.no_grad()
def image_condition(vae: VideoEncoder, image: torch.Tensor, frames: int, tiled: bool = False,
                    tile_size: tuple[int, int] = TILE_SIZE,
                    tile_stride: tuple[int, int] = TILE_STRIDE) -> tuple[torch.Tensor, torch.Tensor]:
    """The DiT's image condition and the first-frame latents.

    image: ``[1, 3, H, W]`` in [-1, 1]. Returns ``y`` ``[1, 20, F', h, w]`` = cat(mask 4, VAE latents of the
    video [image, zeros × (frames - 1)] 16) and ``first_frame_latents`` ``[1, 16, 1, h, w]`` (VAE of the image
    alone). Tile size/stride are in latent cells and used only when ``tiled``.
    """
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise SizeError(f"image_condition: image: expected a [1, 3, H, W] tensor, got {list(image.shape)}")
    height, width = image.shape[-2:]
    expected = latent_shape(height, width, frames)
    tiling = dict(tiled=tiled, tile_size=tile_size, tile_stride=tile_stride)

    video = torch.cat([image[:, :, None], image.new_zeros(1, 3, frames - 1, height, width)], dim=2)
    latents = _encode(vae, video, tiling, expected)
    first_frame_latents = _encode(vae, image[:, :, None], tiling, expected[:2] + (1,) + expected[3:])

    known = torch.zeros(frames)
    known[0] = 1
    mask = frame_mask(known, height, width).to(dtype=latents.dtype, device=latents.device)
    return torch.cat([mask, latents], dim=1), first_frame_latents


def _encode(vae: VideoEncoder, video: torch.Tensor, tiling: dict, expected: Shape5) -> torch.Tensor:
    out = vae.encode(video, **tiling)
    if tuple(out.shape) != tuple(expected):
        raise SizeError(f"vae.encode of a {list(video.shape)} video: expected latents {list(expected)}, "
                        f"got {list(out.shape)}")
    return out
