"""The notebooks' one switch: which models, sizes, steps and example files a run uses.

    PROFILE = "auto"                              # the switch at the top of every notebook
    profile = wclab.profile.select(PROFILE)
    models = profile.models()                     # made once and cached (per variant)
    example = profile.example("ball")             # scene + start image at the profile's size
    session = Session(models, example.scene, example.image, profile.settings())

Profiles:
  tiny      tiny random-weight models in the released formats (`wclab.testing.make_tiny_checkpoints`, written
            once to the cache folder), CPU float32, scenes of 128x224x17, 4 steps. No downloads; the videos are
            noise (random weights) but every tensor, map and hook is computed for real.
  ci        the tiny models at the smallest example size, 64x112x9, 2 steps: what CI executes.
  released  the released checkpoints in ``checkpoints/`` (or ``$WCLAB_CHECKPOINTS``), 480x832x81, 50 steps,
            CUDA bfloat16 when a GPU is present (CPU float32 otherwise).
  gpu       the same full-size files and scenes on a GPU with 4 steps, so each notebook runs in minutes: for
            trying the notebooks at full size (e.g. on the random released-size checkpoints that
            ``python -m wclab.testing DIR --size released`` writes; set ``$WCLAB_CHECKPOINTS=DIR``).
  auto      ``$WCLAB_PROFILE`` when set, else "released" when the released weights are present, else "tiny".

Models are cached one set at a time: asking for another variant (or device/dtype) first frees the cached set, so a
full-size notebook never holds two ~70 GB sets.
"""
from __future__ import annotations

import gc
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from wclab.conditions import Scene, load_json
from wclab.errors import CheckpointError, WclabError
from wclab.image import load_image
from wclab.sizes import DEFAULT_FRAMES, DEFAULT_HEIGHT, DEFAULT_WIDTH

if TYPE_CHECKING:
    from wclab.models.loading import Models
    from wclab.sampler import Settings

PROFILES = ("tiny", "ci", "released", "gpu")
GPU_STEPS = 4
TINY_SEED = 0
_TINY_FOLDER = f"tiny-seed{TINY_SEED}-v1"
_models_cache: dict[tuple, Any] = {}


class ProfileError(WclabError, ValueError):
    """An unknown profile or example name, or a missing examples folder."""


@dataclass(frozen=True)
class Example:
    """One example scene at one size: ``scene`` and its start ``image`` (``uint8 [H, W, 3]``), with their files."""

    name: str
    scene: Scene
    image: np.ndarray
    scene_path: Path
    image_path: Path


@dataclass(frozen=True)
class Profile:
    """Models, sizes and steps for one kind of run.

    height, width: pixels; frames: T; steps: denoising steps; checkpoint_dir: where the models are read
    (for "tiny"/"ci" the cached tiny checkpoints, made on first use by :meth:`models`); examples: which size
    folder of ``examples/`` holds scenes of this size ("full", "small" or "ci").
    """

    name: str
    height: int
    width: int
    frames: int
    steps: int
    examples: str
    device: str
    dtype: torch.dtype
    checkpoint_dir: Path

    @property
    def size(self) -> tuple[int, int, int]:
        """``(H, W, T)`` of the example scenes this profile uses."""
        return (self.height, self.width, self.frames)

    @property
    def tiny(self) -> bool:
        """True when the models are tiny random-weight ones (outputs are noise, the computation is real)."""
        return self.name in ("tiny", "ci")

    def models(self, variant: str = "WorldCanvas") -> Models:
        """:class:`wclab.models.loading.Models` of ``variant`` ("WorldCanvas" or "WorldCanvas_ref"), loaded once."""
        from wclab.models.loading import load_models

        directory = tiny_checkpoints() if self.tiny else self.checkpoint_dir
        key = (str(directory), variant, self.device, self.dtype)
        if key not in _models_cache:
            clear_models()
            _models_cache[key] = load_models(directory, variant=variant, device=self.device, dtype=self.dtype)
        return _models_cache[key]

    def settings(self, **overrides: Any) -> Settings:
        """:class:`wclab.sampler.Settings` with this profile's steps (sizes come from the scene); ``overrides``
        change any field, e.g. ``seed=1, cfg=3.0``."""
        from wclab.sampler import Settings

        return Settings(steps=self.steps).replace(**overrides)

    def example(self, name: str) -> Example:
        """Example ``name`` (see :func:`example_names`) at this profile's size: ``examples/<size>/<name>.json``
        and ``.png``."""
        folder = examples_dir() / self.examples
        scene_path, image_path = folder / f"{name}.json", folder / f"{name}.png"
        if not scene_path.is_file() or not image_path.is_file():
            raise ProfileError(f"example {name!r}: {scene_path} or {image_path} is missing; examples of size "
                               f"{self.examples!r}: {example_names(self.examples)} (regenerate them with "
                               "`python examples/make_examples.py`)")
        scene = load_json(scene_path)
        if scene.size != self.size:
            raise ProfileError(f"{scene_path}: scene size {scene.size} (H, W, T), expected {self.size} for profile "
                               f"{self.name!r}")
        return Example(name, scene, np.asarray(load_image(image_path)), scene_path, image_path)

    def __str__(self) -> str:
        what = "tiny random-weight models (videos are noise)" if self.tiny else f"checkpoints in {self.checkpoint_dir}"
        dtype = str(self.dtype).replace("torch.", "")
        return (f"profile {self.name!r}: {what}; scenes {self.height}x{self.width}x{self.frames} (HxWxT), "
                f"{self.steps} steps, {self.device} {dtype}")


def select(name: str = "auto") -> Profile:
    """The profile called ``name`` ("tiny", "ci", "released", "gpu" or "auto": see the module docstring)."""
    if name == "auto":
        name = os.environ.get("WCLAB_PROFILE", "").strip() or ("released" if released_available() else "tiny")
    if name not in PROFILES:
        raise ProfileError(f"profile: expected one of {['auto', *PROFILES]}, got {name!r} "
                           "(check the PROFILE cell or $WCLAB_PROFILE)")
    if name in ("released", "gpu"):
        from wclab.models.loading import default_checkpoint_dir

        gpu = torch.cuda.is_available()
        if name == "gpu" and not gpu:
            raise ProfileError("profile 'gpu' needs a CUDA GPU (torch.cuda.is_available() is False); use 'released' "
                               "or 'tiny'")
        return Profile(name, DEFAULT_HEIGHT, DEFAULT_WIDTH, DEFAULT_FRAMES, 50 if name == "released" else GPU_STEPS,
                       "full", "cuda" if gpu else "cpu", torch.bfloat16 if gpu else torch.float32,
                       default_checkpoint_dir())
    h, w, t, steps, examples = (128, 224, 17, 4, "small") if name == "tiny" else (64, 112, 9, 2, "ci")
    return Profile(name, h, w, t, steps, examples, "cpu", torch.float32, cache_dir() / _TINY_FOLDER)


def clear_models() -> None:
    """Forget the cached models (and give their GPU memory back to the driver's pool)."""
    _models_cache.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def released_available(variant: str = "WorldCanvas") -> bool:
    """True when the checkpoint folder holds every released file of ``variant`` (file presence only)."""
    from wclab.models.loading import resolve_paths

    try:
        return resolve_paths(variant=variant).layout == "released"
    except CheckpointError:
        return False


def cache_dir() -> Path:
    """``$WCLAB_CACHE``, else ``$XDG_CACHE_HOME/wclab`` (``~/.cache/wclab``)."""
    env = os.environ.get("WCLAB_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wclab"


def tiny_checkpoints() -> Path:
    """The cached tiny checkpoints (both variants), written on first use. Safe when several processes race:
    each writes a private folder and moves it into place; the first one wins."""
    target = cache_dir() / _TINY_FOLDER
    if _tiny_complete(target):
        return target
    from wclab.testing import make_tiny_checkpoints

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        make_tiny_checkpoints(scratch / "ckpt", seed=TINY_SEED, variant_ref=True)
        if target.exists() and not _tiny_complete(target):
            shutil.rmtree(target, ignore_errors=True)  # an interrupted older attempt
        try:
            os.rename(scratch / "ckpt", target)
        except OSError:
            if not _tiny_complete(target):  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _tiny_complete(directory: Path) -> bool:
    from wclab.models.layout import read_tiny_config

    try:
        info = read_tiny_config(directory)
    except (OSError, ValueError):
        return False
    return bool(info) and "WorldCanvas_ref" in info.get("variants", [])


def examples_dir() -> Path:
    """``$WCLAB_EXAMPLES``, else ``examples/`` at the repository root."""
    env = os.environ.get("WCLAB_EXAMPLES")
    path = Path(env) if env else Path(__file__).resolve().parents[1] / "examples"
    if not path.is_dir():
        raise ProfileError(f"examples folder {path} not found (set WCLAB_EXAMPLES to the repository's examples/)")
    return path


def example_names(size: str = "small") -> list[str]:
    """Names of the example scenes of one size folder ("full", "small" or "ci")."""
    folder = examples_dir() / size
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


__all__ = [
    "PROFILES",
    "Example",
    "Profile",
    "ProfileError",
    "cache_dir",
    "clear_models",
    "example_names",
    "examples_dir",
    "released_available",
    "select",
    "tiny_checkpoints",
]
