"""End-to-end WorldCanvas generation at full size with random weights (umT5-xxl, Wan 2.1 VAE, two A14B experts,
bf16, one GPU): text encoding, image condition (VAE encode), 50 denoising steps with CFG, tiled VAE decode —
each stage timed and its peak memory recorded, through the real `wclab.sampler.Session`.

    python bench/bench_e2e.py --out bench/out/e2e.json            # 480x832x81, 50 steps, CFG 5, tiled VAE
    python bench/bench_e2e.py --fp8 --step-cache 1 --out bench/out/e2e_fast.json   # fast mode
    python bench/bench_e2e.py --distilled --out bench/out/e2e_4step.json         # 4 steps, no CFG
    python bench/bench_e2e.py --cache adaptive --out bench/out/e2e_easycache.json  # EasyCache, 50 steps
    python bench/bench_e2e.py --tiny                               # tiny models on the CPU (seconds; CI)

Fast mode: ``--fp8`` (float8 block weights/GEMMs), ``--cache fixed`` (`fast.FixedCache`: the deep blocks'
residual reused on every ``--cache-every``-th forward of each CFG branch; ``--step-cache N`` is the older
spelling, `fast.FirstBlockCache`), ``--cache adaptive`` (`fast.EasyCache(--cache-threshold)`, training-free
adaptive) and ``--distilled`` (`Settings.step_distilled`: 4 steps at timesteps 1000/750/500/250, CFG 1; the
random weights carry no distillation LoRA, so this measures speed, not quality). All change the output.

Deviation from the exact run (``summary.deviation_vs_exact``: max / mean relative error of the final latents and
of the decoded uint8 video): the exact run is the default sampling (``--reference-steps`` steps, CFG 5, seed 0)
with every forward computed and no cache. It is either loaded from ``--reference DIR`` (written by an earlier
run with ``--save-reference DIR``, normally an exact one: same weights, since every model is built from fixed
seeds; the ``reference`` stage says what that run was) or, for a
fast mode without ``--reference``, generated in the same process after the timed run (stage ``reference``; with
``--fp8`` it is then the fp8 model's, flagged in ``reference.fp8``).

Memory plan (the "both experts resident" mode): the T5 encoder runs on the GPU, then moves to CPU memory;
both experts stay on the GPU for all steps. The first decode runs before the experts are built (decode time
does not depend on latent values), so its timing is always measured; the final decode runs after the last step
with both experts resident, if the budget allows. If the budget runs out during denoising, the remaining
steps are extrapolated from the median step time of the same expert and flagged ``extrapolated``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import Report, build, memory, random_encoders, reset_peak, sync  # noqa: E402

from wclab.conditions import load_json  # noqa: E402
from wclab.image import solid_image  # noqa: E402
from wclab.models import attention as attention_mod  # noqa: E402
from wclab.models import fast  # noqa: E402
from wclab.models.attention import BACKENDS, set_attention_backend  # noqa: E402
from wclab.models.dit import DiT, DiTConfig  # noqa: E402
from wclab.models.text_encoder import TextEncoderConfig  # noqa: E402
from wclab.models.vae import VAEConfig  # noqa: E402
from wclab.sampler import Session, Settings  # noqa: E402

FULL = dict(height=480, width=832, frames=81)
TINY = dict(height=64, width=96, frames=17)
TINY_T5 = TextEncoderConfig(vocab=440, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2)
TINY_VAE = VAEConfig(base_dim=8)
TINY_DIT = DiTConfig(dim=128, ffn_dim=256, freq_dim=256, text_dim=32, in_dim=53, out_dim=16, num_heads=4,
                     num_layers=2)


def synthetic_scene(height: int, width: int, frames: int, objects: int = 3):
    """A scene in the drawing tool's JSON format: ``objects`` captioned boxes moving on straight lines plus one
    camera anchor, all visible on every frame."""
    import numpy as np

    from wclab.conditions.rle import RLEMask

    items = []
    for i in range(objects + 1):
        x0, y0 = width * (0.2 + 0.2 * i), height * (0.3 + 0.1 * i)
        x1, y1 = x0 + width * 0.15, y0 - height * 0.15
        pts = [[x0 + (x1 - x0) * t / (frames - 1), y0 + (y1 - y0) * t / (frames - 1)] for t in range(frames)]
        mask = np.zeros((height, width), dtype=bool)
        r = max(height // 10, 2)
        mask[max(int(y0) - r, 0):int(y0) + r, max(int(x0) - r, 0):int(x0) + r] = True
        anchor = i == objects
        items.append({"tracking": pts, "tracking_vis_value": [1] * frames, "r": 5, "id": i + 1,
                      "mask_cluster": RLEMask.from_array(mask).to_json(),
                      "text": "None" if anchor else f"object {i + 1} moves to the upper right."})
    captions = {str(i + 1): f"object {i + 1} moves to the upper right." for i in range(objects)}
    items += [{"color_map": {k: "red" for k in captions}}, {"description_global": ""},
              {"description_motion_raw": ""}, {"description_motion": ""}, {"id_caption_map": captions}]
    return load_json(items)


def steady_denoise(times: list[float], experts: list[str], rest: list[str]) -> dict:
    """Denoising time without compilation, from per-step seconds ``times`` of the steps run (experts ``experts``)
    and the experts of the steps not run (``rest``, extrapolated at each expert's mean step time). The first
    step, which includes compilation, counts as a typical full step: the median of the steps that took at
    least half the slowest later step (with a StepCache, cheap reused steps alternate with full ones)."""
    later = times[1:]
    full = [t for t in later if t >= 0.5 * max(later)] if later else times
    first = statistics.median(full)
    mean = {}
    for e in ("high", "low"):
        ts = [t for t, x in zip(later, experts[1:]) if x == e]
        mean[e] = sum(ts) / len(ts) if ts else sum(later or times) / len(later or times)
    steady = first + sum(later) + sum(mean[e] for e in rest)
    return {"denoise_measured_s": round(sum(times), 1), "denoise_steady_s": round(steady, 1),
            "extrapolated": bool(rest), "first_step_compile_s": round(times[0] - first, 1),
            "full_step_s": round(first, 3), "mean_step_s": {e: round(v, 3) for e, v in mean.items()}}


class StageTimer:
    """Wraps a callable; adds each call's synchronised duration to ``seconds[name]``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.peaks: dict[str, float] = {}

    def wrap(self, name: str, fn):
        def timed_fn(*args, **kwargs):
            sync()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            if torch.cuda.is_available():
                self.peaks[name] = max(self.peaks.get(name, 0.0), torch.cuda.max_memory_allocated() / 2 ** 30)
            return out
        return timed_fn


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny models and video on the CPU (for CI)")
    ap.add_argument("--out", type=Path, default=None, help="JSON report path (default bench/out/e2e[_tiny].json)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default 50; tiny 3)")
    ap.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget; see module docstring")
    ap.add_argument("--no-compile", action="store_true", help="eager experts (default: fast.speed_up)")
    ap.add_argument("--fp8", action="store_true", help="fast mode: fast.quantize_fp8 on both experts")
    ap.add_argument("--distilled", action="store_true",
                    help="few-step: Settings.step_distilled() (4 steps, timesteps 1000/750/500/250, CFG 1)")
    ap.add_argument("--cache", choices=("none", "fixed", "adaptive"), default="none",
                    help="fast mode: fast.FixedCache(every=--cache-every) or fast.EasyCache(--cache-threshold)")
    ap.add_argument("--cache-every", type=int, default=2, help="FixedCache: one forward in EVERY computed")
    ap.add_argument("--cache-warmup", type=int, default=None, help="EasyCache: forwards computed first per stream")
    ap.add_argument("--step-cache", type=int, default=0, metavar="MAX_REUSE",
                    help="fast mode (older spelling): fast.FirstBlockCache(--cache-threshold (default inf), "
                         "max_reuse=MAX_REUSE); 0 = off")
    ap.add_argument("--cache-threshold", type=float, default=None,
                    help="EasyCache threshold (default 0.05) / FirstBlockCache threshold (default inf)")
    ap.add_argument("--reference", type=Path, default=None,
                    help="folder of an exact run (--save-reference) to report the deviation from")
    ap.add_argument("--save-reference", type=Path, default=None,
                    help="save this run's final latents and video here (for --reference of later runs)")
    ap.add_argument("--reference-steps", type=int, default=None,
                    help="steps of the in-process exact reference (default 50; tiny 3)")
    ap.add_argument("--no-reference", action="store_true", help="no in-process exact reference run")
    ap.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; tiny: eager)")
    ap.add_argument("--attention", default="auto", choices=BACKENDS,
                    help="attention backend (wclab.models.attention; auto: FlashAttention-3/4/2 if installed)")
    ap.add_argument("--device", default=None, help="default cuda if available, else cpu")
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = TINY if args.tiny else FULL
    if args.distilled:
        if args.steps not in (None, 4):
            ap.error("--distilled runs the 4-step preset; --steps must be 4 or left out")
        settings = Settings.step_distilled(seed=0, tiled=True)
    else:
        settings = Settings(steps=args.steps or (3 if args.tiny else 50), seed=0, cfg=5.0, tiled=True)
    steps = settings.steps
    ref_settings = Settings(steps=args.reference_steps or (3 if args.tiny else 50), seed=0, cfg=5.0, tiled=True)
    if args.cache != "none" and args.step_cache:
        ap.error("give --cache or --step-cache, not both")
    if args.cache == "fixed":
        policy = fast.FixedCache(every=args.cache_every)
    elif args.cache == "adaptive":
        policy = fast.EasyCache(**{k: v for k, v in (("threshold", args.cache_threshold),
                                                      ("warmup", args.cache_warmup)) if v is not None})
    elif args.step_cache:
        policy = fast.FirstBlockCache(float("inf") if args.cache_threshold is None else args.cache_threshold,
                                      max_reuse=args.step_cache)
    else:
        policy = None
    fast_mode = bool(policy or args.distilled or args.fp8)
    t5_cfg, vae_cfg, dit_cfg = (TINY_T5, TINY_VAE, TINY_DIT) if args.tiny else \
        (TextEncoderConfig(), VAEConfig(), DiTConfig.worldcanvas_14b())
    backend = args.compile_backend or ("eager" if args.tiny else "inductor")
    out_path = args.out or Path(__file__).resolve().parent / "out" / ("e2e_tiny.json" if args.tiny else "e2e.json")
    rep = Report(out_path, args.budget_s, "end-to-end generation benchmark")
    set_attention_backend(args.attention)
    self_attention = attention_mod._AUTO if args.attention == "auto" else args.attention
    rep.data["setup"] = {"video": size, "steps": steps, "cfg": settings.cfg, "shift": settings.shift,
                         "step_list": settings.step_list, "distilled": args.distilled, "dtype": str(dtype),
                         "tiled_vae": True, "compile": None if args.no_compile else backend, "fp8": args.fp8,
                         "attention": args.attention,
                         "self_attention_kernel": self_attention if device.type == "cuda" else "sdpa",
                         "step_cache": {"policy": type(policy).__name__, **dataclasses.asdict(policy)}
                         if policy else None,
                         "reference": str(args.reference) if args.reference else
                         None if args.no_reference or not fast_mode else
                         {"in_process": True, "steps": ref_settings.steps, "cfg": ref_settings.cfg}}
    torch.set_grad_enabled(False)
    timer = StageTimer()
    st: dict = {}
    tmp = tempfile.TemporaryDirectory()

    def build_encoders():
        reset_peak()
        t0 = time.perf_counter()
        st["models"] = random_encoders(device, dtype, Path(tmp.name) / "tokenizer", t5_cfg, vae_cfg)
        sync()
        t5, vae = st["models"].text_encoder, st["models"].vae
        t5.forward = timer.wrap("text_encoder", t5.forward)
        vae.encode = timer.wrap("vae_encode", vae.encode)
        vae.decode = timer.wrap("vae_decode", vae.decode)
        return {"build_s": round(time.perf_counter() - t0, 1),
                "t5_params_b": round(sum(p.numel() for p in t5.parameters()) / 1e9, 2),
                "vae_params_m": round(sum(p.numel() for p in vae.parameters()) / 1e6, 1), **memory()}

    def prepare():
        models = st["models"]
        scene = synthetic_scene(**size)
        reset_peak()
        t0 = time.perf_counter()
        image = solid_image(size["height"], size["width"], (90, 120, 150))
        st["session"] = Session(models, scene, image, settings, progress=False)
        sync()
        r = {"session_init_s": round(time.perf_counter() - t0, 2),
             "text_encoder_s": round(timer.seconds.get("text_encoder", 0.0), 2),
             "vae_encode_s": round(timer.seconds.get("vae_encode", 0.0), 2), **memory()}
        if fast_mode and not args.reference and not args.no_reference:  # prepared now, while T5 is on the GPU
            st["ref_session"] = Session(models, scene, image, ref_settings, progress=False)
        t0 = time.perf_counter()
        models.text_encoder.to("cpu")  # both experts need the room
        if device.type == "cuda":
            torch.cuda.empty_cache()
        r["t5_to_cpu_s"] = round(time.perf_counter() - t0, 1)
        r["allocated_after_t5_offload_gib"] = memory().get("allocated_gib")
        r["prompt_tokens"] = int(st["session"].caption_spans("cond")[-1][1])
        return r

    def decode(name):
        def run():
            reset_peak()
            before = timer.seconds.get("vae_decode", 0.0)
            video = st["session"].decode()
            if name == "final":
                st["video"] = video
            return {"decode_s": round(timer.seconds["vae_decode"] - before, 2), "video_shape": list(video.shape),
                    **memory()}
        return run

    def build_experts():
        models = st["models"]
        reset_peak()
        t0 = time.perf_counter()
        models.high = build(DiT, dit_cfg, device, dtype, seed=3)
        if args.fp8:
            fast.quantize_fp8(models.high)
        models.low = build(DiT, dit_cfg, device, dtype, seed=4)
        if args.fp8:
            fast.quantize_fp8(models.low)
        for dit in (models.high, models.low):
            if not args.no_compile:
                fast.speed_up(dit, backend=backend)
            if policy is not None:
                st.setdefault("caches", []).append(fast.StepCache(dit, policy))
        sync()
        return {"build_s": round(time.perf_counter() - t0, 1), **memory()}

    def denoise():
        session = st["session"]
        reset_peak()
        times, experts = [], []
        reserve = st.get("decode_s", 0.0) * 1.2 + 10  # keep time for the final decode
        while not session.done:
            expert = session.expert
            sync()
            t0 = time.perf_counter()
            session.step()
            sync()
            times.append(time.perf_counter() - t0)
            experts.append(expert)
            if rep.left() < reserve + 1.5 * statistics.median(times[1:] or times):
                break
        done = len(times)
        r = {"steps_run": done, "steps_total": steps, "step_s": [round(t, 3) for t in times],
             "experts": "".join(e[0] for e in experts), "first_step_s": round(times[0], 2), **memory()}
        rest = [session.scheduler.expert_for(float(t), session.settings.boundary)
                for t in session.scheduler.timesteps[done:]]
        r.update(steady_denoise(times, experts, rest))
        per_step = 1 if settings.cfg == 1.0 else 2
        r["forwards_per_step"] = per_step
        r["mean_s_per_forward"] = round(r["denoise_steady_s"] / (per_step * steps), 3)
        if st.get("caches"):
            r["forwards_computed"] = sum(c.computed for c in st["caches"])
            r["forwards_reused"] = sum(c.reused for c in st["caches"])
            r["reused_steps"] = sorted({e.step for c in st["caches"] for e in c.events if e.reused})
        st["denoise_steady_s"] = r["denoise_steady_s"]
        st["full_forward_s"] = r["full_step_s"] / per_step
        return r

    def save_reference():
        folder = args.save_reference
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(st["session"].latents.float().cpu(), folder / "latents.pt")
        np.save(folder / "video.npy", st["video"])
        (folder / "setup.json").write_text(json.dumps(rep.data["setup"], indent=1, default=str))
        return {"folder": str(folder), "latents_shape": list(st["session"].latents.shape)}

    def reference():
        """The exact run to compare with: loaded from --reference, or generated here with the caches off."""
        if args.reference:
            ref_setup = json.loads((args.reference / "setup.json").read_text())
            if ref_setup.get("video") != size:
                raise ValueError(f"--reference {args.reference} is a {ref_setup.get('video')} run, this is {size}")
            st["ref_latents"] = torch.load(args.reference / "latents.pt")
            st["ref_video"] = np.load(args.reference / "video.npy")
            return {"loaded": str(args.reference), "steps": ref_setup.get("steps"), "cfg": ref_setup.get("cfg"),
                    "step_cache": ref_setup.get("step_cache"), "fp8": ref_setup.get("fp8")}
        for cache in st.get("caches", []):
            cache.remove()
        session = st.pop("ref_session")
        t0 = time.perf_counter()
        session.run()
        sync()
        denoise_s = time.perf_counter() - t0
        st["ref_latents"] = session.latents.float().cpu()
        st["ref_video"] = session.decode()
        return {"in_process": True, "steps": ref_settings.steps, "cfg": ref_settings.cfg, "fp8": args.fp8,
                "denoise_s": round(denoise_s, 1)}

    def deviation() -> dict:
        latents, video = st["session"].latents.float().cpu(), st["video"]
        out = {}
        for name, a, b in (("latents", latents, st["ref_latents"]),
                           ("video", torch.from_numpy(video).float(), torch.from_numpy(st["ref_video"]).float())):
            e = fast.relative_error(a, b)
            out[name] = {"max_rel": round(e["max_rel"], 5), "mean_rel": round(e["mean_rel"], 5)}
        return out

    rep.run("build_encoders", build_encoders, 30)
    if "models" in st:
        rep.run("prepare", prepare, 60)
    if "session" in st:
        r = rep.run("decode_first", decode("first"), 60)
        st["decode_s"] = (r or {}).get("decode_s", 60.0)
        rep.run("build_experts", build_experts, 30)
        if st["models"].high is not None:
            rep.run("denoise", denoise, 30)
            rep.run("decode_final", decode("final"), st["decode_s"] * 1.2 + 5)
            complete = "video" in st and st["session"].done
            if args.save_reference and complete:
                rep.run("save_reference", save_reference)
            if complete and (args.reference or "ref_session" in st):
                est = ref_settings.steps * 2 * st.get("full_forward_s", 0.0) + st["decode_s"] * 1.2 + 5
                rep.run("reference", reference, 5 if args.reference else est)

    stages = rep.data["stages"]
    get = lambda s, k: (stages.get(s) or {}).get(k)  # noqa: E731
    decode_s = get("decode_final", "decode_s") or get("decode_first", "decode_s")
    parts = {"text_encoder_s": get("prepare", "text_encoder_s"), "vae_encode_s": get("prepare", "vae_encode_s"),
             "denoise_s": st.get("denoise_steady_s"), "vae_decode_s": decode_s}
    total = sum(parts.values()) if all(v is not None for v in parts.values()) else None
    peaks = [v.get("peak_allocated_gib") for k, v in stages.items() if isinstance(v, dict)]
    deviation_vs_exact = deviation() if "ref_latents" in st else None
    rep.data["summary"] = {**parts, "total_s (compile excluded)": round(total, 1) if total else None,
                           "steps": steps, "deviation_vs_exact": deviation_vs_exact,
                           "compile_extra_s": get("denoise", "first_step_compile_s"),
                           "denoise_extrapolated": get("denoise", "extrapolated"),
                           "peak_allocated_gib_max": max([p for p in peaks if p is not None], default=None),
                           "peak_denoise_both_experts_gib": get("denoise", "peak_allocated_gib")}
    rep.save()
    print("\n== summary ==")
    for k, v in rep.data["summary"].items():
        print(f"  {k:34s} {v}")
    tmp.cleanup()
    return rep.data


if __name__ == "__main__":
    main()
