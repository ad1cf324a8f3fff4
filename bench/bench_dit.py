"""DiT forward at the full WorldCanvas size (Wan2.2 A14B expert, random bf16 weights) on one GPU: the
reference-style eager path against the fast paths, all in one process, every figure written to JSON.

    python bench/bench_dit.py --out bench/out/dit.json                  # 480x832x81, 512 text tokens, bf16
    python bench/bench_dit.py --reference /path/to/DiffSynth-checkout   # also time the reference's own DiT
    python bench/bench_dit.py --tiny                                    # tiny model on the CPU (seconds; CI)

Stages (in this order; each is skipped when the --budget-s left is below its estimate, and an error in one is
recorded without stopping the others):
  kernels           SDPA kernels for self-/cross-attention (with and without the bias), separate vs fused QKV
                    GEMMs, bf16 and fp8 GEMM peak
  eager_bias        baseline: the DiT as it is by default (float64 RoPE, eager), with the trajectory bias
  profile_eager     share of GPU time in attention / GEMM / other kernels (torch.profiler)
  eager_nobias      the same without the bias
  reference         the reference implementation's own blocks on the same weights (with --reference)
  eager_rope32      eager with the float32 RoPE path only
  capture_eager     eager float32-RoPE forward + wclab.inspect.AttentionMaps' capture on all blocks (its hooks and
                    reduction on the bare DiT), then a reduction hook on the opt-in cross_attn.hook_probs (the
                    explicit pattern: time, and the maps' check)
  capture_motion    eager float32-RoPE forward + wclab.inspect.MotionMaps' capture on all blocks and heads for 4
                    trajectories (`self_attention_hooks` + `QueryRowMass`), with large and small token boxes
                    (query rows reported); block 0's rows checked against the explicit softmax of one head
  capture_concept   eager float32-RoPE forward + wclab.inspect.ConceptMaps' capture (3 concepts of 4 tokens, both
                    spaces) on all blocks
  compiled          fast.speed_up: float32 RoPE + torch.compile per block (+ cuDNN attention first, if faster)
  profile_compiled  kernel shares of the compiled path
  compiled_flash    the compiled path with each installed flash kernel (flash3 / flash4 / flash2) for the
                    self-attention; the fastest, if faster than SDPA, is the compiled path of the stages after it
  profile_compiled_flash  kernel shares of that path
  two_experts       a second expert resident on the same GPU; peak memory with both
  capture_compiled  compiled path + the same AttentionMaps capture
  capture_motion_compiled, capture_concept_compiled   the motion / concept captures on the compiled path
  accuracy          float32 forward of the same weights: every bf16 variant's error against it
  offload           BlockOffload (blocks streamed from pinned CPU memory): peak memory and time
  fp8               quantize_fp8 + compile: time, deviation, memory
  step_cache        8-step mini denoising loop with and without StepCache: mean time per forward, deviation
Errors are reported against eager_bias as max|Δ|/max|ref|, mean|Δ|/mean|ref| and ‖Δ‖/‖ref‖.
Every stage uses torch SDPA (the reference's kernel) unless it says otherwise.
"""
from __future__ import annotations

import argparse
import gc
import itertools
import math
import sys
import time
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import Report, cuda_ms, memory, reset_peak, sync, timed, tiny_dit_config  # noqa: E402

from wclab.encode.bias import BiasSpec  # noqa: E402
from wclab.inspect.attention import cross_attention_hooks, span_mass, span_selector  # noqa: E402
from wclab.inspect.concept_maps import (Concept, ConceptMass, concept_hooks, concept_projections,  # noqa: E402
                                        concept_selector)
from wclab.inspect import fused_row_mass  # noqa: E402
from wclab.inspect.motion_maps import QueryRowMass, self_attention_hooks  # noqa: E402
from wclab.models import fast  # noqa: E402
from wclab.models.attention import (AUTO_ORDER, attention, attention_backend, available_backends,  # noqa: E402
                                    set_attention_backend)
from wclab.models.dit import DiT, DiTConfig  # noqa: E402

FULL_SIZE = dict(frames=81, height=480, width=832, text_len=512)
TINY_SIZE = dict(frames=17, height=64, width=96, text_len=24)  # tokens (5, 4, 6) = 120
TINY_CONFIG = tiny_dit_config()
FULL_SPANS = [(1, 19), (21, 40), (42, 63)]
TINY_SPANS = [(1, 5), (6, 11), (12, 18)]


# ---------------------------------------------------------------------------------------------- inputs
def object_token_masks(grid: tuple[int, int, int], k: int) -> torch.Tensor:
    """bool [k, f·h·w]: k boxes (a third of the height, a quarter of the width) moving across the token grid."""
    f, h, w = grid
    masks = torch.zeros(k, f, h, w, dtype=torch.bool)
    bh, bw = max(h // 3, 1), max(w // 4, 1)
    for i in range(k):
        for t in range(f):
            y = (i * h // k + t) % (h - bh + 1)
            x = (t * (w - bw) // max(f - 1, 1) + i * 3) % (w - bw + 1)
            masks[i, t, y:y + bh, x:x + bw] = True
    return masks.reshape(k, -1)


def make_inputs(cfg: DiTConfig, size: dict, spans, device, dtype, seed: int = 0) -> tuple[dict, tuple]:
    """x [1, in_dim, F', H/8, W/8], timestep [1], context [1, L, text_dim], bias [1, 1, S, L] (log 30 on spans)."""
    g = torch.Generator().manual_seed(seed)
    f, h, w = (size["frames"] - 1) // 4 + 1, size["height"] // 8, size["width"] // 8
    grid = (f, h // 2, w // 2)
    inputs = dict(x=torch.randn(1, cfg.in_dim, f, h, w, generator=g).to(device, dtype),
                  timestep=torch.tensor([900.0], device=device, dtype=dtype),
                  context=(0.3 * torch.randn(1, size["text_len"], cfg.text_dim, generator=g)).to(device, dtype),
                  bias=BiasSpec(object_token_masks(grid, len(spans)), tuple(spans), 30.0)
                  .dense(size["text_len"], dtype, device))
    return inputs, grid


def dit_flops(cfg: DiTConfig, S: int, L: int) -> float:
    """Multiply-add FLOPs (×2) of one forward: linear layers and attention matmuls of all blocks."""
    d, ff = cfg.dim, cfg.ffn_dim
    per_block = 2 * (4 * S * d * d + 2 * S * S * d + 2 * S * d * d + 2 * L * d * d + 2 * S * L * d + 2 * S * d * ff)
    return cfg.num_layers * per_block


# ---------------------------------------------------------------------------------------------- reference
def load_reference(root: Path):
    """The reference's ``diffsynth/models/wan_video_dit.py`` as a module (its two sibling imports stubbed when the
    checkout lacks them; neither is used by the DiT blocks)."""
    import importlib.util
    import types

    path = root if root.suffix == ".py" else root / "diffsynth" / "models" / "wan_video_dit.py"
    if not path.is_file():
        raise FileNotFoundError(f"--reference: no {path}")
    pkg = types.ModuleType("_wcref")
    pkg.__path__ = [str(path.parent)]
    sys.modules["_wcref"] = pkg
    stubs = {"utils": {"hash_state_dict_keys": lambda *a, **k: ""},
             "wan_video_camera_controller": {"SimpleAdapter": object}}
    for name, attrs in stubs.items():
        if not (path.parent / f"{name}.py").exists():
            m = types.ModuleType(f"_wcref.{name}")
            m.__dict__.update(attrs)
            sys.modules[m.__name__] = m
    spec = importlib.util.spec_from_file_location("_wcref.wan_video_dit", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def reference_model(mod, cfg: DiTConfig, ours: DiT):
    """The reference WanModel sharing ``ours``' weight tensors (no copy)."""
    with torch.device("meta"):
        ref = mod.WanModel(dim=cfg.dim, in_dim=cfg.in_dim, ffn_dim=cfg.ffn_dim, out_dim=cfg.out_dim,
                           text_dim=cfg.text_dim, freq_dim=cfg.freq_dim, eps=cfg.eps, patch_size=cfg.patch_size,
                           num_heads=cfg.num_heads, num_layers=cfg.num_layers, has_image_input=False)
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(f"reference keys differ: missing {missing[:5]}, unexpected {unexpected[:5]}")
    ref.freqs = mod.precompute_freqs_cis_3d(cfg.head_dim)
    return ref.eval()


def reference_forward(ref, mod, x, timestep, context, bias):
    """The reference pipeline's per-step DiT call (model_fn_wan_video without its optional extras)."""
    t = ref.time_embedding(mod.sinusoidal_embedding_1d(ref.freq_dim, timestep))
    t_mod = ref.time_projection(t).unflatten(1, (6, ref.dim))
    context = ref.text_embedding(context)
    x, (f, h, w) = ref.patchify(x)
    freqs = torch.cat([ref.freqs[0][:f].view(f, 1, 1, -1).expand(f, h, w, -1),
                       ref.freqs[1][:h].view(1, h, 1, -1).expand(f, h, w, -1),
                       ref.freqs[2][:w].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1).reshape(f * h * w, 1, -1)
    freqs = freqs.to(x.device)
    for block in ref.blocks:
        x = block(x, context, t_mod, freqs, bias)
    return ref.unpatchify(ref.head(x, t), (f, h, w))


def attention_maps_capture(model: DiT, spans, text_len: int, device) -> tuple[list, dict]:
    """`wclab.inspect.AttentionMaps`' capture on the bare DiT (a Session would also need T5 and the VAE at full
    size): its hooks (`cross_attention_hooks`) on every block's cross-attention and its per-block reduction
    (`span_mass`, all heads) onto the caption spans. Returns (hooks for ``model.hooks``, maps): maps[n] is block
    n's float32 [K, S] mass (summed over heads) from the last forward."""
    sel = span_selector(spans, text_len, device)
    n, calls, maps = len(model.blocks), itertools.count(), {}

    def reduce(q, k, bias):
        maps[next(calls) % n] = span_mass(q, k, bias, sel)

    return cross_attention_hooks([f"blocks.{b}.cross_attn" for b in range(n)], reduce), maps


def motion_boxes(grid: tuple[int, int, int], k: int, shrink: int = 1) -> torch.Tensor:
    """bool [k, S]: `object_token_masks` boxes, each side divided by ``shrink`` (at least one token)."""
    f, h, w = grid
    big = object_token_masks(grid, k).reshape(k, f, h, w)
    if shrink == 1:
        return big.reshape(k, -1)
    out = torch.zeros_like(big)
    bh, bw = max(h // 3 // shrink, 1), max(w // 4 // shrink, 1)
    for i, t in itertools.product(range(k), range(f)):
        ys, xs = torch.nonzero(big[i, t], as_tuple=True)
        out[i, t, int(ys.min()):int(ys.min()) + bh, int(xs.min()):int(xs.min()) + bw] = True
    return out.reshape(k, -1)


def motion_maps_capture(model: DiT, masks: torch.Tensor, grid, device, kernel: str = "auto"
                        ) -> tuple[list, dict, dict]:
    """`wclab.inspect.MotionMaps`' capture on the bare DiT: its hooks (`self_attention_hooks`) on every block's
    self-attention and its reduction (`QueryRowMass(kernel)`, all heads) of the rows in ``masks`` bool [T, S]
    grouped per (trajectory, latent frame). Returns (hooks, maps, info): maps[n] is block n's float32 [T·F', S]
    mass from the last forward; info has the rows, selector and query row count."""
    f = grid[0]
    per_frame = _frame_split(masks, f)  # [T·F', S]
    rows = torch.nonzero(per_frame.any(0)).flatten()
    sel = per_frame[:, rows].float()
    rows_d, sel_d = rows.to(device), sel.to(device)
    n, calls, maps, mass = len(model.blocks), itertools.count(), {}, QueryRowMass(kernel)

    def reduce(q, k):
        maps[next(calls) % n] = mass(q, k, rows_d, sel_d)

    hooks = self_attention_hooks([f"blocks.{b}.self_attn" for b in range(n)], reduce)
    return hooks, maps, {"rows": rows, "selector": sel, "query_rows": int(len(rows))}


def _frame_split(masks: torch.Tensor, f: int) -> torch.Tensor:
    """bool [T, S] token sets → [T·f, S]: row (t, g) keeps the tokens of latent frame g only."""
    T, S = masks.shape
    frames = torch.arange(S) // (S // f)
    return (masks[:, None, :] & (frames[None, None, :] == torch.arange(f)[None, :, None])).reshape(T * f, S)


def concept_maps_capture(model: DiT, cfg: DiTConfig, device, dtype, n_concepts: int = 3, tokens: int = 4
                         ) -> tuple[list, dict]:
    """`wclab.inspect.ConceptMaps`' capture on the bare DiT: random T5-like contexts for ``n_concepts`` concepts of
    ``tokens`` tokens, projected per block (`concept_projections`), and both spaces per block: `ConceptMass` (all
    heads) and the output-space dot products. Returns (hooks, maps): maps[n] = (cross [R, S], output [R, S])."""
    g = torch.Generator().manual_seed(3)
    contexts = [0.3 * torch.randn(1, tokens + 2, cfg.text_dim, generator=g) for _ in range(n_concepts)]
    concepts = [Concept(f"c{i}", f"c{i}", c.to(device, dtype), (0, tokens)) for i, c in enumerate(contexts)]
    sel = concept_selector(concepts).to(device)
    proj, maps, mass = {}, {}, ConceptMass()

    def reduce(block, q, k, bias, out):
        if block not in proj:
            keys, outputs = concept_projections(model, block, concepts)
            proj[block] = (keys, (sel / sel.sum(0)).T @ outputs)
        keys, mean_outputs = proj[block]
        maps[block] = (mass(q, k, bias, keys, sel), (out.float() @ mean_outputs.T).sum(0).T)

    return concept_hooks([f"blocks.{b}.cross_attn" for b in range(len(model.blocks))], reduce), maps


# ---------------------------------------------------------------------------------------------- profiling
def kernel_shares(fn) -> dict:
    """GPU time of one call of ``fn`` split into attention / GEMM / other kernels (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    from torch.autograd import DeviceType

    groups = {"attention": 0.0, "gemm": 0.0, "other": 0.0}
    top = []
    events = prof.key_averages()
    kernels = [e for e in events if getattr(e, "device_type", None) == DeviceType.CUDA]
    for e in kernels or events:  # device-side events (kernels, copies); else filter host events by name
        us = getattr(e, "self_device_time_total", 0.0) or getattr(e, "device_time_total", 0.0)
        if us <= 0 or (not kernels and e.key.startswith(("aten::", "cuda", "Torch-Compiled", "##", "Compiled"))):
            continue
        name = e.key.lower()
        if any(s in name for s in ("flash", "fmha", "attention", "attn", "sdpa", "cudnn_generated")):
            groups["attention"] += us
        elif any(s in name for s in ("gemm", "xmma", "cutlass", "nvjet", "matmul", "sm90_", "cublas", "_mm_")):
            groups["gemm"] += us
        else:
            groups["other"] += us
        top.append((us, e.key[:120]))
    total = sum(groups.values()) or 1.0
    top.sort(reverse=True)
    return {"gpu_ms": round(total / 1e3, 1), **{f"{k}_pct": round(100 * v / total, 1) for k, v in groups.items()},
            "top_kernels": [f"{us / 1e3:.1f} ms {name}" for us, name in top[:8]]}


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny model and video on the CPU (for CI)")
    ap.add_argument("--out", type=Path, default=None, help="JSON report path (default bench/out/dit[_tiny].json)")
    ap.add_argument("--reference", type=Path, default=None, help="reference checkout (DiffSynth-style) to time too")
    ap.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget; later stages are skipped")
    ap.add_argument("--repeat", type=int, default=3, help="timed forwards per variant")
    ap.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; tiny: eager)")
    ap.add_argument("--skip", default="", help="comma-separated stage names to skip")
    ap.add_argument("--only", default="", help="comma-separated stage names to run (default: all)")
    ap.add_argument("--device", default=None, help="default cuda if available, else cpu")
    ap.add_argument("--flash", default=",".join(AUTO_ORDER),
                    help="flash backends the compiled_flash stage tries, if installed (comma-separated; 'none')")
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg, size, spans = (TINY_CONFIG, TINY_SIZE, TINY_SPANS) if args.tiny else \
        (DiTConfig.worldcanvas_14b(), FULL_SIZE, FULL_SPANS)
    backend = args.compile_backend or ("eager" if args.tiny else "inductor")
    out_path = args.out or Path(__file__).resolve().parent / "out" / ("dit_tiny.json" if args.tiny else "dit.json")
    skip = {s for s in args.skip.split(",") if s}
    rep = Report(out_path, args.budget_s, "DiT forward benchmark")
    set_attention_backend("sdpa")  # flash kernels only where a stage says so
    wanted_flash = args.flash.split(",")
    flash_backends = [b for b in AUTO_ORDER if b in wanted_flash and b in available_backends()] \
        if device.type == "cuda" else []
    torch.set_grad_enabled(False)
    torch.manual_seed(0)

    model = DiT.from_config(cfg, device=device, dtype=dtype).eval()
    inp, grid = make_inputs(cfg, size, spans, device, dtype)
    S, L = math.prod(grid), size["text_len"]
    flops = dit_flops(cfg, S, L)
    rep.data["setup"] = {"config": str(cfg), "video": size, "tokens": S, "text_tokens": L, "dtype": str(dtype),
                         "compile_backend": backend, "tflop_per_forward": round(flops / 1e12, 2),
                         "flash_backends_installed": flash_backends, **memory()}
    st: dict = {"sdpa": (), "attention": "sdpa"}  # state shared between stages

    def fwd(m=None, bias=True):
        m = m or model
        return lambda: m(inp["x"], inp["timestep"], inp["context"], inp["bias"] if bias else None)

    @contextmanager
    def fast_ctx(kernel: str | None = None):
        """The compiled path's kernels: SDPA priority and the self-attention backend (default: the fastest)."""
        with ExitStack() as stack:
            if st["sdpa"]:
                stack.enter_context(fast.sdpa_priority(*st["sdpa"]))
            stack.enter_context(attention_backend(kernel or st["attention"]))
            yield

    def result(tm: dict, out=None, ref_key="out_eager", base_key: str | None = "eager_bias") -> dict:
        r = dict(tm)
        r["tflops"] = round(flops / tm["median_s"] / 1e12, 1)
        base = st.get(f"t_{base_key}") if base_key else None
        if base:
            r[f"speedup_vs_{base_key}"] = round(base / tm["median_s"], 3)
        if out is not None and ref_key in st:
            r[f"error_vs_{ref_key[4:]}"] = fast.relative_error(out, st[ref_key])
        if out is not None and "out_fp32" in st:
            r["error_vs_fp32"] = fast.relative_error(out, st["out_fp32"])
        r.update(memory())
        return r

    only = {s for s in args.only.split(",") if s}

    def stage(name, fn, est_s):
        if name in skip or (only and name not in only):
            rep.data["stages"][name] = {"skipped": "--skip/--only"}
            return None
        return rep.run(name, fn, est_s)

    # ------------------------------------------------------------------ kernels
    def sdpa_ms(q, k, v, mask=None, backend=None) -> float:
        from torch.nn.attention import sdpa_kernel

        with (sdpa_kernel([backend]) if backend is not None else nullcontext()):
            return cuda_ms(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), repeat=5, warmup=2)

    def attention_kernels(r: dict) -> None:
        from torch.nn.attention import SDPBackend

        H, D = cfg.num_heads, cfg.head_dim
        q, k, v = (torch.randn(1, H, S, D, device=device, dtype=dtype) for _ in range(3))
        kc, vc = (torch.randn(1, H, L, D, device=device, dtype=dtype) for _ in range(2))
        choices = {"default": None, "cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                   "efficient": SDPBackend.EFFICIENT_ATTENTION}
        cases = {"self": ((q, k, v, None), 4 * S * S * D * H),
                 "cross_bias": ((q, kc, vc, inp["bias"]), 4 * S * L * D * H),
                 "cross_nobias": ((q, kc, vc, None), 4 * S * L * D * H)}
        for case, (qkvm, fl) in cases.items():
            for name, backend in choices.items():
                try:
                    ms = sdpa_ms(*qkvm, backend=backend)
                    r[f"{case}_{name}_ms"] = round(ms, 3)
                    r[f"{case}_{name}_tflops"] = round(fl / ms / 1e9, 1)
                except Exception as e:
                    r[f"{case}_{name}_error"] = f"{type(e).__name__}: {str(e)[:150]}"
        strided = [torch.randn(1, S, H, D, device=device, dtype=dtype).transpose(1, 2) for _ in range(3)]
        r["self_default_bshd_strided_ms"] = round(sdpa_ms(*strided), 3)  # the layout the model passes
        bshd = [t.transpose(1, 2) for t in strided]  # [B, S, H, D], as the model calls attention()
        with torch.nn.attention.sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]):
            ref = attention(*bshd)
        for fb in flash_backends:
            try:
                with attention_backend(fb):
                    out = attention(*bshd)  # (first call: a JIT-compiled kernel may compile here)
                    ms = cuda_ms(lambda: attention(*bshd), repeat=5, warmup=2)
                r[f"self_{fb}_ms"] = round(ms, 3)
                r[f"self_{fb}_tflops"] = round(cases["self"][1] / ms / 1e9, 1)
                r[f"self_{fb}_error_vs_sdpa"] = fast.relative_error(out, ref)
            except Exception as e:
                r[f"self_{fb}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        if device.type == "cuda":  # which kernels the default picks
            for case in ("self", "cross_bias"):
                qkvm = cases[case][0]
                r[f"{case}_default_kernels"] = kernel_shares(
                    lambda: F.scaled_dot_product_attention(*qkvm[:3], attn_mask=qkvm[3]))["top_kernels"][:2]

    def gemm_kernels(r: dict) -> None:
        d = cfg.dim
        x = torch.randn(S, d, device=device, dtype=dtype)
        ws = [torch.randn(d, d, device=device, dtype=dtype) / d ** 0.5 for _ in range(3)]
        wf = torch.cat(ws)
        r["qkv_separate_ms"] = round(cuda_ms(lambda: [x @ w.t() for w in ws]), 3)
        r["qkv_fused_ms"] = round(cuda_ms(lambda: x @ wf.t()), 3)
        n = 8192 if device.type == "cuda" else 256
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        r[f"gemm_{n}_tflops"] = round(2 * n ** 3 / cuda_ms(lambda: a @ b) / 1e9, 1)
        if device.type == "cuda":
            try:
                (aq, sa), (bq, sb) = fast._quantize_rows(a), fast._quantize_rows(b)
                r[f"fp8_rowwise_gemm_{n}_tflops"] = round(2 * n ** 3 / cuda_ms(
                    lambda: fast._fp8_matmul(aq, sa, bq, sb.reshape(1, -1), torch.bfloat16)) / 1e9, 1)
            except Exception as e:
                r["fp8_gemm_error"] = f"{type(e).__name__}: {str(e)[:200]}"

    def kernels():
        r = {}
        attention_kernels(r)  # (each helper frees its tensors on return)
        gemm_kernels(r)
        self_ms = {k: r.get(f"self_{k}_ms") for k in ("default", "cudnn")}
        if all(self_ms.values()) and self_ms["cudnn"] < 0.98 * self_ms["default"]:
            st["sdpa"] = ("cudnn",)
        r["fast_path_sdpa_priority"] = list(st["sdpa"]) or "default"
        return r

    stage("kernels", kernels, 30)

    # ------------------------------------------------------------------ eager baseline
    def eager_bias():
        reset_peak()
        tm, out = timed(fwd(), args.repeat)
        st["out_eager"], st["t_eager_bias"] = out, tm["median_s"]
        r = result(tm, base_key=None)
        r["finite"] = bool(torch.isfinite(out).all())
        r["output_abs_mean"] = float(out.float().abs().mean())
        return r

    stage("eager_bias", eager_bias, 20)
    if device.type == "cuda":
        stage("profile_eager", lambda: kernel_shares(fwd()), 15)
    stage("eager_nobias", lambda: result(timed(fwd(bias=False), max(args.repeat - 1, 1))[0]), 15)

    def reference():
        mod = load_reference(args.reference)
        ref = reference_model(mod, cfg, model)
        call = lambda: reference_forward(ref, mod, inp["x"], inp["timestep"], inp["context"], inp["bias"])  # noqa
        reset_peak()
        tm, out = timed(call, max(args.repeat - 1, 1))
        r = result(tm, out)
        r["bitwise_equal_to_eager"] = bool(torch.equal(out, st["out_eager"])) if "out_eager" in st else None
        del ref, call
        gc.collect()
        return r

    if args.reference is not None:
        stage("reference", reference, 25)

    # ------------------------------------------------------------------ float32 RoPE, eager
    def eager_rope32():
        model.rope_dtype = torch.float32
        reset_peak()
        tm, out = timed(fwd(), max(args.repeat - 1, 1))
        st["out_rope32"], st["t_eager_rope32"] = out, tm["median_s"]
        return result(tm, out)

    stage("eager_rope32", eager_rope32, 15)

    # ------------------------------------------------------------------ attention-map capture, eager
    def capture_eager():
        model.rope_dtype = torch.float32
        base, H = st.get("t_eager_rope32"), cfg.num_heads
        hooks, maps = attention_maps_capture(model, spans, L, device)
        reset_peak()
        with model.hooks(hooks):
            tm, out = timed(fwd(), args.repeat)
        r = {"attention_maps": result(tm, out, ref_key="out_rope32", base_key=None)}
        r["attention_maps"]["output_bitwise_equal_to_eager_rope32"] = bool(torch.equal(out, st["out_rope32"])) \
            if "out_rope32" in st else None
        r["attention_maps"]["blocks_recorded"] = len(maps)
        sel, probs_maps = span_selector(spans, L, device), {}

        def reduce_probs(p, hook):  # the explicit pattern [B, H, S, L], summed like the maps
            probs_maps[int(hook.name.split(".")[1])] = (p.sum((0, 1)) @ sel).T

        reset_peak()
        with model.hooks([(lambda n: n.endswith("cross_attn.hook_probs"), reduce_probs)]):
            tm2, out2 = timed(fwd(), 1)
        r["hook_probs"] = result(tm2, out2, ref_key="out_rope32", base_key=None)
        if base:
            r["overhead_pct"] = round(100 * (tm["median_s"] / base - 1), 1)
            r["added_s"] = round(tm["median_s"] - base, 3)
            r["hook_probs_overhead_pct"] = round(100 * (tm2["median_s"] / base - 1), 1)
        # block 0 sees identical inputs in both runs; per (head, token) probabilities, hence / H
        r["block0_maps_max_abs_diff_vs_hook_probs"] = float((maps[0] - probs_maps[0]).abs().max() / H)
        r["block0_span_mass_mean"] = [round(float(v), 4) for v in maps[0].mean(1) / H]
        return r

    stage("capture_eager", capture_eager, 60)

    # ------------------------------------------------------------------ motion / concept captures
    def capture_motion_on(path: str):
        """MotionMaps' capture of 4 trajectories with large and small boxes, on the eager or compiled path, with
        each kernel of QueryRowMass this machine runs ("fused": Triton; "torch": float32 logits in chunks)."""
        base_key, ref_key, ctx = (("t_eager_rope32", "out_rope32", nullcontext) if path == "eager"
                                  else ("t_compiled", "out_compiled", fast_ctx))
        model.rope_dtype = torch.float32
        base, r = st.get(base_key), {}
        kernels = ["fused", "torch"] if fused_row_mass.available(device) and dtype != torch.float32 else ["torch"]
        for label, shrink in (("large_boxes", 1), ("small_boxes", 2)):
            block0 = {}
            for kernel in kernels:
                hooks, maps, info = motion_maps_capture(model, motion_boxes(grid, 4, shrink), grid, device, kernel)
                reset_peak()
                with ctx(), model.hooks(hooks):
                    tm, out = timed(fwd(), args.repeat)
                rr = result(tm, out, ref_key=ref_key, base_key=None)
                rr.update(kernel=kernel, query_rows=info["query_rows"],
                          query_rows_pct=round(100 * info["query_rows"] / S, 1), blocks_recorded=len(maps))
                if ref_key in st:
                    rr[f"output_bitwise_equal_to_{ref_key[4:]}"] = bool(torch.equal(out, st[ref_key]))
                if base:
                    rr["overhead_pct"] = round(100 * (tm["median_s"] / base - 1), 1)
                    rr["added_s"] = round(tm["median_s"] - base, 3)
                # each query row's probabilities sum to 1 per head: group g's mass sums to heads x its rows
                expected = cfg.num_heads * info["selector"].sum(1).to(device)
                rr["block0_row_sum_max_rel_err"] = float(((maps[0].sum(1) - expected).abs() / expected).max())
                block0[kernel] = maps[0]
                if kernel != kernels[0]:
                    a, b = block0[kernels[0]], maps[0]
                    rr[f"block0_max_rel_diff_vs_{kernels[0]}"] = float((a - b).abs().max() / b.abs().max())
                r[label if kernel == kernels[0] else f"{label}_{kernel}"] = rr
        return r

    def capture_concept_on(path: str):
        """ConceptMaps' capture (3 concepts, both spaces), on the eager or compiled path."""
        base_key, ref_key, ctx = (("t_eager_rope32", "out_rope32", nullcontext) if path == "eager"
                                  else ("t_compiled", "out_compiled", fast_ctx))
        model.rope_dtype = torch.float32
        hooks, maps = concept_maps_capture(model, cfg, device, dtype)
        reset_peak()
        with ctx(), model.hooks(hooks):
            tm, out = timed(fwd(), args.repeat)
        r = result(tm, out, ref_key=ref_key, base_key=None)
        r["blocks_recorded"] = len(maps)
        if ref_key in st:
            r[f"output_bitwise_equal_to_{ref_key[4:]}"] = bool(torch.equal(out, st[ref_key]))
        base = st.get(base_key)
        if base:
            r["overhead_pct"] = round(100 * (tm["median_s"] / base - 1), 1)
            r["added_s"] = round(tm["median_s"] - base, 3)
        r["block0_cross_mass_mean"] = [round(float(v), 5) for v in maps[0][0].mean(1) / cfg.num_heads]
        return r

    stage("capture_motion", lambda: capture_motion_on("eager"), 120)
    stage("capture_concept", lambda: capture_concept_on("eager"), 50)

    # ------------------------------------------------------------------ compiled (eager's bf16 rounding)
    def compiled():
        import torch._dynamo

        fast.speed_up(model, backend=backend)
        reset_peak()
        with fast_ctx():
            tm, out = timed(fwd(), args.repeat)
        st["t_compiled"] = st["t_compiled_sdpa"] = tm["median_s"]
        st["out_compiled"] = st["out_compiled_sdpa"] = out
        r = result(tm, out)
        r["compile_s_approx"] = round(tm["first_s"] - tm["median_s"], 1)
        r["sdpa_priority"] = list(st["sdpa"]) or "default"
        if "out_rope32" in st:
            r["error_vs_eager_rope32"] = fast.relative_error(out, st["out_rope32"])
        c = torch._dynamo.utils.counters
        r["dynamo_unique_graphs"] = int(c["stats"]["unique_graphs"])
        r["dynamo_graph_breaks"] = {k[:120]: v for k, v in c["graph_break"].items()}
        return r

    stage("compiled", compiled, 120)
    if device.type == "cuda" and "t_compiled" in st:
        def profile_compiled():
            with fast_ctx():
                return kernel_shares(fwd())
        stage("profile_compiled", profile_compiled, 15)

    # ------------------------------------------------------------------ compiled with flash self-attention
    def compiled_flash():
        r = {}
        for fb in flash_backends:
            try:
                reset_peak()
                with fast_ctx(fb):
                    tm, out = timed(fwd(), args.repeat)
                rr = result(tm, out)
                rr["speedup_vs_compiled_sdpa"] = round(st["t_compiled_sdpa"] / tm["median_s"], 3)
                rr["error_vs_compiled_sdpa"] = fast.relative_error(out, st["out_compiled_sdpa"])
                r[fb] = rr
                if tm["median_s"] < st["t_compiled"]:
                    st.update(attention=fb, t_compiled=tm["median_s"], out_compiled=out)
            except Exception as e:
                r[fb] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        r["compiled_path_attention"] = st["attention"]
        return r

    if flash_backends and "t_compiled" in st:
        stage("compiled_flash", compiled_flash, 60 * len(flash_backends))
        if st["attention"] != "sdpa":
            def profile_compiled_flash():
                with fast_ctx():
                    return kernel_shares(fwd())
            stage("profile_compiled_flash", profile_compiled_flash, 15)

    # ------------------------------------------------------------------ both experts resident
    def two_experts():
        torch.manual_seed(1)
        second = DiT.from_config(cfg, device=device, dtype=dtype).eval()
        r = {"allocated_after_build_gib": memory().get("allocated_gib")}
        if "t_compiled" in st:
            fast.speed_up(second, backend=backend)
        reset_peak()
        with fast_ctx():
            t2, _ = timed(fwd(second), 1)
            t1, _ = timed(fwd(model), 1, warmup=0)
        r.update(second_expert=t2, first_expert=t1, path="compiled" if "t_compiled" in st else "eager",
                 attention=st["attention"], **memory())
        del second
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return r

    stage("two_experts", two_experts, 40)

    # ------------------------------------------------------------------ capture on the compiled path
    def capture_compiled():
        noop_hooks, _ = attention_maps_capture(model, spans, L, device)
        noop = torch.compiler.disable(lambda x, point: None)  # the same graph breaks, no reduction
        noop_hooks = [(name, noop) for name, _ in noop_hooks]
        with fast_ctx(), model.hooks(noop_hooks):
            _, out_noop = timed(fwd(), 1)
        hooks, maps = attention_maps_capture(model, spans, L, device)
        reset_peak()
        with fast_ctx(), model.hooks(hooks):
            tm, out = timed(fwd(), args.repeat)
        r = result(tm, out, ref_key="out_compiled", base_key="compiled")
        r["blocks_recorded"] = len(maps)
        base = st.get("t_compiled")
        if base:
            r["overhead_pct"] = round(100 * (tm["median_s"] / base - 1), 1)
            r["added_s"] = round(tm["median_s"] - base, 3)
        if "out_compiled" in st:
            r["output_bitwise_equal_to_compiled"] = bool(torch.equal(out, st["out_compiled"]))
            r["noop_hooks_output_bitwise_equal_to_compiled"] = bool(torch.equal(out_noop, st["out_compiled"]))
            r["noop_hooks_output_bitwise_equal_to_capture"] = bool(torch.equal(out_noop, out))
        r["block0_span_mass_mean"] = [round(float(v), 4) for v in maps[0].mean(1) / cfg.num_heads]
        return r

    if "t_compiled" in st:
        stage("capture_compiled", capture_compiled, 100)
        stage("capture_motion_compiled", lambda: capture_motion_on("compiled"), 150)
        stage("capture_concept_compiled", lambda: capture_concept_on("compiled"), 80)

    # ------------------------------------------------------------------ accuracy against float32
    def accuracy():
        from torch.nn.attention import SDPBackend, sdpa_kernel

        fast.reset_speed_up(model)
        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        for p in model.parameters():  # one tensor at a time: never two full copies
            p.data = p.data.float()
        try:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            reset_peak()
            kernels = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH] if device.type == "cuda" else \
                [SDPBackend.MATH]
            with sdpa_kernel(kernels):
                tm, out = timed(fwd(), 1, warmup=0)
        finally:
            for p in model.parameters():
                p.data = p.data.to(dtype)  # exact: the values came from dtype
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        st["out_fp32"] = out.float()
        r = {"fp32_forward_s": tm["median_s"], **memory(),
             "note": "same bf16-valued weights and inputs, computed in float32 (no TF32), float64 RoPE"}
        for key in ("out_eager", "out_rope32", "out_compiled_sdpa", "out_compiled"):
            if key in st:
                r[f"{key[4:]}_error_vs_fp32"] = fast.relative_error(st[key], st["out_fp32"])
        return r

    stage("accuracy", accuracy, 100)

    # ------------------------------------------------------------------ low-VRAM: block offload
    def offload():
        fast.reset_speed_up(model)
        model.rope_dtype = torch.float32
        reset_peak()
        t0 = time.perf_counter()
        off = fast.BlockOffload(model, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        setup = time.perf_counter() - t0
        reset_peak()
        try:
            tm, out = timed(fwd(), max(args.repeat - 1, 1))
            r = result(tm, out, ref_key="out_rope32", base_key="eager_rope32")
            r["output_bitwise_equal_to_eager_rope32"] = bool(torch.equal(out, st["out_rope32"])) \
                if "out_rope32" in st else None
            r["setup_s"] = round(setup, 1)
            r["path"] = "eager, float32 RoPE"
        finally:
            t0 = time.perf_counter()
            off.remove(to_device=True)
            r_back = time.perf_counter() - t0
        r["restore_s"] = round(r_back, 1)
        return r

    stage("offload", offload, 60)

    # ------------------------------------------------------------------ fp8 fast mode
    def fp8():
        fast.reset_speed_up(model)
        gc.collect()
        reset_peak()
        fast.quantize_fp8(model)
        st["fp8"] = True
        if device.type == "cuda":
            torch.cuda.empty_cache()
        r = {"allocated_after_quantize_gib": memory().get("allocated_gib")}
        fast.speed_up(model, backend=backend)
        reset_peak()
        with fast_ctx():
            tm, out = timed(fwd(), args.repeat)
        r.update(result(tm, out))
        if st.get("t_compiled"):
            r["speedup_vs_compiled"] = round(st["t_compiled"] / tm["median_s"], 3)
        if "out_compiled" in st:
            r["error_vs_compiled"] = fast.relative_error(out, st["out_compiled"])
        return r

    stage("fp8", fp8, 45)

    # ------------------------------------------------------------------ step caching (on whatever the model is now)
    def step_cache():
        n = 8

        def loop(cache: bool):
            x = inp["x"].clone()
            sigmas = torch.linspace(0.95, 0.75, n + 1).tolist()
            c = fast.StepCache(model, fast.FixedCache(every=2)) if cache else None
            times = []
            try:
                with fast_ctx():
                    for i in range(n):
                        t = torch.tensor([sigmas[i] * 1000], device=device, dtype=dtype)
                        sync()
                        t0 = time.perf_counter()
                        v = model(x, t, inp["context"], inp["bias"])
                        sync()
                        times.append(time.perf_counter() - t0)
                        x[:, :16] = (x[:, :16].float() + (sigmas[i + 1] - sigmas[i]) * v.float()).to(dtype)
            finally:
                stats = (c.computed, c.reused) if c else (n, 0)
                if c:
                    c.remove()
            return x[:, :16].clone(), times, stats

        plain, t_plain, _ = loop(False)
        cached, t_cached, (computed, reused) = loop(True)
        return {"forwards": n, "model": "fp8" if st.get("fp8") else "bf16",
                "plain_mean_s": round(sum(t_plain) / n, 4), "cached_mean_s": round(sum(t_cached) / n, 4),
                "cached_s": [round(t, 3) for t in t_cached], "computed": computed, "reused": reused,
                "latents_error_vs_plain": fast.relative_error(cached, plain),
                "policy": "FixedCache(every=2), first_blocks=1 (every other forward reuses)"}

    stage("step_cache", step_cache, 45)

    rep.data["summary"] = summary(rep.data["stages"])
    rep.save()
    print_summary(rep.data["summary"])
    return rep.data


def summary(stages: dict) -> dict:
    """The headline figures (None where a stage did not run)."""
    def get(stage, *keys):
        v = stages.get(stage, {})
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        return v

    return {
        "eager_bias_s": get("eager_bias", "median_s"),
        "eager_nobias_s": get("eager_nobias", "median_s"),
        "reference_s": get("reference", "median_s"),
        "eager_rope32_s": get("eager_rope32", "median_s"),
        "compiled_s": get("compiled", "median_s"),
        "compiled_speedup": get("compiled", "speedup_vs_eager_bias"),
        "compiled_max_rel_err": get("compiled", "error_vs_eager", "max_rel"),
        "compiled_mean_rel_err": get("compiled", "error_vs_eager", "mean_rel"),
        **{f"compiled_{fb}_{k}": get("compiled_flash", fb, *key) for fb in AUTO_ORDER
           for k, key in (("s", ("median_s",)), ("speedup", ("speedup_vs_eager_bias",)),
                          ("max_rel_err", ("error_vs_eager", "max_rel")),
                          ("mean_rel_err", ("error_vs_eager", "mean_rel"))) if fb in stages.get("compiled_flash", {})},
        "compiled_path_attention": get("compiled_flash", "compiled_path_attention") or "sdpa",
        "capture_eager_overhead_pct": get("capture_eager", "overhead_pct"),
        "capture_eager_hook_probs_overhead_pct": get("capture_eager", "hook_probs_overhead_pct"),
        "capture_compiled_overhead_pct": get("capture_compiled", "overhead_pct"),
        **{f"capture_motion{p}_{b}_overhead_pct": get(f"capture_motion{p}", f"{b}_boxes", "overhead_pct")
           for p in ("", "_compiled") for b in ("large", "small")},
        "capture_motion_large_query_rows": get("capture_motion", "large_boxes", "query_rows"),
        "capture_motion_small_query_rows": get("capture_motion", "small_boxes", "query_rows"),
        "capture_concept_overhead_pct": get("capture_concept", "overhead_pct"),
        "capture_concept_compiled_overhead_pct": get("capture_concept_compiled", "overhead_pct"),
        "two_experts_peak_gib": get("two_experts", "peak_allocated_gib"),
        "offload_s": get("offload", "median_s"),
        "offload_peak_gib": get("offload", "peak_allocated_gib"),
        "fp8_s": get("fp8", "median_s"),
        "fp8_speedup": get("fp8", "speedup_vs_eager_bias"),
        "fp8_mean_rel_err": get("fp8", "error_vs_eager", "mean_rel"),
        "fp8_peak_gib": get("fp8", "peak_allocated_gib"),
    }


def print_summary(s: dict) -> None:
    print("\n== summary ==")
    for k, v in s.items():
        print(f"  {k:40s} {v}")


if __name__ == "__main__":
    main()
