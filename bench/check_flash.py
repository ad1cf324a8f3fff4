"""Check each installed flash-attention backend against float32 attention on a GPU, at the shapes the DiT uses
(odd token counts, batch 2 for CFG) and report its error and first-call (compile) time.

    python bench/check_flash.py --out bench/out/flash.json

Exits non-zero if a backend errors or its error exceeds bf16 tolerance (max |Δ| > 2e-2 · max |ref|).
On a machine without CUDA or without flash backends it says so and exits 0.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402,F401  (puts the repository on sys.path)
from wclab.models.attention import (  # noqa: E402
    AUTO_ORDER,
    attention,
    attention_backend,
    attention_from_probs,
    attention_logits,
    available_backends,
)

# (batch, query tokens, key tokens, heads, head dim): self-attention of a small odd grid, a CFG pair, and a
# full-size row block (the full 32,760² float32 reference would not fit; its queries are sliced)
SHAPES = [(1, 3 * 5 * 7, 3 * 5 * 7, 4, 128), (2, 1561, 1561, 40, 128), (1, 32760, 32760, 40, 128)]
QUERY_SLICE = 512  # queries checked against float32 per shape


def check(backend: str, shape, device, dtype, seed: int = 0) -> dict:
    b, lq, lk, h, d = shape
    g = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(b, n, h, d, device=device, dtype=dtype, generator=g) for n in (lq, lk, lk))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with attention_backend(backend):
        out = attention(q, k, v)
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    n = min(lq, QUERY_SLICE)
    ref = attention_from_probs(attention_logits(q[:, :n].float(), k.float()).softmax(-1), v.float())
    err = (out[:, :n].float() - ref).abs()
    return {"shape": list(shape), "first_call_s": round(first, 2), "max_abs": float(err.max()),
            "max_rel": float(err.max() / ref.abs().max()), "mean_rel": float(err.mean() / ref.abs().mean()),
            "finite": bool(torch.isfinite(out).all())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    backends = [b for b in AUTO_ORDER if b in available_backends()]
    report: dict = {"installed": backends, "results": {}}
    if not torch.cuda.is_available() or not backends:
        print("no CUDA device or no flash backend installed: nothing to check", report)
        return 0
    ok = True
    for backend in backends:
        rows = []
        for shape in SHAPES:
            try:
                r = check(backend, shape, torch.device("cuda"), torch.bfloat16)
                r["ok"] = r["finite"] and r["max_rel"] <= 2e-2
            except Exception as e:  # reported, then the exit code says it failed
                r = {"shape": list(shape), "ok": False, "error": f"{type(e).__name__}: {str(e)[:400]}"}
            ok &= r["ok"]
            rows.append(r)
            print(backend, json.dumps(r))
        report["results"][backend] = rows
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
