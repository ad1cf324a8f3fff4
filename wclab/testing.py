"""Tiny random-weight checkpoints in the released layout and formats, for demos and tests without downloads.

`make_tiny_checkpoints(dir)` writes, under ``dir`` (paths as in checkpoints/README.md):

    Wan2.2-T2V-A14B/models_t5_umt5-xxl-enc-bf16.pth   Wan T5 keys, bfloat16  (dim 32, 2 layers, 4 heads)
    Wan2.2-T2V-A14B/Wan2.1_VAE.pth                    Wan VAE keys, float32  (base dim 8, z 16)
    Wan2.2-T2V-A14B/google/umt5-xxl/                  a small T5-style sentencepiece tokenizer, HF format
    WorldCanvas_dit/WorldCanvas/{high,low}_model.safetensors   released DiT keys, bfloat16 (dim 128, 4 heads)
    wclab_tiny.json                                   the sizes, incl. head counts (not inferable from weights)

Key sets and shapes equal the reference's tiny fixtures; only the random values differ. Weights are scaled
like a standard initialisation (std 1/sqrt(fan_in), norms near 1), so every model gives finite, bounded outputs.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import torch

from wclab.models.layout import TINY_CONFIG_NAME, released_files
from wclab.models.shapes import dit_config, dit_shapes, t5_shapes, vae_shapes

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
def random_state_dict(shapes: dict[str, tuple[int, ...]], generator: torch.Generator,
                      dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random tensors for a key -> shape table, scaled by the role the key name implies:
    norm scales 1 + 0.1·N, biases 0.02·N, embeddings/relative-position tables 0.5·N, DiT modulations
    N/sqrt(dim), every other weight N/sqrt(fan_in)."""
    out = {}
    for key, shape in shapes.items():
        x = torch.randn(shape, generator=generator)
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
        out[key] = x.to(dtype).contiguous()
    return out


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
def make_tiny_checkpoints(directory: str | Path, seed: int = 0, variant_ref: bool = False) -> Path:
    """Write tiny random-weight checkpoints in the released layout and formats under ``directory``.

    ``seed`` fixes every weight (same seed -> same files); each file draws from its own generator, so the
    high/low experts (and the ``WorldCanvas_ref`` pair written when ``variant_ref``) differ. Takes ~1 s.
    Returns ``directory``, ready for ``wclab.models.loading.load_models(directory)`` and
    ``python -m wclab.checkpoints directory``.
    """
    from safetensors.torch import save_file

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    variants = ["WorldCanvas", "WorldCanvas_ref"] if variant_ref else ["WorldCanvas"]

    def gen(k: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed * 1000 + k)

    def target(role: str, variant: str = "WorldCanvas") -> Path:
        f = next(f for f in released_files(variant) if f.role == role)
        (root / f.path).parent.mkdir(parents=True, exist_ok=True)
        return root / f.path

    torch.save(random_state_dict(t5_shapes(**TINY_SIZES["t5"]), gen(1), torch.bfloat16), target("t5"))
    torch.save(random_state_dict(vae_shapes(**TINY_SIZES["vae"]), gen(2), torch.float32), target("vae"))
    write_tiny_tokenizer(target("tokenizer"))
    shapes = dit_shapes(dit_config(TINY_SIZES["dit"]))
    for v, variant in enumerate(variants):
        for e, expert in enumerate(("high", "low")):
            sd = random_state_dict(shapes, gen(10 + 2 * v + e), torch.bfloat16)
            save_file(sd, str(target(expert, variant)), metadata={"format": "pt"})
    info = {"format": "wclab-tiny", "version": 1, "seed": seed, "variants": variants, **TINY_SIZES,
            "note": "Tiny random-weight models in the released formats, made by wclab.testing.make_tiny_checkpoints."}
    (root / TINY_CONFIG_NAME).write_text(json.dumps(info, indent=1))
    return root
