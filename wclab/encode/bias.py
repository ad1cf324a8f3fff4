"""Cross-attention bias that ties each object's video tokens to its caption's text tokens.

``bias[token, text] = log(1 + (β - 1) · allow)``: ``log β`` where the video token lies in object k's token mask
and the text token in caption span k, 0 elsewhere. It is added to the text cross-attention logits of every DiT
block. The bias is block-structured (one key span per object), so :class:`BiasSpec` keeps the structure and
only :meth:`BiasSpec.dense` builds the ``[1, 1, S_video, L_text]`` tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Optional, Sequence

import torch

from wclab.errors import ConditionError
from wclab.encode.text import TEXT_LEN

Span = tuple[int, int]
BETA = 30.0
NegativeMode = Literal["reference", "none"]


@dataclass(frozen=True)
class BiasSpec:
    """token_masks: ``bool [K, S_video]`` (object k's DiT tokens, flattened over (F', h/2, w/2)); spans: K
    text-token ranges ``[s0, s1)``, span k bound to row k; beta: the boost inside (``log β`` added)."""

    token_masks: torch.Tensor
    spans: tuple[Span, ...]
    beta: float = BETA

    def __post_init__(self):
        m = self.token_masks
        if m.dtype != torch.bool or m.ndim != 2:
            raise ConditionError(f"token_masks: expected bool [K, S_video], got {m.dtype} {list(m.shape)}")
        if len(self.spans) != m.shape[0]:
            raise ConditionError(f"spans: expected one per token mask ({m.shape[0]}), got {len(self.spans)}")
        _check_spans(self.spans)
        if not self.beta > 0:
            raise ConditionError(f"beta: expected > 0, got {self.beta}")

    @property
    def num_video_tokens(self) -> int:
        return int(self.token_masks.shape[1])

    @classmethod
    def from_token_masks(cls, token_masks: Mapping[str, torch.Tensor], caption_order: Mapping[str, int],
                         spans: Sequence[Span], beta: float = BETA) -> "BiasSpec":
        """Bind span k to the object whose caption order is k; every captioned object needs a span."""
        rows = _masks_in_caption_order(token_masks, caption_order)
        if len(spans) != len(rows):
            raise ConditionError(f"spans: expected one per captioned object ({len(rows)}), got {len(spans)}")
        return cls(torch.stack(rows), tuple(_span(s) for s in spans), beta)

    @classmethod
    def negative(cls, token_masks: Mapping[str, torch.Tensor], caption_order: Mapping[str, int],
                 spans: Sequence[Span], beta: float = BETA) -> "BiasSpec":
        """The reference's negative (CFG) branch: the negative prompt's span i bound to caption order i.

        The usual negative prompt has no line breaks, so its single span ``[0, n)`` is tied to object 0.
        """
        rows = _masks_in_caption_order(token_masks, caption_order)
        if not 1 <= len(spans) <= len(rows):
            raise ConditionError(
                f"negative spans: expected 1..{len(rows)} (at most one per captioned object), got {len(spans)}")
        return cls(torch.stack(rows[: len(spans)]), tuple(_span(s) for s in spans), beta)

    def allow(self, text_len: int = TEXT_LEN) -> torch.Tensor:
        """``bool [S_video, L_text]``: video token in object k and text token in span k."""
        end = max(s1 for _, s1 in self.spans)
        if end > text_len:
            raise ConditionError(f"spans: end {end} beyond text_len={text_len}")
        allow = torch.zeros(self.num_video_tokens, text_len, dtype=torch.bool, device=self.token_masks.device)
        for mask, (s0, s1) in zip(self.token_masks, self.spans):
            allow[:, s0:s1] = mask[:, None]
        return allow

    def dense(self, text_len: int = TEXT_LEN, dtype: torch.dtype = torch.float32,
              device: Optional[torch.device] = None) -> torch.Tensor:
        """``[1, 1, S_video, L_text]`` additive bias (computed in float32, then cast to ``dtype``)."""
        allow = self.allow(text_len)
        bias = torch.log(1.0 + (self.beta - 1.0) * allow.float())
        return bias.to(device=device if device is not None else allow.device, dtype=dtype)[None, None]


def cross_attention_bias(token_masks: Mapping[str, torch.Tensor], caption_order: Mapping[str, int],
                         spans: Sequence[Span], text_len: int = TEXT_LEN, beta: float = BETA,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[1, 1, S_video, L_text]`` bias for the prompt branch.

    token_masks: id → ``[1, 1, F', h/2, w/2]`` (as :func:`wclab.encode.encode_conditions` gives); caption_order:
    id → k; spans: caption token ranges (:func:`wclab.encode.caption_spans`), span k for caption order k.
    """
    return BiasSpec.from_token_masks(token_masks, caption_order, spans, beta).dense(text_len, dtype)


def negative_bias(token_masks: Mapping[str, torch.Tensor], caption_order: Mapping[str, int],
                  negative_spans: Sequence[Span], text_len: int = TEXT_LEN, beta: float = BETA,
                  dtype: torch.dtype = torch.float32, mode: NegativeMode = "reference") -> Optional[torch.Tensor]:
    """Bias for the negative (CFG) branch, or None for an unbiased negative branch.

    mode "reference" (default) reproduces the released pipeline: the negative prompt's spans (usually the one
    span ``[0, n)``) are bound to the objects of caption order 0, 1, ...; "none" returns None.
    """
    if mode == "none":
        return None
    if mode != "reference":
        raise ConditionError(f"mode: expected 'reference' or 'none', got {mode!r}")
    return BiasSpec.negative(token_masks, caption_order, negative_spans, beta).dense(text_len, dtype)


# ---------------------------------------------------------------------------------------------- checks
def _span(s: Sequence[int]) -> Span:
    if len(s) != 2:
        raise ConditionError(f"spans: expected (s0, s1) pairs, got {s!r}")
    return int(s[0]), int(s[1])


def _check_spans(spans: Sequence[Span]) -> None:
    for k, (s0, s1) in enumerate(spans):
        if not 0 <= s0 < s1:
            raise ConditionError(f"spans[{k}]: expected 0 <= s0 < s1, got ({s0}, {s1})")
    ordered = sorted(spans)
    for (a0, a1), (b0, b1) in zip(ordered, ordered[1:]):
        if b0 < a1:
            raise ConditionError(f"spans: ({a0}, {a1}) and ({b0}, {b1}) overlap")


def _masks_in_caption_order(token_masks: Mapping[str, torch.Tensor],
                            caption_order: Mapping[str, int]) -> list[torch.Tensor]:
    """``bool [S_video]`` per object, ordered by caption order; checks ids, orders and shapes."""
    if not caption_order:
        raise ConditionError("caption_order: empty; the bias needs at least one captioned object")
    if sorted(caption_order.values()) != list(range(len(caption_order))):
        raise ConditionError(f"caption_order: expected orders 0..{len(caption_order) - 1}, got {dict(caption_order)}")
    missing = [i for i in caption_order if i not in token_masks]
    if missing:
        raise ConditionError(f"token_masks: no mask for captioned object id(s) {missing} (have {list(token_masks)})")
    ids = sorted(caption_order, key=caption_order.get)
    shape = tuple(token_masks[ids[0]].shape)
    for i in ids:
        m = token_masks[i]
        if m.ndim != 5 or m.shape[:2] != (1, 1) or tuple(m.shape) != shape:
            raise ConditionError(
                f"token_masks[{i!r}]: expected [1, 1, F', h/2, w/2] like {list(shape)}, got {list(m.shape)}")
    return [token_masks[i].reshape(-1) > 0.5 for i in ids]
