"""Sequence-parallel DiT forward (wclab.parallel) on 1/2/4/8 GPUs: seconds per forward, speed-up, memory, error.

    export NCCL_NVLS_ENABLE=0   # also forced by wclab.parallel.init_distributed
    for n in 1 2 4 8; do torchrun --nproc-per-node $n bench/parallel_scaling.py --out bench/out/parallel.jsonl; done
    ... --compile --attention flash4 --warmup 2      # the compiled path with FlashAttention 4
    python bench/parallel_scaling.py --table bench/out/parallel.jsonl     # markdown rows for bench/RESULTS.md
    torchrun --nproc-per-node 2 bench/parallel_scaling.py --tiny          # CPU, gloo, tiny DiT (seconds; CI)

One WorldCanvas expert (Wan2.2 A14B DiT, random bf16 weights) at 480x832x81 (token grid 21x30x52 = 32760 tokens),
512 text tokens, trajectory bias on (log 30 on three objects' tokens x caption spans). Each rank holds the whole
model; every run appends one JSON line (rank 0). With one rank the unsplit `DiT` is timed too (the baseline).
--check: rank 0 also runs the unsplit DiT and reports max|Δ|/max|ref| of the split output (default with --tiny).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch._inductor.utils import run_and_get_code

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (GpuWatch, environment, kernel_timeline, memory, reset_peak, timed,  # noqa: E402
                      tiny_dit_config, used_gpus)

from wclab.encode.bias import BiasSpec  # noqa: E402
from wclab.models.conditioning import latent_shape  # noqa: E402
from wclab.models import attention as attention_mod  # noqa: E402
from wclab.models.attention import BACKENDS  # noqa: E402
from wclab.models.dit import DiT, DiTConfig  # noqa: E402
from wclab.models.fast import speed_up  # noqa: E402
from wclab.parallel import SEQUENCE_ATTENTION, ParallelDiT, init_distributed, pool_bytes, shutdown  # noqa: E402

TINY_CONFIG = tiny_dit_config()


def make_inputs(cfg: DiTConfig, height: int, width: int, frames: int, text_len: int, device, dtype) -> dict:
    """x [1, in_dim, F', H/8, W/8], timestep [1], context [1, L, text_dim], bias [1, 1, S, L]: three objects,
    each a box of a third of the token rows and a quarter of the columns, bound to a span of L/8 text tokens."""
    g = torch.Generator().manual_seed(0)
    _, f, h, w = latent_shape(height, width, frames)[-4:]
    grid = (f, h // 2, w // 2)
    masks = torch.zeros(3, *grid, dtype=torch.bool)
    for k in range(3):
        r0, c0 = k * grid[1] // 3, k * grid[2] // 4
        masks[k, :, r0:r0 + max(grid[1] // 3, 1), c0:c0 + max(grid[2] // 4, 1)] = True
    span = max(text_len // 8, 1)
    spans = tuple((1 + k * span, (k + 1) * span) for k in range(3))
    return dict(x=torch.randn(1, cfg.in_dim, f, h, w, generator=g).to(device, dtype),
                timestep=torch.tensor([900.0], device=device, dtype=dtype),
                context=(0.3 * torch.randn(1, text_len, cfg.text_dim, generator=g)).to(device, dtype),
                bias=BiasSpec(masks.reshape(3, -1), spans, 30.0).dense(text_len, dtype, device))


def run(args) -> None:
    if "RANK" not in os.environ:  # plain `python bench/parallel_scaling.py`: one process
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    mesh = init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if mesh.device_type == "cuda" else torch.device("cpu")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    cfg = TINY_CONFIG if args.tiny else DiTConfig.worldcanvas_14b()
    size = (128, 224, 17, 24) if args.tiny else (args.height, args.width, args.frames, args.text_len)
    torch.manual_seed(0)  # the same random weights on every rank
    model = DiT.from_config(cfg, device=device, dtype=dtype).eval().requires_grad_(False)
    model.set_attention_backend(args.attention)
    if args.compile:
        speed_up(model, backend="eager" if args.tiny else "inductor")
    inputs = make_inputs(cfg, *size, device, dtype)
    split = ParallelDiT(model, mesh, sequence_attention=args.sequence_attention, nccl_window=args.nccl_window)
    record = {"ranks": world, "height": size[0], "width": size[1], "frames": size[2], "text_len": size[3],
              "tokens": int(inputs["bias"].shape[2]), "dtype": str(dtype).removeprefix("torch."),
              "model": "tiny" if args.tiny else "worldcanvas_14b (random weights)", "compile": args.compile,
              "attention": attention_mod._AUTO if args.attention == "auto" else args.attention,
              "sequence_attention": split.sequence_attention, "nccl_window": args.nccl_window,
              "env": environment()}
    with torch.no_grad():
        reset_peak()
        dist.barrier()
        if args.code:  # compile now, keeping the generated code (rank 0 writes it)
            _, codes = run_and_get_code(lambda: split(**inputs))
            if rank == 0:
                Path(args.code).write_text("\n\n".join(codes))
        with GpuWatch(used_gpus(world) if rank == 0 else []) as watch:  # clocks, throttle reasons while timing
            record["split"], out = timed(lambda: split(**inputs), repeat=args.repeat, warmup=args.warmup)
        if args.rested:  # one more forward after every rank has idled: the clocks' headroom after a pause
            dist.barrier()
            time.sleep(args.rested)
            record["rested"], _ = timed(lambda: split(**inputs), repeat=1, warmup=0)
            record["rested"]["after_idle_s"] = args.rested
        record["split_memory"], record["split_gpus"] = memory(), watch.summary()
        if split.window is not None and split.window.pool is not None:
            segments = split.window.pool.snapshot()
            record["nccl_window"] = {"gib": round(split.window.size_bytes / 2 ** 30, 3), "segments": len(segments),
                                     "pool_gib": round(pool_bytes(segments) / 2 ** 30, 3),
                                     "probed_gib": round(split.window.probed_bytes / 2 ** 30, 3)}
        if world == 1:
            with GpuWatch(used_gpus(1)) as watch:
                record["unsplit"], _ = timed(lambda: model(**inputs), repeat=args.repeat, warmup=args.warmup)
            record["unsplit_gpus"] = watch.summary()
        if (args.check or args.tiny) and rank == 0:
            ref = model(**inputs).float()
            err = (out.float() - ref).abs().max() / ref.abs().max()
            record["check_max_rel_err"] = float(err)
        if args.profile:
            record["profile"] = profile_forward(lambda: split(**inputs), device, args.profile if rank == 0 else None)
        dist.barrier()
    if rank == 0:
        line = json.dumps(record, default=str)
        print(line, flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as f:
                f.write(line + "\n")
    dist.barrier()
    shutdown()


# NCCL kernels; copy-engine exchanges (peer copies, own part); the push engine's storing kernels and barriers
EXCHANGES = ("nccl", "memcpy ptop", "memcpy dtod", "push_rows", "push_back", "barrier")
KERNEL_KINDS = (("collective", EXCHANGES + ("gloo", "c10d", "all_to_all", "alltoall", "allgather")),
                ("attention", ("flash", "fmha", "attention", "sdpa")),
                ("matmul", ("gemm", "nvjet", "matmul", "addmm", "cutlass")))


def profile_forward(forward, device: torch.device, table_path) -> dict:
    """One forward under torch.profiler: seconds of device time by kernel kind (collective, attention, matmul,
    other; by name), the wall time and the kernels' timeline (`benchlib.kernel_timeline`: exposed exchanges,
    overlap, idle and where it falls); ``table_path`` (rank 0): the 30 costliest ops as a text table, and the
    Chrome trace beside it (``TABLE.trace.json.gz``)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        t0 = time.perf_counter()
        forward()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:  # the kernels' timeline: what overlapped, where the GPU waited
        trace_file = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace_file))
        trace = json.loads(trace_file.read_text())
    if table_path:
        with gzip.open(f"{table_path}.trace.json.gz", "wt") as f:
            json.dump(trace, f)
    events = prof.key_averages()
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    kinds = {k: 0.0 for k, _ in KERNEL_KINDS} | {"other": 0.0}
    for e in events:
        if cuda and (e.device_type != torch.autograd.DeviceType.CUDA or getattr(e, "is_user_annotation", False)):
            continue  # CPU-side ops and ranges drawn on the GPU timeline (nccl:all_to_all...): count kernels only
        name = e.key.lower()
        kind = next((k for k, words in KERNEL_KINDS if any(w in name for w in words)), "other")
        kinds[kind] += getattr(e, attr) / 1e6
    if table_path:
        Path(table_path).write_text(events.table(sort_by=attr, row_limit=30, max_name_column_width=90))
    return {"wall_s": round(wall, 4), "device_s_by_kind": {k: round(v, 4) for k, v in kinds.items()},
            "device_s_total": round(sum(kinds.values()), 4),
            "timeline": kernel_timeline(trace, collective=EXCHANGES)}


def table(path: Path) -> str:
    """Markdown rows from a JSON-lines file of runs: ranks, s/forward, speed-up vs the 1-rank unsplit DiT; for a
    profiled run the exchange nothing hid and the idle time of its profiled forward (`benchlib.kernel_timeline`)."""
    runs = sorted((json.loads(line) for line in path.read_text().splitlines() if line.strip()),
                  key=lambda r: r["ranks"])
    baseline = next((r for r in runs if "unsplit" in r), None)
    base = baseline["unsplit"]["median_s"] if baseline else None
    rows = ["| GPUs | path | size (HxWxT) | tokens | s / forward (median) | speed-up | peak GiB / GPU | max rel. err "
            "| lowest SM clock while timed | profiled: exposed exchange / idle (ms) |", "|---" * 10 + "|"]
    if base:
        clock = lowest_clock(baseline.get("unsplit_gpus"))
        rows.append(f"| 1 (unsplit DiT) | | | | {base:.3f} | 1.00x | | | {clock} | |")
    for r in runs:
        s = r["split"]["median_s"]
        speed_up = f"{base / s:.2f}x" if base else "-"
        path = f"{'compiled' if r.get('compile') else 'eager'}, {r.get('attention', 'auto')}"
        if r["ranks"] > 1 and "sequence_attention" in r:
            path += f", {r['sequence_attention']}"
        if r.get("nccl_window"):
            path += ", NCCL window"
        timeline = r.get("profile", {}).get("timeline", {})
        waits = (f"{timeline['collective_only_s'] * 1e3:.1f} / {timeline['idle_s'] * 1e3:.1f}"
                 if timeline.get("kernels") else "-")
        rows.append(f"| {r['ranks']} | {path} | {r['height']}x{r['width']}x{r['frames']} | {r['tokens']} | {s:.3f} | "
                    f"{speed_up} | {r['split_memory'].get('peak_allocated_gib', '-')} | "
                    f"{r.get('check_max_rel_err', '-')} | {lowest_clock(r.get('split_gpus'))} | {waits} |")
    return "\n".join(rows)


def lowest_clock(gpus: Optional[list[dict]]) -> str:
    """The lowest SM clock any GPU showed while timed, against its max, and the reasons it was held down."""
    seen = [g for g in gpus or [] if g["min_sm_mhz"] is not None]
    if not seen:
        return "-"
    low = min(seen, key=lambda g: g["min_sm_mhz"])
    reasons = sorted({n for g in seen for n in g["clock_reasons"]})
    return f"{low['min_sm_mhz']:.0f} / {low['max_sm_mhz']:.0f} MHz" + (f" ({', '.join(reasons)})" if reasons else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--height", type=int, default=480, help="pixels")
    p.add_argument("--width", type=int, default=832, help="pixels")
    p.add_argument("--frames", type=int, default=81, help="4k+1")
    p.add_argument("--text-len", type=int, default=512, help="text tokens")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--check", action="store_true", help="compare with the unsplit DiT on rank 0")
    p.add_argument("--compile", action="store_true", help="wclab.models.fast.speed_up (compiled blocks)")
    p.add_argument("--attention", default="auto", choices=BACKENDS, help="attention backend (default: auto)")
    p.add_argument("--sequence-attention", default="auto", choices=SEQUENCE_ATTENTION,
                   help="how the split tokens attend (wclab.parallel.ParallelDiT; default auto)")
    p.add_argument("--nccl-window", action="store_true",
                   help="ParallelDiT(nccl_window=True): the split blocks' memory as one NCCL symmetric window")
    p.add_argument("--rested", type=float, default=0.0, metavar="S",
                   help="also time one split forward after every rank has idled S seconds")
    p.add_argument("--code", default=None, metavar="FILE",
                   help="write the code Inductor generates for the forward (with --compile) to FILE (rank 0)")
    p.add_argument("--tiny", action="store_true", help="tiny random DiT, float32, 128x224x17 (CPU)")
    p.add_argument("--out", default=None, help="append the run as one JSON line")
    p.add_argument("--profile", default=None, metavar="TABLE",
                   help="profile one more forward: device time by kernel kind in the JSON line, rank 0's 30 "
                        "costliest ops written to TABLE")
    p.add_argument("--table", default=None, help="print markdown rows from a JSON-lines file and exit")
    args = p.parse_args()
    if args.table:
        print(table(Path(args.table)))
    else:
        run(args)


if __name__ == "__main__":
    main()
