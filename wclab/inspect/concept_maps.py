"""Concept maps: where the video tokens attend to any word or phrase, not only the prompt's captions.

Each concept text is encoded on its own by the session's text encoder (tokenised and cleaned like a prompt; its
tokens are those of the text without ``</s>`` and padding), embedded by each expert's ``text_embedding`` and
projected by each block's cross-attention key (``norm_k(k(·))``) and value (``o(v(·))``) weights — exactly what
the block would do with that text as (part of) its prompt. The concept never enters the model: the generation is
unchanged. Two maps per concept, both accumulated with running sums per (step, block), ``[R, S]`` float32 each
(R concepts, S video tokens):

``space="cross"`` — cross-attention mass, relative to the prompt actually used. For video query q_s (block's
hook_q, a head at a time) the concept's mass is ``Σ_{j ∈ concept} exp(q_s·c_j/√d) / Z_s`` with
``Z_s = Σ_l exp(q_s·k_l/√d + bias_sl)`` the partition function of the real prompt keys k (with the trajectory
bias), computed in float32: the probability the concept's tokens would get if they stood in the prompt in place of
tokens with the same keys, the rest unchanged. So a concept whose keys equal a caption's (the caption's text when
it is the whole prompt, T5 encoding being contextual) reproduces that caption's `AttentionMaps` map exactly when
the bias is off (β = 1); with the bias on, the caption's map also carries its bias, the concept's does not.
Rejected: a joint softmax over [prompt keys ; concept keys] — adding keys dilutes every probability, so a
concept equal to a caption would get m/(1+m) of the caption's m, not m.

``space="output"`` — ConceptAttention-style (Helbling et al. 2025, output-space similarity): the dot product of
each video token's cross-attention output (``cross_attn.hook_out`` ``[B, S, dim]``, what the block adds to the
residual) with the concept's output ``o(v(c_j))`` (what a token attending only to concept token j would add),
averaged over the concept's tokens. Its ``normalize="softmax"`` is ConceptAttention's map: a softmax over the
concepts per video token (needs two or more concepts); "mean" gives the raw mean dot product.

Per-block and per-step curves of a map's overlap with token masks: :meth:`ConceptMaps.overlap_curves` (a tidy
table) and :func:`plot_overlap_curves`. The hooks and the reduction (:class:`ConceptMass`) work on a bare
:class:`wclab.models.dit.DiT` too, which is how ``bench/bench_dit.py`` measures their cost (stage
``capture_concept``). State: ``2 · blocks · steps`` tensors ``[R, S]`` float32 (≈ 131 kB per concept, block and
step at 480×832×81).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from wclab.encode import caption_spans
from wclab.errors import WclabError
from wclab.inspect.attention import (CHUNK_ELEMENTS, CompiledOnce, HookRecorder, InspectError, _checked,
                                    _qk_logits, chunk_sizes, cross_attention_outputs)
from wclab.models.hooks import current_hook_context

Space = Literal["cross", "output"]
SPACES = ("cross", "output")
Normalize = Literal["mean", "sum", "max", "none", "softmax"]


@dataclass(frozen=True)
class Concept:
    """A word or phrase encoded for the DiT: name (its label), text, context: T5 output ``[1, L_text, text_dim]``
    (model dtype and device), span: ``(s0, s1)`` its text tokens (without ``</s>`` and padding)."""

    name: str
    text: str
    context: Tensor
    span: tuple[int, int]

    @property
    def num_tokens(self) -> int:
        return self.span[1] - self.span[0]


@torch.no_grad()
def encode_concept(models, text: str, name: Optional[str] = None) -> Concept:
    """Encode ``text`` with ``models.tokenizer`` / ``models.text_encoder`` as a prompt is encoded (same cleaning,
    same context length); ``name`` defaults to the text."""
    if not isinstance(text, str) or not text.strip():
        raise InspectError(f"concepts: expected a non-empty text, got {text!r:.80}")
    tok = models.tokenizer
    try:
        spans = caption_spans(text, tok, tok.text_len)
    except WclabError as e:
        raise InspectError(f"concepts: cannot tokenise {text!r:.80}: {e}") from None
    ids, mask = tok(text)
    context = models.text_encoder(ids, mask).to(models.device, models.dtype)
    return Concept(name if name is not None else text, text, context, (spans[0][0], spans[-1][1]))


def concept_projections(dit, block: int, concepts: Sequence[Concept]) -> tuple[Tensor, Tensor]:
    """``(keys [1, C, heads, head_dim], outputs float32 [C, dim])`` of the concepts' C tokens (concatenated in
    order) in block ``block`` of ``dit``: ``norm_k(k(e))`` and ``o(v(e))`` of ``e = text_embedding(context)``,
    in the model's dtype and on its device."""
    ca = dit.blocks[block].cross_attn
    weight = ca.k.weight
    with torch.no_grad():
        emb = torch.cat([dit.text_embedding(c.context.to(weight.device, weight.dtype))[:, c.span[0]:c.span[1]]
                         for c in concepts], dim=1)  # [1, C, dim]
        keys = ca.norm_k(ca.k(emb)).unflatten(-1, (ca.num_heads, -1))
        outputs = ca.o(ca.v(emb))[0].float()
    return keys, outputs


# ------------------------------------------------------------------------------------------- hooks, reduction
def concept_hooks(modules: Iterable[str], reduce: Callable, wanted: Callable[[], bool] = lambda: True
                  ) -> list[tuple[str, Callable]]:
    """Hooks that hand each listed cross-attention module's q, k, bias and output to ``reduce`` once per forward.

    modules: ``"blocks.3.cross_attn"`` (``DiT.hooks``) or ``"high.blocks.3.cross_attn"`` (``Session.hooks``). At
    ``hook_out``, ``reduce(block, q, k, bias, out)`` gets the block index, q ``[B, S, H, D]``, k ``[B, L, H, D]``,
    bias ``[B, 1, S, L]`` or None and the output ``[B, S, dim]``, if ``wanted()`` was true when q went by
    (`wclab.inspect.attention.cross_attention_outputs`).
    """
    return cross_attention_outputs(modules, reduce, wanted)


class ConceptMass:
    """Cross-attention mass of concept tokens relative to the real prompt: float32 ``[R, S]``.

    ``mass(q, k, bias, concept_keys, selector, heads=None, chunk_elements=CHUNK_ELEMENTS, compile=None)``: q
    ``[B, S, H, D]``, k ``[B, L, H, D]``, bias ``[B, 1, S, L]`` or None (as at ``cross_attn.hook_q/k/bias``),
    concept_keys ``[1, C, H, D]``, selector ``[C, R]`` (1 where concept token c belongs to concept r) →
    ``Σ_c exp(q·c/√D − logsumexp_l(q·k_l/√D + bias_l))`` summed over the batch, the selected ``heads`` and each
    concept's tokens, in float32. ``compile``: ``torch.compile`` it (default: on CUDA).
    """

    def __init__(self) -> None:
        self._run = CompiledOnce(_concept_mass, "ConceptMass")

    @torch.no_grad()
    def __call__(self, q: Tensor, k: Tensor, bias: Optional[Tensor], concept_keys: Tensor, selector: Tensor,
                 heads: Optional[Sequence[int]] = None, chunk_elements: int = CHUNK_ELEMENTS,
                 compile: Optional[bool] = None) -> Tensor:
        B, S, H, D = q.shape
        kc = concept_keys.to(q.device, q.dtype).expand(B, -1, -1, -1)
        if heads is not None and list(heads) != list(range(H)):
            index = torch.tensor(list(heads), device=q.device)
            q, k, kc = q.index_select(2, index), k.index_select(2, index), kc.index_select(2, index)
        h, L = q.shape[2], k.shape[1] + kc.shape[1]
        head_chunk, token_chunk = chunk_sizes(h, B, S, L, chunk_elements)
        sel = selector.to(q.device, torch.float32)
        return self._run(q.is_cuda if compile is None else compile, bool(compile), q, k, bias, kc, sel, head_chunk,
                         token_chunk)


def _concept_mass(q: Tensor, k: Tensor, bias: Optional[Tensor], kc: Tensor, sel: Tensor, head_chunk: int,
                  token_chunk: int) -> Tensor:
    """:class:`ConceptMass` after head selection: ``head_chunk`` heads × ``token_chunk`` video tokens at a time."""
    B, S, h, D = q.shape
    L, C = k.shape[1], kc.shape[1]
    parts = []
    for s0 in range(0, S, token_chunk):
        c = min(token_chunk, S - s0)
        mass = None
        for h0 in range(0, h, head_chunk):
            n = min(head_chunk, h - h0)
            qc = q[:, s0:s0 + c, h0:h0 + n].transpose(1, 2).reshape(B * n, c, D)
            logits = _qk_logits(qc, k[:, :, h0:h0 + n].transpose(1, 2).reshape(B * n, L, D)).view(B, n, c, L)
            logits = logits * D ** -0.5
            if bias is not None:
                logits = logits + bias[:, :, s0:s0 + c].float()
            concept = _qk_logits(qc, kc[:, :, h0:h0 + n].transpose(1, 2).reshape(B * n, C, D)).view(B, n, c, C)
            m = (concept * D ** -0.5 - logits.logsumexp(-1, keepdim=True)).exp().sum((0, 1)) @ sel  # [c, R]
            mass = m if mass is None else mass + m
        parts.append(mass)
    return torch.cat(parts).T.contiguous()  # [R, S]


def concept_selector(concepts: Sequence[Concept]) -> Tensor:
    """float32 ``[C, R]``: 1 where concatenated concept token c belongs to concept r."""
    sizes = [c.num_tokens for c in concepts]
    sel = torch.zeros(sum(sizes), len(concepts))
    start = 0
    for r, n in enumerate(sizes):
        sel[start:start + n, r] = 1.0
        start += n
    return sel


# ------------------------------------------------------------------------------------------- the maps
class ConceptMaps(HookRecorder):
    """Maps of arbitrary words or phrases in the cross-attention ("cross") and output ("output") spaces, per step
    and block (see the module docstring for the definitions).

    >>> with ConceptMaps(session, ["a red ball", "the floor"], blocks=range(10, 30)) as maps:
    ...     session.run()
    >>> maps.per_concept()["a red ball"].shape          # [F', h/2, w/2]
    >>> maps.per_concept(space="output", normalize="softmax")
    >>> maps.overlap_curves()                           # tidy table: concept, mask, step, block, overlap
    >>> plot_overlap_curves(maps.overlap_curves(), by="block")

    concepts: texts, or ``{name: text}``. blocks, heads: indices (default all; heads apply to "cross" only).
    steps: step indices (default all). experts: "high"/"low" (default both). branches: "cond", "uncond" or both
    (default "cond"). spaces: which maps to record (default both).
    """

    def __init__(self, session, concepts: Union[str, Sequence[str], Mapping[str, str]],
                 blocks: Optional[Iterable[int]] = None, heads: Optional[Iterable[int]] = None,
                 steps: Optional[Iterable[int]] = None, experts: Iterable[str] = ("high", "low"),
                 branches: Union[str, Iterable[str]] = "cond", spaces: Union[Space, Iterable[Space]] = SPACES,
                 chunk_elements: int = CHUNK_ELEMENTS):
        super().__init__(session, experts, branches, blocks, heads, steps)
        if isinstance(concepts, str):
            concepts = [concepts]
        items = list(concepts.items()) if isinstance(concepts, Mapping) else [(t, t) for t in concepts]
        if not items:
            raise InspectError("concepts: expected at least one text")
        names = [str(n) for n, _ in items]
        if len(set(names)) != len(names):
            raise InspectError(f"concepts: names must be distinct, got {names}")
        bad = [t for _, t in items if not isinstance(t, str) or not t.strip()]
        if bad:
            raise InspectError(f"concepts: expected non-empty texts, got {bad[0]!r:.80}")
        self.names = names
        self.spaces = _checked([spaces] if isinstance(spaces, str) else spaces, list(SPACES), "spaces", str)
        self.chunk_elements = chunk_elements
        self.concepts = [encode_concept(session.models, text, name) for name, (_, text) in zip(names, items)]
        self.selector = concept_selector(self.concepts)  # [C, R]
        # space -> (step, block) -> float32 [R, S] running sum; counts: (forward[, head]) terms in it
        self.sums: dict[str, dict[tuple[int, int], Tensor]] = {s: {} for s in self.spaces}
        self.counts: dict[str, dict[tuple[int, int], int]] = {s: {} for s in self.spaces}
        self.step_experts: dict[int, str] = {}
        self._projections: dict = {}
        self._mass = ConceptMass()

    def _hooks(self) -> list:
        modules = [f"{e}.blocks.{b}.cross_attn" for e in self.experts for b in self.blocks]
        return concept_hooks(modules, self._accumulate, self._wanted)

    def _project(self, expert: str, block: int, device) -> tuple[Tensor, Tensor, Tensor]:
        """(concept keys, per-concept mean outputs ``[R, dim]`` float32, selector) on ``device``, cached."""
        key = (expert, block, str(device))
        if key not in self._projections:
            keys, outputs = concept_projections(self.session.dit(expert), block, self.concepts)
            sel = self.selector.to(device)
            mean_outputs = (sel / sel.sum(0)).T @ outputs.to(device)  # [R, dim]
            self._projections[key] = (keys.to(device), mean_outputs, sel)
        return self._projections[key]

    def _accumulate(self, block: int, q: Tensor, k: Tensor, bias: Optional[Tensor], out: Tensor) -> None:
        ctx = current_hook_context()
        keys, mean_outputs, sel = self._project(ctx.expert, block, q.device)
        at = (ctx.step, block)
        self.step_experts[ctx.step] = ctx.expert
        B = q.shape[0]
        if "cross" in self.sums:
            mass = self._mass(q, k, bias, keys, sel, self.heads, self.chunk_elements)
            self._add("cross", at, mass, B * len(self.heads))
        if "output" in self.sums:
            with torch.no_grad():
                scores = (out.float() @ mean_outputs.T).sum(0).T.contiguous()  # [R, S]
            self._add("output", at, scores, B)

    def _add(self, space: str, at: tuple[int, int], value: Tensor, count: int) -> None:
        sums, counts = self.sums[space], self.counts[space]
        sums[at] = sums[at] + value if at in sums else value
        counts[at] = counts.get(at, 0) + count

    # ------------------------------------------------------------------------------------------- results
    @property
    def recorded_steps(self) -> list[int]:
        return sorted({s for sums in self.sums.values() for s, _ in sums})

    @property
    def recorded_blocks(self) -> list[int]:
        return sorted({b for sums in self.sums.values() for _, b in sums})

    def _raw(self, space: str, step, block) -> tuple[Tensor, int]:
        if space not in SPACES:
            raise InspectError(f"space: expected 'cross' or 'output', got {space!r}")
        if space not in self.sums:
            raise InspectError(f"space {space!r} was not recorded (spaces={self.spaces})")
        sums = self.sums[space]
        if not sums:
            raise InspectError("no concept maps were recorded: run the session inside `with ConceptMaps(...)`")
        steps = self.recorded_steps if step is None else [step] if isinstance(step, int) else list(step)
        blocks = self.recorded_blocks if block is None else [block] if isinstance(block, int) else list(block)
        keys = [(s, b) for s in steps for b in blocks if (s, b) in sums]
        missing_s = [s for s in steps if not any(k[0] == s for k in sums)]
        missing_b = [b for b in blocks if not any(k[1] == b for k in sums)]
        if missing_s or missing_b or not keys:
            raise InspectError(f"step(s) {missing_s} / block(s) {missing_b} were not recorded; recorded steps "
                               f"{self.recorded_steps}, blocks {self.recorded_blocks}")
        return sum(sums[k].cpu() for k in keys), sum(self.counts[space][k] for k in keys)

    def per_concept(self, step: Optional[Union[int, Iterable[int]]] = None,
                    block: Optional[Union[int, Iterable[int]]] = None, space: Space = "cross",
                    normalize: Normalize = "mean") -> dict[str, Tensor]:
        """name → float32 ``[F', h/2, w/2]``, summed over ``step`` and ``block`` (an index, several, or None for
        all recorded).

        normalize: "mean" — cross: mean probability mass per (forward, block, head) term (as `AttentionMaps`);
        output: mean dot product per (forward, block) term. "softmax" (output only) — ConceptAttention's map:
        softmax over the concepts of the mean scores, per token. "sum" / "max": each map sums / peaks at 1 (cross
        only: output scores are signed); "none": the raw running sum.
        """
        raw, count = self._raw(space, step, block)
        if normalize == "softmax":
            if space != "output":
                raise InspectError("normalize='softmax' is ConceptAttention's map of the output space; pass "
                                   "space='output'")
            if len(self.concepts) < 2:
                raise InspectError("normalize='softmax' compares concepts: give two or more")
            raw = (raw / count).softmax(0)
        elif normalize == "mean":
            raw = raw / count
        elif normalize in ("sum", "max"):
            if space != "cross":
                raise InspectError(f"normalize={normalize!r} needs non-negative maps (space='cross')")
            scale = raw.sum(1, keepdim=True) if normalize == "sum" else raw.amax(1, keepdim=True)
            raw = raw / scale.clamp_min(1e-30)
        elif normalize != "none":
            raise InspectError(f"normalize: expected 'mean', 'sum', 'max', 'none' or 'softmax', got {normalize!r}")
        return {n: raw[r].reshape(self.grid) for r, n in enumerate(self.names)}

    def overlap_curves(self, masks: Optional[Mapping[str, Tensor]] = None, space: Space = "cross") -> pd.DataFrame:
        """See :func:`overlap_curves`."""
        return overlap_curves(self, masks, space)


def overlap_curves(maps: ConceptMaps, masks: Optional[Mapping[str, Union[Tensor, np.ndarray]]] = None,
                   space: Space = "cross") -> pd.DataFrame:
    """Tidy table of each concept map's overlap with each mask, per recorded (step, block).

    masks: name → 0/1 ``[F', h/2, w/2]`` (or ``[1, 1, F', h/2, w/2]``) on the token grid (default: the session's
    object token masks, by object id). overlap: the fraction (0..1) of the map's mass inside the mask — the map of
    that step and block alone; for space="output" the map is ConceptAttention's softmax over the concepts (two or
    more concepts). area: the mask's fraction of all tokens (the overlap of an evenly spread map). Columns:
    concept, mask, step, expert, block, overlap, area.
    """
    if masks is None:
        masks = maps.session.conditions.token_masks
    grid = tuple(maps.grid)
    flat = {}
    for name, m in masks.items():
        t = torch.as_tensor(np.asarray(m) if not isinstance(m, Tensor) else m.detach().cpu()).float()
        if t.numel() != int(np.prod(grid)) or tuple(t.shape[-3:]) != grid:
            raise InspectError(f"masks[{name!r}]: expected a 0/1 mask [F', h/2, w/2] = {list(grid)}, "
                               f"got {list(t.shape)}")
        flat[str(name)] = t.reshape(-1)
    rows = []
    normalize = "none" if space == "cross" else "softmax"
    for step in maps.recorded_steps:
        for block in maps.recorded_blocks:
            if (step, block) not in maps.sums.get(space, {}):
                continue
            per = maps.per_concept(step, block, space, normalize)
            for concept, m in per.items():
                m = m.reshape(-1)
                total = float(m.sum())
                for name, mask in flat.items():
                    rows.append(dict(concept=concept, mask=name, step=step, expert=maps.step_experts.get(step),
                                     block=block, overlap=float((m * mask).sum()) / max(total, 1e-30),
                                     area=float(mask.mean())))
    if not rows:
        raise InspectError("no concept maps were recorded: run the session inside `with ConceptMaps(...)`")
    return pd.DataFrame(rows)


def plot_overlap_curves(table: pd.DataFrame, by: Literal["block", "step"] = "block", ax=None):
    """matplotlib Figure: one line per (concept, mask) of :func:`overlap_curves`' overlap against ``by`` (block or
    step; mean over the other), with each mask's area (the chance level) dashed."""
    import matplotlib.pyplot as plt

    if by not in ("block", "step"):
        raise InspectError(f"by: expected 'block' or 'step', got {by!r}")
    fig, ax = (plt.subplots(figsize=(6, 3.5)) if ax is None else (ax.figure, ax))
    for (concept, mask), g in table.groupby(["concept", "mask"], sort=False):
        curve = g.groupby(by)["overlap"].mean()
        ax.plot(curve.index, curve.values, marker="o", label=f"{concept[:24]} ∩ {mask}")
    for mask, g in table.groupby("mask", sort=False):
        ax.axhline(float(g["area"].iloc[0]), ls="--", lw=0.8, color="grey")
    ax.set_xlabel(by)
    ax.set_ylabel("share of the map inside the mask")
    ax.legend(fontsize=7)
    return fig


__all__ = ["Concept", "ConceptMass", "ConceptMaps", "concept_hooks", "concept_projections", "concept_selector",
           "encode_concept", "overlap_curves", "plot_overlap_curves"]
