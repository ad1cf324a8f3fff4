"""One forward's worth of sequence-parallel self-attention (40 blocks at 480×832×81: 32 760 tokens, 40 heads of
128, bf16) with the NCCL Ulysses engine and with the copy-engine one (`wclab.peer_attention`), on every rank.

    torchrun --nproc-per-node 4 bench/peer_attention.py --attention flash4 --rounds 1,2,5,10 --out peer.jsonl

Times, per forward (ms, median of --repeat): the attention kernels alone over this rank's heads and all tokens
(what no exchange can beat), the NCCL engine (`wclab.parallel`'s all-to-alls around the kernel), and the copy-engine
engine with each number of head rounds; the largest |difference| of each engine's output from the NCCL one's;
appends one JSON line (rank 0).
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
from benchlib import cuda_ms, environment  # noqa: E402

from wclab.models.attention import attention  # noqa: E402
from wclab.models.dit import DiTConfig  # noqa: E402
from wclab.parallel import _heads_to_tokens, _tokens_to_heads, split_counts  # noqa: E402
from wclab.peer_attention import attention_over_ranks  # noqa: E402
from wclab.sizes import DEFAULT_FRAMES, DEFAULT_HEIGHT, DEFAULT_WIDTH, latent_frames  # noqa: E402

CONFIG = DiTConfig.worldcanvas_14b()
TOKENS = latent_frames(DEFAULT_FRAMES) * (DEFAULT_HEIGHT // 16) * (DEFAULT_WIDTH // 16)


def forward_ms(fn, blocks: int, repeat: int) -> float:
    """Median ms of ``blocks`` calls of ``fn`` (after one warm-up round), every rank starting together."""
    dist.barrier()
    return cuda_ms(lambda: [fn() for _ in range(blocks)], repeat=repeat, warmup=1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--attention", default="flash4")
    p.add_argument("--rounds", default="1,2,5,10", help="head rounds of the copy-engine engine, comma-separated")
    p.add_argument("--blocks", type=int, default=CONFIG.num_layers)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--layouts", action="store_true",
                   help="also time the attention rounds over strided q, k, v views in normal and symmetric memory")
    p.add_argument("--trace", type=Path, help="also write a profiler trace per rank (FILE_rank<r>.json)")
    args = p.parse_args()
    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    rank, world, group = dist.get_rank(), dist.get_world_size(), dist.group.WORLD
    tokens = split_counts(TOKENS, world, balanced=False)
    heads = split_counts(CONFIG.num_heads, world, balanced=True)
    D = CONFIG.head_dim
    g = torch.Generator(device="cuda").manual_seed(rank)
    q, k, v = (torch.randn(1, tokens[rank], CONFIG.num_heads, D, device="cuda", dtype=torch.bfloat16, generator=g)
               for _ in range(3))
    attend = lambda q, k, v: attention(q, k, v, backend=args.attention)  # noqa: E731

    def nccl():
        q2, k2, v2 = (_tokens_to_heads(t, tokens, heads, rank, group) for t in (q, k, v))
        return _heads_to_tokens(attend(q2, k2, v2), tokens, heads, rank, group)

    full = [torch.randn(1, TOKENS, heads[rank], D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3)]
    row = {"ranks": world, "tokens": tokens, "heads": heads, "blocks": args.blocks, "attention": args.attention}
    row["attention_only_ms"] = round(forward_ms(lambda: attend(*full), args.blocks, args.repeat), 2)
    reference = nccl()
    row["nccl_ms"] = round(forward_ms(nccl, args.blocks, args.repeat), 2)
    for rounds in (int(r) for r in args.rounds.split(",")):
        h = heads[rank] // rounds
        parts = [[t[:, :, i * h:(i + 1) * h].contiguous() for t in full] for i in range(rounds)]
        row[f"attention_only_{rounds}_rounds_ms"] = round(forward_ms(
            lambda: [attend(*part) for part in parts], args.blocks, args.repeat), 2)
        if args.layouts:  # the same rounds over q, k, v as strided views of [rounds, 1, S, 3, h, D]
            import torch.distributed._symmetric_memory as symm_mem
            shape = (rounds, 1, TOKENS, 3, h, D)
            for name, buf in (("normal", torch.empty(shape, device="cuda", dtype=torch.bfloat16)),
                              ("symmetric", symm_mem.empty(shape, device="cuda", dtype=torch.bfloat16))):
                buf.normal_()
                row[f"attention_{rounds}_rounds_strided_{name}_ms"] = round(forward_ms(
                    lambda: [attend(x[:, :, 0], x[:, :, 1], x[:, :, 2]) for x in buf], args.blocks, args.repeat), 2)
        fn = lambda: attention_over_ranks(q, k, v, tokens, group, rounds, args.attention)  # noqa: E731
        try:
            diff = (fn() - reference).abs().max()
            dist.all_reduce(diff, op=dist.ReduceOp.MAX)
            row[f"peer_{rounds}"] = {"ms": round(forward_ms(fn, args.blocks, args.repeat), 2),
                                     "max_abs_diff_vs_nccl": diff.item()}
        except Exception as e:  # noqa: BLE001 - a failing variant is reported, the others still run
            row[f"peer_{rounds}"] = {"error": f"{type(e).__name__}: {e}"}
        if rank == 0:
            print(rounds, row[f"peer_{rounds}"], flush=True)
    if args.trace:  # a few blocks of the NCCL engine, then of the copy-engine one with the last --rounds
        from torch.profiler import ProfilerActivity, profile
        dist.barrier()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                nccl()
            torch.cuda.synchronize()
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
        prof.export_chrome_trace(str(args.trace).replace(".json", f"_rank{rank}.json"))
    if rank == 0:
        row["env"] = environment()
        print(json.dumps({k: v for k, v in row.items() if k != "env"}), flush=True)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
