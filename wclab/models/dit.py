"""The Wan2.2 diffusion transformer as WorldCanvas uses it, readable in one sitting, with hook points.

Parameter names are the released checkpoint's (``blocks.N.self_attn.q``, ``cross_attn``, ``norm3``, ``ffn.0``,
``modulation``, ``head.head``, ...), so `DiT.from_checkpoint` loads WorldCanvas high/low-noise experts unchanged.

Input per denoising step: x = cat(noisy latents 16, y 20, gaussian 1, point 16) = 53 channels [B, 53, F, H, W]
(F latent frames, H×W latent cells); patches of [1, 2, 2] cells become tokens on a grid (F, H/2, W/2), flattened
frame-major to S = F·H/2·W/2 video tokens. Text: T5 output [B, L, text_dim]. Optional cross-attention bias
[B, 1, S, L] (WorldCanvas's log(1 + 29·allow) trajectory/caption binding) is added to the text logits of
every block.

Hook points (see `wclab.models.hooks`), N = block index:
  hook_embed [B, S, dim]                       patch-embedded video tokens
  blocks.N.hook_in / hook_out [B, S, dim]       residual stream entering / leaving block N
  blocks.N.hook_mod [B, 6, dim]                 shift/scale/gate (self-attn), shift/scale/gate (ffn)
  blocks.N.self_attn.hook_q, hook_k [B, S, heads, head_dim] (after RMSNorm and RoPE), hook_v same shape
  blocks.N.self_attn.hook_z [B, S, heads, head_dim] per-head attention output, before the out-projection
  blocks.N.self_attn.hook_out [B, S, dim]       self-attention output before its gate
  blocks.N.cross_attn.hook_q [B, S, heads, head_dim], hook_k / hook_v [B, L, heads, head_dim]
  blocks.N.cross_attn.hook_bias [B, 1, S, L]    only fires when a bias is given
  blocks.N.cross_attn.hook_logits (opt-in) [B, heads, S, L] float32, pre-softmax incl. bias
  blocks.N.cross_attn.hook_probs (opt-in)  [B, heads, S, L] float32
  blocks.N.cross_attn.hook_z [B, S, heads, head_dim] per-head attention output, before the out-projection
  blocks.N.cross_attn.hook_out [B, S, dim]      cross-attention output added to the residual
  blocks.N.hook_ffn_out [B, S, dim]             feed-forward output before its gate
  hook_head_out [B, out_dim, F, H, W]           final output (flow-matching velocity prediction)
"""
from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, NamedTuple, Optional, Union

import torch
from torch import Tensor, nn

from wclab.errors import CheckpointError, WclabError
from wclab.models.attention import attention, attention_from_probs, attention_logits, check_backend
from wclab.models.device import check_device
from wclab.models.hooks import HookedModule, HookPoint
from wclab.models.weights import read_state_dict

Device = Union[str, torch.device]


class DiTInputError(WclabError, ValueError):
    """A DiT input tensor has the wrong shape (the message names it, expected vs got)."""


@dataclass(frozen=True)
class DiTConfig:
    dim: int
    ffn_dim: int
    freq_dim: int
    text_dim: int
    in_dim: int  # input channels: 53 for WorldCanvas (16 latents + 20 y + 1 gaussian + 16 point)
    out_dim: int
    num_heads: int
    num_layers: int
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (frames, cells, cells) per token
    eps: float = 1e-6
    cross_attn_norm: bool = True  # norm3 is an affine LayerNorm (Wan2.2); Identity otherwise

    def __post_init__(self):
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise WclabError(f"DiTConfig: dim {self.dim} must split into {self.num_heads} heads of even size")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def worldcanvas_14b(cls) -> "DiTConfig":
        """Each WorldCanvas expert (Wan2.2-I2V-A14B DiT with 53 input channels)."""
        return cls(dim=5120, ffn_dim=13824, freq_dim=256, text_dim=4096, in_dim=53, out_dim=16,
                   num_heads=40, num_layers=40)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], num_heads: Optional[int] = None, head_dim: int = 128,
                        eps: float = 1e-6) -> "DiTConfig":
        """Sizes read from weight shapes (tensors or anything with ``.shape``); heads = dim // head_dim unless given."""
        def shape(key: str) -> tuple[int, ...]:
            if key not in sd:
                raise CheckpointError(f"DiT state dict has no {key!r}; cannot infer the model size")
            return tuple(sd[key].shape)

        dim, in_dim, *patch = shape("patch_embedding.weight")
        layers = sorted({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
        if layers != list(range(len(layers))) or not layers:
            raise CheckpointError(f"DiT state dict block indices must be 0..N-1, got {layers[:8]}...")
        if num_heads is None:
            if dim % head_dim:
                raise CheckpointError(f"dim {dim} is not a multiple of head_dim {head_dim}; pass num_heads")
            num_heads = dim // head_dim
        return cls(dim=dim, ffn_dim=shape("blocks.0.ffn.0.weight")[0], freq_dim=shape("time_embedding.0.weight")[1],
                   text_dim=shape("text_embedding.0.weight")[1], in_dim=in_dim,
                   out_dim=shape("head.head.weight")[0] // math.prod(patch), num_heads=num_heads,
                   num_layers=len(layers), patch_size=tuple(patch), eps=eps,
                   cross_attn_norm="blocks.0.norm3.weight" in sd)


# ---------------------------------------------------------------- position and time encodings

def timestep_embedding(timestep: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of timesteps (0..1000): [B] -> [B, dim] float64, cos half then sin half."""
    half = dim // 2
    freqs = torch.pow(10000, -torch.arange(half, dtype=torch.float64, device=timestep.device).div(half))
    angles = torch.outer(timestep.to(torch.float64), freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def _rope_axis(dim: int, n: int) -> Tensor:
    """Rotations e^{i·pos·θ_j} for positions 0..n-1 on one axis: [n, dim/2] complex128."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2)[: dim // 2].double() / dim))
    angles = torch.outer(torch.arange(n, dtype=torch.float64), inv_freq)
    return torch.polar(torch.ones_like(angles), angles)


def rope_freqs(head_dim: int, grid: tuple[int, int, int], device: Device = "cpu") -> Tensor:
    """3-axis RoPE for a token grid (f, h, w): [f·h·w, 1, head_dim/2] complex128.

    The head dimension splits into frame / row / column parts of head_dim - 2·(head_dim//3), head_dim//3,
    head_dim//3 channels; tokens are ordered frame-major like the patch embedding's flattening.
    """
    f, h, w = grid
    d_hw = head_dim // 3
    parts = [
        _rope_axis(head_dim - 2 * d_hw, f).view(f, 1, 1, -1).expand(f, h, w, -1),
        _rope_axis(d_hw, h).view(1, h, 1, -1).expand(f, h, w, -1),
        _rope_axis(d_hw, w).view(1, 1, w, -1).expand(f, h, w, -1),
    ]
    return torch.cat(parts, dim=-1).reshape(f * h * w, 1, -1).to(device)


def rope_cos_sin(head_dim: int, grid: tuple[int, int, int], device: Device = "cpu") -> Tensor:
    """The `rope_freqs` rotations as real (cos, sin) pairs: [f·h·w, 1, head_dim/2, 2] float32 (computed in
    float64, then rounded), for the float32 RoPE path that avoids float64 and complex tensors on the GPU."""
    return torch.view_as_real(rope_freqs(head_dim, grid)).to(device=device, dtype=torch.float32)


def apply_rope(x: Tensor, freqs: Tensor) -> Tensor:
    """Rotate channel pairs of x [B, S, heads, head_dim] by freqs: complex [S, 1, head_dim/2] (`rope_freqs`,
    rotated in float64 like Wan) or real [S, 1, head_dim/2, 2] (`rope_cos_sin`, rotated in float32)."""
    if freqs.is_complex():
        pairs = torch.view_as_complex(x.to(torch.float64).reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(pairs * freqs).flatten(-2).to(x.dtype)
    a, b = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # real / imaginary channel of each pair
    cos, sin = freqs.unbind(-1)
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2).to(x.dtype)


# ---------------------------------------------------------------- modules, bottom-up

class RMSNorm(nn.Module):
    """x / rms(x) · weight over the last dim, normalised in float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class SelfAttention(nn.Module):
    """Video tokens attend to each other, with q/k RMSNorm and 3-axis RoPE."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)
        self.hook_q, self.hook_k, self.hook_v, self.hook_z, self.hook_out = (HookPoint() for _ in range(5))
        self.backend: Optional[str] = None  # attention backend (None: the default, `wclab.models.attention`)
        self.attention = self.local_attention  # (q, k, v) -> out; `wclab.parallel` swaps in a sequence-parallel one
        # (module, x, freqs) -> out [B, S, dim]: the whole split self-attention, where `wclab.parallel` fuses the
        # exchanges into the kernels around it (its "ulysses_push" engine; hooks other than hook_out then not fired)
        self.split_forward = None

    def local_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention over the tokens given: q, k, v [B, S, heads, head_dim] -> [B, S, heads, head_dim]."""
        return attention(q, k, v, backend=self.backend)

    def forward(self, x: Tensor, freqs: Tensor) -> Tensor:
        if self.split_forward is not None:
            return self.hook_out(self.split_forward(self, x, freqs))
        heads = (self.num_heads, -1)  # [B, S, dim] -> [B, S, heads, head_dim]
        q = self.hook_q(apply_rope(self.norm_q(self.q(x)).unflatten(-1, heads), freqs))
        k = self.hook_k(apply_rope(self.norm_k(self.k(x)).unflatten(-1, heads), freqs))
        v = self.hook_v(self.v(x).unflatten(-1, heads))
        z = self.hook_z(self.attention(q, k, v))  # [B, S, heads, head_dim]
        return self.hook_out(self.o(z.flatten(-2)))  # [B, S, dim]


class CrossAttention(nn.Module):
    """Video tokens attend to text tokens, with an optional additive bias on the logits."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)
        self.hook_q, self.hook_k, self.hook_v, self.hook_bias, self.hook_z, self.hook_out = (HookPoint() for _ in range(6))
        self.hook_logits, self.hook_probs = HookPoint(opt_in=True), HookPoint(opt_in=True)
        self.backend: Optional[str] = None  # attention backend (None: the default, `wclab.models.attention`)

    def forward(self, x: Tensor, context: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        heads = (self.num_heads, -1)
        q = self.hook_q(self.norm_q(self.q(x)).unflatten(-1, heads))  # [B, S, heads, head_dim]
        k = self.hook_k(self.norm_k(self.k(context)).unflatten(-1, heads))  # [B, L, heads, head_dim]
        v = self.hook_v(self.v(context).unflatten(-1, heads))
        if bias is not None:
            bias = self.hook_bias(bias)  # [B, 1, S, L]
        if self.hook_logits.active or self.hook_probs.active:  # materialise the attention pattern
            logits = self.hook_logits(attention_logits(q, k, bias))  # [B, heads, S, L] float32
            out = attention_from_probs(self.hook_probs(logits.softmax(-1)), v)
        else:
            out = attention(q, k, v, bias, backend=self.backend)
        return self.hook_out(self.o(self.hook_z(out).flatten(-2)))  # [B, S, dim]; hook_z [B, S, heads, head_dim]


class Block(nn.Module):
    """Modulated self-attention, cross-attention and feed-forward, each added to the residual stream."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim = cfg.dim
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.eps)
        self.cross_attn = CrossAttention(dim, cfg.num_heads, cfg.eps)
        self.norm1 = nn.LayerNorm(dim, eps=cfg.eps, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.eps, elementwise_affine=False)
        self.norm3 = nn.LayerNorm(dim, eps=cfg.eps) if cfg.cross_attn_norm else nn.Identity()
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.hook_in, self.hook_mod, self.hook_ffn_out, self.hook_out = (HookPoint() for _ in range(4))

    def forward(self, x: Tensor, context: Tensor, t_mod: Tensor, freqs: Tensor, bias: Optional[Tensor]) -> Tensor:
        x = self.hook_in(x)  # [B, S, dim]
        mod = self.hook_mod(self.modulation + t_mod)  # [B, 6, dim]
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = mod.chunk(6, dim=1)  # each [B, 1, dim]
        x = x + gate_sa * self.self_attn(self.norm1(x) * (1 + scale_sa) + shift_sa, freqs)
        x = x + self.cross_attn(self.norm3(x), context, bias)
        x = x + gate_ff * self.hook_ffn_out(self.ffn(self.norm2(x) * (1 + scale_ff) + shift_ff))
        return self.hook_out(x)


class Head(nn.Module):
    """Modulated final norm and projection of each token to its patch of output channels."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        shift, scale = (self.modulation + t.unsqueeze(1)).chunk(2, dim=1)  # each [B, 1, dim]
        return self.head(self.norm(x) * (1 + scale) + shift)  # [B, S, out_dim·prod(patch)]


class Embedded(NamedTuple):
    """`DiT.embed`'s output: what every block takes, plus what the head needs."""

    tokens: Tensor  # [B, S, dim]
    t: Tensor  # [B, dim] time embedding (for the head)
    t_mod: Tensor  # [B, 6, dim] block modulation
    context: Tensor  # [B, L, dim] embedded text
    freqs: Tensor  # RoPE table for the S tokens
    bias: Optional[Tensor]  # [B, 1, S, L] in the model dtype, or None
    grid: tuple[int, int, int]  # (f, h, w) token grid


class DiT(HookedModule):
    """Wan2.2 DiT: ``forward(x [B, in_dim, F, H, W], timestep [B], context [B, L, text_dim], bias)``
    -> [B, out_dim, F, H, W]. Inputs are cast to the model's dtype."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        self.hook_embed, self.hook_head_out = HookPoint(), HookPoint()
        self.rope_dtype = torch.float64  # float64: rotate like Wan (complex128); float32: real cos/sin path
        self._rope_cache: tuple = ()  # (key, table) of the last RoPE table built
        self.setup_hooks()

    # ------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: DiTConfig, device: Device = "cpu", dtype: torch.dtype = torch.float32) -> "DiT":
        """Randomly initialised model built directly on ``device`` ("meta" allowed) in ``dtype``."""
        with torch.device(device), _default_dtype(dtype):
            return cls(cfg)

    @classmethod
    def from_checkpoint(cls, checkpoint: Union[str, Path, Mapping[str, Tensor]], num_heads: Optional[int] = None,
                        device: Device = "cpu", dtype: Optional[torch.dtype] = None) -> "DiT":
        """Load released Wan/WorldCanvas DiT weights (safetensors path, .pt/.pth path, or a state dict).

        Sizes are inferred from weight shapes (`DiTConfig.from_state_dict`); heads = dim // 128 unless
        ``num_heads`` is given. Keys and shapes must match exactly (else `CheckpointError` naming the key).
        ``dtype`` None keeps the checkpoint's. Returns the model in eval mode with ``requires_grad`` off.
        """
        check_device(device)
        sd = _read_state_dict(checkpoint, device)
        cfg = DiTConfig.from_state_dict(sd, num_heads=num_heads)
        model = cls.from_config(cfg, device="meta")
        expected = model.state_dict()
        missing = [k for k in expected if k not in sd]
        unexpected = [k for k in sd if k not in expected]
        if missing or unexpected:
            raise CheckpointError(f"{_describe(checkpoint)}: DiT keys do not match: missing {missing[:10]}"
                                  f"{' ...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}"
                                  f"{' ...' if len(unexpected) > 10 else ''}")
        for key, param in expected.items():
            if tuple(sd[key].shape) != tuple(param.shape):
                raise CheckpointError(f"{_describe(checkpoint)}: {key!r} has shape {tuple(sd[key].shape)}, "
                                      f"expected {tuple(param.shape)} for {cfg}")
        tensors = dict(sd)
        del sd  # convert one tensor at a time so a loaded file is never held twice
        for key, value in tensors.items():
            tensors[key] = value.to(device=device, dtype=dtype or value.dtype)
        model.load_state_dict(tensors, strict=True, assign=True)
        return model.eval().requires_grad_(False)

    def set_attention_backend(self, backend: Optional[str]) -> "DiT":
        """Use attention ``backend`` (one of `wclab.models.attention.BACKENDS`) in this model's self- and
        cross-attention, whatever the default; None: follow the default again. Returns the model."""
        if backend is not None:
            check_backend(backend)
        for m in self.modules():
            if isinstance(m, (SelfAttention, CrossAttention)):
                m.backend = backend
        return self

    # ------------------------------------------------------------ shapes
    def token_grid(self, latent_shape) -> tuple[int, int, int]:
        """Token grid (f, h, w) for latents whose last three dims are (F frames, H cells, W cells)."""
        F_, H, W = (int(s) for s in tuple(latent_shape)[-3:])
        pf, ph, pw = self.cfg.patch_size
        if F_ % pf or H % ph or W % pw:
            raise DiTInputError(f"latent size (F, H, W) = {(F_, H, W)} must be divisible by the patch size "
                                f"{(pf, ph, pw)}")
        return F_ // pf, H // ph, W // pw

    def unpatchify(self, tokens: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """[B, f·h·w, pf·ph·pw·C] -> [B, C, f·pf, h·ph, w·pw] (each token's channels ordered pf, ph, pw, C)."""
        f, h, w = grid
        pf, ph, pw = self.cfg.patch_size
        x = tokens.reshape(tokens.shape[0], f, h, w, pf, ph, pw, -1)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(tokens.shape[0], -1, f * pf, h * ph, w * pw)

    def _check_inputs(self, x: Tensor, timestep: Tensor, context: Tensor, bias: Optional[Tensor]) -> tuple:
        cfg = self.cfg
        if x.ndim != 5 or x.shape[1] != cfg.in_dim:
            raise DiTInputError(f"x must be [B, {cfg.in_dim}, F, H, W], got {list(x.shape)}")
        B = x.shape[0]
        grid = self.token_grid(x.shape)
        if timestep.ndim != 1 or timestep.shape[0] not in (1, B):
            raise DiTInputError(f"timestep must be [B] or [1] with B = {B}, got {list(timestep.shape)}")
        if context.ndim != 3 or context.shape[0] != B or context.shape[2] != cfg.text_dim:
            raise DiTInputError(f"context must be [{B}, L, {cfg.text_dim}], got {list(context.shape)}")
        if bias is not None:
            S, L = math.prod(grid), context.shape[1]
            if bias.ndim != 4 or bias.shape[0] not in (1, B) or bias.shape[1] not in (1, cfg.num_heads) \
                    or tuple(bias.shape[2:]) != (S, L):
                raise DiTInputError(f"bias must be [B, 1, S, L] = [{B}, 1, {S}, {L}] (S video tokens of grid "
                                    f"{grid}, L text tokens), got {list(bias.shape)}")
        return grid

    def _rope_table(self, grid: tuple[int, int, int], device: torch.device) -> Tensor:
        """`rope_freqs` (rope_dtype float64) or `rope_cos_sin` (float32) for ``grid``, kept for the next call."""
        key = (grid, device, self.rope_dtype)
        if not self._rope_cache or self._rope_cache[0] != key:
            make = rope_freqs if self.rope_dtype == torch.float64 else rope_cos_sin
            self._rope_cache = (key, make(self.cfg.head_dim, grid, device))
        return self._rope_cache[1]

    # ------------------------------------------------------------ forward
    def embed(self, x: Tensor, timestep: Tensor, context: Tensor, bias: Optional[Tensor] = None) -> Embedded:
        """Everything the blocks take, from `forward`'s inputs: tokens [B, S, dim] (S = f·h·w, frame-major),
        t [B, dim], t_mod [B, 6, dim], context [B, L, dim], RoPE table, bias in the model dtype, token grid."""
        grid = self._check_inputs(x, timestep, context, bias)
        dtype = self.patch_embedding.weight.dtype
        B = x.shape[0]
        t = self.time_embedding(timestep_embedding(timestep, self.cfg.freq_dim).to(dtype))  # [B|1, dim]
        t = t.expand(B, -1)
        t_mod = self.time_projection(t).unflatten(1, (6, self.cfg.dim))  # [B, 6, dim]
        context = self.text_embedding(context.to(dtype))  # [B, L, dim]
        x = self.patch_embedding(x.to(dtype))  # [B, dim, f, h, w]
        x = self.hook_embed(x.flatten(2).transpose(1, 2).contiguous())  # [B, S, dim], S = f·h·w frame-major
        bias = None if bias is None else bias.to(dtype)
        return Embedded(x, t, t_mod, context, self._rope_table(grid, x.device), bias, grid)

    def forward(self, x: Tensor, timestep: Tensor, context: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        """x [B, in_dim, F, H, W], timestep [B] (0..1000), context [B, L, text_dim] (T5 output),
        bias [B, 1, S, L] additive cross-attention bias or None -> [B, out_dim, F, H, W]."""
        e = self.embed(x, timestep, context, bias)
        x = e.tokens
        for block in self.blocks:
            x = block(x, e.context, e.t_mod, e.freqs, e.bias)
        x = self.head(x, e.t)  # [B, S, out_dim·prod(patch)]
        return self.hook_head_out(self.unpatchify(x, e.grid))


def dit_shapes(cfg: DiTConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a DiT expert checkpoint for ``cfg`` (released key names), read off a meta-device model."""
    return {k: tuple(v.shape) for k, v in DiT.from_config(cfg, device="meta").state_dict().items()}


# ---------------------------------------------------------------- loading helpers

@contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _describe(checkpoint) -> str:
    return str(checkpoint) if isinstance(checkpoint, (str, Path)) else "state dict"


def _read_state_dict(checkpoint, device: Device) -> Mapping[str, Tensor]:
    if not isinstance(checkpoint, (str, Path)):
        return checkpoint
    return read_state_dict(checkpoint, device, what="DiT checkpoint")