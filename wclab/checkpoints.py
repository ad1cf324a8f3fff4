"""The released checkpoint layout, the key/shape formats of its files, and a checker.

    python -m wclab.checkpoints checkpoints/ [--variant WorldCanvas|WorldCanvas_ref] [--deep]

prints one row per file (ok / missing / wrong), the ``huggingface_hub`` commands that fetch whatever is
missing, and exits 0 when everything required is present and well-formed, else 1. Nothing is downloaded.
The default check reads only file headers (safetensors header JSON; ``.pth`` through
``torch.load(weights_only=True, mmap=True)``, which maps tensors without reading them); ``--deep`` also
reads every tensor (all finite?) and loads the tokenizer.

A directory made by `wclab.testing.make_tiny_checkpoints` has the same layout plus ``wclab_tiny.json``
(`TINY_CONFIG_NAME`) with the tiny model sizes; the checker then expects those sizes instead of the released ones.
"""
from __future__ import annotations

import argparse
import json
import shlex
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from wclab.models.weights import read_state_dict

VARIANTS = ("WorldCanvas", "WorldCanvas_ref")
WAN_REPO = "Wan-AI/Wan2.2-T2V-A14B"
WORLDCANVAS_REPO = "hlwang06/WorldCanvas"
SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"
WAN_DIR = "Wan2.2-T2V-A14B"
WAN_DIR_ALT = "Wan2.2-I2V-A14B"  # the reference script's folder name; holds the same T5/VAE files
TINY_CONFIG_NAME = "wclab_tiny.json"

# Released sizes (constructor arguments of the reference modules).
T5_XXL = dict(vocab=256384, dim=4096, dim_attn=4096, dim_ffn=10240, num_heads=64, num_layers=24, num_buckets=32)
WAN21_VAE = dict(dim=96, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2, attn_scales=(),
                 temperal_downsample=(False, True, True))
SAM_VIT_H_PATCH = ("image_encoder.patch_embed.proj.weight", (1280, 3, 16, 16))


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
        from wclab.errors import CheckpointError

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
    files.append(CheckpointFile("sam", "sam_vit_h_4b8939.pth", SAM_URL, "", 2.56, torch.float32,
                                "SAM vit_h (trajectory editor only)", required=False))
    return files


# ----------------------------------------------------------------------------------------------- key formats
Shapes = dict[str, tuple[int, ...]]


def t5_shapes(vocab: int, dim: int, dim_attn: int, dim_ffn: int, num_heads: int, num_layers: int,
              num_buckets: int = 32, shared_pos: bool = False, **_) -> Shapes:
    """Key -> shape of Wan's T5 encoder ``.pth`` (``models_t5_umt5-xxl-enc-bf16.pth`` format)."""
    s: Shapes = {"token_embedding.weight": (vocab, dim)}
    if shared_pos:
        s["pos_embedding.embedding.weight"] = (num_buckets, num_heads)
    for i in range(num_layers):
        b = f"blocks.{i}."
        s[b + "norm1.weight"] = (dim,)
        for p in "qkv":
            s[b + f"attn.{p}.weight"] = (dim_attn, dim)
        s[b + "attn.o.weight"] = (dim, dim_attn)
        s[b + "norm2.weight"] = (dim,)
        s[b + "ffn.gate.0.weight"] = (dim_ffn, dim)
        s[b + "ffn.fc1.weight"] = (dim_ffn, dim)
        s[b + "ffn.fc2.weight"] = (dim, dim_ffn)
        if not shared_pos:
            s[b + "pos_embedding.embedding.weight"] = (num_buckets, num_heads)
    s["norm.weight"] = (dim,)
    return s


def vae_shapes(dim: int = 96, z_dim: int = 16, dim_mult=(1, 2, 4, 4), num_res_blocks: int = 2, attn_scales=(),
               temperal_downsample=(False, True, True), **_) -> Shapes:
    """Key -> shape of the Wan 2.1 VAE ``.pth`` (``Wan2.1_VAE.pth`` format): Encoder3d, conv1/conv2, Decoder3d."""
    s: Shapes = {}

    def conv(name: str, cout: int, cin: int, *kernel: int) -> None:
        s[name + ".weight"], s[name + ".bias"] = (cout, cin, *kernel), (cout,)

    def residual(p: str, cin: int, cout: int) -> None:
        s[p + ".residual.0.gamma"] = (cin, 1, 1, 1)
        conv(p + ".residual.2", cout, cin, 3, 3, 3)
        s[p + ".residual.3.gamma"] = (cout, 1, 1, 1)
        conv(p + ".residual.6", cout, cout, 3, 3, 3)
        if cin != cout:
            conv(p + ".shortcut", cout, cin, 1, 1, 1)

    def attention(p: str, c: int) -> None:
        s[p + ".norm.gamma"] = (c, 1, 1)
        conv(p + ".to_qkv", 3 * c, c, 1, 1)
        conv(p + ".proj", c, c, 1, 1)

    def resample(p: str, c: int, mode: str) -> None:
        if mode.startswith("up"):
            conv(p + ".resample.1", c // 2, c, 3, 3)
            if mode == "upsample3d":
                conv(p + ".time_conv", 2 * c, c, 3, 1, 1)
        else:
            conv(p + ".resample.1", c, c, 3, 3)
            if mode == "downsample3d":
                conv(p + ".time_conv", c, c, 3, 1, 1)

    # encoder
    dims = [dim * u for u in (1, *dim_mult)]
    conv("encoder.conv1", dims[0], 3, 3, 3, 3)
    idx, scale = 0, 1.0
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(num_res_blocks):
            residual(f"encoder.downsamples.{idx}", cin, cout)
            idx += 1
            if scale in attn_scales:
                attention(f"encoder.downsamples.{idx}", cout)
                idx += 1
            cin = cout
        if i != len(dim_mult) - 1:
            resample(f"encoder.downsamples.{idx}", cout, "downsample3d" if temperal_downsample[i] else "downsample2d")
            idx += 1
            scale /= 2.0
    c = dims[-1]
    residual("encoder.middle.0", c, c)
    attention("encoder.middle.1", c)
    residual("encoder.middle.2", c, c)
    s["encoder.head.0.gamma"] = (c, 1, 1, 1)
    conv("encoder.head.2", 2 * z_dim, c, 3, 3, 3)
    conv("conv1", 2 * z_dim, 2 * z_dim, 1, 1, 1)
    conv("conv2", z_dim, z_dim, 1, 1, 1)

    # decoder
    temperal_upsample = tuple(temperal_downsample)[::-1]
    dims = [dim * u for u in (dim_mult[-1], *dim_mult[::-1])]
    conv("decoder.conv1", dims[0], z_dim, 3, 3, 3)
    residual("decoder.middle.0", dims[0], dims[0])
    attention("decoder.middle.1", dims[0])
    residual("decoder.middle.2", dims[0], dims[0])
    idx, scale = 0, 1.0 / 2 ** (len(dim_mult) - 2)
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        if i in (1, 2, 3):  # the previous upsample halved the channels
            cin //= 2
        for _ in range(num_res_blocks + 1):
            residual(f"decoder.upsamples.{idx}", cin, cout)
            idx += 1
            if scale in attn_scales:
                attention(f"decoder.upsamples.{idx}", cout)
                idx += 1
            cin = cout
        if i != len(dim_mult) - 1:
            resample(f"decoder.upsamples.{idx}", cout, "upsample3d" if temperal_upsample[i] else "upsample2d")
            idx += 1
            scale *= 2.0
    s["decoder.head.0.gamma"] = (dims[-1], 1, 1, 1)
    conv("decoder.head.2", 3, dims[-1], 3, 3, 3)
    return s


def dit_shapes(config) -> Shapes:
    """Key -> shape of a DiT expert safetensors for a `wclab.models.dit.DiTConfig` (released names)."""
    from wclab.models.dit import DiT

    return {k: tuple(v.shape) for k, v in DiT.from_config(config, device="meta").state_dict().items()}


def dit_config(sizes: Optional[dict] = None):
    """`DiTConfig` of the released experts, or from a ``wclab_tiny.json`` "dit" entry."""
    from dataclasses import fields

    from wclab.models.dit import DiTConfig

    if sizes is None:
        return DiTConfig.worldcanvas_14b()
    names = {f.name for f in fields(DiTConfig)}
    return DiTConfig(**{k: v for k, v in sizes.items() if k in names})


def expected_shapes(sizes: Optional[dict] = None) -> dict[str, Shapes]:
    """Role -> key -> shape for the released files (``sizes`` None) or a tiny config (``wclab_tiny.json``)."""
    t5 = T5_XXL if sizes is None else sizes["t5"]
    vae = WAN21_VAE if sizes is None else sizes["vae"]
    dit = dit_shapes(dit_config(None if sizes is None else sizes["dit"]))
    return {"t5": t5_shapes(**t5), "vae": vae_shapes(**vae), "high": dit, "low": dit}


# ----------------------------------------------------------------------------------------------- reading headers
@dataclass
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str  # torch dtype name without "torch.", e.g. "bfloat16"


_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
              "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
              "U8": "uint8", "BOOL": "bool"}


def read_safetensors_header(path: str | Path) -> tuple[dict[str, TensorInfo], int]:
    """(key -> TensorInfo, number of bytes the header says the file needs), reading only the header."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError("file shorter than a safetensors header")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise ValueError(f"implausible safetensors header length {n}")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    end = max((v["data_offsets"][1] for v in header.values()), default=0)
    infos = {k: TensorInfo(tuple(v["shape"]), _ST_DTYPES.get(v["dtype"], v["dtype"].lower()))
             for k, v in header.items()}
    return infos, 8 + n + end


def read_torch_header(path: str | Path) -> dict[str, TensorInfo]:
    """Key -> TensorInfo of a ``.pth`` state dict, memory-mapped (tensor data is not read)."""
    sd = read_state_dict(path)
    return {k: TensorInfo(tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()}


def _all_finite(path: Path) -> Optional[str]:
    """Read every tensor; the first key holding NaN/inf, or None."""
    from tqdm.auto import tqdm

    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            for k in tqdm(list(f.keys()), desc=path.name, leave=False):
                t = f.get_tensor(k)
                if t.is_floating_point() and not torch.isfinite(t).all():
                    return k
        return None
    for k, t in tqdm(read_state_dict(path).items(), desc=path.name, leave=False):
        if t.is_floating_point() and not torch.isfinite(t).all():
            return k
    return None


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
        bad = _all_finite(path)
        if bad:
            item.status, item.detail = "wrong", f"{bad!r} holds NaN/inf"


def _check_tokenizer(item: CheckItem, vocab_limit: Optional[int], deep: bool) -> None:
    names = {p.name for p in item.path.iterdir()} if item.path.is_dir() else set()
    if not names & {"tokenizer.json", "spiece.model"}:
        item.status, item.detail = "wrong", "no tokenizer.json or spiece.model in the folder"
        return
    item.status, item.detail = "ok", f"({', '.join(sorted(names))})"
    if deep:
        from wclab.models.text_encoder import Tokenizer

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
            _check_tokenizer(item, (tiny or {"t5": T5_XXL})["t5"]["vocab"], deep)
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


if __name__ == "__main__":
    sys.exit(main())
