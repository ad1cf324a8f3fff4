"""``wclab`` command line: ``wclab generate`` renders a video from a conditions file and a start image."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from wclab.errors import WclabError


def _generate(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save_file

    from wclab.conditions import load_json
    from wclab.conditions.resize import resize_scene
    from wclab.inspect.display import save_video
    from wclab.models.loading import load_models
    from wclab.sampler import Settings, generate

    scene = load_json(args.conditions)
    scene = resize_scene(scene, args.height, args.width, args.frames)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    models = load_models(args.checkpoints, variant=args.variant, tokenizer=args.tokenizer, device=args.device,
                         dtype=dtype)
    settings = Settings(steps=args.steps, seed=args.seed, cfg=args.cfg, shift=args.shift, boundary=args.boundary,
                        beta=args.beta, point_mode=args.point_mode, record="none")
    result = generate(models, scene, args.image, settings)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_video(result.video, out, fps=args.fps)
    print(f"wrote {out} ({result.video.shape[0]} frames, {result.video.shape[1]}x{result.video.shape[2]})")
    if args.save_latents:
        save_file({"latents": result.latents.detach().float().cpu().contiguous()}, args.save_latents)
        print(f"wrote {args.save_latents}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wclab", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate a video from conditions + start image")
    add_generate_arguments(g)
    g.set_defaults(func=_generate)
    return p


def add_generate_arguments(g: argparse.ArgumentParser) -> None:
    """The arguments of ``wclab generate`` (also taken by ``python -m wclab.parallel generate``)."""
    g.add_argument("--conditions", required=True, help="scene JSON in the drawing tool's format")
    g.add_argument("--image", required=True, help="start image (resized to cover, centre-cropped)")
    g.add_argument("--checkpoints", required=True, help="checkpoint directory (released or tiny layout)")
    g.add_argument("--out", required=True, help="output video (.mp4 or .gif)")
    g.add_argument("--tokenizer", default=None, help="tokenizer folder, when the layout has none")
    g.add_argument("--variant", default="WorldCanvas", choices=["WorldCanvas", "WorldCanvas_ref"])
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--steps", type=int, default=50)
    g.add_argument("--cfg", type=float, default=5.0)
    g.add_argument("--shift", type=float, default=5.0)
    g.add_argument("--boundary", type=float, default=0.9)
    g.add_argument("--beta", type=float, default=30.0, help="cross-attention bias strength (1 = off)")
    g.add_argument("--point-mode", default="point", choices=["point", "mask"])
    g.add_argument("--height", type=int, default=None, help="pixels (default: the scene's)")
    g.add_argument("--width", type=int, default=None, help="pixels (default: the scene's)")
    g.add_argument("--frames", type=int, default=None, help="frames, 4k+1 (default: the scene's)")
    g.add_argument("--fps", type=int, default=16)
    g.add_argument("--device", default="cuda" if _cuda() else "cpu")
    g.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on GPU, float32 on CPU")
    g.add_argument("--save-latents", default=None, help="also save the final latents (.safetensors)")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "dtype", "x") is None:
        args.dtype = "bfloat16" if str(args.device).startswith("cuda") else "float32"
    try:
        return args.func(args)
    except WclabError as e:
        print(f"wclab: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
