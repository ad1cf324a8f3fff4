"""Time the DiT block's GEMMs at the row counts a sequence split gives each rank, against the unsplit sequence.

    python bench/gemm_rows.py --out gemm_rows.json [--autotune]
    python bench/gemm_rows.py --tiny                  # CPU smoke test (what CI runs)

Each block of the 14B DiT multiplies its tokens [M, 5120] by six 5120 x 5120 weights (self-attention q, k, v, o,
cross-attention q, o) and the two FFN weights (5120 -> 13824 -> 5120). One GPU holds all M = S = 32 760 tokens
(480×832×81); P sequence ranks hold S / P each (8 190 on 4 ranks: not a multiple of 8). This times
``F.linear`` (bias included, bfloat16, cuBLAS as the compiled forward calls it) for each shape at S, at S / P and
at S / P rounded up to a multiple of 64, and prints, per row count and layout, the GEMM milliseconds of one
forward (40 blocks) and the ratio P · t(S / P) / t(S): 1.0 means the split GEMMs scale perfectly. Two layouts:
``separate`` (the released weights: q, k, v as three GEMMs) and ``qkv_fused`` (q, k, v as one GEMM of 3 × 5120
outputs). ``--autotune`` also times, at S and S / P, Inductor's max-autotune choice per shape (Triton templates,
persistent TMA ones included, against cuBLAS); its ratio is against the autotuned S.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import cuda_ms, environment, full_size_tokens, tiny_dit_config  # noqa: E402

from wclab.models.dit import DiTConfig  # noqa: E402
from wclab.parallel import split_counts  # noqa: E402

AUTOTUNE = {"max_autotune": True, "triton.enable_persistent_tma_matmul": True}  # Inductor options (no CUDA graphs)
CALLS = 10  # GEMMs per timed loop (one pair of CUDA events around them)


def gemm_shapes(cfg: DiTConfig) -> dict[str, tuple[int, int]]:
    """name -> (out features N, in features K) of each GEMM kind over a block's video tokens."""
    return {"dim_x_dim": (cfg.dim, cfg.dim), "qkv": (3 * cfg.dim, cfg.dim), "ffn_up": (cfg.ffn_dim, cfg.dim),
            "ffn_down": (cfg.dim, cfg.ffn_dim)}


LAYOUTS = {  # layout -> {shape name: calls per block}
    "separate": {"dim_x_dim": 6, "ffn_up": 1, "ffn_down": 1},
    "qkv_fused": {"qkv": 1, "dim_x_dim": 3, "ffn_up": 1, "ffn_down": 1},
}


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def time_shapes(rows: int, shapes: dict, device: str, dtype: torch.dtype, repeat: int, options=None) -> dict:
    """Milliseconds of one ``F.linear`` per shape at ``rows`` rows: eager cuBLAS, or compiled with Inductor
    ``options``; each the median over ``repeat`` loops of ``CALLS`` calls."""
    out = {}
    for name, (n, k) in shapes.items():
        x = torch.randn(rows, k, device=device, dtype=dtype)
        w = torch.randn(n, k, device=device, dtype=dtype) / k ** 0.5
        b = torch.randn(n, device=device, dtype=dtype)
        fn = F.linear if options is None else torch.compile(F.linear, options=options, dynamic=False)

        def loop():
            for _ in range(CALLS):
                fn(x, w, b)
        out[name] = round(cuda_ms(loop, repeat=repeat, warmup=2) / CALLS, 5)
        del x, w, b
    return out


def forward_ms(per_shape: dict, blocks: int) -> dict[str, float]:
    """layout -> GEMM milliseconds of one forward."""
    return {layout: round(blocks * sum(count * per_shape[name] for name, count in calls.items()), 4)
            for layout, calls in LAYOUTS.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", default="2,4", help="sequence ranks to compare with one (comma separated)")
    ap.add_argument("--autotune", action="store_true", help="also Inductor max-autotune at S and the split rows")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--tiny", action="store_true", help="a tiny model on the CPU (smoke test)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    if args.tiny:
        cfg, tokens, device, dtype = tiny_dit_config(), 60, "cpu", torch.float32
    else:
        cfg, tokens, device, dtype = DiTConfig.worldcanvas_14b(), full_size_tokens(), "cuda", torch.bfloat16
    shapes = gemm_shapes(cfg)
    report = {"env": environment(), "setup": {"tokens": tokens, "blocks": cfg.num_layers, "dtype": str(dtype),
                                              "shapes": shapes, "layouts": LAYOUTS, "calls_per_timing": CALLS,
                                              "repeat": args.repeat, "autotune_options": AUTOTUNE}, "rows": []}
    runs = [(tokens, 1, "one rank")]
    for ranks in (int(r) for r in args.ranks.split(",")):
        split = split_counts(tokens, ranks, balanced=False)[0]  # rank 0's share, the largest (as ParallelDiT)
        runs += [(split, ranks, "split"), (round_up(split, 64), ranks, "padded to 64")]
    base = {}
    for rows, ranks, how in runs:
        kernels = [("cublas", None)] + ([("max_autotune", AUTOTUNE)] if args.autotune and how != "padded to 64"
                                        else [])
        for kernel, options in kernels:
            ms = time_shapes(rows, shapes, device, dtype, args.repeat, options)
            fwd = forward_ms(ms, cfg.num_layers)
            if ranks == 1:
                base[kernel] = fwd
            ratio = {layout: round(ranks * fwd[layout] / base[kernel][layout], 4) for layout in fwd}
            report["rows"].append({"rows": rows, "ranks": ranks, "how": how, "kernel": kernel, "ms": ms,
                                   "forward_ms": fwd, "ratio_vs_one": ratio})
            for layout in fwd:
                print(f"M = {rows:6d} ({ranks} rank{'s' * (ranks > 1)}, {how}, {kernel}, {layout}): "
                      f"{fwd[layout]:8.2f} ms of GEMMs per forward, x{ranks} / one = {ratio[layout]:.4f}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
