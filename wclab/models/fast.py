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
  StepCache(model)             fast mode: reuse the deep blocks' residual on steps whose early-block output
                               barely changed (outputs change; opt-in)
  relative_error(a, b)         max / mean / L2 relative differences, for reporting a fast path's deviation

Per-object cross-attention maps (with or without these fast paths) are `wclab.inspect.AttentionMaps`.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
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
    """(xq · x_scale) @ (w · w_scale)ᵀ on float8 tensor cores: xq [m, k] float8 with x_scale [m, 1] float32 (per
    row), w [n, k] float8 with w_scale [1, n] float32 (per output) -> [m, n] ``out_dtype``. The public
    ``torch.nn.functional.scaled_mm`` (row-wise recipes) where this torch has it, else ``torch._scaled_mm``."""
    if hasattr(F, "scaled_mm"):
        rows = F.ScalingType.RowWise
        return F.scaled_mm(xq, w.t(), x_scale, rows, w_scale, rows, output_dtype=out_dtype)
    return torch._scaled_mm(xq, w.t(), scale_a=x_scale, scale_b=w_scale, out_dtype=out_dtype)


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
    The state dict then holds float8 weights + scales, not the released format."""
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
class StepCache:
    """Fast mode (changes outputs): skip most blocks on denoising steps where the input barely changed.

    Each forward runs the first ``first_blocks`` blocks, then compares their output with the one stored at the
    last fully computed forward of the same stream: mean|Δ| / mean|stored| < ``threshold`` and fewer than
    ``max_reuse`` reuses in a row -> the remaining blocks are skipped and the residual they added last time is
    added instead (First-Block-Cache / TeaCache-style). A stream is one (session, CFG branch) pair when a
    `wclab.sampler.Session` runs the forward (from its `HookContext`): a session's branches never share
    residuals, even though they share text-embedding tensors, and a stream's state goes when its session is
    garbage-collected. A bare model call is keyed by its ``context`` tensor (storage and shape).
    ``threshold=inf, max_reuse=1`` reuses every other forward of each branch. Hook points of skipped blocks do
    not fire. ``computed`` / ``reused`` count forwards; ``remove()`` (or leaving the ``with``) detaches it.
    While attached, the model's ``forward`` is :meth:`forward` (an instance attribute), which runs the DiT's
    public parts: `DiT.embed`, the blocks, the head.
    """

    def __init__(self, model: DiT, first_blocks: int = 1, threshold: float = 0.05, max_reuse: int = 1):
        if not 0 < first_blocks < len(model.blocks):
            raise FastPathError(f"StepCache: first_blocks must be in 1..{len(model.blocks) - 1}, got {first_blocks}")
        if max_reuse < 0:
            raise FastPathError(f"StepCache: max_reuse must be >= 0, got {max_reuse}")
        self.model, self.first, self.threshold, self.max_reuse = model, first_blocks, threshold, max_reuse
        self.computed = self.reused = 0
        self.state: dict[tuple, dict] = {}  # stream key -> {"first": Tensor, "residual": Tensor, "streak": int}
        model.forward = self.forward

    def forward(self, x: Tensor, timestep: Tensor, context: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        """`DiT.forward` with the deep blocks skipped when the first blocks' output barely changed."""
        model = self.model
        e = model.embed(x, timestep, context, bias)
        st = self._stream(context)
        h = e.tokens
        for block in model.blocks[:self.first]:
            h = block(h, e.context, e.t_mod, e.freqs, e.bias)
        first = h
        if "first" in st and st["streak"] < self.max_reuse and self._change(first, st["first"]) < self.threshold:
            st["streak"] += 1
            self.reused += 1
            h = first + st["residual"]
        else:
            for block in model.blocks[self.first:]:
                h = block(h, e.context, e.t_mod, e.freqs, e.bias)
            st.update(first=first, residual=h - first, streak=0)
            self.computed += 1
        return model.hook_head_out(model.unpatchify(model.head(h, e.t), e.grid))

    def _stream(self, context: Tensor) -> dict:
        """The state of the forward's stream: (session, CFG branch) from the hook context, else the context tensor."""
        ctx = current_hook_context()
        if ctx is None or ctx.session is None:
            return self.state.setdefault(("context", context.data_ptr(), tuple(context.shape)), {"streak": 0})
        key = ("session", id(ctx.session), ctx.branch)
        if key not in self.state:  # dropped when the session goes, before its id can be reused
            self.state[key] = {"streak": 0}
            weakref.finalize(ctx.session, self.state.pop, key, None)
        return self.state[key]

    @staticmethod
    def _change(now: Tensor, before: Tensor) -> float:
        return float((now - before).abs().float().mean() / before.abs().float().mean().clamp(min=1e-12))

    def remove(self) -> None:
        vars(self.model).pop("forward", None)  # back to DiT.forward
        self.state.clear()

    def __enter__(self) -> "StepCache":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


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
           "BlockOffload", "StepCache", "relative_error", "FastPathError"]
