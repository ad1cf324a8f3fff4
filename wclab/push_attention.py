"""Ulysses self-attention whose exchanges are stores into the peers' memory, made by the kernels that produce the
data (CUDA over NVLink; `wclab.parallel.ParallelDiT` with ``sequence_attention="ulysses_push"``).

NCCL's Ulysses (`wclab.parallel`) computes q and k (RMSNorm, RoPE) into a send buffer, then moves q, k, v and
later the attention output with four all-to-alls that nothing else can run beside (the next step needs their
data). Here each rank maps every other rank's buffer (PyTorch symmetric memory), and one Triton kernel per
tensor reads a rank's rows of the projection, normalises and rotates them and stores each head straight into the
rank that attends with it; after the attention another kernel stores each token's output rows into the rank
that holds the token. Two barriers per block (symmetric memory's barrier kernel) say when every rank's stores
have landed; they also keep a rank from storing into a buffer a peer still reads, so one buffer per rank serves
every block. Same result as the NCCL engine up to the float32 sums of the RMSNorm (summed in another order).

Layouts (P ranks, this rank r with S_r = S / P of the S tokens, H_r = H / P heads, head_dim D, batch B). One
buffer of 4·N elements per rank, N = B·S_r·H·D: three regions [B, S, H_r, D] receive q, k, v of all tokens for
this rank's heads (rank p stores its token rows p·S_r ... at rows p·S_r ...), the fourth [B, S_r, H, D] receives
the attention output of this rank's tokens for all heads (rank p stores heads p·H_r ...).

Kernels address a peer's buffer as this rank's buffer plus an element offset (the peers' mapped addresses minus
this rank's), so the same kernels run in Triton's interpreter on one CPU tensor that stands for every rank's
buffer (`push_rows`, `push_back` take ``deltas``); that is how the CPU tests check them.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from wclab.errors import WclabError
from wclab.models.attention import attention


class PushAttentionError(WclabError, RuntimeError):
    """This device, build or split cannot run the push engine."""


@functools.cache
def _kernels():
    """The Triton kernels (for the GPU, or for Triton's CPU interpreter when TRITON_INTERPRET=1 was set before
    Triton was first imported: its library functions are interpreted only then)."""
    global tl  # a module global, as Triton (and its interpreter, which patches it) resolves kernel names there
    try:
        import triton
        import triton.language as tl
    except ImportError as e:
        raise PushAttentionError(f"ulysses_push needs Triton: {e}") from e

    @triton.jit
    def push_rows(src, weight, rope, buf, deltas, dst_offset, tokens_local, tokens, rank, eps,
                  HEADS: tl.constexpr, HEADS_P2: tl.constexpr, HEADS_R: tl.constexpr, HEAD_DIM: tl.constexpr,
                  NORM: tl.constexpr, ROPE: tl.constexpr):
        # one token row of src [B·S_r, H·D] -> its heads, each into the buffer of the rank that owns the head
        t = tl.program_id(0)
        b = t // tokens_local
        s = t % tokens_local
        h = tl.arange(0, HEADS_P2)[:, None]
        d = tl.arange(0, HEAD_DIM)[None, :]
        mask = (h < HEADS) & (d < HEAD_DIM)
        x = tl.load(src + t.to(tl.int64) * (HEADS * HEAD_DIM) + h * HEAD_DIM + d, mask=mask, other=0.0)
        out_ty = x.dtype
        x = x.to(tl.float32)
        if NORM:  # RMSNorm over all heads, rounded like eager: (x · rsqrt(mean x² + eps)).to(dtype) · weight
            ms = tl.sum(tl.sum(x * x, axis=1), axis=0) / (HEADS * HEAD_DIM)
            x = (x * tl.rsqrt(ms + eps)).to(out_ty).to(tl.float32)
            w = tl.load(weight + h * HEAD_DIM + d, mask=mask, other=0.0).to(tl.float32)
            x = (x * w).to(out_ty).to(tl.float32)
        if ROPE:  # rope [S_r, 1, D/2, 2] float32 (cos, sin): channel pairs (a, c) -> (a·cos - c·sin, a·sin + c·cos)
            a, c = tl.split(tl.reshape(x, (HEADS_P2, HEAD_DIM // 2, 2)))
            j = tl.arange(0, HEAD_DIM // 2)[None, :]
            cos = tl.load(rope + s * HEAD_DIM + 2 * j)
            sin = tl.load(rope + s * HEAD_DIM + 2 * j + 1)
            x = tl.reshape(tl.join(a * cos - c * sin, a * sin + c * cos), (HEADS_P2, HEAD_DIM))
        owner = tl.minimum(h // HEADS_R, tokens // tokens_local - 1)  # padded heads: any valid rank, masked
        row = (b * tokens + rank * tokens_local + s).to(tl.int64)
        dst = buf + tl.load(deltas + owner) + dst_offset + (row * HEADS_R + h % HEADS_R) * HEAD_DIM + d
        tl.store(dst, x.to(out_ty), mask=mask)

    @triton.jit
    def push_back(src, buf, deltas, dst_offset, tokens_local, tokens, rank,
                  HEADS: tl.constexpr, HEADS_R: tl.constexpr, HEADS_R_P2: tl.constexpr, HEAD_DIM: tl.constexpr):
        # one token row of src [B·S, H_r, D] (this rank's heads) -> the buffer of the rank that owns the token
        t = tl.program_id(0)
        b = t // tokens
        s = t % tokens
        owner = s // tokens_local
        h = tl.arange(0, HEADS_R_P2)[:, None]
        d = tl.arange(0, HEAD_DIM)[None, :]
        mask = (h < HEADS_R) & (d < HEAD_DIM)
        x = tl.load(src + t.to(tl.int64) * (HEADS_R * HEAD_DIM) + h * HEAD_DIM + d, mask=mask)
        row = (b * tokens_local + s % tokens_local).to(tl.int64)
        dst = buf + tl.load(deltas + owner) + dst_offset + (row * HEADS + rank * HEADS_R + h) * HEAD_DIM + d
        tl.store(dst, x, mask=mask)

    return push_rows, push_back


def push_rows(src: Tensor, buf: Tensor, deltas: Tensor, region: int, rank: int, ranks: int, heads: int,
              weight: Optional[Tensor] = None, rope: Optional[Tensor] = None, eps: float = 1e-6,
              num_warps: int = 4) -> None:
    """Store this rank's projection rows src [B, S_r, H·D] into region ``region`` (0, 1, 2: q, k, v) of every
    rank's buffer, head h going to rank h // H_r as rows [B, S, H_r, D] at this rank's tokens; with ``weight``
    [H·D] RMSNorm first, with ``rope`` [S_r, 1, D/2, 2] float32 (cos, sin) then RoPE. ``buf``: this rank's
    buffer (flat, 4·N elements); ``deltas`` [P] int64: element offset from ``buf`` to each rank's buffer."""
    B, S_r, width = src.shape
    D = width // heads
    N = B * S_r * width
    src = src.contiguous()
    kernel = _kernels()[0]
    from triton import next_power_of_2
    # without weight / rope the kernel reads neither: src stands in for the pointer
    kernel[(B * S_r,)](src, src if weight is None else weight, src if rope is None else rope.contiguous(),
                       buf, deltas, region * N, S_r, S_r * ranks, rank, eps,
                       HEADS=heads, HEADS_P2=next_power_of_2(heads), HEADS_R=heads // ranks, HEAD_DIM=D,
                       NORM=weight is not None, ROPE=rope is not None, num_warps=num_warps)


def push_back(z: Tensor, buf: Tensor, deltas: Tensor, rank: int, ranks: int, num_warps: int = 4) -> None:
    """Store the attention output z [B, S, H_r, D] (all tokens, this rank's heads) into the output region of the
    rank that holds each token: rows [B, S_r, H, D], heads r·H_r ... ."""
    B, S, H_r, D = z.shape
    S_r = S // ranks
    kernel = _kernels()[1]
    from triton import next_power_of_2
    kernel[(B * S,)](z.contiguous(), buf, deltas, 3 * B * S_r * H_r * ranks * D, S_r, S, rank,
                     HEADS=H_r * ranks, HEADS_R=H_r, HEADS_R_P2=next_power_of_2(H_r), HEAD_DIM=D, num_warps=num_warps)


class PushExchange:
    """One rank's symmetric buffer (4·N elements), the element offsets to every rank's buffer, and the barrier."""

    def __init__(self, group_name: str, numel: int, dtype: torch.dtype, device: torch.device):
        import torch.distributed._symmetric_memory as symm_mem
        self.buffer = symm_mem.empty(4 * numel, dtype=dtype, device=device)
        self.handle = symm_mem.rendezvous(self.buffer, group_name)
        size, ptrs = self.buffer.element_size(), self.handle.buffer_ptrs
        offsets = [ptr - ptrs[self.handle.rank] for ptr in ptrs]
        if any(o % size for o in offsets):
            raise PushAttentionError(f"symmetric buffers are not aligned to {size}-byte elements: {offsets}")
        self.deltas = torch.tensor([o // size for o in offsets], dtype=torch.int64, device=device)
        self.rank, self.ranks = self.handle.rank, self.handle.world_size
        self.handle.barrier(channel=0)  # every rank mapped before anyone stores


_exchanges: dict[tuple, PushExchange] = {}


def exchange(group_name: str, numel: int, dtype: torch.dtype, device: torch.device) -> PushExchange:
    """The `PushExchange` for this group and size (made on first use; a collective then)."""
    key = (group_name, numel, dtype, device)
    if key not in _exchanges:
        _exchanges[key] = PushExchange(group_name, numel, dtype, device)
    return _exchanges[key]


def release_exchanges() -> None:
    """Forget every exchange's buffers (before the process group goes)."""
    _exchanges.clear()


@torch.library.custom_op("wclab::push_self_attention", mutates_args=())
def push_self_attention(x: Tensor, wq: Tensor, bq: Tensor, wk: Tensor, bk: Tensor, wv: Tensor, bv: Tensor,
                        wo: Tensor, bo: Tensor, norm_q: Tensor, norm_k: Tensor, rope: Tensor, eps: float,
                        heads: int, group_name: str, backend: Optional[str]) -> Tensor:
    """A `SelfAttention` over the tokens of every rank of ``group_name``, from this rank's modulated input
    x [B, S_r, dim] to its output projection [B, S_r, dim] (the module docstring). Every rank calls it alike."""
    B, S_r, dim = x.shape
    ex = exchange(group_name, B * S_r * dim, x.dtype, x.device)
    P, r = ex.ranks, ex.rank
    push_rows(F.linear(x, wq, bq), ex.buffer, ex.deltas, 0, r, P, heads, norm_q, rope, eps)
    push_rows(F.linear(x, wk, bk), ex.buffer, ex.deltas, 1, r, P, heads, norm_k, rope, eps)
    push_rows(F.linear(x, wv, bv), ex.buffer, ex.deltas, 2, r, P, heads)
    ex.handle.barrier(channel=0)  # q, k, v of every token for this rank's heads have landed
    N = B * S_r * dim
    q, k, v = ex.buffer[:3 * N].view(3, B, S_r * P, heads // P, dim // heads).unbind(0)
    push_back(attention(q, k, v, backend=backend), ex.buffer, ex.deltas, r, P)
    ex.handle.barrier(channel=0)  # every head's output of this rank's tokens has landed
    return F.linear(ex.buffer[3 * N:].view(B, S_r, dim), wo, bo)


@push_self_attention.register_fake
def _(x, wq, bq, wk, bk, wv, bv, wo, bo, norm_q, norm_k, rope, eps, heads, group_name, backend):
    return torch.empty_like(x)


def check_push(device: torch.device, num_tokens: int, num_heads: int, ranks: int) -> None:
    """Raise PushAttentionError unless the push engine can split this forward: CUDA, Triton, symmetric memory,
    tokens and heads divisible by the ranks."""
    if device.type != "cuda":
        raise PushAttentionError(f"ulysses_push needs CUDA devices (symmetric memory over NVLink), got {device}")
    if num_tokens % ranks or num_heads % ranks:
        raise PushAttentionError(f"ulysses_push needs tokens and heads divisible by the {ranks} ranks, got "
                                 f"{num_tokens} tokens and {num_heads} heads")
