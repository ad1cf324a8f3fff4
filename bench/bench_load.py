"""Writing and loading checkpoints of the released layout and sizes (random weights), as a researcher's first step.

    python bench/bench_load.py --dir /local/disk/ckpt --out bench/out/load.json          # GPU machine, ~70 GB disk
    python bench/bench_load.py --tiny --out bench/out/load_tiny.json                      # CPU, tiny sizes (CI)

Stages:
  write      `wclab.testing.make_released_size_checkpoints` (tensors drawn on the GPU, streamed to disk), then
             the header check of ``python -m wclab.checkpoints``; skipped when the directory already checks ok
  resident   ``load_models(dir, device="cuda", dtype=bfloat16)``: T5, VAE and both experts on the GPU
  offload    the same with ``experts="offload"`` (block weights in pinned CPU memory, streamed per block)
  fp8        the same with ``experts="fp8"`` (each expert quantised right after it is read)

Each load stage runs in a fresh Python process (clean peak figures). Before it, the page cache is dropped when the
process may (root on Linux: ``/proc/sys/vm/drop_caches``), so files come from the disk; ``cache`` in the report
says whether that worked. Host memory is sampled every 10 ms from ``/proc/self/status``: ``RssAnon`` (the
process's own memory: tensors, pinned buffers) and ``RssFile`` (file pages mapped while reading; the kernel can
drop them), as peaks above the process's baseline just before loading. GPU memory: torch's allocator peaks.
The report's ``summary.load_s`` is the resident stage's wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import PeakSampler, Report, memory, reset_peak  # noqa: E402

STAGES = ("write", "resident", "offload", "fp8")


def host_memory() -> dict[str, int]:
    """This process's resident memory in bytes: ``anon``, ``file`` and ``total`` (VmRSS)."""
    fields = {"RssAnon:": "anon", "RssFile:": "file", "VmRSS:": "total"}
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            name = line.split()[0] if line.strip() else ""
            if name in fields:
                out[fields[name]] = int(line.split()[1]) * 1024
    return out


def host_peak() -> PeakSampler:
    """`host_memory` sampled every 10 ms while a ``with`` block runs."""
    return PeakSampler(host_memory, 0.01)


def host_summary(peak: PeakSampler) -> dict:
    return {f"host_{k}_peak_above_base_gb": round((peak.peak[k] - peak.base[k]) / 1e9, 2) for k in peak.base}


def drop_page_cache() -> str:
    """"dropped" when the kernel's page cache could be emptied, else why not (files may come from memory)."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "dropped"
    except OSError as e:
        return f"not dropped ({type(e).__name__}: {e.strerror or e})"


def load_stage(directory: Path, placement: str, device: str, dtype: torch.dtype, drop_cache: bool) -> dict:
    """Load every model of ``directory`` in this process; times, host and GPU memory, and a forward check.
    Library imports happen before the clock starts (they are not loading)."""
    from diffusers import AutoencoderKLWan  # noqa: F401
    from transformers import UMT5EncoderModel  # noqa: F401

    from wclab.models.loading import load_models

    cache = drop_page_cache() if drop_cache else "kept (--tiny)"
    reset_peak()
    with host_peak() as host:
        t0 = time.perf_counter()
        models = load_models(directory, device=device, dtype=dtype, experts=placement)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        load_s = time.perf_counter() - t0
    out = {"load_s": round(load_s, 2), "cache": cache, **host_summary(host), **memory(),
           "placement": placement, "dit_dim": models.high.cfg.dim, "dit_layers": models.high.cfg.num_layers}
    sizes = [p.stat().st_size for p in (models.paths.t5, models.paths.vae, models.paths.high, models.paths.low)]
    out["bytes_read_gb"] = round(sum(sizes) / 1e9, 2)
    out["read_gb_per_s"] = round(sum(sizes) / 1e9 / load_s, 2)
    # the loaded experts compute: one forward on a small latent grid
    dit = models.high
    x = torch.randn(1, dit.cfg.in_dim, 2, 8, 8, device=device, dtype=dtype)
    ctx = torch.randn(1, 16, dit.cfg.text_dim, device=device, dtype=dtype)
    y = dit(x, torch.tensor([900.0], device=device, dtype=dtype), ctx)
    out["forward_finite"] = bool(torch.isfinite(y).all())
    return out


def write_stage(directory: Path, variants: list[str]) -> dict:
    from wclab.checkpoints import check_checkpoints
    from wclab.testing import make_released_size_checkpoints

    before = check_checkpoints(directory)
    out: dict = {}
    if before.ok:
        out["skipped_write"] = "directory already checks ok"
    else:
        with host_peak() as host:
            t0 = time.perf_counter()
            make_released_size_checkpoints(directory, seed=0, variants=variants, progress=False)
            out["write_s"] = round(time.perf_counter() - t0, 1)
        out.update(host_summary(host))
    total = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    out["written_gb"] = round(total / 1e9, 2)
    for variant in variants:
        t0 = time.perf_counter()
        report = check_checkpoints(directory, variant)
        out[f"check_{variant}"] = {"ok": report.ok, "s": round(time.perf_counter() - t0, 2),
                                   "rows": [f"{i.file.role}: {i.status} {i.detail}" for i in report.items]}
    return out


def child(args) -> int:
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    result = load_stage(Path(args.dir), args.child, args.device, dtype, drop_cache=not args.tiny)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, default=None, help="checkpoint directory (written when incomplete)")
    p.add_argument("--out", type=Path, default=Path("bench/out/load.json"))
    p.add_argument("--only", default=",".join(STAGES), help=f"comma-separated stages of {STAGES}")
    p.add_argument("--variants", nargs="+", default=["WorldCanvas"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float32"])
    p.add_argument("--tiny", action="store_true", help="tiny checkpoints on the CPU (seconds)")
    p.add_argument("--budget-s", type=float, default=1800)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.child:
        return child(args)
    stages = [s.strip() for s in args.only.split(",") if s.strip()]
    report = Report(args.out, args.budget_s, "checkpoint writing and loading, released layout")
    if args.tiny:
        import tempfile

        from wclab.testing import make_tiny_checkpoints

        args.dir = make_tiny_checkpoints(Path(tempfile.mkdtemp()) / "tiny")
        stages = [s for s in stages if s != "write"]
    if args.dir is None:
        p.error("--dir is required (a folder on a local disk with ~70 GB free per variant), or --tiny")
    report.data["setup"] = {"dir": str(args.dir), "device": args.device, "dtype": args.dtype, "tiny": args.tiny,
                            "cpu_count": os.cpu_count()}
    if "write" in stages:
        report.run("write", lambda: write_stage(args.dir, args.variants), est_s=60)
    for placement in [s for s in stages if s in ("resident", "offload", "fp8")]:
        def run(placement=placement) -> dict:
            cmd = [sys.executable, __file__, "--child", placement, "--dir", str(args.dir), "--device", args.device,
                   "--dtype", args.dtype] + (["--tiny"] if args.tiny else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
            if proc.returncode or not lines:
                raise RuntimeError(f"child exited {proc.returncode}: {proc.stderr[-1500:]}")
            return json.loads(lines[-1][len("RESULT "):])
        report.run(placement, run, est_s=30)
    resident = report.data["stages"].get("resident", {})
    report.data["summary"] = {"load_s": resident.get("load_s"),
                              **{f"{k}_load_s": report.data["stages"].get(k, {}).get("load_s") for k in ("offload", "fp8")},
                              "host_anon_peak_above_base_gb": resident.get("host_anon_peak_above_base_gb"),
                              "gpu_peak_allocated_gib": resident.get("peak_allocated_gib")}
    report.save()
    print(json.dumps(report.data["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
