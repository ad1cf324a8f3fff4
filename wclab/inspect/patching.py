"""Activation patching between two runs: which activations carry the difference a condition makes?

Two sessions (or branches) with the same start noise and schedule differ in one condition — a trajectory moved,
a caption removed, β changed. :func:`patch` runs the **target** with the activations at chosen hook points and
steps replaced by the ones the **source** computes at the same step, per CFG branch (the source's prompt-branch
activation patches the target's prompt branch, its negative-branch activation the negative branch).
:func:`patch_sweep` patches one block (or one attention head) at a time and tabulates the effect on a metric you
pass in (trajectory-following error, token-mask overlap, pixel difference, ...).

>>> result = patch(clean, corrupted, ["blocks.12.cross_attn.hook_out"], steps=range(0, 10))
>>> result.latents                      # [1, 16, F', h, w], the patched target's final latents
>>> table = patch_sweep(clean, corrupted, metric=lambda r: float((r.latents - ref).norm()), over="blocks")

How (and why it is memory-safe): the source and the patched runs advance **in lockstep**, one denoising step at a
time. At each step the source steps first, with hooks that keep the named activations of that step only; then
each patched run steps with hooks that put them in; then they are dropped. Nothing is cached across steps, so
the memory held is one step's activations of the named hook points: with ``cache_device="cpu"`` (the default)
they wait in host memory and are moved to the accelerator one at a time, as the patched forward reaches each
hook point — the accelerator holds at most one extra activation at a time. Host memory: (number of names) ×
(CFG branches patched) × (one activation); at 480×832×81 a block's ``hook_out`` / ``cross_attn.hook_out`` is
``[1, 32760, 5120]`` bf16 = 335 MB, so one block on both branches is 0.67 GB and all 40 blocks 27 GB.
`patch_sweep` bounds it with ``group_size``: entries run in groups that share one source run, so a group of
``g`` blocks holds g blocks' activations (``group_size=1`` streams one block at a time at the price of one source
run per block; the default 8 costs 1/8 extra forward per entry and holds 5.4 GB for block outputs at full size).
``cache_device=None`` keeps the activations where the model made them (no copies; needs the memory there).

Heads: the per-head attention output before the out-projection is the hook point ``self_attn.hook_z`` /
``cross_attn.hook_z`` (``[B, S, heads, head_dim]``, added to the DiT for this); ``Patch(name, heads=[...])``
replaces only those heads. ``Patch(name, tokens=mask)`` replaces only some video tokens (e.g. an object's token
mask ``[F', h/2, w/2]``).
"""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Mapping, Optional, Sequence, Union

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from wclab.inspect.attention import AttentionMaps, InspectError
from wclab.sampler import Session

Branch = Literal["cond", "uncond"]
BRANCHES: tuple[Branch, ...] = ("cond", "uncond")


@dataclass(frozen=True, eq=False)
class Patch:
    """One activation to take from the source.

    name: a hook point as `Session.hooks` names it — ``high.<hook>``, ``low.<hook>`` or a bare ``<hook>`` for both
    experts (e.g. ``"blocks.12.cross_attn.hook_out"``); heads: head indices to replace (dim 2 of a
    ``[B, S, heads, head_dim]`` hook: ``hook_z``, ``hook_q``, ...), None for the whole tensor; tokens: bool mask of
    the video tokens to replace (dim 1), ``[S]`` or ``[F', h/2, w/2]`` (a token mask), None for all.
    """

    name: str
    heads: Optional[tuple[int, ...]] = None
    tokens: Optional[Tensor] = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise InspectError(f"Patch.name: expected a hook name, got {self.name!r}")
        if self.heads is not None:
            object.__setattr__(self, "heads", tuple(int(h) for h in self.heads))
            if not self.heads:
                raise InspectError(f"Patch.heads of {self.name!r}: expected at least one head index (or None)")
        if self.tokens is not None:
            tokens = torch.as_tensor(self.tokens)
            if tokens.dtype != torch.bool:
                raise InspectError(f"Patch.tokens of {self.name!r}: expected a bool mask, got {tokens.dtype}")
            object.__setattr__(self, "tokens", tokens.reshape(-1))

    def apply(self, x: Tensor, source: Tensor) -> Tensor:
        """``x`` with the selected part replaced by ``source`` (same shape; moved to x's device and dtype)."""
        source = source.to(x.device, x.dtype)
        if source.shape != x.shape:
            raise InspectError(f"patching {self.name!r}: the source's activation has shape {list(source.shape)}, the "
                               f"target's {list(x.shape)} (the runs must have the same size)")
        if self.heads is None and self.tokens is None:
            return source
        take = torch.ones([1] * x.ndim, dtype=torch.bool, device=x.device)
        if self.tokens is not None:
            if x.ndim < 2 or x.shape[1] != self.tokens.numel():
                raise InspectError(f"patching {self.name!r}: tokens mask has {self.tokens.numel()} entries, the "
                                   f"activation {list(x.shape)} has {x.shape[1] if x.ndim > 1 else 0} on dim 1")
            take = take & self.tokens.to(x.device).reshape([1, -1] + [1] * (x.ndim - 2))
        if self.heads is not None:
            if x.ndim != 4:
                raise InspectError(f"patching {self.name!r}: heads need a [B, S, heads, head_dim] hook point "
                                   f"(hook_z, hook_q, hook_k, hook_v), got shape {list(x.shape)}")
            bad = [h for h in self.heads if not 0 <= h < x.shape[2]]
            if bad:
                raise InspectError(f"patching {self.name!r}: heads {bad} outside 0..{x.shape[2] - 1}")
            sel = torch.zeros(x.shape[2], dtype=torch.bool, device=x.device)
            sel[list(self.heads)] = True
            take = take & sel.reshape(1, 1, -1, 1)
        return torch.where(take, source, x)


PatchSpec = Union[str, Patch]


@dataclass
class PatchResult:
    """A run made by :func:`patch` (or a baseline of :func:`patch_sweep`).

    session: the run itself — a branch of the target, stepped to the end (or ``until``); its ``history`` holds
    what ``Settings.record`` keeps. source: the source run it took activations from, stepped alongside.
    patches: what was patched (empty for a baseline); steps: the patched steps (None: all). maps: the run's
    `AttentionMaps` when the sweep was asked for them, else None.
    """

    session: Session
    source: Optional[Session]
    patches: tuple[Patch, ...] = ()
    steps: Optional[tuple[int, ...]] = None
    maps: Optional[AttentionMaps] = field(default=None, repr=False)

    @property
    def latents(self) -> Tensor:
        """The run's final latents ``[1, 16, F', h, w]``."""
        return self.session.latents

    @property
    def x0(self) -> Optional[Tensor]:
        """The last step's predicted clean latents ``[1, 16, F', h, w]`` (None when not recorded)."""
        h = self.session.history
        return h[-1].x0 if h else None


def as_patches(names: Union[PatchSpec, Iterable[PatchSpec]]) -> list[Patch]:
    """``names`` (a hook name, a `Patch`, or a list of them) as a list of `Patch`."""
    if isinstance(names, (str, Patch)):
        names = [names]
    out = []
    for n in names:
        if isinstance(n, str):
            out.append(Patch(n))
        elif isinstance(n, Patch):
            out.append(n)
        else:
            raise InspectError(f"names: expected hook names or Patch objects, got {type(n).__name__}")
    return out


def _check_runs(source: Session, target: Session, branches: Sequence[str]) -> None:
    if source.step_index != target.step_index:
        raise InspectError(f"source and target must be at the same step: source at {source.step_index}, "
                           f"target at {target.step_index}")
    if source.num_steps != target.num_steps or not torch.equal(source.scheduler.timesteps.cpu(),
                                                                target.scheduler.timesteps.cpu()):
        raise InspectError("source and target must share the step schedule (steps, shift, step_list)")
    if source.settings.boundary != target.settings.boundary:
        raise InspectError(f"source and target must switch experts at the same step: boundary "
                           f"{source.settings.boundary} vs {target.settings.boundary}")
    if tuple(source.latents.shape) != tuple(target.latents.shape):
        raise InspectError(f"source and target latents differ in shape: {list(source.latents.shape)} vs "
                           f"{list(target.latents.shape)}")
    if "uncond" in branches and target.settings.cfg != 1.0 and source.settings.cfg == 1.0:
        raise InspectError("the target runs a negative (uncond) branch but the source does not (cfg 1): "
                           "patch branches=('cond',) or give the source cfg != 1")


def _branches(branches: Union[str, Iterable[str]]) -> tuple[str, ...]:
    out = (branches,) if isinstance(branches, str) else tuple(branches)
    bad = [b for b in out if b not in BRANCHES]
    if bad or not out:
        raise InspectError(f"branches: expected 'cond', 'uncond' or both, got {branches!r}")
    return out


def _steps(steps: Optional[Iterable[int]], num_steps: int) -> Optional[frozenset]:
    if steps is None:
        return None
    out = frozenset(int(i) for i in steps)
    bad = sorted(i for i in out if not 0 <= i < num_steps)
    if bad:
        raise InspectError(f"steps: {bad} outside 0..{num_steps - 1}")
    return out


def _lockstep(source: Session, runs: Sequence[tuple[Session, Sequence[Patch]]], steps: Optional[frozenset],
              branches: tuple[str, ...], until: int, cache_device: Optional[str],
              attention: Optional[Mapping[str, Any]] = None, progress: bool = True, desc: str = "patching"
              ) -> tuple[Optional[AttentionMaps], list[Optional[AttentionMaps]]]:
    """Step ``source`` and every run together until ``until`` steps are done; each run's patches take the
    source's activation of the same step, CFG branch, expert and hook point. Returns the AttentionMaps of the
    source and of each run (when ``attention`` is given, else None)."""
    held: dict[tuple[str, str, str], Tensor] = {}  # (branch, expert, hook) -> this step's source activation

    def wanted(ctx) -> bool:
        return ctx.branch in branches and (steps is None or ctx.step in steps)

    def record(x: Tensor, hook) -> None:
        ctx = hook.ctx
        if ctx is not None and ctx.session is source and wanted(ctx):
            x = x.detach()
            held[(ctx.branch, ctx.expert, hook.name)] = x.to(cache_device) if cache_device else x

    def putter(p: Patch):
        def put(x: Tensor, hook) -> Optional[Tensor]:
            ctx = hook.ctx
            if ctx is None or not wanted(ctx):
                return None
            src = held.get((ctx.branch, ctx.expert, hook.name))
            if src is None:
                raise InspectError(f"the source computed no {ctx.expert}.{hook.name} on the {ctx.branch!r} branch at "
                                   f"step {ctx.step} (different experts or CFG branches?)")
            return p.apply(x, src)
        return put

    names = list(dict.fromkeys(p.name for _, patches in runs for p in patches))
    maps: list[Optional[AttentionMaps]] = []
    with ExitStack() as stack:
        stack.enter_context(source.hooks([(n, record) for n in names]))
        source_maps = stack.enter_context(AttentionMaps(source, **dict(attention))) if attention is not None else None
        for run, patches in runs:
            stack.enter_context(run.hooks([(p.name, putter(p)) for p in patches]))
            maps.append(stack.enter_context(AttentionMaps(run, **dict(attention))) if attention is not None else None)
        n = until - source.step_index
        for _ in tqdm(range(n), desc=desc, disable=not progress or n <= 0, leave=False):
            held.clear()
            source.step()
            for run, _ in runs:
                run.step()
        held.clear()
    return source_maps, maps


def _quiet_branch(s: Session, record: Optional[str] = None) -> Session:
    b = s.branch()
    b.progress = False
    if record is not None:
        b.update(record=record)
    return b


def patch(source: Session, target: Session, names: Union[PatchSpec, Iterable[PatchSpec]],
          steps: Optional[Iterable[int]] = None, branches: Union[Branch, Iterable[Branch]] = BRANCHES,
          until: Optional[int] = None, cache_device: Optional[str] = "cpu", progress: bool = True) -> PatchResult:
    """Run ``target`` with the activations at ``names`` and ``steps`` replaced by the ones ``source`` computes.

    source, target: sessions at the same step with the same schedule and latent size (typically branches of
    one prepared session, so they share the start noise, with different conditions). Neither is changed: both
    are branched and the branches run in lockstep from their step to ``until`` (default: the end).
    names: hook names (``high.<hook>`` / ``low.<hook>`` / bare ``<hook>`` for both experts) or `Patch` objects
    (a subset of heads or tokens); an empty list patches nothing (the result is the target's own run).
    steps: step indices to patch (None: every step). branches: the CFG branches to patch, each from the same
    branch of the source. cache_device: where the source's activations wait for the patched forward ("cpu":
    host memory, see the module docstring for the peak; None: where the model made them).
    Returns a `PatchResult` (``.latents``, ``.x0``, ``.session``, ``.source``).
    """
    patches = as_patches(names)
    br = _branches(branches)
    _check_runs(source, target, br)
    step_set = _steps(steps, target.num_steps)
    until = target.num_steps if until is None else until
    if not target.step_index <= until <= target.num_steps:
        raise InspectError(f"until: expected {target.step_index}..{target.num_steps}, got {until}")
    for p in patches:  # a typo fails before any compute
        with target.hooks([(p.name, lambda x, hook: None)]):
            pass
    src, run = _quiet_branch(source), _quiet_branch(target)
    _lockstep(src, [(run, patches)], step_set, br, until, cache_device, progress=progress)
    return PatchResult(run, src, tuple(patches), None if step_set is None else tuple(sorted(step_set)))


# ------------------------------------------------------------------------------------------------ sweeps
Metric = Callable[[PatchResult], float]


@dataclass(frozen=True)
class _Entry:
    block: int
    head: Optional[int]
    patch: Patch


def patch_sweep(source: Session, target: Session, metric: Metric, over: Literal["blocks", "heads"] = "blocks",
                blocks: Optional[Iterable[int]] = None, heads: Optional[Iterable[int]] = None,
                hook: str = "cross_attn.hook_out", attention: Literal["cross_attn", "self_attn"] = "cross_attn",
                steps: Optional[Iterable[int]] = None, expert: Optional[Literal["high", "low"]] = None,
                branches: Union[Branch, Iterable[Branch]] = BRANCHES, group_size: Optional[int] = 8,
                cache_device: Optional[str] = "cpu", record: Optional[str] = "none",
                attention_maps: Optional[Mapping[str, Any]] = None, progress: bool = True) -> pd.DataFrame:
    """Patch one block (or one head) at a time from ``source`` into ``target`` and tabulate ``metric``.

    over="blocks": one entry per block b of ``blocks`` (default all), patching ``blocks.{b}.{hook}`` (default
    the cross-attention output, ``cross_attn.hook_out``; e.g. ``"hook_out"`` for the residual stream,
    ``"self_attn.hook_out"``). over="heads": one entry per (block, head) of ``blocks`` × ``heads``, patching
    that head of ``blocks.{b}.{attention}.hook_z`` (the head's attention output before the out-projection).
    steps, branches: as in :func:`patch`; expert: "high" / "low" patches only that expert's blocks (None: both).
    metric: ``metric(result: PatchResult) -> float`` on a finished run (``result.latents``,
    ``result.session.decode()`` / ``.preview()``, ``result.maps`` when ``attention_maps`` is given: keyword
    arguments for the `AttentionMaps` attached to every run, e.g. ``{}`` for the defaults). It is also taken on
    the source and the unpatched target, the baselines.

    Memory and time: entries run in lockstep groups of ``group_size`` (None: all at once) sharing one source run
    (see the module docstring for what a group holds); ``record`` is the runs' ``Settings.record`` ("none" by
    default: 1 + group_size histories of full-size tensors would not fit; None keeps the target's).

    Returns a tidy DataFrame, one row per entry: block, head (over="heads" only), hook (the patched name), metric,
    effect (metric − the target's metric), restored (effect / (the source's metric − the target's): 1 = the patch
    alone gives the source's value, NaN when source and target agree), source_metric, target_metric.
    """
    if over not in ("blocks", "heads"):
        raise InspectError(f"over: expected 'blocks' or 'heads', got {over!r}")
    if expert not in (None, "high", "low"):
        raise InspectError(f"expert: expected 'high', 'low' or None, got {expert!r}")
    if attention not in ("cross_attn", "self_attn"):
        raise InspectError(f"attention: expected 'cross_attn' or 'self_attn', got {attention!r}")
    if group_size is not None and group_size < 1:
        raise InspectError(f"group_size: expected a positive number or None, got {group_size}")
    if source.step_index != 0 or target.step_index != 0:
        raise InspectError("patch_sweep needs a source and target that have not stepped yet (step 0)")
    br = _branches(branches)
    _check_runs(source, target, br)
    step_set = _steps(steps, target.num_steps)
    cfg = target.dit(expert or "high").cfg
    blocks = _indices(blocks, cfg.num_layers, "blocks")
    prefix = f"{expert}." if expert else ""
    if over == "blocks":
        entries = [_Entry(b, None, Patch(f"{prefix}blocks.{b}.{hook}")) for b in blocks]
    else:
        heads = _indices(heads, cfg.num_heads, "heads")
        entries = [_Entry(b, h, Patch(f"{prefix}blocks.{b}.{attention}.hook_z", heads=(h,))) for b in blocks
                   for h in heads]
    with target.hooks([(entries[0].patch.name, lambda x, hook: None)]):  # a bad hook name fails now
        pass
    size = len(entries) if group_size is None else group_size
    groups = [entries[i:i + size] for i in range(0, len(entries), size)]
    base = None
    rows = []
    steps_t = None if step_set is None else tuple(sorted(step_set))
    bar = tqdm(total=len(entries), desc=f"patch sweep over {over}", disable=not progress)
    for gi, group in enumerate(groups):
        src = _quiet_branch(source, record)
        runs = [(_quiet_branch(target, record), [e.patch]) for e in group]
        if gi == 0:  # the unpatched target runs along with the first group
            runs.append((_quiet_branch(target, record), []))
        src_maps, maps = _lockstep(src, runs, step_set, br, target.num_steps, cache_device, attention_maps,
                                   progress=False)
        results = [PatchResult(r, src, tuple(p), steps_t, m) for (r, p), m in zip(runs, maps)]
        if gi == 0:
            base = (float(metric(PatchResult(src, None, (), None, src_maps))), float(metric(results[-1])))
            results = results[:-1]
        for e, r in zip(group, results):
            rows.append(dict(block=e.block, **({} if over == "blocks" else {"head": e.head}), hook=e.patch.name,
                             metric=float(metric(r))))
            bar.update()
    bar.close()
    table = pd.DataFrame(rows)
    source_metric, target_metric = base
    gap = source_metric - target_metric
    table["effect"] = table.metric - target_metric
    table["restored"] = table.effect / gap if gap != 0 else np.nan
    table["source_metric"], table["target_metric"] = source_metric, target_metric
    return table


def _indices(values: Optional[Iterable[int]], n: int, name: str) -> list[int]:
    out = list(range(n)) if values is None else [int(v) for v in values]
    bad = [v for v in out if not 0 <= v < n]
    if bad or not out:
        raise InspectError(f"{name}: expected indices in 0..{n - 1}, got {out}")
    return out


def plot_patch_sweep(table: pd.DataFrame, value: str = "restored", ax: Optional[plt.Axes] = None,
                     title: Optional[str] = None) -> plt.Figure:
    """Bars per block (a blocks sweep) or a block × head heatmap (a heads sweep) of ``value`` (a column of
    :func:`patch_sweep`'s table: "restored", "effect" or "metric")."""
    if value not in table.columns:
        raise InspectError(f"value: expected a column of the sweep table {list(table.columns)}, got {value!r}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 2.8))
    title = title or f"patching {value}"
    if "head" in table.columns:
        grid = table.pivot(index="block", columns="head", values=value)
        im = ax.imshow(grid.to_numpy(float), aspect="auto", cmap="RdBu_r", interpolation="nearest")
        lim = np.nanmax(np.abs(grid.to_numpy(float))) if np.isfinite(grid.to_numpy(float)).any() else 1.0
        im.set_clim(-lim or -1, lim or 1)
        ax.set_xticks(range(grid.shape[1]), grid.columns)
        ax.set_yticks(range(grid.shape[0]), grid.index)
        ax.set_xlabel("head")
        ax.set_ylabel("block")
        ax.figure.colorbar(im, ax=ax, label=value)
    else:
        ax.bar(table.block.astype(str), table[value])
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlabel("block")
        ax.set_ylabel(value)
    ax.set_title(title)
    return ax.figure
