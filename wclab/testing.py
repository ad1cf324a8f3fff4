"""Random-weight checkpoints in the released layout and formats, for demos, tests and full-size runs without downloads.

`make_tiny_checkpoints(dir)` writes, under ``dir`` (paths as in checkpoints/README.md):

    Wan2.2-T2V-A14B/models_t5_umt5-xxl-enc-bf16.pth   Wan T5 keys, bfloat16  (dim 32, 2 layers, 4 heads)
    Wan2.2-T2V-A14B/Wan2.1_VAE.pth                    Wan VAE keys, float32  (base dim 8, z 16)
    Wan2.2-T2V-A14B/google/umt5-xxl/                  a small T5-style sentencepiece tokenizer, HF format
    WorldCanvas_dit/WorldCanvas/{high,low}_model.safetensors   released DiT keys, bfloat16 (dim 128, 4 heads)
    wclab_tiny.json                                   the sizes, incl. head counts (not inferable from weights)

Key sets and shapes equal the reference's tiny fixtures; only the random values differ. Weights are scaled
like a standard initialisation (std 1/sqrt(fan_in), norms near 1), so every model gives finite, bounded outputs.

`make_released_size_checkpoints(dir)` (or ``python -m wclab.testing DIR --size released``) writes the same layout
at the released sizes (~69 GB a variant), streaming tensor by tensor so memory holds one tensor at a time.
"""
from __future__ import annotations

import io
import json
import math
import struct
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from wclab.models.layout import TINY_CONFIG_NAME, VARIANTS, released_files
from wclab.models.shapes import expected_shapes

# Sizes of the reference's tiny fixtures (fixtures/reference/models/config.json), reference argument names.
TINY_SIZES = {
    "t5": dict(vocab=440, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2, num_buckets=32, shared_pos=False),
    "vae": dict(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                temperal_downsample=[False, True, True]),
    "dit": dict(dim=128, ffn_dim=256, freq_dim=256, text_dim=32, in_dim=53, out_dim=16, num_heads=4, num_layers=2,
                patch_size=[1, 2, 2], eps=1e-6),
}

# Training text of the tiny tokenizer: caption-like English plus the Chinese negative prompt's characters.
_CORPUS = """Object 1: a red ball rolls across the wooden floor and stops near the door.
Object 2 appears: a small brown dog runs in from the left side and sits down.
Object 3: the door slowly opens and a man in a blue coat walks through it.
A cat jumps onto the kitchen table, turns around and lies down in the sun.
The camera pans to the right while a white car drives along the street.
A woman picks up a cup of coffee, drinks from it and puts it back.
Two birds fly over the lake and land on a branch of the old tree.
A mouse hides behind a box while the dog looks for it under the sofa.
The boy throws a yellow frisbee and the girl catches it with both hands.
Leaves fall from the trees as the wind blows across the park at night."""


def _negative_prompt() -> str:
    from wclab.models.text_encoder import DEFAULT_NEGATIVE_PROMPT

    return DEFAULT_NEGATIVE_PROMPT


# ----------------------------------------------------------------------------------------------- weights
def random_tensor(key: str, shape: tuple[int, ...], generator: torch.Generator,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A random tensor for one checkpoint key, on the generator's device, scaled by the role the key name implies:
    norm scales 1 + 0.1·N, biases 0.02·N, embeddings/relative-position tables 0.5·N, DiT modulations
    N/sqrt(dim), every other weight N/sqrt(fan_in)."""
    x = torch.randn(shape, generator=generator, device=generator.device)
    if key.endswith("gamma") or (key.endswith("weight") and "norm" in key):
        x = 1 + 0.1 * x
    elif key.endswith("bias"):
        x = 0.02 * x
    elif key.startswith("token_embedding") or "pos_embedding" in key:
        x = 0.5 * x
    elif key.endswith("modulation"):
        x = x / math.sqrt(shape[-1])
    else:
        x = x / math.sqrt(math.prod(shape[1:]))
    return x.to(dtype).contiguous()


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a contiguous tensor (moved to the CPU)."""
    return memoryview(t.detach().cpu().contiguous().view(torch.uint8).numpy())


def write_safetensors_streaming(path: str | Path, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype,
                                make: Callable[[str, tuple[int, ...]], torch.Tensor],
                                metadata: Optional[dict[str, str]] = None) -> Path:
    """Write a ``.safetensors`` file whose tensors come one at a time from ``make(key, shape)``: the header is
    computed from ``shapes`` first, then each tensor is made, written and dropped, so memory holds one tensor.
    Tensors are made and laid out in ``shapes``' order; ``make`` must return
    ``dtype`` tensors of the given shape."""
    if dtype not in _SAFETENSORS_DTYPES:
        raise ValueError(f"write_safetensors_streaming: dtype must be one of {list(_SAFETENSORS_DTYPES)}, got {dtype}")
    itemsize = torch.empty((), dtype=dtype).element_size()
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for key in shapes:
        n = math.prod(shapes[key]) * itemsize
        header[key] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shapes[key]),
                       "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    path = Path(path)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for key in shapes:
            t = make(key, shapes[key])
            if tuple(t.shape) != tuple(shapes[key]) or t.dtype != dtype:
                raise ValueError(f"{path}: make({key!r}) gave {t.dtype} {list(t.shape)}, expected {dtype} "
                                 f"{list(shapes[key])}")
            f.write(_tensor_bytes(t))
            del t  # before the next one is made
    return path


def write_torch_streaming(path: str | Path, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype,
                          make: Callable[[str, tuple[int, ...]], torch.Tensor]) -> Path:
    """Write a ``torch.save`` state dict (zip format, readable by ``torch.load(weights_only=True, mmap=True)``)
    whose tensors come one at a time from ``make(key, shape)``, so memory holds one tensor: ``torch.save`` first
    writes the file's skeleton without tensor bytes (``torch.serialization.skip_data``; the skeleton's tensors
    live in an untouched, sparse file mapping), then each tensor's bytes go to its storage record's offset.
    ``make`` must return ``dtype`` tensors of the given shape."""
    import tempfile

    from torch.serialization import skip_data

    path = Path(path)
    itemsize = torch.empty((), dtype=dtype).element_size()
    largest = max((math.prod(s) for s in shapes.values()), default=1) or 1
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".skeleton-") as backing:
        backing.truncate(largest * itemsize)  # sparse: no page is ever written or read
        skeleton = {key: torch.from_file(backing.name, shared=False, size=math.prod(shape), dtype=dtype).view(shape)
                    for key, shape in shapes.items()}
        with skip_data():
            torch.save(skeleton, str(path))
        del skeleton
    # torch.save names storages "0", "1", ... in the order it pickles them: the state dict's key order.
    offsets = _storage_record_offsets(path)
    if sorted(offsets) != list(range(len(shapes))):
        raise RuntimeError(f"{path}: expected storage records 0..{len(shapes) - 1}, found {sorted(offsets)}")
    with open(path, "r+b") as f:
        for i, (key, shape) in enumerate(shapes.items()):
            t = make(key, shape)
            if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                raise ValueError(f"{path}: make({key!r}) gave {t.dtype} {list(t.shape)}, expected {dtype} {list(shape)}")
            f.seek(offsets[i])
            f.write(_tensor_bytes(t))
            del t  # before the next one is made
    return path


def _storage_record_offsets(path: Path) -> dict[int, int]:
    """Storage index -> byte offset of its data in a ``torch.save`` zip file (records ``<archive>/data/<index>``,
    stored uncompressed): the local file header is 30 bytes plus the name and the extra field."""
    import zipfile

    offsets = {}
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        for info in z.infolist():
            folder, _, index = info.filename.rpartition("/")
            if not folder.endswith("/data") or not index.isdigit():
                continue
            f.seek(info.header_offset + 26)
            name_len, extra_len = struct.unpack("<HH", f.read(4))
            offsets[int(index)] = info.header_offset + 30 + name_len + extra_len
    return offsets


# ----------------------------------------------------------------------------------------------- tokenizer
def write_tiny_tokenizer(directory: str | Path, vocab_size: int = TINY_SIZES["t5"]["vocab"]) -> Path:
    """A T5-style sentencepiece unigram tokenizer (ids: 0 <pad>, 1 </s>, 2 <unk>; byte fallback, so any text
    tokenizes) trained on a small built-in corpus, saved in HF format like ``google/umt5-xxl``:
    ``spiece.model``, ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``.
    Deterministic: the same files every time."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    neg = _negative_prompt()
    lines = _CORPUS.splitlines() * 4 + [neg] * 2 + neg.split("，")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size, model_type="unigram",
        byte_fallback=True, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, num_threads=1,
        hard_vocab_limit=False, split_digits=True, minloglevel=2)
    (directory / "spiece.model").write_bytes(buf.getvalue())

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(buf.getvalue())
    vocab = [(p.piece, p.score) for p in proto.pieces]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([
        normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap),
        normalizers.Strip(left=False, right=True),
        normalizers.Replace(Regex(" {2,}"), "▁"),
    ])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    specials = ["<pad>", "</s>", "<unk>"]
    tok.add_special_tokens(specials)
    tok.save(str(directory / "tokenizer.json"))

    entry = dict(lstrip=False, normalized=False, rstrip=False, single_word=False)
    config = {
        "tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
        "extra_ids": 0, "additional_special_tokens": [], "legacy": True, "add_prefix_space": True,
        "clean_up_tokenization_spaces": False, "model_max_length": 1000000000000000019884624838656,
        "sp_model_kwargs": {},
        "added_tokens_decoder": {str(i): dict(content=t, special=True, **entry) for i, t in enumerate(specials)},
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special_map = {name: dict(content=t, **entry) for name, t in
                   [("eos_token", "</s>"), ("pad_token", "<pad>"), ("unk_token", "<unk>")]}
    (directory / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))
    return directory


# ----------------------------------------------------------------------------------------------- the layout
def write_checkpoints(directory: str | Path, sizes: Optional[dict] = None, seed: int = 0,
                      variants: Sequence[str] = ("WorldCanvas",), device: Union[str, torch.device] = "cpu",
                      progress: bool = False) -> Path:
    """Write random-weight checkpoints in the released layout, file names, key sets and dtypes under ``directory``.

    ``sizes``: model sizes in the reference's argument names (like `TINY_SIZES`); None writes the released sizes
    (umT5-xxl 5.7 B parameters, Wan 2.1 VAE, two 14 B DiT experts: ~69 GB per variant). Tensors are drawn on
    ``device`` (a GPU makes full size fast) one at a time and streamed to disk, so memory holds one tensor. ``seed``
    fixes every weight for a given device; each file draws from its own generator, so the experts (and the
    variants) differ. The tokenizer is always the small built-in one (`write_tiny_tokenizer`): the real umT5
    tokenizer cannot be made here. Returns ``directory``.
    """
    from tqdm.auto import tqdm

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    shapes_of = expected_shapes(sizes)
    jobs = [("t5", "WorldCanvas", shapes_of["t5"], torch.bfloat16, 1),
            ("vae", "WorldCanvas", shapes_of["vae"], torch.float32, 2)]
    for v, variant in enumerate(variants):
        jobs += [(expert, variant, shapes_of[expert], torch.bfloat16, 10 + 2 * v + e)
                 for e, expert in enumerate(("high", "low"))]
    total = sum(math.prod(s) * torch.empty((), dtype=d).element_size() for _, _, shapes, d, _ in jobs
                for s in shapes.values())
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"writing {root}", disable=not progress)
    for role, variant, shapes, dtype, k in jobs:
        f = next(f for f in released_files(variant) if f.role == role)
        path = root / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        generator = torch.Generator(device).manual_seed(seed * 1000 + k)

        def make(key: str, shape: tuple[int, ...], generator=generator, dtype=dtype) -> torch.Tensor:
            t = random_tensor(key, shape, generator, dtype)
            bar.update(t.numel() * t.element_size())
            return t

        if path.suffix == ".safetensors":
            write_safetensors_streaming(path, shapes, dtype, make, metadata={"format": "pt"})
        else:
            write_torch_streaming(path, shapes, dtype, make)
    bar.close()
    tokenizer = next(f for f in released_files() if f.role == "tokenizer")
    write_tiny_tokenizer(root / tokenizer.path)
    return root


def make_tiny_checkpoints(directory: str | Path, seed: int = 0, variant_ref: bool = False) -> Path:
    """Write tiny random-weight checkpoints in the released layout and formats under ``directory``, plus
    ``wclab_tiny.json`` with their sizes (the head counts weights cannot tell).

    ``seed`` fixes every weight (same seed -> same files); each file draws from its own generator, so the
    high/low experts (and the ``WorldCanvas_ref`` pair written when ``variant_ref``) differ. Takes ~1 s.
    Returns ``directory``, ready for ``wclab.models.loading.load_models(directory)`` and
    ``python -m wclab.checkpoints directory``.
    """
    variants = ["WorldCanvas", "WorldCanvas_ref"] if variant_ref else ["WorldCanvas"]
    root = write_checkpoints(directory, TINY_SIZES, seed=seed, variants=variants)
    info = {"format": "wclab-tiny", "version": 1, "seed": seed, "variants": variants, **TINY_SIZES,
            "note": "Tiny random-weight models in the released formats, made by wclab.testing.make_tiny_checkpoints."}
    (root / TINY_CONFIG_NAME).write_text(json.dumps(info, indent=1))
    return root


def make_released_size_checkpoints(directory: str | Path, seed: int = 0, variants: Sequence[str] = ("WorldCanvas",),
                                   device: Union[str, torch.device, None] = None, progress: bool = True) -> Path:
    """Random-weight checkpoints of the released sizes (`write_checkpoints` with ``sizes=None``): ~69 GB for one
    variant; tensors are drawn on the GPU when one is present. For measuring loading and full-size runs without
    the real weights; the videos are noise."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return write_checkpoints(directory, None, seed=seed, variants=variants, device=device, progress=progress)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m wclab.testing DIR [--size tiny|released] [--variants ...] [--seed N] [--device D]``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m wclab.testing",
                                description="Write random-weight checkpoints in the released layout.")
    p.add_argument("directory", type=Path)
    p.add_argument("--size", choices=["tiny", "released"], default="tiny")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=["WorldCanvas"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="where tensors are drawn (default: cuda when present)")
    args = p.parse_args(argv)
    if args.size == "tiny":
        make_tiny_checkpoints(args.directory, args.seed, variant_ref="WorldCanvas_ref" in args.variants)
    else:
        make_released_size_checkpoints(args.directory, args.seed, args.variants, args.device)
    print(f"wrote {args.directory} ({args.size} sizes, variants {' '.join(args.variants)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
