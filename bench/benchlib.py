"""Shared pieces of the GPU benchmarks: a JSON report written after every stage, timing, memory, inputs.

A stage is a function returning a dict. `Report.run` skips it when the time budget left is below its estimate,
records any exception (type, message, traceback tail) instead of stopping, and rewrites the JSON file, so a
run that is killed or fails half-way still leaves every figure measured so far.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GiB = 2 ** 30


def tiny_dit_config():
    """The tiny DiT the benches' ``--tiny`` smoke tests run on the CPU (4 heads of 32, 2 blocks)."""
    from wclab.models.dit import DiTConfig
    return DiTConfig(dim=128, ffn_dim=256, freq_dim=256, text_dim=32, in_dim=53, out_dim=16, num_heads=4,
                     num_layers=2)


def full_size_tokens() -> int:
    """DiT tokens of the released video size: 480×832×81 -> 21 latent frames × 30 × 52 tokens = 32 760."""
    from wclab.sizes import DEFAULT_FRAMES, DEFAULT_HEIGHT, DEFAULT_WIDTH, TOKEN_CELL, latent_frames
    return latent_frames(DEFAULT_FRAMES) * (DEFAULT_HEIGHT // TOKEN_CELL) * (DEFAULT_WIDTH // TOKEN_CELL)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], repeat: int = 3, warmup: int = 1) -> tuple[dict, object]:
    """Run ``fn`` warmup + repeat times (device synchronised around each call): seconds per call and the last
    result. ``first_s`` is the first call (incl. any compilation); ``issue_median_s`` the time until ``fn``
    returned, before the sync (the host's share: close to ``median_s`` when launching kernels is the limit)."""
    times, issued, out = [], [], None
    for i in range(warmup + repeat):
        sync()
        t0 = time.perf_counter()
        out = fn()
        issued.append(time.perf_counter() - t0)
        sync()
        times.append(time.perf_counter() - t0)
    timed_runs = times[warmup:] or times
    return {"first_s": round(times[0], 4), "median_s": round(statistics.median(timed_runs), 4),
            "min_s": round(min(timed_runs), 4), "runs_s": [round(t, 4) for t in timed_runs],
            "issue_median_s": round(statistics.median(issued[warmup:] or issued), 4)}, out


def cuda_ms(fn: Callable[[], object], repeat: int = 10, warmup: int = 3) -> float:
    """Median milliseconds of ``fn`` timed with CUDA events (wall clock on CPU)."""
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():
        t = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            t.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(t)
    times = []
    for _ in range(repeat):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def ranks_cuda_ms(fn: Callable[[], object], repeat: int) -> float:
    """Median milliseconds of ``fn`` on this rank's GPU (CUDA events), every call started with all ranks of the
    default process group together (a barrier), after one warm-up call."""
    import torch.distributed as dist
    times = []
    for i in range(repeat + 1):
        dist.barrier()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        if i:  # the first call warms up
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def kernel_timeline(trace: dict, collective: Iterable[str] = ("nccl",), gaps: int = 12) -> dict:
    """Where a profiled stretch of GPU time went, from a Chrome trace (``torch.profiler``'s
    ``export_chrome_trace``): device kernels, copies and sets, by time covered rather than summed per kernel.

    Seconds of the span from the first kernel's start to the last one's end: ``compute_only`` (no collective
    running), ``collective_only`` (only collectives: exchanges nothing hides), ``overlap`` (both) and ``idle``
    (nothing on any stream). ``gaps``: the idle stretches summed by the kernel that ends each (``after``) and the
    one that starts it (``before``), longest total first — where the GPU waits, and on what."""
    words = tuple(w.lower() for w in collective)
    spans = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0)), e.get("name", "?"))
                   for e in trace.get("traceEvents", [])
                   if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"))
    if not spans:
        return {"kernels": 0}
    edges = []  # (time µs, +1/-1, is collective)
    for t0, t1, name in spans:
        is_coll = any(w in name.lower() for w in words)
        edges += [(t0, 1, is_coll), (t1, -1, is_coll)]
    edges.sort(key=lambda e: (e[0], e[1]))  # ends before starts at the same instant
    totals = dict(compute_only=0.0, collective_only=0.0, overlap=0.0, idle=0.0)
    running = {True: 0, False: 0}
    last = edges[0][0]
    for t, step, is_coll in edges:
        coll, comp = running[True] > 0, running[False] > 0
        kind = "overlap" if coll and comp else "collective_only" if coll else "compute_only" if comp else "idle"
        totals[kind] += t - last
        running[is_coll] += step
        last = t
    where: dict[tuple[str, str], list] = {}
    end, end_name = spans[0][1], spans[0][2]
    for t0, t1, name in spans[1:]:
        if t0 > end:
            key = (end_name[:70], name[:70])
            where.setdefault(key, [0.0, 0])
            where[key][0] += t0 - end
            where[key][1] += 1
        if t1 > end:
            end, end_name = t1, name
    top = sorted(where.items(), key=lambda kv: -kv[1][0])[:gaps]
    return {"kernels": len(spans), "span_s": round((max(t1 for _, t1, _ in spans) - spans[0][0]) / 1e6, 7),
            **{f"{k}_s": round(v / 1e6, 7) for k, v in totals.items()},
            "gaps": [{"after": a, "before": b, "s": round(s / 1e6, 7), "count": n} for (a, b), (s, n) in top]}


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def memory() -> dict:
    """GPU memory now and at peak since the last `reset_peak` (GiB; allocated by tensors / reserved by torch)."""
    if not torch.cuda.is_available():
        return {}
    return {"allocated_gib": round(torch.cuda.memory_allocated() / GiB, 2),
            "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GiB, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GiB, 2)}


def environment() -> dict:
    env = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
           "torch": torch.__version__, "cuda": torch.version.cuda, "command": " ".join(sys.argv)}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(device=p.name, device_memory_gib=round(p.total_memory / GiB, 1), sms=p.multi_processor_count,
                   cudnn=torch.backends.cudnn.version())
    else:
        env.update(device=f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    nccl = {k: v for k, v in sorted(os.environ.items()) if k.startswith("NCCL_")}
    if nccl:
        env["nccl_env"] = nccl
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        pass
    return env


def gpu_memory_used_mib(index: Optional[int]) -> dict:
    """``{"gpu<i>": used memory in MiB}`` by nvidia-smi (whole device, every process) for GPU ``index`` or, None,
    for every GPU; {} if unknown."""
    try:
        out = subprocess.run(["nvidia-smi", *(["-i", str(index)] if index is not None else []),
                              "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
        rows = [line.split(",") for line in out.stdout.strip().splitlines()]
        return {f"gpu{int(i)}": int(mib) for i, mib in rows}
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}


# nvidia-smi's clocks_event_reasons.active bits (NVML's nvmlClocksEventReasons): why the SM clock is below max.
CLOCK_EVENT_REASONS = {0x1: "idle", 0x2: "applications clocks setting", 0x4: "software power cap",
                       0x8: "hardware slowdown", 0x10: "sync boost", 0x20: "software thermal slowdown",
                       0x40: "hardware thermal slowdown", 0x80: "hardware power brake", 0x100: "display clock setting"}
GPU_STATE_FIELDS = "index,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,clocks_event_reasons.active"


def parse_gpu_state(csv_text: str) -> list[dict]:
    """Rows of ``nvidia-smi --query-gpu=GPU_STATE_FIELDS --format=csv,noheader,nounits`` as dicts: SM clock and its
    max (MHz), temperature (°C), power draw (W) and the named reasons the clock is held down ("[N/A]" -> None)."""
    def number(text: str):
        text = text.strip()
        return None if text.startswith("[") or text in ("N/A", "") else float(text)

    rows = []
    for line in csv_text.strip().splitlines():
        index, sm, max_sm, temp, power, reasons = (field.strip() for field in line.split(","))
        mask = int(reasons, 16) if reasons.startswith("0x") else 0
        rows.append({"gpu": int(index), "sm_mhz": number(sm), "max_sm_mhz": number(max_sm),
                     "temperature_c": number(temp), "power_w": number(power),
                     "clock_reasons": [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]})
    return rows


def gpu_state() -> list[dict]:
    """Every visible GPU's clocks, temperature, power and throttle reasons now (:func:`parse_gpu_state`); [] without
    nvidia-smi. Sampled while timing (:class:`GpuWatch`), it tells a throttling machine from a slow program."""
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={GPU_STATE_FIELDS}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
        return parse_gpu_state(out.stdout) if out.returncode == 0 else []
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []


def used_gpus(count: int) -> list[int]:
    """nvidia-smi indexes of ``cuda:0`` … ``cuda:count-1`` on this node (through ``CUDA_VISIBLE_DEVICES`` when it
    lists indexes)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").replace(" ", "")
    if visible and all(part.isdigit() for part in visible.split(",")):
        return [int(part) for part in visible.split(",")[:count]]
    return list(range(count))


class PeakSampler:
    """Calls ``sample() -> {name: number}`` every ``interval_s`` on a thread while the ``with`` block runs (and once
    at each end); ``base`` holds the first sample, ``peak`` each name's largest value."""

    def __init__(self, sample: Callable[[], dict], interval_s: float):
        self.sample, self.interval_s = sample, interval_s
        self.base: dict = {}
        self.peak: dict = {}
        self._stop = threading.Event()

    def _take(self) -> dict:
        values = self.sample()
        for k, v in values.items():
            self.peak[k] = max(self.peak.get(k, v), v)
        return values

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._take()

    def __enter__(self) -> "PeakSampler":
        self.base = self._take()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._take()


class GpuWatch:
    """Takes :func:`gpu_state` every ``interval_s`` on a thread while the ``with`` block runs (and once at each end).
    ``summary()``: per GPU the lowest and median SM clock (MHz) against its max, the highest temperature (°C) and
    power (W), and every reason other than idle that held the clock down — what tells a throttling machine from a
    slow program. ``gpus``: the nvidia-smi indexes of the GPUs doing the work (:func:`used_gpus`; None: all), so
    an idle GPU beside them does not read as a slow one; an empty list watches nothing (ranks that do not report)."""

    def __init__(self, gpus: Optional[Iterable[int]] = None, interval_s: float = 2.0):
        self.gpus = None if gpus is None else set(gpus)
        self.samples: list[list[dict]] = []
        self._sampler = PeakSampler(self._take, interval_s)

    def _take(self) -> dict:
        if self.gpus != set():
            self.samples.append([row for row in gpu_state() if self.gpus is None or row["gpu"] in self.gpus])
        return {}

    def __enter__(self) -> "GpuWatch":
        self._sampler.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._sampler.__exit__(*exc)

    def summary(self) -> list[dict]:
        by_gpu: dict[int, list[dict]] = {}
        for rows in self.samples:
            for row in rows:
                by_gpu.setdefault(row["gpu"], []).append(row)
        out = []
        for gpu, rows in sorted(by_gpu.items()):
            def values(key):
                return [r[key] for r in rows if r[key] is not None]
            sm = values("sm_mhz")
            out.append({"gpu": gpu, "samples": len(rows), "min_sm_mhz": min(sm, default=None),
                        "median_sm_mhz": statistics.median(sm) if sm else None,
                        "max_sm_mhz": max(values("max_sm_mhz"), default=None),
                        "max_temperature_c": max(values("temperature_c"), default=None),
                        "max_power_w": max(values("power_w"), default=None),
                        "clock_reasons": sorted({n for r in rows for n in r["clock_reasons"] if n != "idle"})})
        return out


class Report:
    """Stages' results in one JSON file, rewritten after each stage. ``budget_s``: wall-clock budget of the run."""

    def __init__(self, path: Optional[Path], budget_s: float, title: str):
        self.path, self.budget_s, self.t0 = path, budget_s, time.perf_counter()
        self.data = {"title": title, "env": environment(), "stages": {}}
        self.save()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def run(self, name: str, fn: Callable[[], dict], est_s: float = 0.0) -> Optional[dict]:
        """Run stage ``fn`` unless fewer than ``est_s`` seconds are left; record its dict, or the error."""
        if self.left() < est_s:
            result = {"skipped": f"time budget: {self.left():.0f} s left, stage needs ~{est_s:.0f} s"}
            print(f"[{self.elapsed():6.1f}s] {name}: skipped ({result['skipped']})", flush=True)
        else:
            print(f"[{self.elapsed():6.1f}s] {name} ...", flush=True)
            t0 = time.perf_counter()
            try:
                result = fn() or {}
            except Exception as e:  # record and go on: one failing stage must not lose the others
                result = {"error": f"{type(e).__name__}: {e}"[:2000],
                          "traceback": traceback.format_exc()[-3000:]}
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            result["stage_wall_s"] = round(time.perf_counter() - t0, 2)
            print(f"[{self.elapsed():6.1f}s] {name}: {short(result)}", flush=True)
        self.data["stages"][name] = result
        self.save()
        return result

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.data, indent=1, default=str))


def short(d: dict, limit: int = 400) -> str:
    text = json.dumps({k: v for k, v in d.items() if k != "traceback"}, default=str)
    return text if len(text) <= limit else text[:limit] + " ..."


def finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def build(cls, config, device, dtype, seed: int):
    """``cls(config)`` with random weights made directly on ``device`` in ``dtype`` (no float32 copy). The same
    seed gives the same weights on every GPU (each rank of a torchrun builds the same model)."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return cls(config).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(previous)


def random_encoders(device, dtype, tokenizer_dir: Path, t5_config=None, vae_config=None):
    """A `wclab.models.loading.Models` with random text encoder (seed 1) and VAE (seed 2) built on ``device``
    (default configs: umT5-xxl, Wan 2.1 VAE), the tiny sentencepiece tokenizer written to ``tokenizer_dir``, and
    no experts yet (``high``/``low`` None)."""
    from wclab.models.loading import Models
    from wclab.models.text_encoder import TextEncoder, TextEncoderConfig, Tokenizer
    from wclab.models.vae import VAE, VAEConfig
    from wclab.testing import write_tiny_tokenizer

    tok = Tokenizer(write_tiny_tokenizer(tokenizer_dir))
    t5 = build(TextEncoder, t5_config or TextEncoderConfig(), device, dtype, seed=1)
    t5.tokenizer = tok
    vae = build(VAE, vae_config or VAEConfig(), device, dtype, seed=2)
    vae.latents_mean, vae.latents_inv_std = vae.latents_mean.float(), vae.latents_inv_std.float()
    return Models(tokenizer=tok, text_encoder=t5, vae=vae, high=None, low=None, preview=None,
                  device=torch.device(device), dtype=dtype, paths=None)


def random_models(device, dtype, tokenizer_dir: Path, t5_config=None, vae_config=None, dit_config=None):
    """`random_encoders` plus two random experts (seeds 3 and 4; default config: A14B): every call builds the same
    weights."""
    from wclab.models.dit import DiT, DiTConfig

    models = random_encoders(device, dtype, tokenizer_dir, t5_config, vae_config)
    dit_config = dit_config or DiTConfig.worldcanvas_14b()
    models.high, models.low = (build(DiT, dit_config, device, dtype, seed=3),
                               build(DiT, dit_config, device, dtype, seed=4))
    return models
