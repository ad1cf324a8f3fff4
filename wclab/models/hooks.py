"""TransformerLens-style hook points: see or replace any named tensor inside a model while it runs.

A model places a `HookPoint` (an identity module) at every tensor worth seeing; its name is its path in the
module tree (``"blocks.12.cross_attn.hook_probs"``). Hook functions receive ``(tensor, hook)`` and return
``None`` (only look) or a replacement tensor. ``hook.ctx`` is the read-only `HookContext` of the forward that
is running (step, timestep, sigma, expert, CFG branch, session) when a `wclab.sampler.Session` runs it, and
None for a bare model call. A hook point without hooks returns its input unchanged, so
hooks cost nothing unless used. Opt-in hook points mark tensors the model only materialises when a hook is
attached (e.g. cross-attention probabilities, which the fast attention kernels never form).

    with model.hooks([("blocks.0.cross_attn.hook_bias", lambda b, hook: torch.zeros_like(b))]):
        out = model(x, t, ctx, bias)
    out, cache = model.run_with_cache(x, t, ctx, bias, names_filter=lambda n: n.endswith("hook_out"))
    with session.hooks([("blocks.0.hook_out", lambda x, hook: print(hook.ctx.step, hook.ctx.branch))]): ...
"""
from __future__ import annotations

import difflib
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from wclab.errors import HookError

HookFn = Callable[[Tensor, "HookPoint"], Optional[Tensor]]
NamesFilter = Union[str, Iterable[str], Callable[[str], bool]]


def _unknown_name_error(name: str, known: Iterable[str], what: str = "hook point") -> HookError:
    known = list(known)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else f" ({len(known)} {what}s exist.)"
    return HookError(f"unknown {what} {name!r}.{hint}")


@dataclass(frozen=True)
class HookContext:
    """What a model forward is computing, for the hooks that run inside it (read-only).

    step: denoising step index (0-based); timestep: 0..1000; sigma: noise level of the step's input; expert:
    "high" | "low"; branch: the CFG branch this forward (under CFG parallelism: this rank) computes, "cond" for
    the prompt and "uncond" for the negative prompt; session: the `wclab.sampler.Session` running the forward —
    the session itself, never a parent it was branched from.
    """

    step: int
    timestep: float
    sigma: float
    expert: Literal["high", "low"]
    branch: Literal["cond", "uncond"]
    session: Any = None


_CONTEXT: ContextVar[Optional[HookContext]] = ContextVar("wclab_hook_context", default=None)


def current_hook_context() -> Optional[HookContext]:
    """The `HookContext` of the forward running now (None outside a `hook_context` block)."""
    return _CONTEXT.get()


@contextmanager
def hook_context(ctx: Optional[HookContext]) -> Iterator[Optional[HookContext]]:
    """Make ``ctx`` the context that hooks see (``hook.ctx``) inside the block; restores the previous one."""
    token = _CONTEXT.set(ctx)
    try:
        yield ctx
    finally:
        _CONTEXT.reset(token)


class HookPoint(nn.Module):
    """Identity module that runs its hooks on the tensor passing through.

    ``opt_in`` marks an expensive tensor: the model computes it only while `active` (a hook is attached),
    and `HookedModule.run_with_cache` skips it unless asked for by name or filter.
    """

    def __init__(self, opt_in: bool = False):
        super().__init__()
        self.name = ""  # set by HookedModule.setup_hooks from the module tree
        self.opt_in = opt_in
        self._hooks: list[HookFn] = []

    @property
    def ctx(self) -> Optional[HookContext]:
        """The `HookContext` of the forward that is running (None for a bare model call): read it inside hooks
        instead of mutable session state such as ``session.step_index``."""
        return _CONTEXT.get()

    @property
    def active(self) -> bool:
        """True while at least one hook is attached."""
        return bool(self._hooks)

    def add_hook(self, fn: HookFn) -> Callable[[], None]:
        """Attach ``fn(tensor, hook) -> Tensor | None``; returns a function that removes it."""
        self._hooks.append(fn)

        def remove() -> None:
            if fn in self._hooks:
                self._hooks.remove(fn)

        return remove

    def remove_hooks(self) -> None:
        self._hooks.clear()

    def forward(self, x: Tensor) -> Tensor:
        if not self._hooks:
            return x
        for fn in list(self._hooks):
            out = fn(x, self)
            if out is not None:
                if not isinstance(out, Tensor):
                    raise HookError(f"hook on {self.name!r} returned {type(out).__name__}; return a Tensor or None")
                x = out
        return x

    def extra_repr(self) -> str:
        return f"name={self.name!r}" + (", opt_in=True" if self.opt_in else "")


class ActivationCache(Mapping[str, Tensor]):
    """Read-only dict of hook name -> tensor, in the order the model produced them."""

    def __init__(self, tensors: Optional[Mapping[str, Tensor]] = None):
        self._tensors = dict(tensors or {})

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._tensors:
            raise _unknown_name_error(name, self._tensors, what="cached activation")
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def to(self, device: Union[str, torch.device]) -> "ActivationCache":
        """A new cache with every tensor moved to ``device``."""
        return ActivationCache({k: v.to(device) for k, v in self._tensors.items()})

    def cpu(self) -> "ActivationCache":
        return self.to("cpu")

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in list(self._tensors.items())[:6])
        more = f", ... (+{len(self) - 6})" if len(self) > 6 else ""
        return f"ActivationCache({shapes}{more})"


class HookedModule(nn.Module):
    """Base for models with hook points. Subclasses call `setup_hooks()` at the end of ``__init__``."""

    def setup_hooks(self) -> None:
        """Name every `HookPoint` after its path in the module tree."""
        self._hook_points: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self._hook_points[name] = module

    def hook_points(self) -> dict[str, HookPoint]:
        """All hook points by name, in module-tree order."""
        if not hasattr(self, "_hook_points"):
            self.setup_hooks()
        return dict(self._hook_points)

    def resolve_hook_points(self, names: NamesFilter) -> list[HookPoint]:
        """Hook points selected by a name, a list of names, or a predicate on names (must select at least one)."""
        points = self.hook_points()
        if isinstance(names, str):
            names = [names]
        if callable(names):
            chosen = [hp for name, hp in points.items() if names(name)]
            if not chosen:
                raise HookError("names_filter matched no hook point; list them with hook_points()")
            return chosen
        chosen = []
        for name in names:
            if name not in points:
                raise _unknown_name_error(name, points)
            chosen.append(points[name])
        return chosen

    def add_hook(self, names: NamesFilter, fn: HookFn) -> Callable[[], None]:
        """Attach ``fn`` to the selected hook points until the returned function is called (or `reset_hooks`)."""
        removers = [hp.add_hook(fn) for hp in self.resolve_hook_points(names)]

        def remove() -> None:
            for r in removers:
                r()

        return remove

    def reset_hooks(self) -> None:
        """Remove every hook from every hook point."""
        for hp in self.hook_points().values():
            hp.remove_hooks()

    @contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[NamesFilter, HookFn]] = ()):
        """Attach ``[(name_or_filter, fn), ...]`` for the ``with`` body; always removed afterwards."""
        removers: list[Callable[[], None]] = []
        try:
            for names, fn in fwd_hooks:
                removers.append(self.add_hook(names, fn))
            yield self
        finally:
            for remove in reversed(removers):
                remove()

    def run_with_cache(self, *args, names_filter: Optional[NamesFilter] = None,
                       device: Union[str, torch.device, None] = None, **kwargs):
        """Run ``self(*args, **kwargs)`` and return ``(output, ActivationCache)``.

        ``names_filter``: a name, list of names or predicate; None caches every hook point except opt-in ones.
        Cached tensors are detached; ``device`` moves them (e.g. "cpu") as they are produced. A hook point that
        fires several times in one call keeps its last value.
        """
        if names_filter is None:
            points = [hp for hp in self.hook_points().values() if not hp.opt_in]
        else:
            points = self.resolve_hook_points(names_filter)
        cache: dict[str, Tensor] = {}

        def save(x: Tensor, hook: HookPoint) -> None:
            x = x.detach()
            cache[hook.name] = x.to(device) if device is not None else x

        removers = [hp.add_hook(save) for hp in points]
        try:
            out = self(*args, **kwargs)
        finally:
            for remove in removers:
                remove()
        return out, ActivationCache(cache)
