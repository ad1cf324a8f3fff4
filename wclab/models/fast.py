"""Opt-in fast paths for the DiT on a GPU. Nothing here changes a model unless called; all of it runs on CPU too.

  speed_up(model)              float32 RoPE (no float64/complex tensors) + ``torch.compile`` of every block;
                               the same bf16 computation, fused: equal to eager up to rounding, not bitwise
                               (`reset_speed_up` undoes it)
  sdpa_priority(...)           prefer given SDPA kernels (e.g. cuDNN first) inside a ``with`` block
  quantize_fp8(model)          fast mode: block Linears with float8 (e4m3) weights and per-token float8
                               activations (``torch.nn.functional.scaled_mm``); halves weight memory, changes
                               outputs slightly
  BlockOffload(model, device)  low-VRAM mode: block weights stay in (pinned) CPU memory and are streamed to
                               ``device`` one block ahead of the computation
  StepCache(model, policy)     fast mode: skip blocks on steps where the computation barely changes, by a
                               policy: FixedCache(every=2), FirstBlockCache (default), EasyCache (adaptive,
                               training-free); `step_caches(models, policy)` covers both experts
  relative_error(a, b)         max / mean / L2 relative differences, for reporting a fast path's deviation

Per-object cross-attention maps (with or without these fast paths) are `wclab.inspect.AttentionMaps`.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from wclab.errors import WclabError
from wclab.models.dit import DiT
from wclab.models.hooks import current_hook_context

Device = Union[str, torch.device]
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8 e4m3fn value


class FastPathError(WclabError, ValueError):
    """A fast-path helper got something it cannot work with (the message says what and why)."""


# ---------------------------------------------------------------------------------------------- compiled bf16 path
def speed_up(model: DiT, compile: bool = True, **compile_kwargs) -> DiT:
    """Make ``model`` faster without changing what it computes beyond rounding (in place; returns it).

    RoPE rotates in float32 from a cached (cos, sin) table instead of float64 complex numbers, and each block
    is wrapped by ``torch.compile`` (``compile_kwargs``, e.g. ``backend="eager"`` to trace without Inductor),
    which fuses norms, modulation, RoPE and gates. Inductor is told to keep eager's bf16 rounding between fused
    ops (``emulate_precision_casts``), so graph breaks (hooks that run eagerly, e.g. attention-map capture) move
    outputs by rounding only. Not bitwise eager: fused kernels round differently (measured deviation:
    ``bench/RESULTS.md``). Hook points keep working (a hook attached later triggers one
    recompilation). All blocks share one compiled graph. Each block's ``forward`` becomes the compiled one (an
    instance attribute; module hooks registered on a block still run eagerly around it).
    """
    model.rope_dtype = torch.float32
    if compile:
        if compile_kwargs.get("backend", "inductor") == "inductor":
            compile_kwargs["options"] = {"emulate_precision_casts": True, **compile_kwargs.get("options", {})}
        for block in model.blocks:
            block.forward = torch.compile(type(block).forward.__get__(block), **compile_kwargs)
    return model


def reset_speed_up(model: DiT) -> DiT:
    """Undo `speed_up`: float64 RoPE and eager blocks (in place; returns the model)."""
    model.rope_dtype = torch.float64
    for block in model.blocks:
        vars(block).pop("forward", None)  # back to the class's forward
    return model


@contextmanager
def sdpa_priority(*backends: str) -> Iterator[None]:
    """Inside the block, torch's SDPA tries these kernels first, in order ("cudnn", "flash", "efficient",
    "math"); it still falls back to any other kernel that supports the call. Compiled code keeps the kernel
    chosen when it was compiled."""
    names = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    unknown = [b for b in backends if b not in names]
    if unknown:
        raise FastPathError(f"sdpa_priority: unknown kernel(s) {unknown}; expected some of {list(names)}")
    order = [names[b] for b in backends] + [b for k, b in names.items() if k not in backends]
    with sdpa_kernel(order, set_priority=True):
        yield


# ---------------------------------------------------------------------------------------------- fp8 fast mode
def _quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """[M, K] -> (float8 [M, K], float32 scale [M, 1]) with x ≈ q · scale, one scale per row (amax / 448)."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def _fp8_matmul(xq: Tensor, x_scale: Tensor, w: Tensor, w_scale: Tensor, out_dtype: torch.dtype) -> Tensor:
    """(xq · x_scale) @ (w · w_scale)ᵀ on float8 tensor cores through ``torch.nn.functional.scaled_mm`` (row-wise
    recipes): xq [m, k] float8 with x_scale [m, 1] float32 (per row), w [n, k] float8 with w_scale [1, n] float32
    (per output) -> [m, n] ``out_dtype``."""
    rows = F.ScalingType.RowWise
    return F.scaled_mm(xq, w.t(), x_scale, rows, w_scale, rows, output_dtype=out_dtype)


class Fp8Linear(nn.Module):
    """Drop-in for an ``nn.Linear``: weight stored as float8 e4m3 [out, in] with one float32 scale per output
    row; inputs quantised per token (row) on the fly. On CUDA the product is `_fp8_matmul` (float8 tensor cores,
    float32 accumulation); elsewhere the same quantised numbers are multiplied in float32 (slow, for tests).
    Output dtype = the original weight's dtype. Inference only."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach()
        q, scale = _quantize_rows(w)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.out_dtype = w.dtype
        self.register_buffer("weight", q)  # [out, in] float8
        self.register_buffer("weight_scale", scale.reshape(1, -1).contiguous())  # [1, out] float32
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        m = x2.shape[0]
        if x2.is_cuda and m % 16:  # scaled_mm wants row counts that are multiples of 16
            x2 = F.pad(x2, (0, 0, 0, 16 - m % 16))
        xq, x_scale = _quantize_rows(x2)
        if xq.is_cuda:
            y = _fp8_matmul(xq, x_scale, self.weight, self.weight_scale, self.out_dtype)[:m]
        else:
            w = self.weight.float() * self.weight_scale.reshape(-1, 1)
            y = ((xq.float() * x_scale) @ w.t()).to(self.out_dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight=float8_e4m3fn"


FP8_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
               "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


def quantize_fp8(model: DiT) -> DiT:
    """Replace every block's Linear layers (`FP8_LINEARS`) by `Fp8Linear`, one at a time so peak memory grows
    by one layer only (in place; returns the model). Embeddings, modulation and the head stay as they are.
    The state dict then holds float8 weights + scales, not the released format. On CUDA the GEMM is
    ``torch.nn.functional.scaled_mm``: a torch without it is refused here, before any weight changes."""
    if next(model.parameters()).is_cuda and not hasattr(F, "scaled_mm"):
        raise FastPathError(f"quantize_fp8 on CUDA needs torch.nn.functional.scaled_mm, which torch "
                            f"{torch.__version__} lacks: install a newer torch (2.11 has it)")
    for block in model.blocks:
        for path in FP8_LINEARS:
            parent_path, _, name = path.rpartition(".")
            parent = block.get_submodule(parent_path)
            linear = getattr(parent, name) if not name.isdigit() else parent[int(name)]
            if not isinstance(linear, nn.Linear):
                continue
            fp8 = Fp8Linear(linear)
            if name.isdigit():
                parent[int(name)] = fp8
            else:
                setattr(parent, name, fp8)
            del linear
    return model


# ---------------------------------------------------------------------------------------------- low-VRAM mode
class BlockOffload:
    """Low-VRAM mode: keep every block's weights in CPU memory (pinned when CUDA is available) and stream them.

    Everything except the blocks moves to ``device``. Two weight slots of one block each live on ``device``;
    before block i runs, its weights are swapped into a slot, and block i+1's copy starts on a side CUDA stream,
    so copying overlaps computing. GPU weight memory: non-block parts + 2 blocks (~1.4 GB at full size, bf16).
    Outputs equal the resident model's bitwise (same kernels, same weights). ``remove()`` ends it, leaving the
    weights in CPU memory, or on ``device`` with ``to_device=True``.
    """

    def __init__(self, model: DiT, device: Device = "cuda", pin: Optional[bool] = None):
        self.model, self.device = model, torch.device(device)
        self.cuda = self.device.type == "cuda"
        pin = self.cuda if pin is None else pin
        for name, child in model.named_children():
            if name != "blocks":
                child.to(self.device)
        self.tensors: list[list[Tensor]] = []  # per block: its parameters and buffers (module attributes)
        self.host: list[list[Tensor]] = []  # per block: their CPU copies
        for block in model.blocks:
            ts = list(block.parameters()) + [b for b in block.buffers()]
            self.tensors.append(ts)
            host = []
            for t in ts:
                h = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=pin)
                h.copy_(t.data)
                t.data = h
                host.append(h)
            self.host.append(host)
        self.slots = [[torch.empty_like(h, device=self.device) for h in self.host[0]] for _ in range(2)] \
            if self.host else []
        shapes = [[(h.shape, h.dtype) for h in host] for host in self.host]
        if any(s != shapes[0] for s in shapes):
            raise FastPathError("BlockOffload needs blocks with identical parameter shapes")
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.ready = [None, None]  # CUDA events: slot filled
        self.free = [None, None]  # CUDA events: slot no longer read by the compute stream
        self.loaded = [-1, -1]  # block index held by each slot
        self.handles = []
        n = len(model.blocks)
        for i, block in enumerate(model.blocks):
            self.handles.append(block.register_forward_pre_hook(lambda m, a, i=i: self._before(i)))
            self.handles.append(block.register_forward_hook(lambda m, a, o, i=i, n=n: self._after(i, n)))

    def _fetch(self, i: int) -> None:
        """Start copying block i's weights into slot i % 2."""
        s = i % 2
        if self.loaded[s] == i:
            return
        if not self.cuda:
            for dst, src in zip(self.slots[s], self.host[i]):
                dst.copy_(src)
        else:
            with torch.cuda.stream(self.stream):
                if self.free[s] is not None:
                    self.stream.wait_event(self.free[s])
                for dst, src in zip(self.slots[s], self.host[i]):
                    dst.copy_(src, non_blocking=True)
                self.ready[s] = torch.cuda.Event()
                self.ready[s].record(self.stream)
        self.loaded[s] = i

    def _before(self, i: int) -> None:
        self._fetch(i)
        s = i % 2
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_event(self.ready[s])
        for t, slot in zip(self.tensors[i], self.slots[s]):
            t.data = slot
        nxt = (i + 1) % len(self.tensors)
        if nxt % 2 != s:  # (an odd block count wraps onto the slot in use: fetch it when needed instead)
            self._fetch(nxt)

    def _after(self, i: int, n: int) -> None:
        s = i % 2
        for t, h in zip(self.tensors[i], self.host[i]):
            t.data = h
        if self.cuda:
            self.free[s] = torch.cuda.Event()
            self.free[s].record(torch.cuda.current_stream(self.device))

    def remove(self, to_device: bool = False) -> DiT:
        """Remove the hooks and the slots; weights stay in CPU memory unless ``to_device``. Returns the model."""
        for h in self.handles:
            h.remove()
        if self.cuda:
            self.stream.synchronize()  # a prefetch may still be writing into a slot
        self.handles, self.slots = [], []
        if to_device:
            for ts in self.tensors:
                for t in ts:
                    t.data = t.data.to(self.device)
        return self.model


# ---------------------------------------------------------------------------------------------- step caching
@dataclass(frozen=True)
class FixedCache:
    """Fixed alternation: of every ``every`` forwards of a stream, the first runs all blocks and the next
    ``every - 1`` run only the first blocks and add the deep blocks' residual stored by it. ``FixedCache(2)``
    (every other forward reused) is the pre-policy ``StepCache(threshold=inf, max_reuse=1)``."""

    every: int = 2

    def __post_init__(self):
        if not (isinstance(self.every, int) and self.every >= 1):
            raise FastPathError(f"FixedCache: every must be an int >= 1, got {self.every!r}")


@dataclass(frozen=True)
class FirstBlockCache:
    """Reuse the deep blocks' residual while the first blocks' output changed little: mean|Δ| / mean|stored|
    < ``threshold`` since the stream's last computed forward, at most ``max_reuse`` times in a row
    (First-Block Cache, as in ParaAttention; the default policy of ``StepCache(model)``)."""

    threshold: float = 0.05
    max_reuse: int = 1

    def __post_init__(self):
        if not self.threshold >= 0:
            raise FastPathError(f"FirstBlockCache: threshold must be >= 0, got {self.threshold!r}")
        if not (isinstance(self.max_reuse, int) and self.max_reuse >= 0):
            raise FastPathError(f"FirstBlockCache: max_reuse must be an int >= 0, got {self.max_reuse!r}")


@dataclass(frozen=True)
class EasyCache:
    """Training-free runtime-adaptive caching after EasyCache (Zhou et al., "Less is Enough: Training-Free Video
    Diffusion Acceleration via Runtime-Adaptive Caching", 2025; github.com/H-EmbodVis/EasyCache).

    A skipped forward runs no block at all: it returns its input latents plus the transformation ``out - in``
    stored at the stream's last computed forward (``in`` = the first ``out_dim`` input channels, the noisy
    latents of `wclab.sampler.Session.model_input`). Whether to skip is decided from the input alone. At each
    computed forward after the first the transformation rate ``k = mean|out - out'| / mean|in - in'|`` between
    it and the previous computed forward is updated; on the following forwards the predicted relative output
    change ``k · mean|in - in_prev| / mean|out'|`` (``in_prev``: the previous forward's input, ``out'``: the
    last computed output) is accumulated, and the forward is skipped while the sum stays below ``threshold``;
    once it reaches it the forward is computed and the sum restarts at 0. The first ``warmup`` forwards of a
    stream (the reference's ``ret_steps``) and, with ``compute_last``, each expert's last step are always
    computed, as is any forward before ``k`` is known (two computed forwards). ``threshold=0`` computes every
    forward (exact); larger thresholds skip more. The reference scripts use 0.05 (I2V) and 0.06 (T2V).

    Differences from the reference implementation: each (session, CFG branch) stream decides for itself (the
    reference decides on the conditional branch and lets the unconditional one follow), and a stream starts
    afresh when its expert changes (the reference's Wan2.2 script keeps one state across the high→low switch),
    so the low-noise expert never reuses, nor predicts from, the high-noise expert's outputs.
    """

    threshold: float = 0.05
    warmup: int = 2
    compute_last: bool = True

    def __post_init__(self):
        if not self.threshold >= 0:
            raise FastPathError(f"EasyCache: threshold must be >= 0, got {self.threshold!r}")
        if not (isinstance(self.warmup, int) and self.warmup >= 1):
            raise FastPathError(f"EasyCache: warmup must be an int >= 1, got {self.warmup!r}")


CachePolicy = Union[FixedCache, FirstBlockCache, EasyCache]
POLICIES = (FixedCache, FirstBlockCache, EasyCache)


@dataclass(frozen=True)
class CacheEvent:
    """One forward under a `StepCache`: its stream key, step / expert / CFG branch (None for a bare model call),
    whether it was ``reused``, the policy's change ``estimate`` (FirstBlockCache: the first blocks' relative
    change; EasyCache: the accumulated predicted change; NaN where none was computed) and ``source``: the
    ``(step, expert)`` of the computed forward whose residual a reused forward added (None when computed)."""

    stream: tuple
    step: Optional[int]
    expert: Optional[str]
    branch: Optional[str]
    reused: bool
    estimate: float
    source: Optional[tuple] = None


@dataclass
class _Stream:
    """What a `StepCache` remembers of one stream since its last reset (tensors are the model's)."""

    expert: Optional[str] = None
    forwards: int = 0  # forwards since the reset
    streak: int = 0  # reuses in a row
    residual: Optional[Tensor] = None  # block caches: deep-block residual [B, S, dim]; EasyCache: out - in
    source: Optional[tuple] = None  # (step, expert) of the forward that stored ``residual``
    first: Optional[Tensor] = None  # FirstBlockCache: the first blocks' output at the last computed forward
    prev_input: Optional[Tensor] = None  # EasyCache: input latents of the previous forward [B, out_dim, F, h, w]
    computed_input: Optional[Tensor] = None  # EasyCache: input / output of the last computed forward
    computed_output: Optional[Tensor] = None
    k: Optional[float] = None  # EasyCache: transformation rate
    accumulated: float = 0.0  # EasyCache: accumulated predicted relative output change


def _mean_abs(x: Tensor) -> float:
    return float(x.abs().float().mean())


class StepCache:
    """Fast mode (changes outputs): skip blocks on denoising steps where the computation would barely change.

    ``policy`` decides which forwards are skipped (see each class): `FixedCache` (every k-th forward computed),
    `FirstBlockCache` (default; the first ``first_blocks`` blocks always run, the rest are skipped while their
    output barely changed) and `EasyCache` (adaptive, training-free: whole forwards skipped while the predicted
    accumulated output change stays below a threshold). The older keywords ``threshold`` / ``max_reuse`` still
    make a ``FirstBlockCache(threshold, max_reuse)``.

    State is kept per stream: one (session, CFG branch) pair when a `wclab.sampler.Session` runs the forward
    (from its `HookContext`), so a session's branches never share residuals, even though they share
    text-embedding tensors, and a stream's state goes when its session is garbage-collected. A bare model call
    is keyed by its ``context`` tensor (storage and shape). A stream starts afresh whenever its expert changes
    (the high→low switch, or a model shared by both experts), so nothing computed by one expert is reused by the
    other. Hook points of skipped blocks (EasyCache: of the whole model) do not fire. ``computed`` / ``reused``
    count forwards, ``events`` lists every forward (`CacheEvent`); ``remove()`` (or leaving the ``with``)
    detaches it. While attached, the
    model's ``forward`` is :meth:`forward` (an instance attribute), which runs the DiT's public parts:
    `DiT.embed`, the blocks, the head.
    """

    def __init__(self, model: DiT, policy: Optional[CachePolicy] = None, first_blocks: int = 1,
                 threshold: Optional[float] = None, max_reuse: Optional[int] = None):
        if policy is None:
            policy = FirstBlockCache(0.05 if threshold is None else threshold, 1 if max_reuse is None else max_reuse)
        elif threshold is not None or max_reuse is not None:
            raise FastPathError("StepCache: give either policy or threshold/max_reuse, not both")
        if not isinstance(policy, POLICIES):
            raise FastPathError(f"StepCache: policy must be one of {[p.__name__ for p in POLICIES]}, "
                                f"got {type(policy).__name__}")
        if not 0 < first_blocks < len(model.blocks):
            raise FastPathError(f"StepCache: first_blocks must be in 1..{len(model.blocks) - 1}, got {first_blocks}")
        self.model, self.policy, self.first = model, policy, first_blocks
        self.computed = self.reused = 0
        self.events: list[CacheEvent] = []
        self.state: dict[tuple, _Stream] = {}  # stream key -> its state
        model.forward = self.forward

    def forward(self, x: Tensor, timestep: Tensor, context: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        """`DiT.forward` (``x`` [B, in_dim, F, h, w] -> [B, out_dim, F, h, w]) with blocks skipped as the policy
        says."""
        ctx = current_hook_context()
        key, st = self._stream(context, ctx)
        if ctx is not None and ctx.expert != st.expert:  # a new expert: nothing of the old one is used
            st = self.state[key] = _Stream(expert=ctx.expert)
        if isinstance(self.policy, EasyCache):
            out, reused, estimate, source = self._easycache(st, x, timestep, context, bias, ctx)
        else:
            out, reused, estimate, source = self._block_cache(st, x, timestep, context, bias, ctx)
        st.forwards += 1
        self.reused += reused
        self.computed += not reused
        self.events.append(CacheEvent(key, None if ctx is None else ctx.step, None if ctx is None else ctx.expert,
                                      None if ctx is None else ctx.branch, reused, estimate, source))
        return out

    def _block_cache(self, st: _Stream, x, timestep, context, bias, ctx):
        """FixedCache / FirstBlockCache: the first blocks always run; the rest maybe skipped."""
        model, policy = self.model, self.policy
        e = model.embed(x, timestep, context, bias)
        h = e.tokens
        for block in model.blocks[:self.first]:
            h = block(h, e.context, e.t_mod, e.freqs, e.bias)
        first = h
        estimate, reuse = float("nan"), False
        if st.residual is not None:
            if isinstance(policy, FixedCache):
                reuse = st.streak < policy.every - 1
            elif st.streak < policy.max_reuse:
                estimate = _mean_abs(first - st.first) / max(_mean_abs(st.first), 1e-12)
                reuse = estimate < policy.threshold
        source = st.source if reuse else None
        if reuse:
            st.streak += 1
            h = first + st.residual
        else:
            for block in model.blocks[self.first:]:
                h = block(h, e.context, e.t_mod, e.freqs, e.bias)
            st.first, st.residual, st.streak = first, h - first, 0
            st.source = None if ctx is None else (ctx.step, ctx.expert)
        return model.hook_head_out(model.unpatchify(model.head(h, e.t), e.grid)), reuse, estimate, source

    def _easycache(self, st: _Stream, x, timestep, context, bias, ctx):
        """EasyCache: decide from the input latents, skip the whole model or run it and update k."""
        policy, model = self.policy, self.model
        raw = x[:, :model.cfg.out_dim].detach().clone()  # the noisy latents [B, out_dim, F, h, w]
        estimate, reuse = float("nan"), False
        must = st.forwards < policy.warmup or (policy.compute_last and ctx is not None and _last_of_expert(ctx))
        if must:
            st.accumulated = 0.0
        elif st.k is not None and st.prev_input is not None and st.residual is not None:
            change = _mean_abs(raw - st.prev_input) / max(_mean_abs(st.computed_output), 1e-12)
            st.accumulated += st.k * change
            estimate = st.accumulated
            reuse = st.accumulated < policy.threshold
            if not reuse:
                st.accumulated = 0.0
        st.prev_input = raw
        if reuse:
            st.streak += 1
            return (raw + st.residual).to(x.dtype), True, estimate, st.source
        out = type(model).forward(model, x, timestep, context, bias)  # the class's, not this cache's
        if st.computed_output is not None:
            d_in = _mean_abs(raw - st.computed_input)
            st.k = _mean_abs(out - st.computed_output) / d_in if d_in > 0 else None
        st.computed_input, st.computed_output, st.residual, st.streak = raw, out.detach(), (out - raw).detach(), 0
        st.source = None if ctx is None else (ctx.step, ctx.expert)
        return out, False, estimate, None

    def _stream(self, context: Tensor, ctx) -> tuple[tuple, _Stream]:
        """The forward's stream key and state: (session, CFG branch) from the hook context, else the context
        tensor."""
        if ctx is None or ctx.session is None:
            key = ("context", context.data_ptr(), tuple(context.shape))
            return key, self.state.setdefault(key, _Stream())
        key = ("session", id(ctx.session), ctx.branch)
        if key not in self.state:  # dropped when the session goes, before its id can be reused
            self.state[key] = _Stream(expert=ctx.expert)
            weakref.finalize(ctx.session, self.state.pop, key, None)
        return key, self.state[key]

    def remove(self) -> None:
        vars(self.model).pop("forward", None)  # back to DiT.forward
        self.state.clear()

    def __enter__(self) -> "StepCache":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _last_of_expert(ctx) -> bool:
    """Whether the forward's step is the last its expert runs in the session (duck-typed: the session's
    scheduler timesteps and boundary)."""
    session = ctx.session
    if session is None or not hasattr(session, "scheduler"):
        return False
    steps = session.scheduler.timesteps
    nxt = ctx.step + 1
    return nxt >= len(steps) or session.scheduler.expert_for(float(steps[nxt]), session.settings.boundary) != ctx.expert


@contextmanager
def step_caches(models, policy: Optional[CachePolicy] = None, first_blocks: int = 1) -> Iterator[list[StepCache]]:
    """A `StepCache` with ``policy`` on each distinct expert of ``models`` (``models.high``, ``models.low``)
    while the block runs; yields the caches (one when both experts are one model)."""
    dits = [models.high] if models.low is models.high else [models.high, models.low]
    caches = [StepCache(d, policy, first_blocks) for d in dits]
    try:
        yield caches
    finally:
        for c in caches:
            c.remove()


# ---------------------------------------------------------------------------------------------- reporting
def relative_error(out: Tensor, ref: Tensor) -> dict[str, float]:
    """Deviation of ``out`` from ``ref`` (computed in float64): ``max_rel`` = max|Δ| / max|ref|, ``mean_rel`` =
    mean|Δ| / mean|ref|, ``l2_rel`` = ‖Δ‖ / ‖ref‖, and ``max_abs``; ``nan`` counts non-finite outputs."""
    if out.shape != ref.shape:
        raise FastPathError(f"relative_error: shapes differ, {list(out.shape)} vs {list(ref.shape)}")
    o, r = out.detach().double(), ref.detach().double()
    d = (o - r).abs()
    return {"max_rel": float(d.max() / r.abs().max().clamp(min=1e-30)),
            "mean_rel": float(d.mean() / r.abs().mean().clamp(min=1e-30)),
            "l2_rel": float(d.norm() / r.norm().clamp(min=1e-30)),
            "max_abs": float(d.max()), "nan": int((~torch.isfinite(o)).sum())}


__all__ = ["speed_up", "reset_speed_up", "sdpa_priority", "Fp8Linear", "FP8_LINEARS", "quantize_fp8",
           "BlockOffload", "StepCache", "FixedCache", "FirstBlockCache", "EasyCache", "CachePolicy", "CacheEvent",
           "step_caches", "relative_error", "FastPathError"]
