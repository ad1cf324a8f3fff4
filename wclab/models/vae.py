"""Wan 2.1 video VAE: diffusers ``AutoencoderKLWan`` + Wan's latent normalisation and spatial tiling.

Latents are normalised per channel, ``(mu - mean) / std``, with the 16 constants of the released Wan 2.1 VAE.
Tiling follows the Wan/DiffSynth scheme, not diffusers' own: overlapping spatial tiles (size and stride in latent
cells, all frames at once) blended with linear ramps over the overlap, then divided by the summed weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from wclab.errors import CheckpointError, WclabError
from wclab.models.device import check_device
from wclab.models.weights import read_state_dict
from wclab.sizes import FRAMES_PER_LATENT, TILE_SIZE, TILE_STRIDE, VAE_STRIDE, latent_frames

# Per-channel statistics of Wan 2.1 VAE latents (published with the model).
LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
               3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


@dataclass
class VAEConfig:
    """Wan 2.1 VAE architecture (``base_dim`` 96 for the released model)."""

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple[bool, ...] = (False, True, True)

    def build(self):
        from diffusers import AutoencoderKLWan

        return AutoencoderKLWan(base_dim=self.base_dim, z_dim=self.z_dim, dim_mult=list(self.dim_mult),
                                num_res_blocks=self.num_res_blocks, attn_scales=[],
                                temperal_downsample=list(self.temperal_downsample),
                                latents_mean=list(LATENTS_MEAN), latents_std=list(LATENTS_STD))

    @classmethod
    def from_wan_args(cls, dim: Optional[int] = None, attn_scales=(), **args) -> VAEConfig:
        """From the reference ``WanVAE_`` constructor arguments (as ``wclab_tiny.json`` stores them; ``dim`` is
        ``base_dim``); arguments not given keep the released VAE's values."""
        if tuple(attn_scales):
            raise WclabError(f"VAEConfig: attn_scales must be empty (Wan 2.1 VAE), got {attn_scales}")
        if dim is not None:
            args["base_dim"] = dim
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})


# The names a Wan VAE key can take: module path (N: an index) -> parameter names under it.
_BLOCK_LEAVES = ("residual.0.gamma", "residual.2.weight", "residual.2.bias", "residual.3.gamma", "residual.6.weight",
                 "residual.6.bias", "shortcut.weight", "shortcut.bias", "resample.1.weight", "resample.1.bias",
                 "time_conv.weight", "time_conv.bias", "norm.gamma", "to_qkv.weight", "to_qkv.bias", "proj.weight",
                 "proj.bias")
_CODER_LEAVES = ("conv1.weight", "conv1.bias", "head.0.gamma", "head.2.weight", "head.2.bias")
_WAN_KEY_NAMES = {"encoder.downsamples.N.": _BLOCK_LEAVES, "decoder.upsamples.N.": _BLOCK_LEAVES,
                  "encoder.middle.N.": _BLOCK_LEAVES, "decoder.middle.N.": _BLOCK_LEAVES, "encoder.": _CODER_LEAVES,
                  "decoder.": _CODER_LEAVES, "": ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias")}
_MAX_INDEX = 64  # more modules than any Wan VAE module list holds


def wan_vae_keys(config: VAEConfig) -> dict[str, str]:
    """Wan key -> diffusers key of every weight of a VAE of ``config``, in the diffusers model's order.

    Found by running diffusers' own Wan -> diffusers key converter over every name a Wan VAE key can take and
    keeping the names that land on a weight of the model; raises WclabError if a weight gets no or two names."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    with torch.device("meta"):
        model_keys = list(config.build().state_dict())
    wanted = set(model_keys)
    candidates = [path.replace("N", str(i)) + leaf for path, leaves in _WAN_KEY_NAMES.items()
                  for i in (range(_MAX_INDEX) if "N" in path else [0]) for leaf in leaves]
    names: dict[str, list[str]] = {}
    for wan in candidates:
        (new,) = convert_wan_vae_to_diffusers({wan: None})
        if new in wanted:
            names.setdefault(new, []).append(wan)
    bad = [k for k in model_keys if len(names.get(k, ())) != 1]
    if bad:
        raise WclabError(f"cannot name the diffusers VAE weight {bad[0]!r} in Wan's key format "
                         f"(candidates {names.get(bad[0], [])}); is the installed diffusers version supported?")
    return {names[k][0]: k for k in model_keys}


def vae_shapes(config: VAEConfig) -> dict[str, tuple[int, ...]]:
    """Wan key -> shape of a VAE checkpoint for ``config`` (``Wan2.1_VAE.pth`` format), read off the diffusers
    model built on the meta device."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in config.build().state_dict().items()}
    return {wan: shapes[new] for wan, new in wan_vae_keys(config).items()}


def tile_spans(length: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Tile (start, end) along one axis, Wan's rule: starts every ``stride``; a start is dropped once the
    previous tile already reaches the end. ``end`` may pass ``length`` (the tile is then cut short)."""
    return [(s, s + size) for s in range(0, length, stride) if not (s >= stride and s - stride + size >= length)]


def ramp_1d(length: int, ramp_start: bool, ramp_end: bool, border: int) -> torch.Tensor:
    """[length] weights: 1, rising linearly as (1..border)/border at the start and falling at the end
    (where the tile has a neighbour); the end ramp overwrites the start one where they meet."""
    x = torch.ones(length)
    if border <= 0:
        return x
    ramp = torch.arange(1, border + 1) / border
    if ramp_start:
        x[:border] = ramp[:length]  # a tile shorter than the border only occurs without neighbours
    if ramp_end:
        x[-border:] = ramp.flip(0)[-length:]
    return x


def tile_weight(h: int, w: int, at_edge: tuple[bool, bool, bool, bool], border: tuple[int, int]) -> torch.Tensor:
    """[h, w] blending weight of one tile: min of the row and column ramps. ``at_edge`` = (top, bottom, left,
    right) of the whole frame (no ramp there); ``border`` = overlap (rows, cols) in output units."""
    rows = ramp_1d(h, not at_edge[0], not at_edge[1], border[0])
    cols = ramp_1d(w, not at_edge[2], not at_edge[3], border[1])
    return torch.minimum(rows[:, None].expand(h, w), cols[None, :].expand(h, w))


class VAE(nn.Module):
    """Wan 2.1 VAE. Videos [B, 3, T, H, W] in [-1, 1] (T = 4k+1, H, W multiples of 8 pixels) <->
    normalised latents [B, 16, (T-1)/4+1, H/8, W/8]."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.model = config.build().eval().requires_grad_(False)
        self._decoder_convs = _causal_convs(self.model.decoder)
        self._encoder_convs = _causal_convs(self.model.encoder)
        self.register_buffer("latents_mean", torch.tensor(LATENTS_MEAN), persistent=False)
        self.register_buffer("latents_inv_std", 1.0 / torch.tensor(LATENTS_STD), persistent=False)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> VAE:
        """Load the original ``Wan2.1_VAE.pth`` (or a same-format file); ``base_dim`` and ``z_dim`` come from
        the weights. Missing, unexpected or misshaped keys raise CheckpointError naming the key and file."""
        from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

        check_device(device)
        sd = read_state_dict(path, what="VAE checkpoint")
        for key in ("encoder.conv1.weight", "conv2.weight"):
            if key not in sd:
                raise CheckpointError(f"{path}: missing key {key!r} (not a Wan 2.1 VAE checkpoint?)")
        config = VAEConfig(base_dim=sd["encoder.conv1.weight"].shape[0], z_dim=sd["conv2.weight"].shape[0])
        try:
            origin = convert_wan_vae_to_diffusers({k: k for k in sd})  # diffusers key -> Wan key (pure renaming)
        except Exception as e:
            raise CheckpointError(f"{path}: cannot convert Wan VAE keys: {type(e).__name__}: {e}") from e
        if len(origin) != len(sd):
            raise CheckpointError(f"{path}: {len(sd) - len(origin)} Wan VAE keys map onto the same diffusers key")
        converted = {new: sd[old] for new, old in origin.items()}
        with torch.device("meta"):
            vae = cls(config)
        expected = vae.model.state_dict()
        missing = sorted(set(expected) - set(converted))
        unexpected = sorted(origin[k] for k in set(converted) - set(expected))
        if missing:
            raise CheckpointError(f"{path}: missing the weight diffusers calls {missing[0]!r} "
                                  f"({len(missing)} missing in all)")
        if unexpected:
            raise CheckpointError(f"{path}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all)")
        for k, v in converted.items():
            if tuple(v.shape) != tuple(expected[k].shape):
                raise CheckpointError(f"{path}: {origin[k]} has shape {tuple(v.shape)}, "
                                      f"expected {tuple(expected[k].shape)}")
        vae.model.load_state_dict({k: v.to(dtype) for k, v in converted.items()}, strict=True, assign=True)
        vae.latents_mean = torch.tensor(LATENTS_MEAN)
        vae.latents_inv_std = 1.0 / torch.tensor(LATENTS_STD)
        return vae.to(device)

    @property
    def device(self) -> torch.device:
        return self.model.post_quant_conv.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.post_quant_conv.weight.dtype

    # ------------------------------------------------------------------ one tile (or the whole frame)
    def _encode_one(self, video: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """[1, 3, T, H, W] -> normalised latents [1, z, F', H/8, W/8] (model dtype). Runs the encoder one
        latent frame at a time (the first video frame, then groups of 4) like diffusers' ``_encode`` does, with a
        cache of its own: one slot per causal convolution. ``progress``: a bar over the latent frames."""
        x = video.to(self.device, self.dtype)
        cache: list = [None] * self._encoder_convs
        chunks = [x[:, :, :1]] + [x[:, :, 1 + FRAMES_PER_LATENT * i:1 + FRAMES_PER_LATENT * (i + 1)]
                                  for i in range((x.shape[2] - 1) // FRAMES_PER_LATENT)]
        out = [self.model.encoder(chunk, feat_cache=cache, feat_idx=[0])
               for chunk in tqdm(chunks, desc="VAE encoding", leave=False, disable=not progress)]
        mu = self.model.quant_conv(torch.cat(out, dim=2))[:, :self.config.z_dim]  # the posterior's mean
        shape = (1, -1, 1, 1, 1)
        return (mu - self.latents_mean.to(mu).view(shape)) * self.latents_inv_std.to(mu).view(shape)

    def _decode_one(self, latents: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """Normalised latents [1, z, F', h, w] -> video [1, 3, 4F'-3, 8h, 8w], NOT clamped (tiles are blended
        before clamping; diffusers' ``decode`` clamps). Runs the decoder one latent frame at a time like
        diffusers does, with a cache of its own: one slot per causal convolution, holding the frames that
        convolution needs from the previous chunk. ``progress``: a bar over the latent frames."""
        z = latents.to(self.device, self.dtype)
        shape = (1, -1, 1, 1, 1)
        z = z / self.latents_inv_std.to(z).view(shape) + self.latents_mean.to(z).view(shape)
        x = self.model.post_quant_conv(z)
        cache: list = [None] * self._decoder_convs
        frames = [self.model.decoder(x[:, :, i:i + 1], feat_cache=cache, feat_idx=[0], first_chunk=i == 0)
                  for i in tqdm(range(x.shape[2]), desc="VAE decoding", leave=False, disable=not progress)]
        return torch.cat(frames, dim=2)

    # ------------------------------------------------------------------ tiling
    def _tiled(self, x: torch.Tensor, fn, out_channels: int, out_frames: int, cells: tuple[int, int],
               tile_size: tuple[int, int], tile_stride: tuple[int, int], up: bool, desc: str) -> torch.Tensor:
        """Run ``fn`` on overlapping spatial tiles of ``x`` [1, C, T, H, W] and blend. The tile grid is laid in
        latent cells over ``cells`` = (h, w); ``up``: output is 8x the latent grid (decode) else 1x (encode)."""
        in_scale = 1 if up else VAE_STRIDE  # input units per latent cell
        out_scale = VAE_STRIDE if up else 1  # output units per latent cell
        border = ((tile_size[0] - tile_stride[0]) * out_scale, (tile_size[1] - tile_stride[1]) * out_scale)
        out_h, out_w = cells[0] * out_scale, cells[1] * out_scale
        values = torch.zeros((1, out_channels, out_frames, out_h, out_w), dtype=x.dtype, device=self.device)
        weight = torch.zeros((1, 1, out_frames, out_h, out_w), dtype=x.dtype, device=self.device)
        tiles = [(r, c) for r in tile_spans(cells[0], *_pair(tile_size[0], tile_stride[0]))
                 for c in tile_spans(cells[1], *_pair(tile_size[1], tile_stride[1]))]
        inputs = [x[:, :, :, r0 * in_scale:r1 * in_scale, c0 * in_scale:c1 * in_scale]
                  for (r0, r1), (c0, c1) in tiles]
        for ((r0, r1), (c0, c1)), y in zip(tiles, self.map_tiles(fn, inputs, desc)):
            y = y.to(x.dtype)
            edge = (r0 == 0, r1 >= cells[0], c0 == 0, c1 >= cells[1])
            mask = tile_weight(y.shape[3], y.shape[4], edge, border).to(y)
            ys = slice(r0 * out_scale, r0 * out_scale + y.shape[3])
            xs = slice(c0 * out_scale, c0 * out_scale + y.shape[4])
            values[:, :, :, ys, xs] += y * mask
            weight[:, :, :, ys, xs] += mask
        return values / weight

    def map_tiles(self, fn, tiles: list[torch.Tensor], desc: str) -> Iterator[torch.Tensor]:
        """``fn`` of each tile, in order, with a progress bar. The tiled encode/decode blend what this yields;
        `wclab.parallel.ParallelVAE` swaps it for one that spreads the tiles over ranks."""
        for tile in tqdm(tiles, desc=desc, leave=False):
            yield fn(tile)

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def encode(self, video: torch.Tensor, tiled: bool = False, tile_size: tuple[int, int] = TILE_SIZE,
               tile_stride: tuple[int, int] = TILE_STRIDE) -> torch.Tensor:
        """video [B, 3, T, H, W] in [-1, 1] -> normalised latents [B, 16, (T-1)/4+1, H/8, W/8] (video dtype).
        ``tile_size``/``tile_stride`` are (rows, cols) in latent cells."""
        _check_video(video)
        b, _, t, h, w = video.shape
        out = []
        for i in range(b):
            v = video[i:i + 1]
            if tiled:
                z = self._tiled(v, self._encode_one, self.config.z_dim, latent_frames(t),
                                (h // VAE_STRIDE, w // VAE_STRIDE), tile_size, tile_stride, up=False, desc="VAE encoding")
            else:
                z = self._encode_one(v, progress=True).to(video.dtype)
            out.append(z)
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, tiled: bool = False, tile_size: tuple[int, int] = TILE_SIZE,
               tile_stride: tuple[int, int] = TILE_STRIDE) -> torch.Tensor:
        """normalised latents [B, 16, F', h, w] -> video [B, 3, 4F'-3, 8h, 8w] clamped to [-1, 1]
        (latents dtype). ``tile_size``/``tile_stride`` are (rows, cols) in latent cells."""
        if latents.ndim != 5 or latents.shape[1] != self.config.z_dim:
            raise WclabError(f"VAE.decode: latents must be [B, {self.config.z_dim}, F', h, w], "
                             f"got {tuple(latents.shape)}")
        b, _, f, h, w = latents.shape
        out = []
        for i in range(b):
            z = latents[i:i + 1]
            if tiled:
                v = self._tiled(z, self._decode_one, 3, FRAMES_PER_LATENT * (f - 1) + 1, (h, w), tile_size, tile_stride,
                                up=True, desc="VAE decoding")
            else:
                v = self._decode_one(z, progress=True).to(latents.dtype)
            out.append(v.clamp_(-1, 1))
        return torch.cat(out)

    @staticmethod
    def to_uint8(video: torch.Tensor) -> torch.Tensor:
        """Decoded video [1, 3, T, H, W] or [3, T, H, W] in [-1, 1] -> uint8 frames [T, H, W, 3] on CPU.

        As the reference: ``(x + 1) * 127.5`` clipped to [0, 255] and truncated (not rounded), in the video's dtype."""
        if video.ndim == 5:
            if video.shape[0] != 1:
                raise WclabError(f"VAE.to_uint8: expected one video [1, 3, T, H, W], got batch {video.shape[0]}")
            video = video[0]
        if video.ndim != 4 or video.shape[0] != 3:
            raise WclabError(f"VAE.to_uint8: expected [3, T, H, W], got {tuple(video.shape)}")
        frames = ((video.permute(1, 2, 3, 0) + 1) * 127.5).clip(0, 255)
        return frames.to(device="cpu", dtype=torch.uint8)


def _causal_convs(module: nn.Module) -> int:
    """Number of diffusers ``WanCausalConv3d`` layers in ``module`` (one decode-cache slot each)."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    return sum(isinstance(m, WanCausalConv3d) for m in module.modules())


def _pair(size: int, stride: int) -> tuple[int, int]:
    if not (0 < stride <= size):
        raise WclabError(f"tile_stride must be in 1..tile_size, got size {size} stride {stride} (latent cells)")
    return size, stride


def _check_video(video: torch.Tensor) -> None:
    if video.ndim != 5 or video.shape[1] != 3:
        raise WclabError(f"VAE.encode: video must be [B, 3, T, H, W], got {tuple(video.shape)}")
    _, _, t, h, w = video.shape
    if (t - 1) % FRAMES_PER_LATENT:
        raise WclabError(f"VAE.encode: frames must be 4k+1, got {t}")
    if h % VAE_STRIDE or w % VAE_STRIDE:
        raise WclabError(f"VAE.encode: height and width must be multiples of {VAE_STRIDE} pixels, got {h}x{w}")
