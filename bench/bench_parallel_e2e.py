"""Whole generations on several GPUs under torchrun: sequence split, CFG split and both, against one GPU.

    torchrun --nproc-per-node 4 bench/bench_parallel_e2e.py --checkpoints /disk/ckpt --compile \\
        --layouts 1x1,1x2,2x1,1x4,2x2 --steps 4 --full 4:50,2:50 --out bench/out/parallel_e2e
    torchrun --nproc-per-node 4 bench/bench_parallel_e2e.py --random --compile --attention flash4 ...  # no files
    torchrun --nproc-per-node 2 bench/bench_parallel_e2e.py --tiny --layouts 1x1,1x2,2x1 --steps 2 --out /tmp/p

Every rank loads the checkpoints once (``load_models`` of the released layout, bf16 on its GPU). A layout
``CxS`` runs on the first C·S ranks as C CFG groups × S sequence ranks (`wclab.parallel.make_mesh`'s layout;
1x1 is the plain single-GPU `Session`); the other ranks wait. Each run is a real generation through `Session`:
T5 encoding + VAE encode of the start image (``prepare_s``), the denoising steps (``denoise_s``, every step timed;
the first step of a layout includes compiling its shapes and is reported apart), and the tiled VAE decode
(``decode_s``; its tiles split over the layout's ranks by `wclab.parallel.ParallelVAE`, on rank 0 alone for 1x1).
``--full N:steps`` then runs the faster layout of N GPUs (lower median step time in the scan) for that many steps;
``--distilled`` makes every run the 4-step distilled preset (CFG 1, so sequence-split layouts only). Each run
writes ``<out>/<name>.json`` in bench_e2e.py's report format (``setup.ranks``,
``setup.steps``, ``summary.total_s``...) and compares its final latents with the 1x1 run of the same step count
(when there is one): ``max_rel_err_vs_1gpu`` = max |Δ| / max |reference|, ``mean_rel_err_vs_1gpu`` = mean |Δ| /
mean |reference|, ``decoded_video_equal_to_1gpu`` (uint8 frames; expected whenever the latents are bitwise equal).
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import GiB, GpuWatch, environment, random_models, reset_peak, sync, used_gpus  # noqa: E402

from wclab.image import solid_image  # noqa: E402
from wclab.models.fast import relative_error  # noqa: E402
from wclab.models.loading import load_models  # noqa: E402
from wclab.parallel import (SEQUENCE_ATTENTION, init_distributed, parallelize_models,  # noqa: E402
                            release_windows, shutdown)
from wclab.sampler import Session, Settings  # noqa: E402

FULL = dict(height=480, width=832, frames=81)
TINY = dict(height=64, width=112, frames=9)


@functools.lru_cache(maxsize=None)
def layout_mesh(cfg: int, seq: int):
    """A ("cfg", "seq") mesh over ranks 0 .. cfg·seq-1 (every rank must call this); None for 1x1. Made once per
    layout: a layout's later runs (the ``--full`` run after its scan) reuse its process groups, whose NCCL
    connections and compiled graphs the first run set up, as a process generating again would."""
    from torch.distributed.device_mesh import DeviceMesh

    if cfg * seq == 1:
        return None
    device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
    return DeviceMesh(device_type, torch.arange(cfg * seq).reshape(cfg, seq), mesh_dim_names=("cfg", "seq"))


def settings_for(steps: int, distilled: bool) -> Settings:
    """The runs' settings: ``steps`` with CFG 5, or the 4-step distilled preset (CFG 1)."""
    return Settings.step_distilled(seed=0, record="none") if distilled else Settings(steps=steps, seed=0,
                                                                                      record="none")


def generate(models, scene, size: dict, steps: int, mesh, distilled: bool = False,
             sequence_attention: str = "auto", nccl_window: bool = False) -> dict:
    """One generation on this rank (a member of ``mesh``): per-stage seconds, step times, final latents."""
    rank = dist.get_rank()
    used = parallelize_models(models, mesh, sequence_attention, nccl_window) if mesh is not None else models
    reset_peak()
    t0 = time.perf_counter()
    session = Session(used, scene, solid_image(size["height"], size["width"], (90, 120, 150)),
                      settings_for(steps, distilled), progress=False)
    sync()
    prepare_s = time.perf_counter() - t0
    step_s = []
    for _ in range(steps):
        t = time.perf_counter()
        session.step()
        sync()
        step_s.append(time.perf_counter() - t)
    t = time.perf_counter()
    video = None
    if mesh is not None or rank == 0:  # parallel: every rank decodes its share of the tiles
        video = session.decode()
        sync()
    decode_s = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / GiB if torch.cuda.is_available() else 0.0
    engine = used.high.sequence_attention if mesh is not None else None  # "auto" resolved for this layout
    return dict(prepare_s=prepare_s, step_s=step_s, decode_s=decode_s, peak_gib=peak, sequence_engine=engine,
                latents=session.latents.float().cpu(), video=video)


def run_layout(name: str, models, scene, size: dict, steps: int, cfg: int, seq: int, reference, out: Path,
               setup: dict) -> dict:
    """Run layout ``cfg``x``seq`` (a collective over all ranks); rank 0 writes ``out/name.json``."""
    rank, n = dist.get_rank(), cfg * seq
    mesh = layout_mesh(cfg, seq)
    with GpuWatch(used_gpus(n) if rank == 0 else []) as watch:  # the layout's GPUs' clocks, throttle reasons
        result = (generate(models, scene, size, steps, mesh, setup["distilled"], setup["sequence_attention"],
                           setup["nccl_window"] and seq > 1) if rank < n else None)
    release_windows()  # this layout's (its groups are not used again)
    peaks = [None] * dist.get_world_size()
    dist.all_gather_object(peaks, result["peak_gib"] if result else None)
    dist.barrier()
    if rank != 0:
        return {}
    steps_s = result["step_s"]
    timed = steps_s[1:] or steps_s
    denoise_s = sum(steps_s)
    compile_extra = max(steps_s[0] - statistics.median(timed), 0.0)
    report = {
        "title": f"WorldCanvas generation on {n} GPU(s): {cfg} CFG x {seq} sequence",
        "env": environment(),
        "setup": {**setup, "ranks": n, "layout": f"{cfg}x{seq}", "cfg_groups": cfg, "sequence_ranks": seq,
                  "sequence_engine": result["sequence_engine"] if seq > 1 else None, "steps": steps, "video": size},
        "summary": {
            "prepare_s (T5 + VAE encode)": round(result["prepare_s"], 2),
            "denoise_s": round(denoise_s, 2),
            "step_median_s": round(statistics.median(timed), 3),
            "first_step_s": round(steps_s[0], 2),
            "vae_decode_s": round(result["decode_s"], 2),
            "total_s": round(result["prepare_s"] + denoise_s + result["decode_s"], 2),
            "total_s (compile excluded)": round(result["prepare_s"] + denoise_s - compile_extra + result["decode_s"],
                                                2),
            "peak_allocated_gib_per_rank": [round(p, 2) for p in peaks if p is not None],
        },
        "step_s": [round(s, 3) for s in steps_s],
        "gpus": watch.summary(),
    }
    if reference is not None:
        ref = reference["latents"]
        err = relative_error(result["latents"], ref)
        report["summary"]["decoded_video_equal_to_1gpu"] = bool((result["video"] == reference["video"]).all())
        report["summary"]["max_rel_err_vs_1gpu"] = err["max_rel"]
        report["summary"]["mean_rel_err_vs_1gpu"] = err["mean_rel"]
        report["summary"]["bitwise_equal_to_1gpu"] = bool(torch.equal(result["latents"], ref))
    (out / f"{name}.json").write_text(json.dumps(report, indent=1))
    print(f"{name}: {json.dumps(report['summary'])}", flush=True)
    return {"report": report, "reference": {"latents": result["latents"], "video": result["video"]}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", type=Path, default=None)
    p.add_argument("--tiny", action="store_true", help="tiny random checkpoints, CPU gloo (seconds)")
    p.add_argument("--random", action="store_true",
                   help="full-size random weights built on each GPU (no checkpoints; seconds instead of a load)")
    p.add_argument("--layouts", default="1x1,1x2,2x1", help="CxS layouts to scan, comma-separated")
    p.add_argument("--steps", type=int, default=4, help="steps of each scan run")
    p.add_argument("--full", default="", help="N:steps runs of the faster N-GPU layout, e.g. 4:50,2:50")
    p.add_argument("--distilled", action="store_true",
                   help="the 4-step distilled preset (CFG 1: sequence-split layouts 1xS only; --steps 4, N:4)")
    p.add_argument("--compile", action="store_true", help="wclab.models.fast.speed_up on both experts")
    p.add_argument("--sequence-attention", default="auto", choices=SEQUENCE_ATTENTION,
                   help="how split tokens attend (wclab.parallel.ParallelDiT; default auto)")
    p.add_argument("--attention", default=None, help="attention backend (default: auto)")
    p.add_argument("--nccl-window", action="store_true",
                   help="parallelize_models(nccl_window=True): split forwards in one NCCL symmetric window (GPUs)")
    p.add_argument("--out", type=Path, default=Path("bench/out/parallel_e2e"))
    args = p.parse_args()
    layouts = [tuple(int(v) for v in l.split("x")) for l in args.layouts.split(",") if l]
    if args.distilled:
        full_steps = {int(spec.split(":")[1]) for spec in args.full.split(",") if spec}
        if args.steps != 4 or full_steps - {4}:
            p.error("--distilled runs 4 steps: use --steps 4 and --full N:4")
        if any(c > 1 for c, _ in layouts):
            p.error("--distilled has no negative branch to split off: use 1xS layouts")

    init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if args.tiny:
        from wclab.profile import tiny_checkpoints

        if rank == 0:
            tiny_checkpoints()
        dist.barrier()
        args.checkpoints, size = tiny_checkpoints(), TINY
    else:
        size = FULL
    if args.checkpoints is None and not args.random:
        p.error("--checkpoints DIR (released layout), --random or --tiny")
    args.out.mkdir(parents=True, exist_ok=True)
    from bench_e2e import synthetic_scene

    scene = synthetic_scene(**size)
    t0 = time.perf_counter()
    if args.random:
        models = random_models(device, dtype, Path(tempfile.mkdtemp(prefix="wclab_tokenizer_")))
    else:
        models = load_models(args.checkpoints, device=device, dtype=dtype, preview=False)
    load_s = time.perf_counter() - t0
    if args.attention:
        from wclab.models.attention import set_attention_backend

        set_attention_backend(args.attention)
    if args.compile:
        from wclab.models.fast import speed_up

        speed_up(models.high)
        speed_up(models.low)
    from wclab.models.attention import get_attention_backend

    from wclab.models import attention as attention_mod

    backend = args.attention or get_attention_backend()
    setup = {"checkpoints": "random weights" if args.random else str(args.checkpoints), "dtype": str(dtype),
             "compile": bool(args.compile), "attention": backend,
             "self_attention_kernel": attention_mod._AUTO if backend == "auto" else backend,
             "load_s_rank0": round(load_s, 1), "world": world, "tiled_vae": True, "vae_tiles_split": True,
             "distilled": args.distilled, "cfg": settings_for(args.steps, args.distilled).cfg,
             "sequence_attention": args.sequence_attention, "nccl_window": args.nccl_window}
    if rank == 0:
        print(f"loaded in {load_s:.1f} s on {world} ranks", flush=True)

    results, reference = {}, {}
    for cfg, seq in layouts:
        if cfg * seq > world:
            continue
        name = f"scan_{cfg}x{seq}_{args.steps}steps"
        r = run_layout(name, models, scene, size, args.steps, cfg, seq, reference.get(args.steps), args.out, setup)
        if rank == 0:
            results[(cfg, seq)] = r["report"]["summary"]["step_median_s"]
            if (cfg, seq) == (1, 1):
                reference[args.steps] = r["reference"]
    for spec in [s for s in args.full.split(",") if s]:
        n, steps = (int(v) for v in spec.split(":"))
        choice = [None]
        if rank == 0:
            options = {k: v for k, v in results.items() if k[0] * k[1] == n}
            choice[0] = min(options, key=options.get) if options else (1, n)
        dist.broadcast_object_list(choice, src=0)
        cfg, seq = choice[0]
        if cfg * seq > world:
            continue
        run_layout(f"full_{cfg}x{seq}_{steps}steps", models, scene, size, steps, cfg, seq, reference.get(steps),
                   args.out, setup)
    if rank == 0:
        (args.out / "scan.json").write_text(json.dumps({f"{c}x{s}": t for (c, s), t in results.items()}, indent=1))
    dist.barrier()
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
