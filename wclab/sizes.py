"""Sizes every layer shares: the Wan VAE's compression, the DiT's token cell, VAE tiles, the released video size.

Pixels ↔ latents: a ``T × H × W`` video has ``F' = (T - 1) // 4 + 1`` latent frames (frame 0 alone, then groups
of 4) of ``H / 8 × W / 8`` latent cells; a DiT token covers 2 × 2 latent cells (16 × 16 pixels).
"""
from __future__ import annotations

VAE_STRIDE = 8  # pixels per latent cell, each side
FRAMES_PER_LATENT = 4  # pixel frames per latent frame (after the first)
LATENT_CHANNELS = 16  # channels of a Wan 2.1 VAE latent
TOKEN_CELL = 16  # pixels per DiT token, each side (VAE stride × patch 2); H and W must be multiples of it

TILE_SIZE = (30, 52)  # VAE tile (rows, cols) in latent cells
TILE_STRIDE = (15, 26)  # VAE tile step (rows, cols) in latent cells; tiles overlap by size - stride

DEFAULT_HEIGHT, DEFAULT_WIDTH, DEFAULT_FRAMES = 480, 832, 81  # pixels, pixels, frames: the released models' size


def latent_frames(frames: int) -> int:
    """Latent frames ``F' = (T - 1) // 4 + 1`` of a ``T``-frame video."""
    return (frames - 1) // FRAMES_PER_LATENT + 1
