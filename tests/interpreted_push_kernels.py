"""The push engine's kernels (`wclab.push_attention`) in Triton's CPU interpreter, on one tensor that stands for
every rank's buffer. The interpreter rounds float32 to bf16 otherwise than the GPU, so bf16 rows are checked here
for where they land only (their rounding: `bench/parallel_scaling.py --check` on GPUs). Run by
tests/test_push_attention.py in a process started with TRITON_INTERPRET=1 (the interpreter must be chosen before
Triton is first imported)."""
from __future__ import annotations

import os

import pytest
import torch

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1 (tests/test_push_attention.py does)"

from wclab.models.dit import RMSNorm, apply_rope, rope_cos_sin  # noqa: E402
from wclab.push_attention import push_back, push_rows  # noqa: E402


def ranks_in_one_tensor(ranks: int, numel: int, dtype: torch.dtype):
    """Every rank's buffer (4·numel elements) as slices of one tensor, and each rank's element offsets to all."""
    big = torch.full((ranks * 4 * numel,), float("nan"), dtype=dtype)
    bufs = [big[r * 4 * numel:(r + 1) * 4 * numel] for r in range(ranks)]
    deltas = [torch.tensor([(p - r) * 4 * numel for p in range(ranks)], dtype=torch.int64) for r in range(ranks)]
    return bufs, deltas


@pytest.mark.parametrize("ranks,batch,dtype", [(2, 1, torch.float32), (4, 2, torch.float32), (2, 2, torch.bfloat16)])
def test_each_rank_receives_its_heads_of_every_token_normalised_and_rotated(ranks, batch, dtype):
    heads, D, S_r = 4, 8, 3
    dim, S = heads * D, S_r * ranks
    torch.manual_seed(0)
    src = [torch.randn(batch, S_r, dim).to(dtype) for _ in range(ranks)]  # this rank's rows of q / k / v
    norm = RMSNorm(dim, 1e-6).to(dtype)
    norm.weight.data = torch.rand(dim).to(dtype) + 0.5
    grid = (1, S // 2, 2)
    rope = rope_cos_sin(D, grid)  # [S, 1, D/2, 2]
    bufs, deltas = ranks_in_one_tensor(ranks, batch * S_r * dim, dtype)
    for r in range(ranks):
        mine = slice(r * S_r, (r + 1) * S_r)
        push_rows(src[r], bufs[r], deltas[r], 0, r, ranks, heads, norm.weight, rope[mine], 1e-6)
        push_rows(src[r], bufs[r], deltas[r], 2, r, ranks, heads)

    full = torch.cat(src, dim=1)  # [B, S, dim]
    q = apply_rope(norm(full).unflatten(-1, (heads, D)), rope)  # as SelfAttention computes q
    v = full.unflatten(-1, (heads, D))
    H_r, N = heads // ranks, batch * S_r * dim
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=0.02, rtol=0.01)
    for p in range(ranks):
        region = bufs[p].view(4, batch, S, H_r, D)
        theirs = slice(p * H_r, (p + 1) * H_r)
        torch.testing.assert_close(region[0], q[:, :, theirs], **tol)
        assert torch.equal(region[2], v[:, :, theirs])
        assert torch.isnan(region[1]).all() and torch.isnan(region[3].reshape(-1)[:N]).all()  # untouched


@pytest.mark.parametrize("ranks,batch", [(2, 1), (4, 2)])
def test_each_rank_receives_every_heads_output_of_its_own_tokens(ranks, batch):
    heads, D, S_r = 8, 4, 3
    H_r, S = heads // ranks, S_r * ranks
    torch.manual_seed(2)
    z = [torch.randn(batch, S, H_r, D) for _ in range(ranks)]  # rank p's attention output: all tokens, its heads
    bufs, deltas = ranks_in_one_tensor(ranks, batch * S_r * heads * D, torch.float32)
    for r in range(ranks):
        push_back(z[r], bufs[r], deltas[r], r, ranks)
    for r in range(ranks):
        out = bufs[r].view(4, batch, S_r, heads, D)[3]
        expected = torch.cat([z[p][:, r * S_r:(r + 1) * S_r] for p in range(ranks)], dim=2)
        assert torch.equal(out, expected)
        assert torch.isnan(bufs[r][:3 * batch * S_r * heads * D]).all()
