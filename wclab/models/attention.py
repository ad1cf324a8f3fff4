"""Multi-head attention with a switchable backend. Layout everywhere: [B, L, heads, head_dim].

Backends: "sdpa" (torch scaled_dot_product_attention; an additive bias goes in as a float attn_mask, exact),
"flash3" (``flash_attn_interface``), "flash2" (``flash_attn``), "math" (explicit softmax(QKᵀ/√d + bias)·V in
float32), and "auto" (flash3, else flash2, where applicable; else sdpa). Flash kernels take no bias and run only
on CUDA in fp16/bf16, so calls they cannot compute use sdpa under every flash setting.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
from contextlib import contextmanager
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from wclab.errors import WclabError

BACKENDS = ("auto", "sdpa", "flash2", "flash3", "math")
_FLASH_MODULES = {"flash3": "flash_attn_interface", "flash2": "flash_attn"}
_backend = "auto"
# Whether each flash module is installed, looked up once without importing it, so "auto" picks a kernel with
# plain dict reads that torch.compile traces without graph breaks.
_INSTALLED = {b: importlib.util.find_spec(m) is not None for b, m in _FLASH_MODULES.items()}


class AttentionBackendError(WclabError, ValueError):
    """Unknown attention backend, or a flash backend that is not installed."""


@functools.lru_cache(maxsize=None)
def _flash_module(backend: str):
    """The imported flash-attention module for "flash2"/"flash3", or None when not installed."""
    try:
        return importlib.import_module(_FLASH_MODULES[backend])
    except ImportError:
        return None


def available_backends() -> list[str]:
    """Backends usable in this environment."""
    return [b for b in BACKENDS if b not in _FLASH_MODULES or _flash_module(b) is not None]


def set_attention_backend(backend: str) -> None:
    """Select the attention backend for all wclab models (see module docstring)."""
    global _backend
    if backend not in BACKENDS:
        raise AttentionBackendError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
    if backend in _FLASH_MODULES and _flash_module(backend) is None:
        raise AttentionBackendError(
            f"attention backend {backend!r} needs the python module {_FLASH_MODULES[backend]!r}, which is not installed"
        )
    _backend = backend


def get_attention_backend() -> str:
    return _backend


@contextmanager
def attention_backend(backend: str) -> Iterator[None]:
    """Use ``backend`` inside the ``with`` block, then restore the previous one."""
    previous = _backend
    set_attention_backend(backend)
    try:
        yield
    finally:
        set_attention_backend(previous)


def _flash_applies(q: Tensor, bias: Optional[Tensor]) -> bool:
    return bias is None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def _choose(q: Tensor, bias: Optional[Tensor]) -> str:
    if _backend in ("sdpa", "math"):
        return _backend
    if not _flash_applies(q, bias):
        return "sdpa"
    if _backend == "auto":
        return "flash3" if _INSTALLED["flash3"] else "flash2" if _INSTALLED["flash2"] else "sdpa"
    return _backend


def attention_logits(q: Tensor, k: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Pre-softmax scores QKᵀ/√d + bias in float32: q [B, Lq, H, D], k [B, Lk, H, D] -> [B, H, Lq, Lk].

    ``bias`` is additive, broadcastable to [B, H, Lq, Lk].
    """
    logits = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * q.shape[-1] ** -0.5
    return logits if bias is None else logits + bias.float()


def attention_from_probs(probs: Tensor, v: Tensor) -> Tensor:
    """Weighted sum of values: probs [B, H, Lq, Lk], v [B, Lk, H, D] -> [B, Lq, H, D] in v's dtype."""
    return torch.einsum("bhqk,bkhd->bqhd", probs.to(v.dtype), v)


def attention(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """softmax(QKᵀ/√D + bias)·V: q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H, D].

    ``bias``: optional additive float tensor broadcastable to [B, H, Lq, Lk] (cast to q's dtype).
    """
    backend = _choose(q, bias)
    if backend == "math":
        return attention_from_probs(attention_logits(q, k, bias).softmax(-1), v)
    module = _flash_module(backend) if backend in _FLASH_MODULES else None
    if module is not None:  # (None: installed but not importable; use sdpa)
        out = module.flash_attn_func(q, k, v)
        return out[0] if isinstance(out, tuple) else out  # some flash3 versions return (out, lse)
    mask = None if bias is None else bias.to(q.dtype)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)
