"""Multi-head attention with a switchable backend. Layout everywhere: [B, L, heads, head_dim].

Backends: "sdpa" (torch scaled_dot_product_attention; an additive bias goes in as a float attn_mask, exact),
"flash3" (FlashAttention-3, module ``flash_attn_interface``), "flash4" (FlashAttention's CuTe-DSL kernels, module
``flash_attn.cute`` from the ``flash-attn-4`` package: Hopper and Blackwell, compiled on first use), "flash2"
(FlashAttention-2, module ``flash_attn``), "math" (explicit softmax(QKᵀ/√d + bias)·V in float32), and "auto"
(the first of flash3, flash4, flash2 that is installed and imports, where applicable; else sdpa; decided at
import, with a warning for an installed one that does not import). Flash kernels take no bias and run
only on CUDA in fp16/bf16, so calls they cannot compute use sdpa under every flash setting. Flash kernels are
called through one torch custom op (``wclab::flash_attention``), so ``torch.compile`` keeps them opaque.

Which backend a call uses: its ``backend`` argument when given (a model's own choice, `DiT.set_attention_backend`),
else the default, "auto", which ``with attention_backend(name):`` replaces for the block (`set_attention_backend`
replaces it until changed back).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from wclab.errors import WclabError

BACKENDS = ("auto", "sdpa", "flash3", "flash4", "flash2", "math")
AUTO_ORDER = ("flash3", "flash4", "flash2")
# The module holding each flash kernel's ``flash_attn_func``, and the module whose presence says it is installed.
# FA2 is told by its compiled extension: its package ``flash_attn`` also holds FA4's ``flash_attn.cute``.
_FLASH_MODULES = {"flash3": "flash_attn_interface", "flash4": "flash_attn.cute", "flash2": "flash_attn"}
_FLASH_MARKERS = {"flash3": "flash_attn_interface", "flash4": "flash_attn.cute", "flash2": "flash_attn_2_cuda"}
_backend = "auto"


def _spec_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a missing or broken parent package
        return False


def find_installed_flash() -> dict[str, bool]:
    """Whether each flash kernel's package is installed (looked up without importing it)."""
    return {b: _spec_exists(m) for b, m in _FLASH_MARKERS.items()}


_INSTALLED = find_installed_flash()


class AttentionBackendError(WclabError, ValueError):
    """Unknown attention backend, or a flash backend that is not installed."""


@functools.lru_cache(maxsize=None)
def _flash_import(backend: str) -> tuple[Optional[Callable], str]:
    """(``flash_attn_func`` of the "flash2"/"flash3"/"flash4" module, "") or (None, why it is not usable)."""
    if not _INSTALLED[backend]:
        return None, "not installed"
    try:
        kernel = getattr(importlib.import_module(_FLASH_MODULES[backend]), "flash_attn_func", None)
    except ImportError as e:
        return None, f"installed, but importing {_FLASH_MODULES[backend]!r} fails: {e}"
    return (kernel, "") if kernel is not None else (None, f"{_FLASH_MODULES[backend]!r} has no flash_attn_func")


def _flash_kernel(backend: str) -> Optional[Callable]:
    """``flash_attn_func`` of the "flash2"/"flash3"/"flash4" module, or None when it is not installed/importable."""
    return _flash_import(backend)[0]


def _resolve_auto() -> str:
    """The first flash backend of AUTO_ORDER that is installed and imports, else "sdpa"; an installed one that
    does not import is skipped with a warning saying why."""
    for backend in AUTO_ORDER:
        kernel, why = _flash_import(backend)
        if kernel is not None:
            return backend
        if _INSTALLED[backend]:
            warnings.warn(f"attention backend {backend!r} is {why}; 'auto' skips it", stacklevel=2)
    return "sdpa"


# Resolved once at import (flash modules are imported only where installed), so "auto" is a constant that
# torch.compile traces without graph breaks.
_AUTO = _resolve_auto()


def _require_flash_kernel(backend: str) -> Callable:
    kernel, why = _flash_import(backend)
    if kernel is None:
        raise AttentionBackendError(
            f"attention backend {backend!r} needs the python module {_FLASH_MODULES[backend]!r} "
            f"(with flash_attn_func), which is {why}; select another backend"
        )
    return kernel


def available_backends() -> list[str]:
    """Backends usable in this environment."""
    return [b for b in BACKENDS if b not in _FLASH_MODULES or _flash_kernel(b) is not None]


def check_backend(backend: str) -> str:
    """``backend`` if it is a known backend whose kernel is installed, else AttentionBackendError."""
    if backend not in BACKENDS:
        raise AttentionBackendError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
    if backend in _FLASH_MODULES:
        _require_flash_kernel(backend)
    return backend


def set_attention_backend(backend: str) -> None:
    """Set the default backend: the one used by models without a backend of their own (see module docstring).
    Prefer ``with attention_backend(backend):`` (scoped) or `DiT.set_attention_backend` (one model)."""
    global _backend
    _backend = check_backend(backend)


def get_attention_backend() -> str:
    """The default backend (what models without a backend of their own use)."""
    return _backend


@contextmanager
def attention_backend(backend: str) -> Iterator[None]:
    """Make ``backend`` the default inside the ``with`` block, then restore the previous default."""
    previous = _backend
    set_attention_backend(backend)
    try:
        yield
    finally:
        set_attention_backend(previous)


@torch.library.custom_op("wclab::flash_attention", mutates_args=())
def flash_attention(q: Tensor, k: Tensor, v: Tensor, backend: str) -> Tensor:
    """softmax(QKᵀ/√D)·V by the flash kernel ``backend`` ("flash2"/"flash3"/"flash4"): q [B, Lq, H, D],
    k/v [B, Lk, H, D] -> [B, Lq, H, D]."""
    out = _require_flash_kernel(backend)(q, k, v)
    return out[0] if isinstance(out, tuple) else out  # flash3/flash4 versions may return (out, lse)


@flash_attention.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, backend: str) -> Tensor:
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


def _flash_applies(q: Tensor, bias: Optional[Tensor]) -> bool:
    return bias is None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def _choose(q: Tensor, bias: Optional[Tensor], backend: str) -> str:
    if backend in ("sdpa", "math"):
        return backend
    if not _flash_applies(q, bias):
        return "sdpa"
    if backend == "auto":
        return _AUTO
    return backend


def attention_logits(q: Tensor, k: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Pre-softmax scores QKᵀ/√d + bias in float32: q [B, Lq, H, D], k [B, Lk, H, D] -> [B, H, Lq, Lk].

    ``bias`` is additive, broadcastable to [B, H, Lq, Lk].
    """
    logits = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * q.shape[-1] ** -0.5
    return logits if bias is None else logits + bias.float()


def attention_from_probs(probs: Tensor, v: Tensor) -> Tensor:
    """Weighted sum of values: probs [B, H, Lq, Lk], v [B, Lk, H, D] -> [B, Lq, H, D] in v's dtype."""
    return torch.einsum("bhqk,bkhd->bqhd", probs.to(v.dtype), v)


def attention(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor] = None,
              backend: Optional[str] = None) -> Tensor:
    """softmax(QKᵀ/√D + bias)·V: q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H, D].

    ``bias``: optional additive float tensor broadcastable to [B, H, Lq, Lk] (cast to q's dtype). ``backend``:
    one of `BACKENDS` (checked by `check_backend` when it was chosen); None: the default.
    """
    backend = _choose(q, bias, backend or _backend)
    if backend == "math":
        return attention_from_probs(attention_logits(q, k, bias).softmax(-1), v)
    if backend in _FLASH_MODULES:
        return flash_attention(q, k, v, backend)
    mask = None if bias is None else bias.to(q.dtype)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)
