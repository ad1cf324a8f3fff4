"""Check a checkpoint directory against the released layout:

    python -m wclab.checkpoints checkpoints/ [--variant WorldCanvas|WorldCanvas_ref] [--deep]

prints one row per file (ok / missing / wrong), the ``huggingface_hub`` commands that fetch whatever is
missing, and exits 0 when everything required is present and well-formed, else 1. Nothing is downloaded.
The default check reads only file headers (safetensors header JSON; ``.pth`` through
``torch.load(weights_only=True, mmap=True)``, which maps tensors without reading them); ``--deep`` also
reads every tensor (all finite?) and loads the tokenizer.

The layout itself is `wclab.models.layout`, the expected key/shape tables `wclab.models.shapes` (derived from the
model configs), the header reader `wclab.models.headers`. A directory made by `wclab.testing.make_tiny_checkpoints`
has ``wclab_tiny.json``; the checker then expects those sizes instead of the released ones.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from wclab.models.headers import TensorInfo, first_non_finite, read_safetensors_header, read_torch_header
from wclab.models.layout import (SAM_URL, TINY_CONFIG_NAME, VARIANTS, CheckpointFile, locate, read_tiny_config,
                                 released_files)
from wclab.models.shapes import Shapes, expected_shapes
from wclab.models.text_encoder import TextEncoderConfig, Tokenizer

SAM_VIT_H_PATCH = ("image_encoder.patch_embed.proj.weight", (1280, 3, 16, 16))  # spot check of a SAM vit_h file


# ----------------------------------------------------------------------------------------------- the check
@dataclass
class CheckItem:
    """One row of the report. ``status``: "ok", "missing", "wrong" or "absent" (optional file not there)."""

    file: CheckpointFile
    path: Path
    status: str
    size: Optional[int] = None  # bytes on disk
    detail: str = ""


@dataclass
class CheckReport:
    """Result of `check_checkpoints`; ``ok`` is True when every required file is present and well-formed."""

    directory: Path
    variant: str
    layout: str  # "released" or "tiny"
    items: list[CheckItem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(i.status == "ok" for i in self.items if i.file.required)

    @property
    def missing(self) -> list[CheckItem]:
        return [i for i in self.items if i.status in ("missing", "absent")]

    @property
    def wrong(self) -> list[CheckItem]:
        return [i for i in self.items if i.status == "wrong"]

    def download_commands(self) -> list[str]:
        """Commands that fetch every missing file (required or optional) into this directory."""
        return [i.file.download_command(self.directory) for i in self.missing]

    def format(self) -> str:
        """The table, download commands and verdict as printed by the CLI."""
        rows = [("role", "status", "size", "released", "path / detail")]
        for i in self.items:
            size = _gb(i.size) if i.size is not None else "-"
            approx = f"~{_gb(i.file.approx_gb * 1e9, 3)}" if i.file.approx_gb and self.layout == "released" else "-"
            rows.append((i.file.role, i.status, size, approx, f"{i.file.path}  {i.detail}".rstrip()))
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        lines = [f"Checkpoints in {self.directory} (variant {self.variant}, {self.layout} layout)"
                 + ("" if self.directory.is_dir() else " -- the directory does not exist"), ""]
        lines += ["  ".join(r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4] for r in rows]
        if self.missing:
            lines += ["", "Download what is missing (wclab fetches nothing itself):"]
            lines += [f"  {c}" for c in self.download_commands()]
            if any(not i.file.source.startswith("http") for i in self.missing):
                lines += ["  (`hf download` takes the same arguments as `huggingface-cli download`)"]
            if any(i.file.role == "sam" for i in self.missing):
                lines += ["  (SAM is optional: only the trajectory editor's click-to-segment uses it)"]
        lines += [""] + (["Sizes marked ~ are approximate sizes of the released files."]
                         if self.layout == "released" else [])
        lines += ["complete" if self.ok else
                  f"INCOMPLETE: {sum(i.file.required for i in self.missing)} missing, {len(self.wrong)} wrong"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _gb(n: float, digits: int = 4) -> str:
    """Bytes as GB / MB / B with ``digits`` significant digits."""
    return f"{n / 1e9:.{digits}g} GB" if n >= 1e9 else f"{n / 1e6:.{digits}g} MB" if n >= 1e5 else f"{int(n)} B"


def _compare(expected: Shapes, got: dict[str, TensorInfo]) -> Optional[str]:
    """A description of the first key-set or shape mismatch, or None."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} keys missing (e.g. {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]!r})")
        return ", ".join(parts)
    for k, shape in expected.items():
        if got[k].shape != tuple(shape):
            return f"{k!r} has shape {list(got[k].shape)}, expected {list(shape)}"
    return None


def _check_weights(item: CheckItem, expected: Optional[Shapes], deep: bool) -> None:
    path, f = item.path, item.file
    try:
        if path.suffix == ".safetensors":
            infos, needed = read_safetensors_header(path)
            if item.size < needed:
                item.status, item.detail = "wrong", f"truncated: {item.size} of {needed} bytes"
                return
        else:
            infos = read_torch_header(path)
    except Exception as e:
        item.status, item.detail = "wrong", f"unreadable: {type(e).__name__}: {e}"
        return
    if expected is not None:
        problem = _compare(expected, infos)
    else:  # SAM: spot-check the vit_h image encoder
        key, shape = SAM_VIT_H_PATCH
        good = key in infos and infos[key].shape == shape
        problem = None if good else f"no {key} of shape {list(shape)} (not vit_h?)"
    if problem:
        item.status, item.detail = "wrong", problem
        return
    dtypes = sorted({i.dtype for i in infos.values()})
    if any(not getattr(torch, d).is_floating_point for d in dtypes if hasattr(torch, d)):
        item.status, item.detail = "wrong", f"non-float tensors ({', '.join(dtypes)})"
        return
    item.status = "ok"
    item.detail = f"({len(infos)} keys, {'/'.join(dtypes)}"
    released = str(f.dtype).removeprefix("torch.") if f.dtype is not None else None
    if released and dtypes != [released]:
        item.detail += f"; released files are {released}, loads fine"
    item.detail += ")"
    if deep:
        bad = first_non_finite(path)
        if bad:
            item.status, item.detail = "wrong", f"{bad!r} holds NaN/inf"


def _check_tokenizer(item: CheckItem, vocab_limit: Optional[int], deep: bool) -> None:
    names = {p.name for p in item.path.iterdir()} if item.path.is_dir() else set()
    if not names & {"tokenizer.json", "spiece.model"}:
        item.status, item.detail = "wrong", "no tokenizer.json or spiece.model in the folder"
        return
    item.status, item.detail = "ok", f"({', '.join(sorted(names))})"
    if deep:
        try:
            tok = Tokenizer(item.path)
            tok("Object 1: a test.")
        except Exception as e:
            item.status, item.detail = "wrong", f"does not load: {type(e).__name__}: {e}"
            return
        if vocab_limit is not None and len(tok.hf) > vocab_limit:
            item.status, item.detail = "wrong", f"{len(tok.hf)} tokens but the T5 embedding has {vocab_limit} rows"


def check_checkpoints(directory: str | Path, variant: str = "WorldCanvas", deep: bool = False) -> CheckReport:
    """Check presence, sizes, key sets/shapes and dtypes of the checkpoint files of ``variant`` in ``directory``."""
    directory = Path(directory)
    tiny = read_tiny_config(directory)
    report = CheckReport(directory, variant, "tiny" if tiny else "released")
    shapes = expected_shapes(tiny)
    for f in released_files(variant):
        path = locate(directory, f)
        item = CheckItem(f, path, "missing" if f.required else "absent")
        report.items.append(item)
        if not path.exists():
            item.detail = f"-> {f.where()}"
            continue
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        item.size = sum(p.stat().st_size for p in files)
        if f.role == "tokenizer":
            _check_tokenizer(item, tiny["t5"]["vocab"] if tiny else TextEncoderConfig().vocab, deep)
        else:
            _check_weights(item, shapes.get(f.role), deep)
    return report


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wclab.checkpoints", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="checkpoint directory (e.g. checkpoints/)")
    parser.add_argument("--variant", choices=VARIANTS, default="WorldCanvas", help="which DiT pair to require")
    parser.add_argument("--deep", action="store_true", help="also read every tensor and load the tokenizer")
    args = parser.parse_args(argv)
    report = check_checkpoints(args.directory, args.variant, args.deep)
    print(report.format())
    return 0 if report.ok else 1


__all__ = ["CheckItem", "CheckReport", "check_checkpoints", "main", "SAM_URL", "TINY_CONFIG_NAME", "VARIANTS",
           "read_tiny_config", "released_files"]


if __name__ == "__main__":
    sys.exit(main())
