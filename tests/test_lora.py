"""LoRA files merge into the DiT exactly as W + strength · scale · up @ down, in every format found for Wan 2.x
(kohya/ComfyUI, diffusers/PEFT prefixes, LightX2V with full deltas), and remove back to the original bits."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from conftest import REPO, TINY_MODELS, load_golden
from wclab.models.dit import DiT
from wclab.models.lora import LoraError, load_lora

RANK = 4


def model(dtype=torch.float32) -> DiT:
    return DiT.from_checkpoint(TINY_MODELS / "dit_high_tiny.safetensors", num_heads=4, dtype=dtype)


def pair(out_features: int, in_shape: tuple, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    down = torch.randn(RANK, *in_shape, generator=g)
    up = torch.randn(out_features, RANK, *([1] * (len(in_shape) - 1)), generator=g) * 0.1
    return down, up


def lora_files():
    """{format: (state dict, {parameter: expected float32 delta before strength})}."""
    q_down, q_up = pair(128, (128,), 0)
    f_down, f_up = pair(256, (128,), 1)
    p_down, p_up = pair(128, (53, 1, 2, 2), 2)
    g = torch.Generator().manual_seed(3)
    diff, diff_b, diff_m = (torch.randn(128, generator=g), torch.randn(128, generator=g),
                            torch.randn(1, 6, 128, generator=g))
    return {
        "kohya": ({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": q_down,
                   "diffusion_model.blocks.0.self_attn.q.lora_up.weight": q_up,
                   "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(RANK / 2),
                   "diffusion_model.patch_embedding.lora_down.weight": p_down,
                   "diffusion_model.patch_embedding.lora_up.weight": p_up},
                  {"blocks.0.self_attn.q.weight": 0.5 * q_up @ q_down,
                   "patch_embedding.weight": (p_up.flatten(1) @ p_down.flatten(1)).reshape(128, 53, 1, 2, 2)}),
        "peft": ({"transformer.blocks.1.ffn.0.lora_A.weight": f_down,
                  "transformer.blocks.1.ffn.0.lora_B.weight": f_up},
                 {"blocks.1.ffn.0.weight": f_up @ f_down}),
        "lightx2v": ({"diffusion_model.blocks.1.cross_attn.k.lora_down.weight": q_down,
                      "diffusion_model.blocks.1.cross_attn.k.lora_up.weight": q_up,
                      "diffusion_model.blocks.0.norm3.diff": diff,
                      "diffusion_model.blocks.0.norm3.diff_b": diff_b,
                      "diffusion_model.blocks.0.diff_m": diff_m},
                     {"blocks.1.cross_attn.k.weight": q_up @ q_down, "blocks.0.norm3.weight": diff,
                      "blocks.0.norm3.bias": diff_b, "blocks.0.modulation": diff_m}),
    }


@pytest.mark.parametrize("fmt", ["kohya", "peft", "lightx2v"])
def test_each_format_adds_strength_times_scale_times_up_down_and_nothing_else(fmt, tmp_path):
    sd, expected = lora_files()[fmt]
    path = tmp_path / f"{fmt}.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    m = model()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    handle = load_lora(m, path, strength=0.7)
    after = dict(m.named_parameters())
    assert set(handle.originals) == set(expected)
    for name, p in after.items():
        if name in expected:
            torch.testing.assert_close(p, before[name] + 0.7 * expected[name], rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(p, before[name]), name


def test_remove_restores_every_weight_bitwise_in_bfloat16():
    m = model(torch.bfloat16)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    handles = [load_lora(m, sd, strength=1.0) for sd, _ in lora_files().values()]
    assert any(not torch.equal(p, before[n]) for n, p in m.named_parameters())
    for h in reversed(handles):
        h.remove()
    assert all(torch.equal(p, before[n]) for n, p in m.named_parameters())


def test_a_merged_lora_changes_the_forward_and_strength_zero_does_not():
    _, t = load_golden("units")
    args = (t["dit_in_x53"][:, :, :2, :8, :8], t["dit_timestep"], t["t5_out"])
    m = model()
    base = m(*args)
    zero = load_lora(m, lora_files()["kohya"][0], strength=0.0)
    assert torch.equal(m(*args), base)
    zero.remove()
    load_lora(m, lora_files()["kohya"][0], strength=1.0)
    assert not torch.allclose(m(*args), base)


def test_keys_naming_no_parameter_are_named():
    down, up = pair(128, (128,), 0)
    with pytest.raises(LoraError, match=r"blocks\.99\.self_attn\.q\.weight"):
        load_lora(model(), {"blocks.99.self_attn.q.lora_down.weight": down, "blocks.99.self_attn.q.lora_up.weight": up})


def test_keys_in_no_known_format_and_half_pairs_are_named():
    with pytest.raises(LoraError, match="no known format.*blocks.0.self_attn.q.lora_mid"):
        load_lora(model(), {"blocks.0.self_attn.q.lora_mid.weight": torch.zeros(1)})
    down, _ = pair(128, (128,), 0)
    with pytest.raises(LoraError, match=r"only its \['down'\] half"):
        load_lora(model(), {"blocks.0.self_attn.q.lora_down.weight": down})


def test_a_delta_of_the_wrong_shape_is_named():
    down, up = pair(64, (128,), 0)
    with pytest.raises(LoraError, match=r"blocks\.0\.self_attn\.q.*\[64, 128\].*\[128, 128\]"):
        load_lora(model(), {"blocks.0.self_attn.q.lora_down.weight": down, "blocks.0.self_attn.q.lora_up.weight": up})


def test_merging_into_an_fp8_model_says_to_merge_first():
    from wclab.models.fast import quantize_fp8

    m = quantize_fp8(model())
    with pytest.raises(LoraError, match="merge LoRAs before quantize_fp8"):
        load_lora(m, lora_files()["peft"][0])


def test_load_models_merges_per_expert_loras_before_placing_them(tmp_path):
    from wclab.models.loading import load_models
    from wclab.testing import make_tiny_checkpoints

    root = make_tiny_checkpoints(tmp_path / "tiny")
    sd, expected = lora_files()["peft"]
    path = tmp_path / "peft.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    plain = load_models(root, preview=False)
    merged = load_models(root, preview=False, lora={"low": [(path, 0.5)]})
    name = "blocks.1.ffn.0.weight"
    torch.testing.assert_close(dict(merged.low.named_parameters())[name],
                               dict(plain.low.named_parameters())[name] + 0.5 * expected[name], rtol=1e-5, atol=1e-6)
    assert merged.high.lora_handles == [] and len(merged.low.lora_handles) == 1
    assert torch.equal(merged.high.blocks[1].ffn[0].weight, plain.high.blocks[1].ffn[0].weight)


def test_the_command_line_reads_lora_specs_before_loading_anything(tmp_path):
    from wclab.cli import parse_loras
    from wclab.errors import WclabError

    f = tmp_path / "a.safetensors"
    f.write_bytes(b"")
    assert parse_loras([f"high={f}:0.8", f"low={f}"]) == {"high": [(str(f), 0.8)], "low": [(str(f), 1.0)]}
    for bad in ("mid=x", "high=", f"high={tmp_path}/missing.safetensors"):
        with pytest.raises(WclabError, match="--lora"):
            parse_loras([bad])


def test_the_command_line_takes_the_step_distilled_preset_and_refuses_settings_it_fixes():
    from wclab.cli import build_parser, generation_inputs
    from wclab.errors import WclabError
    from wclab.sampler import Settings

    ours = REPO / "examples" / "ci"
    base = ["generate", "--conditions", str(ours / "ball.json"), "--image", str(ours / "ball.png"),
            "--checkpoints", "unused", "--out", "unused.mp4", "--device", "cpu", "--distilled", "--seed", "3"]
    settings = generation_inputs(build_parser().parse_args(base)).settings
    assert settings == Settings.step_distilled(seed=3, record="none")
    with pytest.raises(WclabError, match="--distilled .* drop --steps, --cfg"):
        generation_inputs(build_parser().parse_args(base + ["--steps", "8", "--cfg", "3"]))
