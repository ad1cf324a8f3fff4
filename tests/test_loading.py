"""wclab.models.loading: layouts (tiny generated, reference fixture, explicit paths), head counts, errors."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY_MODELS, TOKENIZER, load_golden
from wclab.errors import CheckpointError
from wclab.models.loading import Models, load_models, resolve_paths
from wclab.testing import make_tiny_checkpoints

HIGH = "WorldCanvas_dit/WorldCanvas/high_model.safetensors"
LOW = "WorldCanvas_dit/WorldCanvas/low_model.safetensors"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_checkpoints(tmp_path_factory.mktemp("tiny"), seed=0, variant_ref=True)


@pytest.fixture(scope="module")
def tiny_models(tiny) -> Models:
    return load_models(tiny)


def test_tiny_layout_loads_every_model_with_heads_from_wclab_tiny_json(tiny, tiny_models):
    m = tiny_models
    assert m.paths.layout == "tiny" and m.paths.num_heads == 4 and m.paths.t5_num_heads == 4
    assert m.high.cfg.num_heads == 4 and m.low.cfg.num_heads == 4  # dim 128 // 128 would give 1
    assert m.text_encoder.config.num_heads == 4 and m.vae.config.base_dim == 8
    assert m.dtype == torch.float32 and m.high.patch_embedding.weight.dtype == torch.float32
    torch.testing.assert_close(m.low.patch_embedding.weight,
                               load_file(str(tiny / LOW))["patch_embedding.weight"].float(), rtol=0, atol=0)
    assert m.preview is not None and m.preview.channels == 16


def test_ref_variant_loads_the_ref_pair(tiny, tiny_models):
    ref = load_models(tiny, variant="WorldCanvas_ref", preview=False)
    assert ref.paths.high.parent.name == "WorldCanvas_ref"
    assert not torch.equal(ref.high.patch_embedding.weight, tiny_models.high.patch_embedding.weight)


def test_fixture_layout_reproduces_the_reference_goldens():
    """The fixture layout wires config.json's head counts; tolerance 1e-5 as in the model tests (float32
    rounding differences between machines, observed < 3e-6)."""
    m = load_models(TINY_MODELS, tokenizer=TOKENIZER, preview=False)
    assert m.paths.layout == "fixture" and m.high.cfg.num_heads == 4
    meta, g = load_golden("units")
    ids, mask = m.tokenizer(meta["prompt"])
    assert torch.equal(ids, g["t5_input_ids"]) and torch.equal(mask, g["t5_attention_mask"])
    torch.testing.assert_close(m.text_encoder(ids, mask), g["t5_out"], rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        out = m.high(g["dit_in_x53"], g["dit_timestep"], g["t5_out"])
    torch.testing.assert_close(out, g["dit_out_nomask"], rtol=1e-5, atol=1e-5)


def test_fixture_layout_without_a_tokenizer_says_to_pass_one():
    with pytest.raises(CheckpointError, match="tokenizer="):
        load_models(TINY_MODELS)


def test_explicit_paths_override_the_layout(tiny):
    m = load_models(tiny, high=TINY_MODELS / "dit_high_tiny.safetensors", preview=False)
    assert m.paths.high == TINY_MODELS / "dit_high_tiny.safetensors"
    torch.testing.assert_close(m.high.patch_embedding.weight,
                               load_file(str(TINY_MODELS / "dit_high_tiny.safetensors"))["patch_embedding.weight"])


def test_all_explicit_paths_need_no_directory(tiny):
    p = resolve_paths(t5=TINY_MODELS / "t5_tiny.pth", vae=TINY_MODELS / "vae_tiny.pth", tokenizer=TOKENIZER,
                      high=tiny / HIGH, low=tiny / LOW, num_heads=4)
    assert p.layout == "explicit" and p.num_heads == 4 and p.t5_num_heads is None


def test_missing_file_error_names_the_file_its_expected_path_and_where_to_get_it(tmp_path):
    root = make_tiny_checkpoints(tmp_path)
    (root / LOW).unlink()
    with pytest.raises(CheckpointError) as e:
        load_models(root)
    msg = str(e.value)
    assert "low" in msg and str(root / LOW) in msg
    assert "hlwang06/WorldCanvas" in msg and "WorldCanvas/low_model.safetensors" in msg
    assert "huggingface-cli download hlwang06/WorldCanvas WorldCanvas/low_model.safetensors" in msg
    assert "high_model" not in msg  # only what is missing


def test_empty_directory_lists_every_required_file(tmp_path):
    with pytest.raises(CheckpointError) as e:
        load_models(tmp_path)
    msg = str(e.value)
    for name in ("models_t5_umt5-xxl-enc-bf16.pth", "Wan2.1_VAE.pth", "google/umt5-xxl", "high_model.safetensors",
                 "low_model.safetensors", "Wan-AI/Wan2.2-T2V-A14B"):
        assert name in msg
    assert "sam_vit_h" not in msg  # optional


def test_missing_ref_variant_names_the_ref_files(tmp_path):
    root = make_tiny_checkpoints(tmp_path, variant_ref=False)
    with pytest.raises(CheckpointError, match="WorldCanvas_ref/high_model.safetensors"):
        load_models(root, variant="WorldCanvas_ref")


def test_unknown_variant_is_rejected(tiny):
    with pytest.raises(CheckpointError, match="variant"):
        load_models(tiny, variant="WorldCanvasXL")


def test_misshaped_weight_error_names_the_key(tmp_path):
    root = make_tiny_checkpoints(tmp_path)
    sd = load_file(str(root / HIGH))
    sd["blocks.1.ffn.0.weight"] = torch.zeros(255, 128, dtype=torch.bfloat16)
    save_file(sd, str(root / HIGH))
    with pytest.raises(CheckpointError, match=r"blocks\.1\.ffn\.0\.weight"):
        load_models(root, preview=False)


def test_models_to_casts_every_model(tiny):
    m = load_models(tiny, preview=False).to(dtype=torch.bfloat16)
    assert m.dtype == torch.bfloat16
    for module in (m.text_encoder, m.vae, m.high, m.low):
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}


def test_offloaded_experts_compute_what_resident_ones_do(tiny, tiny_models):
    """experts="offload": block weights stay in CPU memory and stream in per block; same outputs, bitwise."""
    offloaded = load_models(tiny, experts="offload", preview=False)
    assert offloaded.high.block_offload is not None
    _, t = load_golden("units")
    x, ts, ctx = t["dit_in_x53"][:, :, :2, :8, :8], t["dit_timestep"], t["t5_out"]
    for name in ("high", "low"):
        got = getattr(offloaded, name)(x, ts, ctx)
        assert torch.equal(got, getattr(tiny_models, name)(x, ts, ctx))


def test_fp8_experts_are_quantised_as_they_are_read(tiny):
    from wclab.models.fast import Fp8Linear

    m = load_models(tiny, experts="fp8", preview=False)
    for expert in (m.high, m.low):
        assert isinstance(expert.blocks[0].ffn[0], Fp8Linear)


def test_an_unknown_expert_placement_is_named(tiny):
    with pytest.raises(CheckpointError, match="experts: expected one of"):
        load_models(tiny, experts="gpu", preview=False)
