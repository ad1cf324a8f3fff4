"""The README's demo: generate a WorldCanvas video on tiny embedded models — no downloads, CPU is enough.

``python -m wclab.demo --out demo_out`` writes tiny random-weight checkpoints in the released layout (so the real
loading code runs), loads them, takes one of our example scenes at its small size, denoises it step by step and
writes the video, the same video with the trajectories drawn over it, and a strip of x0 previews per step.
The weights are random, so the video shows noise-shaped motion, not a real scene: the point is the pipeline.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from wclab.conditions import load_json
from wclab.inspect.display import overlay_trajectories, save_video
from wclab.models.loading import load_models
from wclab.sampler import Session, Settings
from wclab.testing import make_tiny_checkpoints

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SCENE = REPO / "examples" / "small" / "ball.json"
DEFAULT_IMAGE = REPO / "examples" / "small" / "ball.png"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wclab.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--scene", default=str(DEFAULT_SCENE), help="conditions JSON")
    p.add_argument("--image", default=str(DEFAULT_IMAGE), help="start image")
    p.add_argument("--models", default=None, help="folder for the tiny checkpoints (default: a cache folder)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models_dir = Path(args.models) if args.models else Path.home() / ".cache" / "wclab" / "tiny"
    print(f"tiny checkpoints: {make_tiny_checkpoints(models_dir)}")
    models = load_models(models_dir)
    scene = load_json(args.scene)
    print(f"scene {args.scene}: {scene.height}x{scene.width}, {scene.frames} frames, "
          f"{len(scene.trajectories)} trajectories")

    session = Session(models, scene, args.image, Settings(steps=args.steps, seed=args.seed))
    print("prompt:\n  " + session.conditions.prompt.text.replace("\n", "\n  "))
    previews = []
    while not session.done:
        record = session.step()
        preview = session.preview()  # uint8 [F', H, W, 3] of the predicted clean video
        previews.append(preview[len(preview) // 2])
        print(f"step {record.index}: t={record.timestep:.1f} sigma={record.sigma:.3f} expert={record.expert}")
    video = session.decode()
    for name, frames in (("video.mp4", video), ("overlay.mp4", overlay_trajectories(video, scene)),
                         ("overlay.gif", overlay_trajectories(video, scene)), ("x0_previews.png", previews)):
        print(f"wrote {save_video(frames, out / name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
