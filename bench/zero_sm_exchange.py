"""NCCL's copy-engine ("zero-CTA") all-to-all and all-gather against its kernels, alone and beside GEMMs.

    torchrun --nproc-per-node 4 bench/zero_sm_exchange.py --out zero_sm.jsonl

The sequence split's exchanges run as NCCL kernels, which need SMs: beside a cuBLAS GEMM that holds every SM
they mostly wait (bench/RESULTS.md, twelfth pass). NCCL >= 2.28 can run AllToAll and AllGather on the GPU's copy
engines instead, with no SM, when the communicator's CTA policy is NCCL_CTA_POLICY_ZERO and both buffers lie in
symmetric windows (memory from the group's ``mem_allocator`` pool, registered with ``register_mem_pool(pool,
symm=True)``) on one node. This times, per forward of the DiT at its full size (40 blocks, bf16, 480×832×81: S =
32 760 tokens, 5120 channels) over all ranks, with one communicator of each kind:

- ``a2a``: 4 equal-split all-to-alls per block (q, k, v tokens -> heads, the output back), as Ulysses makes them;
- ``gather``: 2 all-gathers per block (k and v), as the k / v gather makes them;
- ``gemm``: 3 GEMMs per block, [S/P, 5120] @ [5120, 5120] (q, k, v projections of a rank's tokens), alone;
- ``a2a+gemm``: per block, q's and k's all-to-alls issued (async) and then the 3 GEMMs beside them, then waited:
  ideal overlap costs max(gemm, 2/4 a2a), none their sum.

and appends one JSON line (ms per forward of each, whether the two communicators' all-to-alls gave bitwise equal
results, and the NCCL kernel / memcpy names a profiler saw in one block of each).
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

CONFIG = DiTConfig.worldcanvas_14b()
TOKENS, DIM, BLOCKS = full_size_tokens(), CONFIG.dim, CONFIG.num_layers


def zero_cta_group(ranks: list[int]):
    """A new NCCL group over ``ranks`` whose communicator runs what it can on copy engines (zero-CTA policy)."""
    opts = dist.ProcessGroupNCCL.Options()
    opts.config.cta_policy = dist.ProcessGroupNCCL.NCCL_CTA_POLICY_ZERO
    return dist.new_group(ranks, pg_options=opts)


def buffers(group, world: int, device, symmetric: bool) -> dict:
    """The exchange buffers of one block (send and receive for the all-to-all and the all-gather), in a
    symmetric-window pool of ``group`` when ``symmetric``."""
    local = TOKENS // world

    def make():
        return {"send": torch.randn(local * DIM, device=device, dtype=torch.bfloat16),
                "recv": torch.empty(local * DIM, device=device, dtype=torch.bfloat16),
                "gathered": torch.empty(world * local * DIM, device=device, dtype=torch.bfloat16),
                "send2": torch.randn(local * DIM, device=device, dtype=torch.bfloat16),
                "recv2": torch.empty(local * DIM, device=device, dtype=torch.bfloat16)}
    if not symmetric:
        return make()
    backend = group._get_backend(device)
    pool = torch.cuda.MemPool(backend.mem_allocator)
    with torch.cuda.use_mem_pool(pool):
        bufs = make()
    backend.register_mem_pool(pool, symm=True)
    bufs["pool"] = pool
    return bufs


def measure(group, bufs: dict, weight: torch.Tensor, x: torch.Tensor, repeat: int) -> dict:
    def a2a(async_op=False):
        return dist.all_to_all_single(bufs["recv"], bufs["send"], group=group, async_op=async_op)

    def forward_a2a():
        for _ in range(BLOCKS * 4):
            a2a()

    def forward_gather():
        for _ in range(BLOCKS * 2):
            dist.all_gather_into_tensor(bufs["gathered"], bufs["send"], group=group)

    def forward_gemm():
        for _ in range(BLOCKS * 3):
            torch.mm(x, weight)

    def forward_overlap():
        for _ in range(BLOCKS):
            works = [a2a(async_op=True),
                     dist.all_to_all_single(bufs["recv2"], bufs["send2"], group=group, async_op=True)]
            for _ in range(3):
                torch.mm(x, weight)
            for w in works:
                w.wait()
    return {name: round(ranks_cuda_ms(fn, repeat), 2) for name, fn in
            (("a2a", forward_a2a), ("gather", forward_gather), ("gemm", forward_gemm),
             ("a2a+gemm", forward_overlap))}


def device_names(fn) -> list[str]:
    """Names of the device-side events (kernels, memcpys) a profiler records during ``fn``."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sorted({e.key for e in prof.key_averages() if "nccl" in e.key.lower() or "memcpy" in e.key.lower()})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="JSON lines file to append to")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--kinds", default="012", help="which kinds to run, by index (default: all)")
    args = p.parse_args()
    local = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local)
    torch.cuda.set_device(device)
    # not the legacy default stream: NCCL 2.28's copy-engine path launches cudaMemcpyBatchAsync, which refuses it
    # (a collective with async_op=False runs on the current stream)
    torch.cuda.set_stream(torch.cuda.Stream(device))
    dist.init_process_group("nccl", device_id=device)
    rank, world = dist.get_rank(), dist.get_world_size()
    zero = zero_cta_group(list(range(world)))
    torch.manual_seed(rank)
    weight = torch.randn(DIM, DIM, device=device, dtype=torch.bfloat16) / DIM ** 0.5
    x = torch.randn(TOKENS // world, DIM, device=device, dtype=torch.bfloat16)
    row = {"ranks": world, "nccl_version": ".".join(map(str, torch.cuda.nccl.version())),
           "tokens_per_rank": TOKENS // world, "mb_per_tensor": round(TOKENS // world * DIM * 2 / 1e6, 1)}
    kinds = {"kernels (default policy, cudaMalloc buffers)": (dist.group.WORLD, False),
             "copy engines (zero-CTA policy, symmetric windows)": (zero, True),
             "zero-CTA policy, cudaMalloc buffers": (zero, False)}
    results = {}
    for index, (name, (group, symmetric)) in enumerate(kinds.items()):
        if str(index) not in args.kinds:
            continue
        try:
            torch.manual_seed(rank)
            bufs = buffers(group, world, device, symmetric)
            row[name] = measure(group, bufs, weight, x, args.repeat)
            dist.all_to_all_single(bufs["recv"], bufs["send"], group=group)
            torch.cuda.synchronize()
            results[name] = bufs["recv"].clone()
            row[name]["device_ops"] = device_names(
                lambda: dist.all_to_all_single(bufs["recv"], bufs["send"], group=group))
        except Exception as e:  # a kind this torch / NCCL cannot run: record it, measure the others
            row[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
    names = list(results)
    row["a2a_bitwise_equal"] = all(torch.equal(results[names[0]], results[n]) for n in names[1:])
    if rank == 0:
        row["env"] = environment()
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k != "env"}, indent=1))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
