"""LoRA files for the DiT experts, merged into the weights in place and removable bitwise.

    handle = load_lora(models.high, "Wan2.2-I2V-A14B-4steps-lora-high.safetensors", strength=1.0)
    ...
    handle.remove()                       # every touched tensor back to its exact original bits

Formats found in the wild for Wan 2.x DiTs (module names are the released Wan names, ``blocks.3.self_attn.q``;
a leading ``diffusion_model.``, ``transformer.``, ``base_model.model.`` or ``model.`` is stripped):

  kohya / ComfyUI   ``<module>.lora_down.weight`` [r, in], ``<module>.lora_up.weight`` [out, r], optional
                    ``<module>.alpha``: delta = alpha / r · up @ down (alpha absent: scale 1)
  diffusers / PEFT  ``<module>.lora_A.weight`` [r, in], ``<module>.lora_B.weight`` [out, r] (same formula)
  LightX2V          pairs as above plus full deltas: ``<module>.diff`` (the weight's), ``<module>.diff_b`` (the
                    bias's) and ``<block>.diff_m`` (the block's ``modulation``)

The result is ``W + strength · scale · delta``, computed in float32 and rounded once to the weight's dtype.
Convolution weights (the patch embedding) take the flattened product reshaped to the kernel. Keys that name no
parameter of the model, or that no format knows, raise `LoraError` naming them; nothing is skipped silently.
Merge before `wclab.models.fast.quantize_fp8` (its float8 layers cannot take a delta); `BlockOffload` and
`speed_up` models take LoRAs unchanged (the tensors are patched in place).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Union

import torch
from torch import Tensor, nn

from wclab.errors import WclabError
from wclab.models.fast import Fp8Linear
from wclab.models.weights import read_state_dict

PREFIXES = ("diffusion_model.", "transformer.", "base_model.model.", "model.")
PAIRS = {"lora_down.weight": ("down", "weight"), "lora_up.weight": ("up", "weight"),
         "lora_A.weight": ("down", "weight"), "lora_B.weight": ("up", "weight")}
DIFFS = {"diff_b": "bias", "diff_m": "modulation", "diff": "weight"}  # suffix -> the parameter it adds to


class LoraError(WclabError, ValueError):
    """A LoRA file or state dict that does not fit the model (the message names the keys)."""


@dataclass
class LoraHandle:
    """What `load_lora` changed: ``originals`` maps each touched parameter name to a copy of its original tensor
    (on the CPU). ``remove()`` writes them back bitwise."""

    model: nn.Module
    originals: dict[str, Tensor] = field(default_factory=dict)
    source: str = ""

    @torch.no_grad()
    def remove(self) -> None:
        """Restore every touched parameter to its exact original value (idempotent)."""
        params = dict(self.model.named_parameters())
        for name, original in self.originals.items():
            params[name].data.copy_(original)
        self.originals.clear()

    def __repr__(self) -> str:
        return f"LoraHandle({self.source!r}, {len(self.originals)} tensors patched)"


def _strip_prefix(key: str) -> str:
    for prefix in PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _split(key: str) -> tuple[str, str]:
    """``blocks.0.ffn.0.lora_up.weight`` -> (``blocks.0.ffn.0``, ``lora_up.weight``); suffix "" if unknown."""
    for suffix in (*PAIRS, "alpha", *DIFFS):
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], suffix
    return key, ""


def lora_deltas(state_dict: Mapping[str, Tensor], params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Parameter name -> float32 delta (before ``strength``) that ``state_dict`` adds, for a model whose
    parameters are ``params``. Raises `LoraError` naming unknown keys, unpaired halves and shape mismatches."""
    groups: dict[str, dict[str, Tensor]] = {}
    unknown = []
    for key, value in state_dict.items():
        module, suffix = _split(_strip_prefix(key))
        if not suffix:
            unknown.append(key)
            continue
        groups.setdefault(module, {})[suffix] = value
    if unknown:
        raise LoraError(f"{len(unknown)} LoRA keys are in no known format (lora_down/lora_up, lora_A/lora_B, alpha, "
                        f"diff, diff_b, diff_m), e.g. {unknown[:5]}")
    deltas: dict[str, Tensor] = {}
    missing = []
    for module, parts in groups.items():
        pair = {PAIRS[s][0]: t for s, t in parts.items() if s in PAIRS}
        if pair:
            target = f"{module}.weight"
            if set(pair) != {"down", "up"}:
                raise LoraError(f"LoRA module {module!r} has only its {sorted(pair)} half")
            if target not in params:
                missing.append(target)
                continue
            down, up = pair["down"].float(), pair["up"].float()
            rank = down.shape[0]
            scale = float(parts["alpha"]) / rank if "alpha" in parts else 1.0
            delta = (up.flatten(1) @ down.flatten(1)) * scale
            deltas[target] = _fit(delta, params[target], module)
        for suffix, name in DIFFS.items():
            if suffix in parts:
                target = f"{module}.{name}"
                if target not in params:
                    missing.append(target)
                    continue
                deltas[target] = deltas.get(target, 0) + _fit(parts[suffix].float(), params[target], module)
        if "alpha" in parts and not pair:
            raise LoraError(f"LoRA module {module!r} has an alpha but no lora_down/lora_up pair")
    if missing:
        raise LoraError(f"{len(missing)} LoRA targets name no parameter of the model, e.g. {missing[:5]} "
                        "(is it a LoRA for another model, or in diffusers' module names?)")
    return deltas


def _fit(delta: Tensor, param: Tensor, module: str) -> Tensor:
    if delta.numel() != param.numel():
        raise LoraError(f"LoRA for {module!r} gives a delta of shape {list(delta.shape)}, the parameter is "
                        f"{list(param.shape)}")
    return delta.reshape(param.shape)


@torch.no_grad()
def load_lora(model: nn.Module, lora: Union[str, Path, Mapping[str, Tensor]], strength: float = 1.0) -> LoraHandle:
    """Merge a LoRA (file path or state dict) into ``model``'s weights in place: ``W + strength · scale · delta``.
    Returns a `LoraHandle` whose ``remove()`` restores the weights bitwise."""
    source = str(lora) if isinstance(lora, (str, Path)) else "state dict"
    state_dict = read_state_dict(lora, what="LoRA") if isinstance(lora, (str, Path)) else lora
    params = dict(model.named_parameters())
    quantised = any(isinstance(m, Fp8Linear) for m in model.modules())
    try:
        deltas = lora_deltas(state_dict, params)
    except LoraError as e:
        hint = " (the model is quantised to fp8: merge LoRAs before quantize_fp8)" if quantised else ""
        raise LoraError(f"{source}: {e}{hint}") from None
    handle = LoraHandle(model, source=source)
    for name, delta in deltas.items():
        p = params[name]
        handle.originals[name] = p.detach().to("cpu", copy=True)
        p.data.copy_((p.float() + strength * delta.to(p.device)).to(p.dtype))
    return handle


__all__ = ["LoraError", "LoraHandle", "load_lora", "lora_deltas"]
