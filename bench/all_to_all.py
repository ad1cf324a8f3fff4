"""Time the sequence split's all-to-alls alone, at the DiT's sizes, under the NCCL settings of this process.

    NCCL_P2P_NVL_CHUNKSIZE=2097152 torchrun --nproc-per-node 4 bench/all_to_all.py --out a2a.jsonl
    bash bench/full_scale.sh alltoall OUT     # the same for each setting of a list, then a table

One forward of `wclab.parallel.ParallelDiT` makes, per block, the all-to-all of q, k and v (tokens -> heads) and
the one of the attention output (heads -> tokens). This launches them 40 times (one forward's worth, bfloat16,
480×832×81: S = 32 760 tokens, 40 heads of 128) over all ranks (the 1 x P layout) and over pairs of ranks at the
same time (the 2 x 2 layout's two sequence groups), with q, k, v in one call ("qkv") or in three ("q,k,v"), and
appends one JSON line: ms per forward for each, the bytes each rank sends to others, GB/s, and every NCCL_*
variable set. NCCL reads its variables when a communicator is made: one launch per setting.

    python bench/all_to_all.py --table a2a.jsonl [--best nccl_best.env]

prints the lines as a table; ``--best`` writes ``export`` lines for the setting with the least all-to-all time per
forward as `wclab.parallel` makes them (one call per tensor, both layouts summed) when it beats NCCL's defaults by
2 % or more (else an empty file).
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

from wclab.models.dit import DiTConfig  # noqa: E402
from wclab.parallel import split_counts  # noqa: E402

CONFIG = DiTConfig.worldcanvas_14b()
TOKENS = full_size_tokens()
HEADS, HEAD_DIM, BLOCKS = CONFIG.num_heads, CONFIG.head_dim, CONFIG.num_layers


def calls(group, rank: int, size: int, stacked: int) -> tuple[list, int]:
    """The (recv, send, recv_splits, send_splits) of one tokens -> heads all-to-all of ``stacked`` tensors, and of
    the heads -> tokens one of the output; and the bytes this rank sends to the others in one block."""
    tokens, heads = split_counts(TOKENS, size, balanced=False), split_counts(HEADS, size, balanced=True)
    per_head = HEAD_DIM * stacked
    send_in = [tokens[rank] * h * per_head for h in heads]
    recv_in = [t * heads[rank] * per_head for t in tokens]
    send_out = [t * heads[rank] * HEAD_DIM for t in tokens]
    recv_out = [tokens[rank] * h * HEAD_DIM for h in heads]
    make = lambda n: torch.randn(n, device="cuda", dtype=torch.bfloat16)  # noqa: E731
    calls_in = 3 // stacked  # q, k, v in one call or in three
    ops = [(make(sum(recv_in)), make(sum(send_in)), recv_in, send_in)] * calls_in
    ops += [(make(sum(recv_out)), make(sum(send_out)), recv_out, send_out)]
    sent = (sum(send_in) - send_in[rank]) * calls_in + sum(send_out) - send_out[rank]  # elements to other ranks
    return [(r, s, rs, ss, group) for r, s, rs, ss in ops], sent * torch.bfloat16.itemsize


def forward_ms(ops: list, repeat: int) -> float:
    """Median ms of BLOCKS rounds of ``ops`` (one forward's all-to-alls)."""
    def forward():
        for _ in range(BLOCKS):
            for recv, send, recv_splits, send_splits, group in ops:
                dist.all_to_all_single(recv, send, recv_splits, send_splits, group=group)
    return ranks_cuda_ms(forward, repeat)


def setting(row: dict, common: dict) -> dict:
    """The NCCL variables of a row's launch that not every launch had (NCCL_NVLS_ENABLE, which wclab always sets,
    and what the machine's image sets, such as NCCL_VERSION, are in every row)."""
    return {k: v for k, v in row["nccl_env"].items() if common.get(k) != v}


def engine_ms(row: dict) -> float:
    """All-to-all ms per forward as `wclab.parallel` makes them (one call per tensor), summed over the layouts."""
    return sum(v["ms_per_forward"] for k, v in row.items() if k.endswith(" q,k,v"))


def table(path: Path, best: Path | None) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    common = {k: v for k, v in rows[0]["nccl_env"].items() if all(r["nccl_env"].get(k) == v for r in rows)}
    name = lambda row: " ".join(f"{k}={v}" for k, v in setting(row, common).items()) or "NCCL defaults"  # noqa: E731
    keys = [k for k in rows[0] if isinstance(rows[0][k], dict) and "ms_per_forward" in rows[0][k]]
    print(f"every launch: {' '.join(f'{k}={v}' for k, v in common.items())}")
    print("| NCCL setting | " + " | ".join(f"{k}: ms / forward (GB/s)" for k in keys) + " |")
    print("| --- " * (len(keys) + 1) + "|")
    for row in rows:
        cells = [f"{row[k]['ms_per_forward']} ({row[k]['gb_per_s']})" if k in row else "failed" for k in keys]
        print(f"| {name(row)} | " + " | ".join(cells) + " |")
    if best is not None:
        default = next((r for r in rows if not setting(r, common)), None)
        fastest = min(rows, key=engine_ms)
        wins = default is None or engine_ms(fastest) <= 0.98 * engine_ms(default)
        chosen = setting(fastest, common) if wins else {}
        best.write_text("".join(f"export {k}={v}\n" for k, v in chosen.items()))
        print(f"best: {name(fastest) if chosen else 'NCCL defaults'}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="JSON lines file to append to")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--table", type=Path, help="print this JSON lines file as a table instead of measuring")
    p.add_argument("--best", type=Path, help="with --table: write the fastest setting's export lines here")
    args = p.parse_args()
    if args.table:
        table(args.table, args.best)
        return 0
    if args.out is None:
        p.error("--out is required when measuring")
    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    rank, world = dist.get_rank(), dist.get_world_size()
    pairs = [dist.new_group([r, r + 1]) for r in range(0, world - 1, 2)] if world >= 4 else []
    row = {"nccl_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("NCCL_")},
           "nccl_version": ".".join(map(str, torch.cuda.nccl.version())), "ranks": world}
    layouts = [(f"1x{world}", dist.group.WORLD, rank, world)]
    if pairs:
        layouts.append((f"{world // 2}x2", pairs[rank // 2], rank % 2, 2))
    for name, group, group_rank, size in layouts:
        for stacked, label in ((3, "qkv"), (1, "q,k,v")):
            ops, sent = calls(group, group_rank, size, stacked)
            ms = forward_ms(ops, args.repeat)
            row[f"{name} {label}"] = {"ms_per_forward": round(ms, 2), "sent_gb_per_forward": round(
                sent * BLOCKS / 1e9, 2), "gb_per_s": round(sent * BLOCKS / ms / 1e6, 1)}
    if rank == 0:
        row["env"] = environment()
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k != "env"}))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
