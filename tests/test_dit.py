"""wclab.models.dit against the reference golden forward of the tiny high-noise expert (CPU, float32).

Parity tolerance: rtol = atol = 1e-5 (outputs reach |5.3|). It covers float32 rounding differences between the
machine that made the goldens and this one (observed max |diff| ~3e-6); the same code is bitwise equal to the
reference implementation run on one machine.
"""
from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY_MODELS, load_golden
from wclab.errors import CheckpointError, HookError
from wclab.models.attention import (AttentionBackendError, attention_backend, available_backends,
                                    get_attention_backend, set_attention_backend)
from wclab.models.dit import DiT, DiTConfig, DiTInputError

PARITY = dict(rtol=1e-5, atol=1e-5)
CHECKPOINT = TINY_MODELS / "dit_high_tiny.safetensors"


@pytest.fixture(scope="module")
def tiny_config() -> dict:
    return json.loads((TINY_MODELS / "config.json").read_text())["dit"]


@pytest.fixture(scope="module")
def model(tiny_config) -> DiT:
    return DiT.from_checkpoint(CHECKPOINT, num_heads=tiny_config["num_heads"])


@pytest.fixture(scope="module")
def units():
    meta, t = load_golden("units")
    # the golden DiT forward was fed the T5 output of the 2-object prompt as context
    return meta, dict(x=t["dit_in_x53"], timestep=t["dit_timestep"], context=t["t5_out"], bias=t["dit_bias"],
                      out_masked=t["dit_out_masked"], out_nomask=t["dit_out_nomask"])


@pytest.fixture(scope="module")
def state_dict():
    from safetensors.torch import load_file

    return load_file(str(CHECKPOINT))


def run(model, u, bias=True):
    with torch.no_grad():
        return model(u["x"], u["timestep"], u["context"], u["bias"] if bias else None)


# ---------------------------------------------------------------- parity

def test_forward_without_bias_matches_reference(model, units):
    torch.testing.assert_close(run(model, units[1], bias=False), units[1]["out_nomask"], **PARITY)


def test_forward_with_trajectory_bias_matches_reference(model, units):
    torch.testing.assert_close(run(model, units[1]), units[1]["out_masked"], **PARITY)


def test_reference_bias_is_log_1_plus_29_allow_over_object_tokens_and_caption_spans(units):
    meta, u = units
    S, L = u["bias"].shape[-2:]
    allow = torch.zeros(S, L)
    for obj, (s0, s1) in enumerate(meta["text_cut_positions"]):
        lo, hi = meta["dit_traj_mask_tokens"][str(obj)]
        allow[lo:hi, s0:s1] = 1
    assert torch.equal(u["bias"], torch.log(1 + 29 * allow)[None, None])


def test_batch_of_two_equals_two_single_forwards(model, units):
    u = units[1]
    x2 = torch.cat([u["x"], u["x"].flip(2)])
    with torch.no_grad():
        both = model(x2, u["timestep"].expand(2), u["context"].expand(2, -1, -1), u["bias"])
        second = model(x2[1:], u["timestep"], u["context"], u["bias"])
    torch.testing.assert_close(both[:1], u["out_masked"], **PARITY)
    torch.testing.assert_close(both[1:], second, **PARITY)


def test_bfloat16_model_stays_close_to_float32(units):
    """bf16 weights and activations (RoPE still float64): relative error within 3% of the output range."""
    bf16 = DiT.from_checkpoint(CHECKPOINT, num_heads=4, dtype=torch.bfloat16)
    out = run(bf16, units[1])
    assert out.dtype == torch.bfloat16
    ref = units[1]["out_masked"]
    assert (out.float() - ref).abs().max() < 0.03 * ref.abs().max()


# ---------------------------------------------------------------- config and loading

def test_config_is_inferred_from_weight_shapes(state_dict, tiny_config):
    cfg = DiTConfig.from_state_dict(state_dict, num_heads=tiny_config["num_heads"])
    for field in ("dim", "ffn_dim", "freq_dim", "text_dim", "out_dim", "num_heads", "num_layers", "eps"):
        assert getattr(cfg, field) == tiny_config[field], field
    assert cfg.in_dim == tiny_config["in_dim_total"] == 53
    assert list(cfg.patch_size) == tiny_config["patch_size"] and cfg.cross_attn_norm
    assert DiTConfig.from_state_dict(state_dict).num_heads == 1  # default head_dim 128


def test_worldcanvas_14b_config_round_trips_through_meta_weights():
    cfg = DiTConfig.worldcanvas_14b()
    model = DiT.from_config(cfg, device="meta", dtype=torch.bfloat16)
    sd = model.state_dict()
    assert sd["patch_embedding.weight"].shape == (5120, 53, 1, 2, 2)
    assert sd["patch_embedding.weight"].dtype == torch.bfloat16
    assert DiTConfig.from_state_dict(sd) == cfg  # 40 heads of 128


def test_released_key_names_load_unchanged(model, state_dict):
    assert set(model.state_dict()) == set(state_dict)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_missing_key_raises_checkpoint_error_naming_it(state_dict):
    sd = {k: v for k, v in state_dict.items() if k != "blocks.1.ffn.2.bias"}
    with pytest.raises(CheckpointError, match=r"missing \['blocks\.1\.ffn\.2\.bias'\]"):
        DiT.from_checkpoint(sd, num_heads=4)


def test_unexpected_key_raises_checkpoint_error_naming_it(state_dict):
    sd = dict(state_dict, **{"img_emb.proj.0.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"unexpected \['img_emb\.proj\.0\.weight'\]"):
        DiT.from_checkpoint(sd, num_heads=4)


def test_shape_mismatch_raises_checkpoint_error_naming_key_and_shapes(state_dict):
    sd = dict(state_dict, **{"blocks.0.cross_attn.k.weight": torch.zeros(128, 64)})
    expected = r"'blocks\.0\.cross_attn\.k\.weight' has shape \(128, 64\), expected \(128, 128\)"
    with pytest.raises(CheckpointError, match=expected):
        DiT.from_checkpoint(sd, num_heads=4)


def test_missing_checkpoint_file_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        DiT.from_checkpoint(tmp_path / "high_model.safetensors")


def test_random_init_from_config_runs_and_its_weights_give_back_the_config(units):
    cfg = DiTConfig(dim=64, ffn_dim=96, freq_dim=32, text_dim=32, in_dim=53, out_dim=16, num_heads=2, num_layers=1)
    model = DiT.from_config(cfg)
    u = units[1]
    with torch.no_grad():
        out = model(u["x"], u["timestep"], u["context"], u["bias"])
    assert out.shape == (1, 16, 3, 8, 12) and torch.isfinite(out).all()
    assert DiTConfig.from_state_dict(model.state_dict(), num_heads=2) == cfg


# ---------------------------------------------------------------- shapes and input errors

def test_token_grid_halves_latent_cells(model):
    assert model.token_grid((1, 53, 21, 60, 104)) == (21, 30, 52)
    assert model.token_grid((3, 8, 12)) == (3, 4, 6)
    with pytest.raises(DiTInputError, match="divisible"):
        model.token_grid((3, 9, 12))


def test_wrong_input_shapes_raise_naming_the_tensor(model, units):
    u = units[1]
    with pytest.raises(DiTInputError, match=r"x must be \[B, 53, F, H, W\], got \[1, 36, 3, 8, 12\]"):
        model(u["x"][:, :36], u["timestep"], u["context"])
    with pytest.raises(DiTInputError, match=r"context must be \[1, L, 32\]"):
        model(u["x"], u["timestep"], u["context"][..., :16])
    with pytest.raises(DiTInputError, match=r"bias must be \[B, 1, S, L\] = \[1, 1, 72, 512\]"):
        model(u["x"], u["timestep"], u["context"], u["bias"][:, :, :70])


# ---------------------------------------------------------------- hooks

def test_hook_points_follow_transformerlens_names(model):
    names = set(model.hook_points())
    block0 = {n for n in names if n.startswith("blocks.0.")}
    assert block0 == {
        "blocks.0.hook_in", "blocks.0.hook_mod", "blocks.0.hook_ffn_out", "blocks.0.hook_out",
        *(f"blocks.0.self_attn.hook_{s}" for s in ("q", "k", "v", "z", "out")),
        *(f"blocks.0.cross_attn.hook_{s}" for s in ("q", "k", "v", "bias", "logits", "probs", "z", "out")),
    }
    assert {"hook_embed", "hook_head_out"} <= names
    assert len(names) == 2 + 2 * len(block0)
    assert {n for n, hp in model.hook_points().items() if hp.opt_in} == {
        f"blocks.{i}.cross_attn.hook_{s}" for i in range(2) for s in ("logits", "probs")}


def test_identity_hooks_leave_output_bitwise_identical(model, units):
    plain = run(model, units[1])
    with model.hooks([(lambda n: not model.hook_points()[n].opt_in, lambda t, hook: t)]):
        hooked = run(model, units[1])
    assert torch.equal(plain, hooked)


def test_run_with_cache_shapes(model, units):
    u = units[1]
    with torch.no_grad():
        out, cache = model.run_with_cache(u["x"], u["timestep"], u["context"], u["bias"])
    assert "blocks.0.cross_attn.hook_probs" not in cache  # opt-in: only when asked
    assert cache["hook_embed"].shape == (1, 72, 128)
    assert cache["blocks.1.hook_mod"].shape == (1, 6, 128)
    assert cache["blocks.0.self_attn.hook_q"].shape == (1, 72, 4, 32)
    assert cache["blocks.0.cross_attn.hook_k"].shape == (1, 512, 4, 32)
    assert cache["blocks.0.cross_attn.hook_bias"].shape == (1, 1, 72, 512)
    assert torch.equal(cache["hook_head_out"], out)


def test_zeroing_the_bias_through_hook_bias_gives_the_unbiased_output(model, units):
    with model.hooks([(lambda n: n.endswith("hook_bias"), lambda b, hook: torch.zeros_like(b))]):
        zeroed = run(model, units[1])
    torch.testing.assert_close(zeroed, units[1]["out_nomask"], **PARITY)
    assert not torch.allclose(zeroed, units[1]["out_masked"], **PARITY)


def test_opt_in_probs_sum_to_one_and_keep_the_output(model, units):
    """Materialised (float32 math) attention vs SDPA: the output agrees within rtol = atol = 1e-5."""
    u = units[1]
    names = ["blocks.0.cross_attn.hook_probs", "blocks.0.cross_attn.hook_logits"]
    with torch.no_grad():
        out, cache = model.run_with_cache(u["x"], u["timestep"], u["context"], u["bias"], names_filter=names)
        _, unbiased = model.run_with_cache(u["x"], u["timestep"], u["context"], names_filter=names)
    probs = cache["blocks.0.cross_attn.hook_probs"]
    assert probs.shape == (1, 4, 72, 512)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 4, 72), rtol=0, atol=1e-5)
    torch.testing.assert_close(out, u["out_masked"], **PARITY)
    # block 0's queries/keys do not depend on the bias, so the logits differ by exactly the bias
    diff = cache["blocks.0.cross_attn.hook_logits"] - unbiased["blocks.0.cross_attn.hook_logits"]
    torch.testing.assert_close(diff, u["bias"].expand_as(diff), rtol=0, atol=1e-5)


def test_unknown_hook_name_suggests_close_names(model):
    with pytest.raises(HookError, match=r"Did you mean: blocks\.0\.cross_attn\.hook_probs"):
        with model.hooks([("blocks.0.cross_attn.hook_prob", lambda t, hook: None)]):
            pass


# ---------------------------------------------------------------- attention backends

def test_math_backend_matches_sdpa(model, units):
    assert get_attention_backend() == "auto"
    with attention_backend("math"):
        assert get_attention_backend() == "math"
        out = run(model, units[1])
    assert get_attention_backend() == "auto"
    torch.testing.assert_close(out, units[1]["out_masked"], **PARITY)


def test_unknown_or_uninstalled_backend_raises():
    with pytest.raises(AttentionBackendError, match="one of"):
        set_attention_backend("xformers")
    missing = [b for b in ("flash2", "flash3") if b not in available_backends()]
    for backend in missing:
        with pytest.raises(AttentionBackendError, match="not installed"):
            set_attention_backend(backend)
    assert get_attention_backend() == "auto"


def test_a_model_keeps_its_own_backend_whatever_the_default(model, units, monkeypatch):
    def no_sdpa(*args, **kwargs):
        raise AssertionError("sdpa called although the model chose 'math'")

    model.set_attention_backend("math")
    try:
        with monkeypatch.context() as m:
            m.setattr(torch.nn.functional, "scaled_dot_product_attention", no_sdpa)
            with attention_backend("sdpa"):
                out = run(model, units[1])
        assert get_attention_backend() == "auto"
    finally:
        model.set_attention_backend(None)
    torch.testing.assert_close(out, units[1]["out_masked"], **PARITY)
    with pytest.raises(AttentionBackendError, match="one of"):
        model.set_attention_backend("xformers")
