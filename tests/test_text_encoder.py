"""Tokenizer + umT5 text encoder against the reference goldens (golden_units: prompt and negative prompt)."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY_MODELS, TOKENIZER, load_golden
from wclab.errors import CheckpointError
from wclab.models.text_encoder import (DEFAULT_NEGATIVE_PROMPT, TEXT_LEN, TextEncoder, TextEncoderConfig, t5_shapes,
                                       Tokenizer, clean_text)

# fp32 on CPU: transformers' UMT5 vs the reference's own T5 differ only by op order (einsum vs matmul, sdpa);
# measured max |diff| 2.4e-6 (prompt) and 5.9e-6 (negative) on outputs up to |3.4|.
ATOL, RTOL = 2e-5, 1e-5


@pytest.fixture(scope="module")
def golden():
    return load_golden("units")


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(TOKENIZER)


@pytest.fixture(scope="module")
def encoder(tokenizer):
    return TextEncoder.from_checkpoint(TINY_MODELS / "t5_tiny.pth", tokenizer=tokenizer)


def test_tokenizer_ids_and_mask_match_reference_exactly(golden, tokenizer):
    meta, g = golden
    ids, mask = tokenizer(meta["prompt"])
    assert ids.shape == mask.shape == (1, TEXT_LEN) and ids.dtype == mask.dtype == torch.long
    assert torch.equal(ids, g["t5_input_ids"])
    assert torch.equal(mask, g["t5_attention_mask"])


def test_tokenizer_truncates_long_text_to_text_len(tokenizer):
    ids, mask = tokenizer("word " * 2000)
    assert ids.shape == (1, TEXT_LEN) and int(mask.sum()) == TEXT_LEN


def test_tokenizer_offsets_point_into_the_cleaned_text(golden, tokenizer):
    prompt = golden[0]["prompt"]
    ids, mask, offsets = tokenizer(prompt, return_offsets=True)
    cleaned = clean_text(prompt)
    assert offsets.shape == (1, TEXT_LEN, 2)
    n = int(mask.sum())
    assert offsets[0, n - 1].tolist() == [0, 0]  # </s>
    assert offsets[0, n:].abs().sum() == 0  # padding
    assert cleaned[offsets[0, 0, 0]:offsets[0, n - 2, 1]].strip() == cleaned  # tokens cover the whole text
    assert "Object 2" in cleaned and "\n" not in cleaned


def test_clean_text_fixes_mojibake_unescapes_html_twice_and_collapses_whitespace():
    assert clean_text("  caf\u00c3\u00a9 &amp;amp;\n\n\tdog  ") == "caf\u00e9 & dog"
    assert clean_text("Object 1: a\nObject 2: b") == "Object 1: a Object 2: b"


def test_default_negative_prompt_is_the_reference_one(golden):
    assert DEFAULT_NEGATIVE_PROMPT == golden[0]["negative_prompt"]


def test_config_is_inferred_from_the_wan_checkpoint(encoder):
    ref = json.loads((TINY_MODELS / "config.json").read_text())["t5"]
    c = encoder.config
    assert (c.vocab, c.dim, c.dim_attn, c.dim_ffn, c.num_heads, c.num_layers, c.num_buckets, c.shared_pos) == (
        ref["vocab"], ref["dim"], ref["dim_attn"], ref["dim_ffn"], ref["num_heads"], ref["num_layers"],
        ref["num_buckets"], ref["shared_pos"])
    hf = encoder.model.config
    assert hf.relative_attention_max_distance == 128 and hf.dense_act_fn == "gelu_new" and hf.is_gated_act


@pytest.mark.parametrize("which, key, seq_len", [("prompt", "t5_out", 49), ("negative_prompt", "t5_out_negative", 139)])
def test_text_encoder_matches_reference_and_zeroes_padding(golden, encoder, which, key, seq_len):
    meta, g = golden
    out = encoder.encode(meta[which])
    assert out.shape == (1, TEXT_LEN, 32) and out.dtype == torch.float32
    n = int(encoder.tokenizer(meta[which])[1].sum())
    assert n == seq_len
    torch.testing.assert_close(out[:, :n], g[key][:, :n], atol=ATOL, rtol=RTOL)
    assert torch.all(out[:, n:] == 0) and torch.all(g[key][:, n:] == 0)


def test_batched_encoding_equals_one_by_one(golden, encoder):
    meta, _ = golden
    both = encoder.encode([meta["prompt"], meta["negative_prompt"]])
    # batch rows are independent; only float summation order may differ
    torch.testing.assert_close(both[:1], encoder.encode(meta["prompt"]), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(both[1:], encoder.encode(meta["negative_prompt"]), atol=1e-6, rtol=1e-6)


def test_shared_position_table_is_given_to_every_block(encoder, tmp_path):
    sd = torch.load(TINY_MODELS / "t5_tiny.pth", weights_only=True)
    table = sd["blocks.0.pos_embedding.embedding.weight"]
    per_block = dict(sd, **{"blocks.1.pos_embedding.embedding.weight": table})
    shared = {k: v for k, v in sd.items() if "pos_embedding" not in k}
    shared["pos_embedding.embedding.weight"] = table
    torch.save(per_block, tmp_path / "per_block.pth")
    torch.save(shared, tmp_path / "shared.pth")
    a = TextEncoder.from_checkpoint(tmp_path / "per_block.pth", tokenizer=encoder.tokenizer)
    b = TextEncoder.from_checkpoint(tmp_path / "shared.pth", tokenizer=encoder.tokenizer)
    assert b.config.shared_pos and not a.config.shared_pos
    torch.testing.assert_close(a.encode("a dog"), b.encode("a dog"), atol=0, rtol=0)


def test_missing_checkpoint_file_names_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pth"):
        TextEncoder.from_checkpoint(tmp_path / "nope.pth")


def test_corrupt_checkpoint_file_names_the_file(tmp_path):
    bad = tmp_path / "corrupt_t5.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt_t5.pth"):
        TextEncoder.from_checkpoint(bad)


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.pop("blocks.1.ffn.fc2.weight"), "missing key 'blocks.1.ffn.fc2.weight'"),
    (lambda sd: sd.__setitem__("blocks.0.extra.weight", torch.zeros(1)), "unexpected key 'blocks.0.extra.weight'"),
    (lambda sd: sd.__setitem__("blocks.0.attn.o.weight", torch.zeros(32, 16)),
     r"blocks.0.attn.o.weight has shape \(32, 16\), expected \(32, 32\)"),
])
def test_checkpoint_with_wrong_keys_is_rejected_naming_the_key(tmp_path, edit, message):
    sd = torch.load(TINY_MODELS / "t5_tiny.pth", weights_only=True)
    edit(sd)
    torch.save(sd, tmp_path / "edited.pth")
    with pytest.raises(CheckpointError, match=message):
        TextEncoder.from_checkpoint(tmp_path / "edited.pth")


def test_num_heads_argument_must_match_the_position_table():
    sd = torch.load(TINY_MODELS / "t5_tiny.pth", weights_only=True)
    assert TextEncoderConfig.from_state_dict(sd, num_heads=4).num_heads == 4
    with pytest.raises(CheckpointError, match="num_heads=64"):
        TextEncoderConfig.from_state_dict(sd, num_heads=64)


def test_key_shape_table_derived_from_the_config_is_the_reference_file_format():
    sizes = json.loads((TINY_MODELS / "config.json").read_text())["t5"]
    sd = torch.load(TINY_MODELS / "t5_tiny.pth", weights_only=True)
    config = TextEncoderConfig(**{k: v for k, v in sizes.items() if k != "dropout"})
    table = t5_shapes(config)
    assert table == {k: tuple(v.shape) for k, v in sd.items()} and list(table) == list(sd)
