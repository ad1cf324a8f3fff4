"""``wclab`` command line: ``wclab generate`` renders a video from a conditions file and a start image.

`build_parser` and `generation_inputs` are the one definition of the generate command line; the
sequence-parallel launcher (``torchrun -m wclab.parallel generate``) uses them too.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from safetensors.torch import save_file

from wclab.conditions import Scene, load_json, resize_scene
from wclab.encode.bias import BETA
from wclab.errors import WclabError
from wclab.image import load_image
from wclab.inspect.display import save_video
from wclab.models.device import DeviceError, check_device
from wclab.models.layout import VARIANTS
from wclab.models.loading import load_models
from wclab.sampler import Session, Settings

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DEFAULTS = {f.name: f.default for f in fields(Settings)}


def dtype_from_name(name: Optional[str], device: str) -> torch.dtype:
    """``--dtype`` as a torch dtype; None: bfloat16 on a GPU, float32 on the CPU."""
    if name is None:
        name = "bfloat16" if str(device).startswith("cuda") else "float32"
    return DTYPES[name]


@dataclass
class GenerationInputs:
    """What ``wclab generate`` runs, from its arguments: the (resized) scene, `load_models` keyword arguments
    and the sampling settings."""

    scene: Scene
    model_kwargs: dict[str, Any]
    settings: Settings


def generation_inputs(args: argparse.Namespace) -> GenerationInputs:
    """Check the arguments and read the inputs of ``generate`` — everything but the models, so bad input fails
    before any model is loaded: the scene (resized to ``--height/--width/--frames``), the start image (exists,
    decodes), ``--steps`` ≥ 1 and the device."""
    if args.steps < 1:
        raise WclabError(f"--steps: expected at least 1 denoising step, got {args.steps}")
    device = str(args.device)
    try:
        check_device(device)
    except DeviceError as e:
        raise WclabError(f"--device: {e}") from None
    scene = resize_scene(load_json(args.conditions), args.height, args.width, args.frames)
    load_image(args.image)  # ImageLoadError names the file
    model_kwargs = dict(checkpoint_dir=args.checkpoints, variant=args.variant, tokenizer=args.tokenizer,
                        device=device, dtype=dtype_from_name(args.dtype, device), lora=parse_loras(args.lora))
    common = dict(seed=args.seed, boundary=args.boundary, beta=args.beta, point_mode=args.point_mode, record="none")
    if args.distilled:
        fixed = [f"--{name}" for name in ("steps", "cfg", "shift") if getattr(args, name) != _DEFAULTS[name]]
        if fixed:
            raise WclabError(f"--distilled sets the steps, CFG and shift of the step-distilled preset; drop "
                             f"{', '.join(fixed)}")
        settings = Settings.step_distilled(**common)
    else:
        settings = Settings(steps=args.steps, cfg=args.cfg, shift=args.shift, **common)
    return GenerationInputs(scene, model_kwargs, settings)


def parse_loras(specs: Optional[Sequence[str]]) -> dict[str, list[tuple[str, float]]]:
    """``--lora EXPERT=PATH[:STRENGTH]`` values -> ``{"high": [(path, strength)], ...}`` for `load_models`;
    the file must exist (checked before any model is loaded), strength defaults to 1."""
    loras: dict[str, list[tuple[str, float]]] = {}
    for spec in specs or ():
        expert, sep, rest = spec.partition("=")
        if not sep or expert not in ("high", "low") or not rest:
            raise WclabError(f"--lora: expected high=PATH[:STRENGTH] or low=PATH[:STRENGTH], got {spec!r}")
        path, strength = rest, 1.0
        head, colon, tail = rest.rpartition(":")
        if colon:
            try:
                path, strength = head, float(tail)
            except ValueError:
                pass  # a ':' inside the path
        if not Path(path).is_file():
            raise WclabError(f"--lora: {path} is not a file")
        loras.setdefault(expert, []).append((path, strength))
    return loras


def write_outputs(args: argparse.Namespace, video, latents: torch.Tensor, note: str = "") -> None:
    """Write the video to ``--out`` (and the final latents to ``--save-latents``), printing what was written."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_video(video, out, fps=args.fps)
    print(f"wrote {out} ({video.shape[0]} frames, {video.shape[1]}x{video.shape[2]}{note})")
    if args.save_latents:
        save_file({"latents": latents.detach().float().cpu().contiguous()}, args.save_latents)
        print(f"wrote {args.save_latents}")


class StageClock:
    """Seconds between marks (a CUDA GPU synchronised at each), printed as ``load 41.20 s, prepare 1.10 s, ...``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def mark(self, stage: str) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.seconds[stage], self._last = now - self._last, now

    def __str__(self) -> str:
        return ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items())


def _generate(args: argparse.Namespace) -> int:
    inputs = generation_inputs(args)
    clock = StageClock()
    models = load_models(**inputs.model_kwargs)
    clock.mark("load")
    session = Session(models, inputs.scene, args.image, inputs.settings)  # T5 + VAE encode
    clock.mark("prepare")
    session.run()
    clock.mark("denoise")
    video = session.decode()
    clock.mark("decode")
    write_outputs(args, video, session.latents)
    print(f"stages: {clock}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wclab", description=__doc__.split("\n\n")[0])
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
    g.add_argument("--variant", default=VARIANTS[0], choices=VARIANTS)
    g.add_argument("--seed", type=int, default=_DEFAULTS["seed"])
    g.add_argument("--steps", type=int, default=_DEFAULTS["steps"])
    g.add_argument("--cfg", type=float, default=_DEFAULTS["cfg"])
    g.add_argument("--shift", type=float, default=_DEFAULTS["shift"])
    g.add_argument("--boundary", type=float, default=_DEFAULTS["boundary"])
    g.add_argument("--beta", type=float, default=BETA, help="cross-attention bias strength (1 = off)")
    g.add_argument("--point-mode", default="point", choices=["point", "mask"])
    g.add_argument("--height", type=int, default=None, help="pixels (default: the scene's)")
    g.add_argument("--width", type=int, default=None, help="pixels (default: the scene's)")
    g.add_argument("--frames", type=int, default=None, help="frames, 4k+1 (default: the scene's)")
    g.add_argument("--fps", type=int, default=16)
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: bfloat16 on GPU, float32 on CPU")
    g.add_argument("--save-latents", default=None, help="also save the final latents (.safetensors)")
    g.add_argument("--lora", action="append", default=[], metavar="EXPERT=PATH[:STRENGTH]",
                   help="merge a LoRA into the high or low expert (repeatable), e.g. high=distill.safetensors:1.0")
    g.add_argument("--distilled", action="store_true",
                   help="the step-distilled preset (Settings.step_distilled: 4 steps at timesteps 1000/750/500/250, "
                        "shift 5, no negative branch), for a step-distillation LoRA given with --lora")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except WclabError as e:
        print(f"wclab: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
