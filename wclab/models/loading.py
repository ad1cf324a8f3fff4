"""Load every model WorldCanvas needs from a checkpoint directory: `load_models(dir) -> Models`.

Three layouts are recognised:
  released  checkpoints/README.md (``Wan2.2-T2V-A14B/...``, ``WorldCanvas_dit/<variant>/{high,low}_model.safetensors``)
  tiny      the same paths plus ``wclab_tiny.json`` (from `wclab.testing.make_tiny_checkpoints`), which gives
            the head counts that weights do not reveal
  fixture   the reference's ``fixtures/reference/models/`` (``config.json``, ``t5_tiny.pth``, ``vae_tiny.pth``,
            ``dit_{high,low}_tiny.safetensors``); it has no tokenizer, so ``tokenizer=`` must be given
Explicit ``t5=``, ``vae=``, ``high=``, ``low=``, ``tokenizer=`` paths override the layout's.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Optional, Sequence, Union

import torch

from wclab.models.layout import (
    TINY_CONFIG_NAME,
    VARIANTS,
    CheckpointFile,
    default_checkpoint_dir,
    locate,
    read_tiny_config,
    released_files,
)
from wclab.errors import CheckpointError
from wclab.models.dit import DiT
from wclab.models.fast import BlockOffload, quantize_fp8
from wclab.models.lora import load_lora
from wclab.models.latent_preview import LatentPreview
from wclab.models.text_encoder import TextEncoder, Tokenizer
from wclab.models.vae import VAE, VAEConfig

PathLike = Union[str, Path]
ExpertPlacement = Literal["resident", "offload", "fp8"]
EXPERT_PLACEMENTS = ("resident", "offload", "fp8")
FIXTURE_FILES = {"t5": "t5_tiny.pth", "vae": "vae_tiny.pth", "high": "dit_high_tiny.safetensors",
                 "low": "dit_low_tiny.safetensors"}
RELEASED_VAE_BASE_DIM = VAEConfig().base_dim  # LatentPreview.wan21() is only meaningful for the released VAE


@dataclass(frozen=True)
class CheckpointPaths:
    """Resolved files of one model set, with the head counts the weights cannot tell (None: infer/default)."""

    t5: Path
    vae: Path
    tokenizer: Path
    high: Path
    low: Path
    layout: str  # "released", "tiny", "fixture" or "explicit"
    variant: str
    num_heads: Optional[int] = None  # DiT heads (None: dim // 128, the released head size)
    t5_num_heads: Optional[int] = None  # T5 heads (None: read from the relative-position table)


def _layout_of(directory: Path) -> str:
    if (directory / TINY_CONFIG_NAME).is_file():
        return "tiny"
    if (directory / "config.json").is_file() and (directory / FIXTURE_FILES["high"]).is_file():
        return "fixture"
    return "released"


def resolve_paths(checkpoint_dir: Optional[PathLike] = None, *, variant: str = "WorldCanvas",
                  t5: Optional[PathLike] = None, vae: Optional[PathLike] = None, high: Optional[PathLike] = None,
                  low: Optional[PathLike] = None, tokenizer: Optional[PathLike] = None,
                  num_heads: Optional[int] = None, t5_num_heads: Optional[int] = None) -> CheckpointPaths:
    """Where each file is (explicit paths win) and the head counts; every missing file raises one
    CheckpointError that names it, its expected path and where to get it."""
    if variant not in VARIANTS:
        raise CheckpointError(f"variant must be one of {VARIANTS}, got {variant!r}")
    explicit = {"t5": t5, "vae": vae, "tokenizer": tokenizer, "high": high, "low": low}
    if checkpoint_dir is None and all(v is not None for v in explicit.values()):
        paths = {k: Path(v) for k, v in explicit.items()}
        layout, heads = "explicit", {}
    else:
        directory = Path(checkpoint_dir) if checkpoint_dir is not None else default_checkpoint_dir()
        layout = _layout_of(directory)
        paths, heads = _layout_paths(directory, layout, variant)
        paths.update({k: Path(v) for k, v in explicit.items() if v is not None})
        if "tokenizer" not in paths:
            raise CheckpointError(f"{directory} is the reference fixture layout, which has no tokenizer: pass "
                                  "tokenizer= (e.g. fixtures/tokenizer)")
    sources = {f.role: f for f in released_files(variant)}
    problems = [_missing_message(role, path, sources[role]) for role, path in paths.items() if not path.exists()]
    if problems:
        raise CheckpointError("missing checkpoint files:\n" + "\n".join(problems) +
                              "\nCheck a directory with `python -m wclab.checkpoints DIR`; without downloads, "
                              "wclab.testing.make_tiny_checkpoints(DIR) writes tiny random-weight models.")
    return CheckpointPaths(**paths, layout=layout, variant=variant,
                           num_heads=num_heads if num_heads is not None else heads.get("dit"),
                           t5_num_heads=t5_num_heads if t5_num_heads is not None else heads.get("t5"))


def _layout_paths(directory: Path, layout: str, variant: str) -> tuple[dict[str, Path], dict[str, int]]:
    """(role -> path, {"dit"/"t5": heads}) for a directory of the given layout."""
    if layout == "fixture":
        if variant != "WorldCanvas":
            raise CheckpointError(f"{directory} (reference fixture layout) holds one DiT pair, not {variant!r}")
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        return ({role: directory / name for role, name in FIXTURE_FILES.items()},
                {part: config[part]["num_heads"] for part in ("dit", "t5") if "num_heads" in config.get(part, {})})
    paths = {f.role: locate(directory, f) for f in released_files(variant) if f.required}
    tiny = read_tiny_config(directory) if layout == "tiny" else None
    heads = {part: tiny[part]["num_heads"] for part in ("dit", "t5")} if tiny else {}
    return paths, heads


def _missing_message(role: str, path: Path, source: CheckpointFile) -> str:
    return (f"  {role} ({source.description}) not found\n    expected at: {path}\n    get it from: {source.where()}"
            f"\n    e.g.: {source.download_command(_root_of(path, source))}")


def _root_of(path: Path, source: CheckpointFile) -> Path:
    """The checkpoint directory a path of the released layout sits in (its parent folders stripped)."""
    if path.as_posix().endswith(source.path):
        return Path(path.as_posix()[: -len(source.path)] or ".")
    return path.parent  # an explicit path elsewhere: show the command relative to its own folder


@dataclass
class Models:
    """Everything a WorldCanvas run needs. ``high``/``low``: the high- and low-noise DiT experts;
    ``preview``: latent -> RGB projection for live previews (None if not made)."""

    tokenizer: Tokenizer
    text_encoder: TextEncoder
    vae: VAE
    high: DiT
    low: DiT
    preview: Optional[LatentPreview]
    device: torch.device
    dtype: torch.dtype
    paths: CheckpointPaths
    placement: str = "resident"
    """How `load_models` placed the experts (its ``experts`` argument): "resident", "offload" or "fp8"."""
    lora: dict = field(default_factory=dict)
    """The LoRA files `load_models` merged: ``{"high": [(path, strength), ...], "low": [...]}``."""

    def to(self, device: Union[str, torch.device, None] = None, dtype: Optional[torch.dtype] = None) -> Models:
        """Move (and/or cast) the text encoder, VAE and both experts in place; returns self."""
        device = torch.device(device) if device is not None else self.device
        dtype = dtype or self.dtype
        for module in (self.text_encoder, self.vae, self.high, self.low):
            module.to(device=device, dtype=dtype)
        self.device, self.dtype = device, dtype
        return self


def load_models(checkpoint_dir: Optional[PathLike] = None, *, variant: str = "WorldCanvas",
                t5: Optional[PathLike] = None, vae: Optional[PathLike] = None, high: Optional[PathLike] = None,
                low: Optional[PathLike] = None, tokenizer: Optional[PathLike] = None,
                device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32,
                num_heads: Optional[int] = None, t5_num_heads: Optional[int] = None,
                preview: bool = True, experts: ExpertPlacement = "resident",
                lora: Optional[Mapping[str, Sequence[tuple[PathLike, float]]]] = None) -> Models:
    """Load tokenizer, T5 text encoder, VAE and both DiT experts (strict key/shape checks) onto ``device`` in
    ``dtype``. ``checkpoint_dir`` None: ``$WCLAB_CHECKPOINTS`` or the repository's ``checkpoints/`` (not needed
    when all five paths are given). ``num_heads``/``t5_num_heads`` override the head counts (released DiT:
    dim // 128). ``preview``: also make a `LatentPreview` (the published Wan 2.1 coefficients for the released
    VAE, a least-squares fit to the decoder for any other VAE).

    ``experts`` places the two DiT experts: "resident" both on ``device`` (~57 GB in bf16 at full size);
    "offload" block weights in (pinned) CPU memory, streamed to ``device`` one block ahead
    (`wclab.models.fast.BlockOffload`, ~5 GB of GPU memory per forward; the handle is ``expert.block_offload``);
    "fp8" each expert quantised to float8 weights (`wclab.models.fast.quantize_fp8`, outputs change slightly)
    right after it is read, so at most one expert is ever held in ``dtype`` on ``device``.

    ``lora``: LoRA files merged into each expert right after it is read (before fp8 or offload), as
    ``{"high": [(path, strength), ...], "low": [...]}`` (`wclab.models.lora.load_lora`; the handles are
    ``expert.lora_handles``, whose ``remove()`` restores the weights bitwise)."""
    paths = resolve_paths(checkpoint_dir, variant=variant, t5=t5, vae=vae, high=high, low=low, tokenizer=tokenizer,
                          num_heads=num_heads, t5_num_heads=t5_num_heads)
    tok = Tokenizer(paths.tokenizer)
    text_encoder = TextEncoder.from_checkpoint(paths.t5, tokenizer=tok, num_heads=paths.t5_num_heads,
                                               device=device, dtype=dtype)
    if text_encoder.config.vocab < len(tok.hf):
        raise CheckpointError(f"tokenizer {paths.tokenizer} has {len(tok.hf)} tokens but the T5 embedding in "
                              f"{paths.t5} has only {text_encoder.config.vocab} rows")
    vae_model = VAE.from_checkpoint(paths.vae, device=device, dtype=dtype)
    if experts not in EXPERT_PLACEMENTS:
        raise CheckpointError(f"experts: expected one of {EXPERT_PLACEMENTS}, got {experts!r}")
    lora = dict(lora or {})
    if set(lora) - {"high", "low"}:
        raise CheckpointError(f"lora: keys must be 'high' and/or 'low', got {sorted(lora)}")
    placement = experts
    experts = [load_expert(getattr(paths, e), paths.num_heads, device, dtype, placement, lora.get(e, ()))
               for e in ("high", "low")]
    for name, expert in zip(("high", "low"), experts):
        if expert.cfg.text_dim != text_encoder.config.dim:
            raise CheckpointError(f"{getattr(paths, name)}: DiT text_dim {expert.cfg.text_dim} does not match the "
                                  f"T5 output dim {text_encoder.config.dim} of {paths.t5}")
    return Models(tokenizer=tok, text_encoder=text_encoder, vae=vae_model, high=experts[0], low=experts[1],
                  preview=make_preview(vae_model) if preview else None, device=torch.device(device), dtype=dtype,
                  paths=paths, placement=placement, lora={e: list(v) for e, v in lora.items()})


def load_expert(path: Path, num_heads: Optional[int], device: Union[str, torch.device], dtype: torch.dtype,
                 placement: ExpertPlacement, loras: Sequence[tuple[PathLike, float]] = ()) -> DiT:
    """One DiT expert read from ``path``, with ``loras`` merged, placed as `load_models`' ``experts`` says."""
    dit = DiT.from_checkpoint(path, num_heads=num_heads, device="cpu" if placement == "offload" else device,
                              dtype=dtype)
    dit.lora_handles = [load_lora(dit, lora_path, strength) for lora_path, strength in loras]
    if placement == "offload":
        dit.block_offload = BlockOffload(dit, device)
    return quantize_fp8(dit) if placement == "fp8" else dit


@torch.no_grad()
def make_preview(vae: VAE, seed: int = 0) -> LatentPreview:
    """`LatentPreview.wan21()` for the released VAE; otherwise a least-squares fit to this VAE's decode of random
    normalised latents [1, z, 2, 4, 4] (32 cells: a first frame and a 4-frame group; deterministic for ``seed``)."""
    if vae.config.base_dim == RELEASED_VAE_BASE_DIM:
        return LatentPreview.wan21()
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, vae.config.z_dim, 2, 4, 4, generator=g).to(vae.device, vae.dtype)
    return LatentPreview.fit(vae, latents)


__all__ = ["CheckpointPaths", "Models", "load_models", "load_expert", "resolve_paths", "make_preview",
           "default_checkpoint_dir"]
