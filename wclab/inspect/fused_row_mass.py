"""Fused Triton kernels for :class:`wclab.inspect.motion_maps.QueryRowMass`: the self-attention mass of selected
query rows, summed per group of rows, without writing any logits to memory.

Two passes over the keys, both on tensor cores (bf16/fp16 inputs, float32 accumulation, so each logit equals the
float32 product of the model's q and k up to summation order):

1. ``_row_lse``: for each selected row and head, the log-sum-exp of its scaled logits over all S keys (online
   maximum and sum, one 64-row tile per program).
2. ``_group_mass``: for each key tile, every group's rows again: ``exp(logit - lse)`` summed over the group's
   rows and the heads of the program's head chunk, added into ``out[chunk, group, keys]``. Each program owns its
   key tile of every group of its chunk, so there are no atomics and the result is deterministic.

Rows are laid out group by group, each group padded to a multiple of ``GROUP_TILE`` rows (padding rows get
lse = +inf, so they add 0), which makes every row tile of pass 2 belong to one group. Memory: q's selected rows
(``[B·heads, R, D]``), lse (``[B·heads, R]`` float32) and the ``[chunks, G, S]`` float32 partial sums — never
``[rows, S]`` logits. Triton is imported on first use; `available()` says whether this process can run it.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor

GROUP_TILE = 16  # rows per tile of pass 2 (each group's rows are padded to a multiple of it)
LSE_TILE = 64  # rows per program of pass 1
KEY_TILE = 128  # keys per tile in both passes
LOG2E = 1.4426950408889634


def importable() -> bool:
    """Whether Triton can be imported here (the kernels are defined at first use)."""
    try:
        _kernels()
    except ImportError:
        return False
    return True


def available(device: torch.device) -> bool:
    """Whether the fused kernels can run on ``device``: CUDA with Triton importable, or any device under
    ``TRITON_INTERPRET=1`` (Triton's CPU interpreter, which the tests use; it needs fp16, not bf16)."""
    return (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1") and importable()


@dataclass(frozen=True)
class GroupedRows:
    """Query rows laid out group by group for the kernels.

    tokens: int64 ``[R]`` query token of each laid-out row (padding rows repeat token 0); valid: int8 ``[R]``, 1
    for a real row;
    tile_group: int32 ``[R / GROUP_TILE]`` group of each row tile; groups: G."""

    tokens: Tensor
    valid: Tensor
    tile_group: Tensor
    groups: int

    @staticmethod
    def from_selector(rows: Tensor, selector: Tensor) -> "GroupedRows":
        """From :class:`QueryRowMass`' arguments: rows int64 ``[U]`` (query tokens), selector ``[G, U]`` (1 where
        row u belongs to group g; a row may belong to several groups)."""
        rows, sel = rows.cpu(), selector.cpu() != 0
        tokens, valid, tile_group = [], [], []
        for g in range(sel.shape[0]):
            members = rows[sel[g]]
            n = len(members)
            pad = -n % GROUP_TILE
            tokens += [members, torch.zeros(pad, dtype=torch.int64)]
            valid += [torch.ones(n, dtype=torch.int8), torch.zeros(pad, dtype=torch.int8)]
            tile_group += [g] * ((n + pad) // GROUP_TILE)
        tokens_t = torch.cat(tokens) if tokens else torch.zeros(0, dtype=torch.int64)
        valid_t = torch.cat(valid) if valid else torch.zeros(0, dtype=torch.int8)
        return GroupedRows(tokens_t, valid_t, torch.tensor(tile_group, dtype=torch.int32), int(sel.shape[0]))

    def to(self, device: torch.device) -> "GroupedRows":
        return GroupedRows(self.tokens.to(device), self.valid.to(device), self.tile_group.to(device), self.groups)


def group_mass(q: Tensor, k: Tensor, rows: GroupedRows, head_chunks: int = 4) -> Tensor:
    """float32 ``[G, S]``: ``softmax(q[rows]·kᵀ/√D)`` over all S keys, summed over the batch, the heads and each
    group's rows. q, k: ``[B, S, h, D]`` (heads already selected), bf16 or fp16, on the kernels' device; rows
    from :meth:`GroupedRows.from_selector`, on that device. head_chunks: programs per key tile (more → more
    parallel programs, more partial sums to add)."""
    B, S, h, D = k.shape
    if q.dtype not in (torch.bfloat16, torch.float16) or k.dtype != q.dtype:
        raise TypeError(f"fused row mass: expected bf16/fp16 q and k of one dtype, got {q.dtype} / {k.dtype}")
    if D % 16 or D > 256:
        raise ValueError(f"fused row mass: head_dim must be a multiple of 16 up to 256, got {D}")
    row_lse, mass = _kernels()
    R = rows.tokens.numel()
    out = torch.zeros(max(1, min(head_chunks, B * h)), rows.groups, S, device=k.device, dtype=torch.float32)
    if R == 0:
        return out.sum(0)
    # [B·h, R, D]: the selected rows, heads-major, contiguous
    qr = q.index_select(1, rows.tokens).permute(0, 2, 1, 3).reshape(B * h, R, D).contiguous()
    lse = torch.empty(B * h, R, device=k.device, dtype=torch.float32)
    scale2 = D ** -0.5 * LOG2E  # logits in base 2: exp(x) = exp2(x·log2 e)
    row_lse[(triton_cdiv(R, LSE_TILE), B * h)](
        qr, k, rows.valid, lse, R, S, h, *k.stride(), scale2,
        D=D, BM=LSE_TILE, BN=KEY_TILE, num_warps=4)
    chunks = out.shape[0]
    mass[(triton_cdiv(S, KEY_TILE), chunks)](
        qr, k, lse, rows.tile_group, out, R // GROUP_TILE, S, h, B * h, math.ceil(B * h / chunks), rows.groups,
        *k.stride(), scale2, D=D, BM=GROUP_TILE, BN=KEY_TILE, num_warps=4)
    return out.sum(0)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.lru_cache(maxsize=1)
def _kernels():
    """(row_lse, group_mass) Triton kernels, defined at the first call (Triton is optional)."""
    import triton
    import triton.language as tl

    @triton.jit
    def _row_lse(q_ptr, k_ptr, valid_ptr, lse_ptr, R, S, H, skb, sks, skh, skd, scale2,
                 D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
        """Program (row tile, b·h): base-2 log-sum-exp of BM rows' scaled logits over all keys."""
        pid_m, bh = tl.program_id(0), tl.program_id(1)
        b, hh = bh // H, bh % H
        offs_m = pid_m * BM + tl.arange(0, BM)
        offs_d = tl.arange(0, D)
        in_rows = offs_m < R
        q = tl.load(q_ptr + (bh * R + offs_m)[:, None] * D + offs_d[None, :], mask=in_rows[:, None], other=0.0)
        m = tl.full([BM], float("-inf"), tl.float32)
        l = tl.zeros([BM], tl.float32)
        k_base = k_ptr + b * skb + hh * skh
        for n0 in range(0, S, BN):
            offs_n = n0 + tl.arange(0, BN)
            kt = tl.load(k_base + offs_n[:, None] * sks + offs_d[None, :] * skd, mask=(offs_n < S)[:, None],
                         other=0.0)
            s = tl.dot(q, tl.trans(kt)) * scale2  # [BM, BN] float32
            s = tl.where((offs_n < S)[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            l = l * tl.exp2(m - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), 1)
            m = m_new
        valid = tl.load(valid_ptr + offs_m, mask=in_rows, other=0)
        lse = tl.where(valid != 0, m + tl.log2(l), float("inf"))  # padding rows: p = exp2(s - inf) = 0
        tl.store(lse_ptr + bh * R + offs_m, lse, mask=in_rows)

    @triton.jit
    def _group_mass(q_ptr, k_ptr, lse_ptr, tile_group_ptr, out_ptr, n_tiles, S, H, BH, per_chunk, G,
                    skb, sks, skh, skd, scale2, D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
        """Program (key tile, head chunk): out[chunk, g, keys] += Σ_{heads of chunk} Σ_{rows of g} exp2(s - lse)."""
        pid_n, chunk = tl.program_id(0), tl.program_id(1)
        offs_n = pid_n * BN + tl.arange(0, BN)
        offs_d = tl.arange(0, D)
        in_keys = offs_n < S
        R = n_tiles * BM
        for bh in range(chunk * per_chunk, tl.minimum(BH, (chunk + 1) * per_chunk)):
            b, hh = bh // H, bh % H
            kt = tl.load(k_ptr + b * skb + hh * skh + offs_n[:, None] * sks + offs_d[None, :] * skd,
                         mask=in_keys[:, None], other=0.0)  # [BN, D]
            for t in range(0, n_tiles):
                offs_m = t * BM + tl.arange(0, BM)
                qt = tl.load(q_ptr + (bh * R + offs_m)[:, None] * D + offs_d[None, :])  # [BM, D]
                lse = tl.load(lse_ptr + bh * R + offs_m)  # [BM]
                s = tl.dot(kt, tl.trans(qt)) * scale2  # [BN, BM]: keys as the MMA's long side
                p = tl.exp2(s - lse[None, :])
                g = tl.load(tile_group_ptr + t)
                dst = out_ptr + (chunk * G + g) * S + offs_n
                tl.store(dst, tl.load(dst, mask=in_keys, other=0.0) + tl.sum(p, 1), mask=in_keys)

    return _row_lse, _group_mass


__all__ = ["GROUP_TILE", "GroupedRows", "available", "group_mass"]
