"""The multi-GPU launcher itself, timed: ``torchrun --nproc-per-node N -m wclab.parallel generate`` for each N.

    python3 bench/cli_runs.py --checkpoints /wclab_ckpt --example full/ball --gpus 1,2,4 --steps 8 \\
        --compile --attention flash4 --out bench/out/cli
    python3 bench/cli_runs.py --tiny --gpus 1,2 --steps 2 --out /tmp/cli     # CPU (gloo), tiny checkpoints

Each N runs the launcher as a researcher would (a fresh torchrun: load the checkpoints on every rank, compile,
T5 + VAE encode, the steps, the tiled decode, the .mp4 and the final latents written by rank 0), on GPUs 0..N-1
(``CUDA_VISIBLE_DEVICES``), one N after another. The report (``<out>/cli_runs.json``) has per N: the wall time of
the whole command, the stage times the launcher prints (``load``, ``prepare``, ``denoise``, ``decode``; the first
step's compilation is inside ``denoise``), each GPU's peak used memory (nvidia-smi every 0.5 s, whole device),
the video file's size, and the final latents against the first N's (``max_rel_err`` = max |Δ| / max |first|,
``mean_rel_err`` = mean |Δ| / mean |first|, ``bitwise_equal``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import PeakSampler, environment, gpu_memory_used_mib  # noqa: E402

from wclab.models.fast import relative_error  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STAGES = re.compile(r"stages \(rank 0\): (.*)")


def parse_stages(output: str) -> dict:
    """``{"load": 41.2, ...}`` from the launcher's ``stages (rank 0): load 41.20 s, prepare ...`` line ({} if none)."""
    found = STAGES.findall(output)
    return {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+) s", found[-1])} if found else {}


def compare(latents: torch.Tensor, first: torch.Tensor) -> dict:
    """How far ``latents`` are from ``first`` (the first N's run)."""
    error = relative_error(latents, first)
    return {"max_rel_err": error["max_rel"], "mean_rel_err": error["mean_rel"],
            "bitwise_equal": bool(torch.equal(latents, first))}


def launch(n: int, generate_args: list[str], port: int, gpus: bool, log: Path) -> dict:
    """One torchrun of the launcher on ``n`` processes; its wall time, stage times and per-GPU peak memory."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-addr", "127.0.0.1",
           "--master-port", str(port), "-m", "wclab.parallel", *generate_args]
    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(n))
    monitor = PeakSampler(lambda: gpu_memory_used_mib(None) if gpus else {}, 0.5)
    t0 = time.perf_counter()
    with monitor:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    log.write_text(f"$ {' '.join(cmd)}\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    run = {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "wall_s": round(wall, 2),
           "stages_s": parse_stages(proc.stdout)}
    if gpus:
        run["peak_used_mib_per_gpu"] = {k: v for k, v in monitor.peak.items() if int(k[3:]) < n}
        run["idle_used_mib_per_gpu"] = {k: v for k, v in monitor.base.items() if int(k[3:]) < n}
    if proc.returncode != 0:
        run["error_tail"] = (proc.stdout[-1500:] + proc.stderr[-3000:])
    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", type=Path, default=None, help="released layout (e.g. python -m wclab.testing "
                   "DIR --size released)")
    p.add_argument("--tiny", action="store_true", help="the tiny random checkpoints on CPU (gloo)")
    p.add_argument("--example", default=None, help="examples/<size>/<name> without extension (default: full/ball, "
                   "ci/ball with --tiny)")
    p.add_argument("--gpus", default="1,2,4", help="process counts, comma-separated, run in this order")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--attention", default=None, help="the launcher's --attention (default: its own)")
    p.add_argument("--port", type=int, default=29530)
    p.add_argument("--out", type=Path, default=Path("bench/out/cli"))
    args = p.parse_args()
    if args.tiny:
        from wclab.profile import tiny_checkpoints

        args.checkpoints = tiny_checkpoints()
    if args.checkpoints is None:
        p.error("--checkpoints DIR or --tiny")
    example = REPO / "examples" / (args.example or ("ci/ball" if args.tiny else "full/ball"))
    for suffix in (".json", ".png"):
        if not example.with_suffix(suffix).is_file():
            p.error(f"--example: {example.with_suffix(suffix)} is missing")
    counts = [int(n) for n in args.gpus.split(",") if n]
    gpus = torch.cuda.is_available()
    if gpus and max(counts) > torch.cuda.device_count():
        p.error(f"--gpus {args.gpus}: only {torch.cuda.device_count()} GPUs here")
    args.out.mkdir(parents=True, exist_ok=True)

    report = {"title": "torchrun -m wclab.parallel generate, timed per process count", "env": environment(),
              "setup": {"checkpoints": str(args.checkpoints), "example": str(example.relative_to(REPO)),
                        "steps": args.steps, "compile": args.compile, "attention": args.attention or "launcher default",
                        "process_counts": counts},
              "runs": {}}
    first = None
    for i, n in enumerate(counts):
        video, latents = args.out / f"cli_{n}proc.mp4", args.out / f"cli_{n}proc.safetensors"
        generate = ["generate", "--conditions", str(example.with_suffix(".json")), "--image",
                    str(example.with_suffix(".png")), "--checkpoints", str(args.checkpoints), "--out", str(video),
                    "--save-latents", str(latents), "--steps", str(args.steps),
                    *(["--compile"] if args.compile else []),
                    *(["--attention", args.attention] if args.attention else [])]
        run = launch(n, generate, args.port + i, gpus, args.out / f"cli_{n}proc.log")
        if run["returncode"] == 0:
            run["video_mb"] = round(video.stat().st_size / 1e6, 2)
            final = load_file(str(latents))["latents"]
            if first is None:
                first = (n, final)
            else:
                run[f"vs_{first[0]}proc"] = compare(final, first[1])
        report["runs"][str(n)] = run
        print(f"{n} process(es): {json.dumps(run)}", flush=True)
        (args.out / "cli_runs.json").write_text(json.dumps(report, indent=1))
    return 0 if all(r["returncode"] == 0 for r in report["runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
