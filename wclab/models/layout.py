"""The released checkpoint layout: which files wclab reads, where they live under a checkpoint directory, and the
commands that download them. Nothing is downloaded here.

A directory made by `wclab.testing.make_tiny_checkpoints` has the same layout plus ``wclab_tiny.json``
(`TINY_CONFIG_NAME`) with the tiny model sizes.
"""
from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from wclab.errors import CheckpointError

VARIANTS = ("WorldCanvas", "WorldCanvas_ref")
WAN_REPO = "Wan-AI/Wan2.2-T2V-A14B"
WORLDCANVAS_REPO = "hlwang06/WorldCanvas"
SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"
SAM_FILE = "sam_vit_h_4b8939.pth"
WAN_DIR = "Wan2.2-T2V-A14B"
WAN_DIR_ALT = "Wan2.2-I2V-A14B"  # the reference script's folder name; holds the same T5/VAE files
TINY_CONFIG_NAME = "wclab_tiny.json"


def default_checkpoint_dir() -> Path:
    """``$WCLAB_CHECKPOINTS``, else ``checkpoints/`` at the repository root (read at each call)."""
    env = os.environ.get("WCLAB_CHECKPOINTS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "checkpoints"


@dataclass(frozen=True)
class CheckpointFile:
    """One file (or folder) of the layout: where it lives under the checkpoint directory and where it comes from."""

    role: str  # "t5", "vae", "tokenizer", "high", "low", "sam"
    path: str  # relative to the checkpoint directory
    source: str  # Hugging Face repo id, or a URL
    source_path: str  # file or folder inside the repo ("" for a URL)
    approx_gb: Optional[float]  # approximate size of the released file in GB (1e9 bytes)
    dtype: Optional[torch.dtype]  # dtype of the released tensors
    description: str
    required: bool = True

    @property
    def is_folder(self) -> bool:
        return not Path(self.path).suffix

    def where(self) -> str:
        """Human-readable origin: 'Hugging Face repo X, file Y' or the URL."""
        if self.source.startswith("http"):
            return self.source
        return f"Hugging Face repo {self.source}, {'folder' if self.is_folder else 'file'} {self.source_path}"

    def download_command(self, root: str | Path) -> str:
        """Shell command that puts this file at ``root/path`` (``hf download`` takes the same arguments)."""
        dest = Path(root) / self.path
        if self.source.startswith("http"):
            return f"curl -L -o {shlex.quote(str(dest))} {self.source}"
        local_dir = shlex.quote(str(_strip_suffix(dest, self.source_path)))
        if self.is_folder:
            return (f"huggingface-cli download {self.source} --include {shlex.quote(self.source_path + '/*')} "
                    f"--local-dir {local_dir}")
        return f"huggingface-cli download {self.source} {self.source_path} --local-dir {local_dir}"


def _strip_suffix(dest: Path, source_path: str) -> Path:
    """The --local-dir under which ``source_path`` lands at ``dest``."""
    for _ in Path(source_path).parts:
        dest = dest.parent
    return dest


def released_files(variant: str = "WorldCanvas", wan_dir: str = WAN_DIR) -> list[CheckpointFile]:
    """The files wclab reads for ``variant`` (SPEC §4, checkpoints/README.md); SAM is optional."""
    if variant not in VARIANTS:
        raise CheckpointError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    t5, vae, tok = "models_t5_umt5-xxl-enc-bf16.pth", "Wan2.1_VAE.pth", "google/umt5-xxl"
    files = [
        CheckpointFile("t5", f"{wan_dir}/{t5}", WAN_REPO, t5, 11.4, torch.bfloat16, "umT5-xxl text encoder"),
        CheckpointFile("vae", f"{wan_dir}/{vae}", WAN_REPO, vae, 0.508, torch.float32, "Wan 2.1 VAE"),
        CheckpointFile("tokenizer", f"{wan_dir}/{tok}", WAN_REPO, tok, None, None, "umT5 tokenizer (HF folder)"),
    ]
    for expert in ("high", "low"):
        name = f"{variant}/{expert}_model.safetensors"
        files.append(CheckpointFile(expert, f"WorldCanvas_dit/{name}", WORLDCANVAS_REPO, name, 28.6,
                                    torch.bfloat16, f"{expert}-noise DiT expert"))
    files.append(CheckpointFile("sam", SAM_FILE, SAM_URL, "", 2.56, torch.float32,
                                "SAM vit_h (trajectory editor only)", required=False))
    return files


def read_tiny_config(directory: str | Path) -> Optional[dict]:
    """The ``wclab_tiny.json`` of a directory made by `make_tiny_checkpoints`, or None."""
    p = Path(directory) / TINY_CONFIG_NAME
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None


def locate(directory: str | Path, file: CheckpointFile) -> Path:
    """Where ``file`` is under ``directory``; T5/VAE/tokenizer are also found under ``Wan2.2-I2V-A14B/``."""
    path = Path(directory) / file.path
    if not path.exists() and file.path.startswith(WAN_DIR + "/"):
        alt = Path(directory) / WAN_DIR_ALT / file.path[len(WAN_DIR) + 1:]
        if alt.exists():
            return alt
    return path
