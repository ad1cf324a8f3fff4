"""The push engine's kernels alone (`wclab.push_attention`), at the DiT's full size, against the same kernels
storing only into this rank's own buffer, and NCCL's all-to-all of the same bytes.

    torchrun --nproc-per-node P bench/push_kernels.py [--out push_kernels.jsonl]

Per call (ms, median of 20, every call started on all ranks together): ``push_rows`` with RMSNorm and RoPE (q, k)
and plain (v), ``push_back`` (the attention output), symmetric memory's ``barrier``, each at several warp counts
(`--warps`), then ``local``: the same kernels with every store into this rank's own buffer (no NVLink), and
``nccl_a2a``: one equal all-to-all of a projection's bytes. A forward makes 3 ``push_rows``, 1 ``push_back`` and 2
barriers per block (40 blocks). Appends one JSON line (rank 0).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import environment, full_size_tokens, ranks_cuda_ms  # noqa: E402

from wclab.models.dit import DiTConfig, rope_cos_sin  # noqa: E402
from wclab.parallel import init_distributed, shutdown  # noqa: E402
from wclab.push_attention import exchange, push_back, push_rows  # noqa: E402

CONFIG = DiTConfig.worldcanvas_14b()


def run(args) -> dict:
    init_distributed()
    rank, P = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device())
    S, dim, H = full_size_tokens(), CONFIG.dim, CONFIG.num_heads
    S_r, D = S // P, dim // H
    x = torch.randn(1, S_r, dim, device=device, dtype=torch.bfloat16)
    weight = torch.rand(dim, device=device, dtype=torch.bfloat16) + 0.5
    rope = rope_cos_sin(D, (S, 1, 1), device)[rank * S_r:(rank + 1) * S_r]
    z = torch.randn(1, S, H // P, D, device=device, dtype=torch.bfloat16)
    ex = exchange(dist.group.WORLD.group_name, S_r * dim, torch.bfloat16, device)
    local = torch.full_like(ex.deltas, 0)
    record = {"ranks": P, "tokens": S, "env": environment(), "ms_per_call": {}}
    ms = record["ms_per_call"]
    for w in args.warps:
        for name, deltas in (("peers", ex.deltas), ("local", local)):
            ms[f"push_rows_norm_rope_w{w}_{name}"] = ranks_cuda_ms(
                lambda: push_rows(x, ex.buffer, deltas, 0, rank, P, H, weight, rope, 1e-6, num_warps=w), args.repeat)
            ms[f"push_rows_plain_w{w}_{name}"] = ranks_cuda_ms(
                lambda: push_rows(x, ex.buffer, deltas, 2, rank, P, H, num_warps=w), args.repeat)
            ms[f"push_back_w{w}_{name}"] = ranks_cuda_ms(
                lambda: push_back(z, ex.buffer, deltas, rank, P, num_warps=w), args.repeat)
    ms["barrier"] = ranks_cuda_ms(lambda: ex.handle.barrier(channel=0), args.repeat)
    send = x.reshape(-1)
    recv = torch.empty_like(send)
    ms["nccl_a2a"] = ranks_cuda_ms(lambda: dist.all_to_all_single(recv, send), args.repeat)
    ms["copy_local"] = ranks_cuda_ms(lambda: recv.copy_(send), args.repeat)
    record["bytes_per_projection"] = send.numel() * send.element_size()
    shutdown()
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--warps", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--out", default=None, help="append the JSON line here")
    args = p.parse_args()
    record = run(args)
    if int(os.environ.get("RANK", 0)) == 0:
        line = json.dumps(record)
        print(line)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
