"""Per-object (and per-word) cross-attention maps, aggregated while the session runs (DAAM-style).

For every selected forward (step × CFG branch × expert) and DiT block, each video token's attention
probabilities onto the text tokens are summed over the selected heads and over each target's text tokens
(an object's caption span, or one word of it), giving ``[R, S]`` (R targets, S video tokens) that is added
to a running sum per step. No attention matrix is formed or kept: the state is one ``[R, S]`` float32
tensor per step.

How: hooks on ``cross_attn.hook_q`` / ``hook_k`` / ``hook_bias`` hold references to the block's q, k and
bias; the hook on ``cross_attn.hook_out`` calls :func:`span_mass`, which gets the per-target sums from one
extra attention call whose values are the 0/1 target-membership columns (``softmax(q·kᵀ/√d + bias)·V`` with
``V[l, r] = 1`` when text token l belongs to target r *is* the mass on target r), so fused kernels reduce
the pattern without materialising it. Rejected alternatives: the opt-in ``hook_probs`` point makes the block
form the full ``[B, heads, S, L]`` float32 pattern (≈2.7 GB per block at 480×832×81) and leave its fused
kernel, which changes the generation's numerics; recomputing the pattern explicitly in chunks is exact in
float32 but memory-bound. Measured on one H100 for one full-size block (bf16, S = 32760 video tokens, L = 512,
20 targets, random weights): block forward 79.5 ms; :func:`span_mass` 1.8 ms with all 40 heads (2.3 %),
0.6 ms with 10 heads; the explicit float32 recomputation 12.2 ms (15 %). The fused result is in the model's
dtype per head (bf16: max deviation 5e-3 from float32 on 40-head sums up to 6.3); on float32 models it
agrees with ``hook_probs`` to 1e-5. The forward itself is untouched (bitwise the same generation).

Targets per CFG branch: on the ``cond`` branch object k's target is its caption span in the prompt (and its
words, from :func:`wclab.encode.word_spans`); on the ``uncond`` branch it is the negative-prompt span that the
reference's negative bias binds to object k (span k of the negative prompt — usually only object 0 has one),
and words have none. A target without tokens on a branch adds zeros.
"""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Iterable, Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from wclab.encode import word_spans
from wclab.errors import WclabError

Branch = Literal["cond", "uncond"]
Normalize = Literal["mean", "sum", "max", "none"]
CHUNK_ELEMENTS = 1 << 26  # float32 probabilities per chunk of recomputation (256 MiB)


class InspectError(WclabError, ValueError):
    """An inspection was asked for something the session does not have (unknown object, step, block, head)."""


@dataclass(frozen=True)
class _Target:
    """One row of the running sum: an object's caption span, or one word of it."""

    object_id: str
    word: Optional[str] = None  # None: the whole caption
    word_index: int = -1  # position among the caption's words


class AttentionMaps:
    """Cross-attention mass from video tokens onto each object's caption (and words), per step.

    >>> with AttentionMaps(session, blocks=range(10, 30), steps=range(0, 10)) as maps:
    ...     session.run()
    >>> maps.per_object()["1"].shape          # [F', h/2, w/2] on the DiT token grid
    >>> maps.overlap_with_token_masks()       # {id: fraction of the map's mass inside its token mask}

    objects: captioned object ids (default: all, in caption order). words: ids whose captions also get
    per-word maps (True: all objects). blocks, heads: indices (default all). steps: step indices (default
    all). experts: "high"/"low" (default both). branches: "cond", "uncond" or both (default "cond").
    """

    def __init__(self, session, objects: Optional[Iterable[Union[int, str]]] = None,
                 words: Union[bool, Iterable[Union[int, str]]] = False, blocks: Optional[Iterable[int]] = None,
                 heads: Optional[Iterable[int]] = None, steps: Optional[Iterable[int]] = None,
                 experts: Iterable[str] = ("high", "low"), branches: Union[Branch, Iterable[Branch]] = "cond"):
        self.session = session
        order = session.conditions.caption_order
        self.objects = _checked(objects, list(order), "objects", str)
        word_ids = self.objects if words is True else [] if words is False else _checked(words, self.objects,
                                                                                         "words", str)
        self.experts = _checked(experts, ["high", "low"], "experts", str)
        self.branches = _checked([branches] if isinstance(branches, str) else branches, ["cond", "uncond"],
                                 "branches", str)
        cfg = session.dit(self.experts[0]).cfg
        self.blocks = _checked(blocks, list(range(cfg.num_layers)), "blocks", int)
        self.heads = _checked(heads, list(range(cfg.num_heads)), "heads", int)
        self.steps = None if steps is None else set(_checked(steps, list(range(session.num_steps)), "steps", int))
        self.grid = session.dit(self.experts[0]).token_grid(session.latents.shape)  # (F', h/2, w/2)

        self.targets = [_Target(i) for i in self.objects]
        prompt, tokenizer = session.conditions.prompt, session.models.tokenizer
        self._word_spans: dict[tuple[str, int], tuple[int, int]] = {}
        for i in word_ids:
            for n, (word, span) in enumerate(word_spans(prompt, tokenizer, order[i], tokenizer.text_len)):
                self.targets.append(_Target(i, word, n))
                self._word_spans[(i, n)] = span
        self.sums: dict[int, Tensor] = {}  # step -> float32 [R, S] running sum of attention mass
        self.counts: dict[int, int] = {}  # step -> number of (forward, block, head) terms in the sum
        self._selector_cache: dict = {}
        self._stack: Optional[ExitStack] = None

    # ------------------------------------------------------------------------------------------- attaching
    def __enter__(self) -> "AttentionMaps":
        if self._stack is not None:
            raise InspectError("these AttentionMaps are already attached")
        hooks = []
        for e in self.experts:
            for b in self.blocks:
                hooks += self._block_hooks(f"{e}.blocks.{b}.cross_attn")
        self._stack = ExitStack()
        self._stack.enter_context(self.session.hooks(hooks))
        return self

    def __exit__(self, *exc) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def _block_hooks(self, prefix: str) -> list:
        held: dict[str, Tensor] = {}

        def keep(name: str):
            @torch.compiler.disable  # runs eagerly inside compiled blocks (wclab.models.fast.speed_up)
            def fn(x, hook):
                if self._wanted():
                    held[name] = x
            return fn

        @torch.compiler.disable
        def reduce(out, hook):
            if "q" in held and "k" in held:
                self._accumulate(held["q"], held["k"], held.get("bias"))
            held.clear()

        return [(f"{prefix}.hook_q", keep("q")), (f"{prefix}.hook_k", keep("k")),
                (f"{prefix}.hook_bias", keep("bias")), (f"{prefix}.hook_out", reduce)]

    def _wanted(self) -> bool:
        s = self.session
        return s.current_branch in self.branches and (self.steps is None or s.step_index in self.steps)

    def _selector(self, text_len: int, device) -> Tensor:
        """float32 [L, R]: 1 where text token l belongs to target r on the current branch."""
        s = self.session
        branch = s.current_branch
        spans = s.positive.spans if branch == "cond" else s.negative.spans
        order = s.conditions.caption_order
        key = (branch, tuple(spans), tuple(sorted(order.items())), text_len, str(device))
        sel = self._selector_cache.get(key)
        if sel is None:
            sel = torch.zeros(text_len, len(self.targets), dtype=torch.float32)
            for r, t in enumerate(self.targets):
                k = order.get(t.object_id)
                if k is None or k >= len(spans):
                    continue
                if t.word is None:
                    s0, s1 = spans[k]
                elif branch == "cond":
                    s0, s1 = self._word_spans[(t.object_id, t.word_index)]
                else:
                    continue
                sel[s0:s1, r] = 1.0
            sel = self._selector_cache[key] = sel.to(device)
        return sel

    def _accumulate(self, q: Tensor, k: Tensor, bias: Optional[Tensor]) -> None:
        """Add this block's ``[R, S]`` mass to the running sum of the current step."""
        mass = span_mass(q, k, bias, self._selector(k.shape[1], q.device), self.heads)
        step = self.session.step_index
        self.sums[step] = self.sums[step] + mass if step in self.sums else mass
        self.counts[step] = self.counts.get(step, 0) + q.shape[0] * len(self.heads)

    # ------------------------------------------------------------------------------------------- results
    @property
    def recorded_steps(self) -> list[int]:
        return sorted(self.sums)

    def _raw(self, step: Optional[Union[int, Iterable[int]]]) -> tuple[Tensor, int]:
        if not self.sums:
            raise InspectError("no attention was recorded: run the session inside `with AttentionMaps(...)`")
        steps = self.recorded_steps if step is None else [step] if isinstance(step, int) else list(step)
        missing = [i for i in steps if i not in self.sums]
        if missing:
            raise InspectError(f"step(s) {missing} were not recorded; recorded steps: {self.recorded_steps}")
        return sum(self.sums[i].cpu() for i in steps), sum(self.counts[i] for i in steps)

    def _maps(self, rows: Sequence[int], step, normalize: Normalize) -> list[Tensor]:
        raw, count = self._raw(step)
        out = []
        for r in rows:
            m = raw[r]
            if normalize == "mean":
                m = m / count
            elif normalize == "sum":
                m = m / m.sum().clamp_min(1e-30)
            elif normalize == "max":
                m = m / m.max().clamp_min(1e-30)
            elif normalize != "none":
                raise InspectError(f"normalize: expected 'mean', 'sum', 'max' or 'none', got {normalize!r}")
            out.append(m.reshape(self.grid))
        return out

    def per_object(self, step: Optional[Union[int, Iterable[int]]] = None, normalize: Normalize = "mean"
                   ) -> dict[str, Tensor]:
        """id → float32 ``[F', h/2, w/2]`` map over DiT tokens, summed over ``step`` (an index, several, or
        None for all recorded).

        normalize: "mean" — average over recorded (forward, block, head) terms of the probability mass the
        token puts on the caption (0..1); "sum" — each map sums to 1; "max" — each map peaks at 1; "none" —
        the raw running sum.
        """
        rows = [r for r, t in enumerate(self.targets) if t.word is None]
        return dict(zip(self.objects, self._maps(rows, step, normalize)))

    def per_step(self, normalize: Normalize = "mean") -> dict[int, dict[str, Tensor]]:
        """step → id → ``[F', h/2, w/2]`` (see :meth:`per_object`)."""
        return {i: self.per_object(i, normalize) for i in self.recorded_steps}

    def per_word(self, object_id: Union[int, str], step: Optional[Union[int, Iterable[int]]] = None,
                 normalize: Normalize = "mean") -> dict[str, Tensor]:
        """word → ``[F', h/2, w/2]`` for the words of object ``object_id``'s caption (in order; a repeated word
        gets ``"#2"``, ``"#3"``... appended). The object must have been listed in ``words``."""
        i = str(object_id)
        rows = [r for r, t in enumerate(self.targets) if t.object_id == i and t.word is not None]
        if not rows:
            raise InspectError(f"object {i!r} has no word maps; pass words=[{i!r}] (or True) to AttentionMaps")
        names: list[str] = []
        for r in rows:
            w = self.targets[r].word
            n = sum(1 for x in names if x == w or x.startswith(w + "#"))
            names.append(w if n == 0 else f"{w}#{n + 1}")
        return dict(zip(names, self._maps(rows, step, normalize)))

    def token_masks(self) -> dict[str, Tensor]:
        """id → float32 0/1 ``[F', h/2, w/2]``: the session's current token masks for the mapped objects."""
        masks = self.session.conditions.token_masks
        return {i: masks[i].detach().float().cpu().reshape(self.grid) for i in self.objects if i in masks}

    def overlap_with_token_masks(self, step: Optional[Union[int, Iterable[int]]] = None) -> dict[str, float]:
        """id → fraction (0..1) of the object's map mass that lies inside its token mask (all latent frames).

        Compare with :meth:`mask_area_fraction`, the fraction a map spread evenly over the tokens would get.
        """
        maps = self.per_object(step, normalize="none")
        return {i: float((maps[i] * m).sum() / maps[i].sum().clamp_min(1e-30)) for i, m in self.token_masks().items()}

    def mask_area_fraction(self) -> dict[str, float]:
        """id → fraction of DiT tokens (all latent frames) inside the object's token mask."""
        return {i: float(m.mean()) for i, m in self.token_masks().items()}


@torch.no_grad()
def span_mass(q: Tensor, k: Tensor, bias: Optional[Tensor], selector: Tensor, heads: Optional[Sequence[int]] = None,
              chunk_elements: int = CHUNK_ELEMENTS) -> Tensor:
    """Cross-attention mass of each video token on each text-token group, without forming the attention pattern.

    q ``[B, S, H, D]``, k ``[B, L, H, D]`` (as at ``cross_attn.hook_q`` / ``hook_k``), bias ``[B, 1, S, L]`` or
    None, selector ``[L, R]`` (1 where text token l belongs to group r). Returns float32 ``[R, S]``:
    ``softmax(q·kᵀ/√D + bias)`` summed over the batch, the selected ``heads`` (default all) and each group's
    text tokens.

    The sum over a group's tokens is what attention computes when the values are the selector's columns, so
    this is one attention call with values ``[L, R]`` (fused kernels never form the ``[S, L]`` pattern;
    numerics are those of the model's own attention in q's dtype). Video tokens go in chunks of at most
    ``chunk_elements`` pattern entries, which bounds memory where the math fallback forms the pattern.
    """
    B, S, H, D = q.shape
    L, R = k.shape[1], selector.shape[1]
    if heads is not None and list(heads) != list(range(H)):
        index = torch.tensor(list(heads), device=q.device)
        q, k = q.index_select(2, index), k.index_select(2, index)
    h = q.shape[2]
    width = -(-R // 8) * 8  # value width padded to a multiple of 8 for the fused kernels
    v = torch.zeros(L, width, dtype=q.dtype, device=q.device)
    v[:, :R] = selector.to(q.dtype)
    v = v.expand(B, h, L, width)
    kt = k.transpose(1, 2)  # [B, h, L, D]
    mask = None if bias is None else bias.to(q.dtype)
    out = torch.empty(R, S, dtype=torch.float32, device=q.device)
    chunk = max(1, chunk_elements // (B * h * L))
    for s0 in range(0, S, chunk):
        s1 = min(S, s0 + chunk)
        m = None if mask is None else mask[:, :, s0:s1]
        mass = F.scaled_dot_product_attention(q[:, s0:s1].transpose(1, 2), kt, v, attn_mask=m)  # [B, h, c, width]
        out[:, s0:s1] = mass[..., :R].float().sum(dim=(0, 1)).T
    return out


def _checked(values, allowed: list, name: str, cast) -> list:
    """``values`` (None: all of ``allowed``) as a list, each one cast and checked against ``allowed``."""
    if values is None:
        return list(allowed)
    try:
        out = [cast(v) for v in values]
    except (TypeError, ValueError):
        raise InspectError(f"{name}: expected an iterable of {cast.__name__}, got {values!r:.80}") from None
    bad = [v for v in out if v not in allowed]
    if bad or not out:
        raise InspectError(f"{name}: expected values among {allowed}, got {out}")
    return out
