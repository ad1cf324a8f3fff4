"""Time the DiT block's GEMMs at the row counts a sequence split gives each rank, against the unsplit sequence.

    python bench/gemm_rows.py --out gemm_rows.json [--autotune]
    python bench/gemm_rows.py --tiny                  # CPU smoke test (what CI runs)

Each block of the 14B DiT multiplies its tokens [M, 5120] by six 5120 x 5120 weights (self-attention q, k, v, o,
cross-attention q, o) and the two FFN weights (5120 -> 13824 -> 5120). One GPU holds all M = S = 32 760 tokens
(480×832×81); P sequence ranks hold S / P each (8 190 on 4 ranks: not a multiple of 8). This times
``F.linear`` (bias included, bfloat16, cuBLAS as the compiled forward calls it) for each shape at S, at S / P and
at S / P rounded up to a multiple of 64, and prints, per row count, the GEMM milliseconds of one forward (40
blocks) and the ratio P · t(S / P) / t(S): 1.0 means the split GEMMs scale perfectly. ``--autotune`` also times
Inductor's max-autotune choice for the split row count (Triton templates against cuBLAS).
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


def block_shapes(cfg: DiTConfig) -> dict[str, tuple[int, int, int]]:
    """name -> (count per block, out features N, in features K) of the block's GEMMs over its video tokens."""
    return {"dim_x_dim": (6, cfg.dim, cfg.dim), "ffn_up": (1, cfg.ffn_dim, cfg.dim),
            "ffn_down": (1, cfg.dim, cfg.ffn_dim)}


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def time_shapes(rows: int, shapes: dict, device: str, dtype: torch.dtype, repeat: int, compile_mode=None) -> dict:
    """Milliseconds of each shape's ``F.linear`` at ``rows`` rows (eager cuBLAS, or compiled with ``compile_mode``)."""
    out = {}
    for name, (_, n, k) in shapes.items():
        x = torch.randn(rows, k, device=device, dtype=dtype)
        w = torch.randn(n, k, device=device, dtype=dtype) / k ** 0.5
        b = torch.randn(n, device=device, dtype=dtype)
        fn = F.linear if compile_mode is None else torch.compile(F.linear, mode=compile_mode, dynamic=False)
        out[name] = round(cuda_ms(lambda: fn(x, w, b), repeat=repeat, warmup=2), 4)
        del x, w, b
    return out


def forward_ms(per_shape: dict, shapes: dict, blocks: int) -> float:
    return blocks * sum(shapes[name][0] * ms for name, ms in per_shape.items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", default="2,4", help="sequence ranks to compare with one (comma separated)")
    ap.add_argument("--autotune", action="store_true", help="also Inductor max-autotune at the split row counts")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--tiny", action="store_true", help="a tiny model on the CPU (smoke test)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    if args.tiny:
        cfg, tokens, device, dtype = tiny_dit_config(), 60, "cpu", torch.float32
    else:
        cfg, tokens, device, dtype = DiTConfig.worldcanvas_14b(), full_size_tokens(), "cuda", torch.bfloat16
    shapes = block_shapes(cfg)
    report = {"env": environment(), "setup": {"tokens": tokens, "blocks": cfg.num_layers, "dtype": str(dtype),
                                              "shapes": shapes, "repeat": args.repeat}, "rows": []}
    one = time_shapes(tokens, shapes, device, dtype, args.repeat)
    base = forward_ms(one, shapes, cfg.num_layers)
    report["rows"].append({"rows": tokens, "ranks": 1, "how": "one rank", "ms": one, "forward_ms": round(base, 4),
                           "ratio_vs_one": 1.0})
    print(f"M = {tokens:6d} (1 rank): {base:8.2f} ms of GEMMs per forward")
    for ranks in (int(r) for r in args.ranks.split(",")):
        split = split_counts(tokens, ranks, balanced=False)[0]  # rank 0's share, the largest (as ParallelDiT)
        for rows, how in ((split, "split"), (round_up(split, 64), "padded to 64")):
            ms = time_shapes(rows, shapes, device, dtype, args.repeat)
            fwd = forward_ms(ms, shapes, cfg.num_layers)
            ratio = ranks * fwd / base
            report["rows"].append({"rows": rows, "ranks": ranks, "how": how, "ms": ms, "forward_ms": round(fwd, 4),
                                   "ratio_vs_one": round(ratio, 4)})
            print(f"M = {rows:6d} ({ranks} ranks, {how}): {fwd:8.2f} ms per forward, x{ranks} / one = {ratio:.4f}")
            if args.autotune and how == "split":
                tuned = time_shapes(rows, shapes, device, dtype, args.repeat, "max-autotune-no-cudagraphs")
                tfwd = forward_ms(tuned, shapes, cfg.num_layers)
                report["rows"][-1]["max_autotune"] = {"ms": tuned, "forward_ms": round(tfwd, 4),
                                                             "ratio_vs_one": round(ranks * tfwd / base, 4)}
                print(f"M = {rows:6d} ({ranks} ranks, max-autotune): {tfwd:8.2f} ms per forward, "
                      f"x{ranks} / one = {ranks * tfwd / base:.4f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
