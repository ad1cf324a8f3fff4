"""Expected key -> shape tables of the checkpoint files, derived from the model config classes.

Sizes come as the ``wclab_tiny.json`` entries (the reference constructors' argument names, see
`wclab.testing.TINY_SIZES`) or, when None, the released models (the config classes' defaults and
`DiTConfig.worldcanvas_14b`).
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping, Optional

from wclab.models.dit import DiTConfig, dit_shapes
from wclab.models.text_encoder import TextEncoderConfig
from wclab.models.text_encoder import t5_shapes as _t5_shapes
from wclab.models.vae import VAEConfig
from wclab.models.vae import vae_shapes as _vae_shapes

Shapes = dict[str, tuple[int, ...]]


def t5_shapes(**sizes: Any) -> Shapes:
    """Wan T5 key -> shape for the reference ``T5Encoder`` arguments (none: umT5-xxl)."""
    return _t5_shapes(TextEncoderConfig(**sizes))


def vae_shapes(**sizes: Any) -> Shapes:
    """Wan 2.1 VAE key -> shape for the reference ``WanVAE_`` arguments (none: the released VAE)."""
    return _vae_shapes(VAEConfig.from_wan_args(**sizes))


def dit_config(sizes: Optional[Mapping[str, Any]] = None) -> DiTConfig:
    """`DiTConfig` of the released experts, or from a ``wclab_tiny.json`` "dit" entry."""
    if sizes is None:
        return DiTConfig.worldcanvas_14b()
    names = {f.name for f in fields(DiTConfig)}
    return DiTConfig(**{k: v for k, v in sizes.items() if k in names})


def expected_shapes(sizes: Optional[Mapping[str, Any]] = None) -> dict[str, Shapes]:
    """Role -> key -> shape for the released files (``sizes`` None) or a tiny config (``wclab_tiny.json``)."""
    dit = dit_shapes(dit_config(None if sizes is None else sizes["dit"]))
    if sizes is None:
        return {"t5": t5_shapes(), "vae": vae_shapes(), "high": dit, "low": dit}
    return {"t5": t5_shapes(**sizes["t5"]), "vae": vae_shapes(**sizes["vae"]), "high": dit, "low": dit}


__all__ = ["Shapes", "dit_config", "dit_shapes", "expected_shapes", "t5_shapes", "vae_shapes"]
