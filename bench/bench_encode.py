"""Time wclab.encode.encode_conditions against a straightforward per-frame implementation, in the same run.

    python bench/bench_encode.py            # door example, 480x832x81
    python bench/bench_encode.py --tiny     # synth_small, 128x224x17 (seconds; for CI)

The naive baseline below follows the reference's structure (Gaussian template built pixel by pixel on every
call, masks decoded from base64 on every call, a Python loop over all T frames with list accumulation, a cv2
resize and torch slice writes per box). Both results are checked equal before timing is reported.
"""
from __future__ import annotations

import argparse
import base64
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_util
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from wclab.conditions import load_json  # noqa: E402
from wclab.encode import encode_conditions  # noqa: E402


# ---------------------------------------------------------------------------------------------- naive baseline
def naive_template(n: int = 200, sigma: float = 40.0) -> np.ndarray:
    g = np.zeros((n, n), np.float32)
    for i in range(n):
        for j in range(n):
            g[i, j] = np.exp(-((i - n / 2) ** 2 + (j - n / 2) ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)
    g *= cv2.circle(np.zeros((n, n), np.float32), (n // 2, n // 2), n // 2, 1, -1)
    g = (g / g.max()).astype(np.float32)
    return (g / g.max() * 255).astype(np.uint8)


def naive_cells(a: float, b: float, cell: int) -> tuple[int, int]:
    c1, c2 = int(a) // cell, int(b + 1) // cell
    if c1 == c2:
        if c1 == 0:
            c2 = 1
        else:
            c1 = c2 - 1
    return c1, c2


def naive_encode(scene_json: list, H: int, W: int, T: int, latents: torch.Tensor, mode: str = "point"):
    """gaussian [1,1,F,h,w], point [1,16,F,h,w], token masks {id: [1,1,F,h/2,w/2]} with plain Python loops."""
    trajs = [x for x in scene_json if "tracking" in x]
    captions = scene_json[-1]["id_caption_map"]
    Fl, h, w = (T - 1) // 4 + 1, H // 8, W // 8
    template = naive_template()
    gaussian = torch.zeros(1, 1, Fl, h, w)
    point = torch.zeros(1, 16, Fl, h, w)
    tokens = {i: torch.zeros(1, 1, Fl, h // 2, w // 2) for i in captions}
    for tr in trajs:
        tp, vis = tr["tracking"], tr["tracking_vis_value"]
        x0, y0 = tp[0]
        entering = x0 < 0 or x0 >= W or y0 < 0 or y0 >= H
        rle = dict(tr["mask_cluster"], counts=base64.b64decode(tr["mask_cluster"]["counts"]))
        mask = torch.from_numpy(mask_util.decode(rle).astype(bool))
        ys, xs = torch.nonzero(mask, as_tuple=True)
        reach = (120, 120) if entering else ((xs - x0).abs().max().item(), (ys - y0).abs().max().item())
        if mode == "point":
            feat = torch.ones(16) if entering else latents[0, :, 0, int(y0 // 8), int(x0 // 8)]
        else:
            ds = F.interpolate(mask[None, None].float(), scale_factor=1 / 8, mode="nearest")[0]
            feat = torch.ones(16) if entering else (latents[0, :, 0] * ds).mean(dim=(1, 2))
        passes = [(str(tr["id"]) in tokens, reach, 0.5, 16), (True, (15, 15), 0.8, 8)]
        for active, (hx, hy), thr, cell in passes:
            if not active:
                continue
            xs_, ys_ = [], []
            for j in range(T):
                xs_.append(tp[j][0])
                ys_.append(tp[j][1])
                if j % 4:
                    continue
                cx, cy = sum(xs_) / len(xs_), sum(ys_) / len(ys_)
                xs_, ys_ = [], []
                if vis[j] <= thr:
                    continue
                x1, x2 = max(cx - hx, 0), min(cx + hx, W - 1)
                y1, y2 = max(cy - hy, 0), min(cy + hy, H - 1)
                if x2 - x1 < 1 or y2 - y1 < 1:
                    continue
                (a, b), (c, d) = naive_cells(x1, x2, cell), naive_cells(y1, y2, cell)
                if cell == 16:
                    tokens[str(tr["id"])][0, 0, j // 4, c:d, a:b] = 1.0
                    continue
                m = torch.tensor(cv2.resize(template, (b - a, d - c)), dtype=torch.float32)
                gaussian[0, 0, j // 4, c:d, a:b] = m
                if entering and mode == "point":
                    point[0, :, j // 4, c:d, a:b] = 1.0
                else:
                    point[0, :, j // 4, c:d, a:b] = feat[:, None, None] * (m != 0)
    return gaussian, point, tokens


# ---------------------------------------------------------------------------------------------- timing
def best_ms(fn, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="the shared/ folder with fixtures/")
    ap.add_argument("--tiny", action="store_true", help="synth_small (128x224x17) instead of door (480x832x81)")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per implementation (default 20, tiny 5)")
    ap.add_argument("--mode", choices=["point", "mask"], default="point")
    args = ap.parse_args()
    fx = args.shared / "fixtures"
    if args.tiny:
        name, path = "synth_small", fx / "synth_small.json"
    else:
        name, path = "door", fx / "worldcanvas_examples/door.json"
    repeat = args.repeat or (5 if args.tiny else 20)

    scene = load_json(path)
    latents = load_file(str(fx / f"reference/golden_cond_{name}.safetensors"))["first_frame_latents"]
    raw = scene.to_list()
    H, W, T = scene.size

    ours = encode_conditions(scene, latents, args.mode)
    g, p, tok = naive_encode(raw, H, W, T, latents, args.mode)
    assert torch.equal(ours.gaussian, g) and torch.equal(ours.point, p), "implementations disagree"
    assert all(torch.equal(ours.token_masks[i], tok[i]) for i in tok), "token masks disagree"

    fast = best_ms(lambda: encode_conditions(scene, latents, args.mode), repeat)
    slow = best_ms(lambda: naive_encode(raw, H, W, T, latents, args.mode), repeat)
    print(f"{name} {H}x{W}x{T}, {len(scene.trajectories)} trajectories, mode={args.mode}, {repeat} runs, "
          f"torch threads {torch.get_num_threads()}")
    print(f"  wclab encode_conditions : best {fast[0]:8.2f} ms   median {fast[1]:8.2f} ms")
    print(f"  naive per-frame loops   : best {slow[0]:8.2f} ms   median {slow[1]:8.2f} ms")
    print(f"  speed-up (best)         : {slow[0] / fast[0]:.1f}x")


if __name__ == "__main__":
    main()
