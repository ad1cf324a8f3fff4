"""Per-object (and per-word) cross-attention maps, aggregated while the session runs (DAAM-style).

For every selected forward (step × CFG branch × expert) and DiT block, each video token's attention
probabilities onto the text tokens are summed over the selected heads and over each target's text tokens
(an object's caption span, or one word of it), giving ``[R, S]`` (R targets, S video tokens) that is added
to a running sum per step. No attention pattern is kept: the state is one ``[R, S]`` float32 tensor per step.

How: :func:`cross_attention_hooks` puts one hook function on ``cross_attn.hook_q`` / ``hook_k`` /
``hook_bias`` (which hold references to the block's q, k and bias) and ``hook_out`` (which hands them to a
reduction); the reduction is a :class:`SpanMass`, which recomputes ``softmax(q·kᵀ/√d + bias)`` in float32 (q·kᵀ
accumulated in float32 from the model's own q and k), a few heads at a time, sums it over the heads and
multiplies by the 0/1 target-membership matrix ``[L, R]``. On CUDA that computation is ``torch.compile``'d
(scaling, bias, softmax and the head sum fuse); elsewhere it runs eagerly, with the same float32 numbers (on
float32 models it agrees with the opt-in ``hook_probs`` pattern to 1e-5). The hooks only look and run
eagerly inside compiled blocks (``wclab.models.fast.speed_up``), so the model keeps its own fused attention
and the generation is bitwise the same as without maps (eager; compiled blocks are split at the hooks, which
changes their fused rounding). The same hooks and reduction work on a bare
:class:`wclab.models.dit.DiT` (``model.hooks(cross_attention_hooks(...))``), which is how ``bench/bench_dit.py``
measures their cost (``bench/RESULTS.md``). The first CUDA call of a `SpanMass` compiles.

Rejected alternatives: the ``hook_probs`` point makes the block form the full ``[B, heads, S, L]`` float32
pattern (≈2.7 GB per block at 480×832×81) and leave its fused kernel, which changes the generation's
numerics; one extra ``scaled_dot_product_attention`` call with the membership columns as values avoids the
float32 logits but computes in the model's dtype (bf16: 5e-3 off) and cost more per forward on an H100
(``bench/RESULTS.md``, run 1).

Targets per CFG branch: on the ``cond`` branch object k's target is its caption span in the prompt (and its
words, from :func:`wclab.encode.word_spans`); on the ``uncond`` branch it is the negative-prompt span that the
reference's negative bias binds to object k (span k of the negative prompt — usually only object 0 has one),
and words have none. A target without tokens on a branch adds zeros.
"""
from __future__ import annotations

import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Optional, Sequence, Union

import torch
from torch import Tensor

from wclab.encode import word_spans
from wclab.errors import WclabError
from wclab.models.hooks import HookContext, current_hook_context

Branch = Literal["cond", "uncond"]
Normalize = Literal["mean", "sum", "max", "none"]
CHUNK_ELEMENTS = 1 << 28  # float32 logits per chunk of recomputation (1 GiB; 10 of 40 heads at 480x832x81)
Span = tuple[int, int]
ReduceFn = Callable[[Tensor, Tensor, Optional[Tensor]], None]


class InspectError(WclabError, ValueError):
    """An inspection was asked for something the session does not have (unknown object, step, block, head)."""


@dataclass(frozen=True)
class _Target:
    """One row of the running sum: an object's caption span, or one word of it."""

    object_id: str
    word: Optional[str] = None  # None: the whole caption
    word_index: int = -1  # position among the caption's words


class HookRecorder:
    """What the running-sum recorders (`AttentionMaps`, `wclab.inspect.ConceptMaps`, `wclab.inspect.MotionMaps`)
    share: the selected experts, CFG branches, blocks, heads and steps of one session (each checked, None = all),
    its token grid ``(F', h/2, w/2)``, and hooks (`_hooks`, defined by each recorder) attached while inside
    ``with`` that record only forwards of that session itself (not of its branches) on the selected CFG branches
    and steps (`_wanted`)."""

    def __init__(self, session, experts: Iterable[str], branches: Union[Branch, Iterable[Branch]],
                 blocks: Optional[Iterable[int]], heads: Optional[Iterable[int]], steps: Optional[Iterable[int]],
                 experts_field: str = "experts"):
        self.session = session
        self.experts = _checked(experts, ["high", "low"], experts_field, str)
        self.branches = _checked([branches] if isinstance(branches, str) else branches, ["cond", "uncond"],
                                 "branches", str)
        cfg = session.dit(self.experts[0]).cfg
        self.blocks = _checked(blocks, list(range(cfg.num_layers)), "blocks", int)
        self.heads = _checked(heads, list(range(cfg.num_heads)), "heads", int)
        self.steps = None if steps is None else set(_checked(steps, list(range(session.num_steps)), "steps", int))
        self.grid = session.dit(self.experts[0]).token_grid(session.latents.shape)  # (F', h/2, w/2)
        self._stack: Optional[ExitStack] = None

    def _hooks(self) -> list:
        """The ``(hook name, function)`` pairs this recorder attaches."""
        raise NotImplementedError

    def __enter__(self):
        if self._stack is not None:
            raise InspectError(f"these {type(self).__name__} are already attached")
        self._stack = ExitStack()
        self._stack.enter_context(self.session.hooks(self._hooks()))
        return self

    def __exit__(self, *exc) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def _wanted(self) -> bool:
        """Whether the forward running now is one to record: this session's (not a branch's), on a selected
        CFG branch and step (its `HookContext`)."""
        ctx = current_hook_context()
        return (ctx is not None and ctx.session is self.session and ctx.branch in self.branches
                and (self.steps is None or ctx.step in self.steps))


class AttentionMaps(HookRecorder):
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
        super().__init__(session, experts, branches, blocks, heads, steps)
        order = session.conditions.caption_order
        self.objects = _checked(objects, list(order), "objects", str)
        word_ids = self.objects if words is True else [] if words is False else _checked(words, self.objects,
                                                                                         "words", str)

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
        self._span_mass = SpanMass()

    def _hooks(self) -> list:
        modules = [f"{e}.blocks.{b}.cross_attn" for e in self.experts for b in self.blocks]
        return cross_attention_hooks(modules, self._accumulate, self._wanted)

    def _selector(self, ctx: HookContext, text_len: int, device) -> Tensor:
        """float32 [L, R]: 1 where text token l belongs to target r on the forward's CFG branch."""
        s = self.session
        branch = ctx.branch
        spans = s.caption_spans(branch)
        order = s.conditions.caption_order
        key = (branch, tuple(spans), tuple(sorted(order.items())), text_len, str(device))
        sel = self._selector_cache.get(key)
        if sel is None:
            columns: list[Optional[Span]] = []
            for t in self.targets:
                k = order.get(t.object_id)
                if k is None or k >= len(spans) or (t.word is not None and branch != "cond"):
                    columns.append(None)
                else:
                    columns.append(tuple(spans[k]) if t.word is None else self._word_spans[(t.object_id, t.word_index)])
            sel = self._selector_cache[key] = span_selector(columns, text_len, device)
        return sel

    def _accumulate(self, q: Tensor, k: Tensor, bias: Optional[Tensor]) -> None:
        """Add this block's ``[R, S]`` mass to the running sum of the forward's step."""
        ctx = current_hook_context()
        mass = self._span_mass(q, k, bias, self._selector(ctx, k.shape[1], q.device), self.heads)
        step = ctx.step
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


def cross_attention_hooks(modules: Iterable[str], reduce: ReduceFn, wanted: Callable[[], bool] = lambda: True
                          ) -> list[tuple[str, Callable]]:
    """Hooks that hand each listed cross-attention module's q, k and bias to ``reduce`` once per forward.

    modules: cross-attention paths, ``"blocks.3.cross_attn"`` for ``DiT.hooks`` or ``"high.blocks.3.cross_attn"``
    for ``Session.hooks``. At the module's ``hook_out``, ``reduce(q, k, bias)`` gets q ``[B, S, H, D]``, k
    ``[B, L, H, D]`` and bias ``[B, 1, S, L]`` (None without a bias) as the module used them, if ``wanted()`` was
    true when its q went by. Returns ``[(hook name, fn), ...]`` to attach with either ``hooks(...)``. The hooks
    only look, and run eagerly inside compiled blocks (one function for all blocks).
    """
    return cross_attention_outputs(modules, lambda block, q, k, bias, out: reduce(q, k, bias), wanted)


def cross_attention_outputs(modules: Iterable[str], reduce: Callable, wanted: Callable[[], bool] = lambda: True
                            ) -> list[tuple[str, Callable]]:
    """As `cross_attention_hooks`, with the block index and the module's output too: at ``hook_out``,
    ``reduce(block, q, k, bias, out)`` (out ``[B, S, dim]``)."""
    held: dict[str, Tensor] = {}

    @torch.compiler.disable  # graph breaks here instead of tracing the hook (wclab.models.fast.speed_up)
    def hook(x: Tensor, point) -> None:
        field = point.name.rpartition(".hook_")[2]
        if field == "q":
            held.clear()
            if wanted():
                held["q"] = x
        elif field == "out":
            if "q" in held and "k" in held:
                reduce(int(point.name.split(".")[1]), held["q"], held["k"], held.get("bias"), x)
            held.clear()
        elif "q" in held:
            held[field] = x

    return [(f"{m}.hook_{f}", hook) for m in modules for f in ("q", "k", "bias", "out")]


def span_selector(spans: Sequence[Optional[Span]], text_len: int, device=None) -> Tensor:
    """float32 ``[L, R]``: column r is 1 on text tokens ``[s0, s1)`` of ``spans[r]`` (all 0 for None)."""
    sel = torch.zeros(text_len, len(spans), dtype=torch.float32)
    for r, span in enumerate(spans):
        if span is None:
            continue
        s0, s1 = span
        if not 0 <= s0 < s1 <= text_len:
            raise InspectError(f"spans[{r}] = ({s0}, {s1}): expected 0 <= s0 < s1 <= {text_len} text tokens")
        sel[s0:s1, r] = 1.0
    return sel.to(device) if device is not None else sel


def chunk_sizes(heads: int, batch: int, rows: int, keys: int, chunk_elements: int) -> tuple[int, int]:
    """(heads, rows) per chunk so that at most ``chunk_elements`` float32 logits ``[batch, heads, rows, keys]``
    exist at a time: whole heads (as many as evenly divide ``heads``), or runs of rows of one head when a head
    alone is larger."""
    per_head = batch * rows * keys
    head_chunk = max((n for n in range(1, heads + 1) if heads % n == 0 and n * per_head <= chunk_elements),
                     default=1)
    row_chunk = rows if per_head <= chunk_elements else max(1, chunk_elements // (batch * keys))
    return head_chunk, row_chunk


class CompiledOnce:
    """``fn`` run through ``torch.compile`` when asked, compiled at the first such call; if compiling fails there,
    a warning and ``fn`` eagerly from then on (unless compiling was demanded: then the error)."""

    def __init__(self, fn: Callable, name: str):
        self.fn, self.name = fn, name
        self._compiled: Optional[Callable] = None

    def __call__(self, use_compile: bool, demanded: bool, *args):
        if not use_compile:
            return self.fn(*args)
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, dynamic=False)
        try:
            return self._compiled(*args)
        except Exception as e:  # e.g. no Triton for this GPU; a real error recurs eagerly below
            if demanded:
                raise
            warnings.warn(f"{self.name}: torch.compile failed ({str(e)[:200]}); computing eagerly from now on")
            self._compiled = self.fn
        return self.fn(*args)


class SpanMass:
    """Cross-attention mass of each video token on each text-token group: float32 ``[R, S]``.

    ``span_mass(q, k, bias, selector, heads=None, chunk_elements=CHUNK_ELEMENTS, compile=None)`` takes q
    ``[B, S, H, D]``, k ``[B, L, H, D]`` (as at ``cross_attn.hook_q`` / ``hook_k``), bias ``[B, 1, S, L]`` or None,
    selector ``[L, R]`` (1 where text token l belongs to group r, see :func:`span_selector`) and returns
    ``softmax(q·kᵀ/√D + bias)`` over all L text tokens, summed over the batch, the selected ``heads`` (default
    all) and each group's tokens, computed in float32 (q·kᵀ accumulated in float32 from q's and k's values).
    At most ``chunk_elements`` float32 logits exist at a time: whole heads (as many as evenly divide the heads),
    or runs of video tokens of one head when a head alone is larger. ``compile``: run the computation through
    ``torch.compile`` (default: when q is on CUDA). Each instance compiles once, at its first compiled call, and
    computes eagerly from then on if compiling fails there (with a warning). `AttentionMaps` owns one;
    `span_mass` is the module's shared one.
    """

    def __init__(self) -> None:
        self._run = CompiledOnce(_span_mass, "span_mass")

    @torch.no_grad()
    def __call__(self, q: Tensor, k: Tensor, bias: Optional[Tensor], selector: Tensor,
                 heads: Optional[Sequence[int]] = None, chunk_elements: int = CHUNK_ELEMENTS,
                 compile: Optional[bool] = None) -> Tensor:
        B, S, H, D = q.shape
        L = k.shape[1]
        if heads is not None and list(heads) != list(range(H)):
            index = torch.tensor(list(heads), device=q.device)
            q, k = q.index_select(2, index), k.index_select(2, index)
        head_chunk, token_chunk = chunk_sizes(q.shape[2], B, S, L, chunk_elements)
        sel = selector.to(q.device, torch.float32)
        return self._run(q.is_cuda if compile is None else compile, bool(compile), q, k, bias, sel, head_chunk,
                         token_chunk)


def _qk_logits(q: Tensor, k: Tensor) -> Tensor:
    """q ``[N, S, D]`` · k ``[N, L, D]``ᵀ -> float32 ``[N, S, L]``, accumulated in float32 from q's and k's values."""
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        try:
            return torch.bmm(q, k.transpose(1, 2), out_dtype=torch.float32)
        except (TypeError, RuntimeError):  # torch without bmm(out_dtype=): upcast first (same numbers)
            pass
    return torch.bmm(q.float(), k.float().transpose(1, 2))


def _span_mass(q: Tensor, k: Tensor, bias: Optional[Tensor], sel: Tensor, head_chunk: int, token_chunk: int
               ) -> Tensor:
    """:func:`span_mass` after head selection: ``head_chunk`` heads × ``token_chunk`` video tokens at a time."""
    B, S, h, D = q.shape
    L = k.shape[1]
    parts = []
    for s0 in range(0, S, token_chunk):
        c = min(token_chunk, S - s0)
        mass = None
        for h0 in range(0, h, head_chunk):
            n = min(head_chunk, h - h0)
            qc = q[:, s0:s0 + c, h0:h0 + n].transpose(1, 2).reshape(B * n, c, D)
            kc = k[:, :, h0:h0 + n].transpose(1, 2).reshape(B * n, L, D)
            logits = _qk_logits(qc, kc).view(B, n, c, L) * D ** -0.5
            if bias is not None:
                logits = logits + bias[:, :, s0:s0 + c].float()
            m = logits.softmax(-1).sum((0, 1)) @ sel  # [c, R]
            mass = m if mass is None else mass + m
        parts.append(mass)
    return torch.cat(parts).T.contiguous()  # [R, S]


span_mass = SpanMass()
"""The shared `SpanMass` (``span_mass(q, k, bias, selector)``), for hooks written by hand."""


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
