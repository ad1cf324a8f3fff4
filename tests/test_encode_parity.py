"""encode_conditions reproduces the reference's trajectory encoding exactly (golden_cond_*).

Tolerance atol 1e-5 (rtol 0): every value is a copied latent, a uint8 Gaussian value or 0/1 except the
mask-mode feature, a float32 mean over h*w cells whose summation order may differ; bit-equality is observed.
"""
from __future__ import annotations


import pytest
import torch

from conftest import EXAMPLES, FIXTURES, load_golden
from wclab.conditions import load_json
from wclab.encode import encode_conditions, gaussian_template
from wclab.errors import ConditionError

SCENES = {"door": EXAMPLES / "door.json", "mouse_dog": EXAMPLES / "mouse_dog.json",
          "synth_small": FIXTURES / "synth_small.json"}
MODES = {"point": "vae_channel_point", "mask": "vae_channel_mask"}


@pytest.fixture(scope="module", params=list(SCENES))
def case(request):
    name = request.param
    meta, tensors = load_golden(f"cond_{name}")
    return name, load_json(SCENES[name]), meta, tensors


def assert_exact(got, want, what):
    assert got.shape == want.shape, what
    assert got.dtype == torch.float32, what
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("mode", list(MODES))
def test_channels_and_token_masks_equal_reference(case, mode):
    name, scene, meta, t = case
    enc = encode_conditions(scene, t["first_frame_latents"], point_mode=mode)
    assert_exact(enc.gaussian, t["gaussian_channel"], f"{name} gaussian")
    assert_exact(enc.point, t[MODES[mode]], f"{name} {mode} channel")
    assert sorted(enc.token_masks) == sorted(k.removeprefix("traj_mask_id") for k in t if k.startswith("traj_mask_id"))
    for obj_id, mask in enc.token_masks.items():
        assert_exact(mask, t[f"traj_mask_id{obj_id}"], f"{name} token mask {obj_id}")
    assert enc.caption_order == meta["id_caption_order"] == meta["traj_mask_text_id"]
    assert enc.prompt.text == meta["text_prompt"]
    assert enc.mode == mode


def test_token_masks_follow_caption_order(case):
    _, scene, meta, t = case
    enc = encode_conditions(scene, t["first_frame_latents"])
    assert list(enc.token_masks) == list(meta["id_caption_order"])


def test_dit_channels_are_gaussian_then_point(case):
    _, scene, _, t = case
    enc = encode_conditions(scene, t["first_frame_latents"])
    x = enc.dit_channels()
    assert x.shape[1] == 17
    assert torch.equal(x[:, :1], enc.gaussian) and torch.equal(x[:, 1:], enc.point)


def test_encoding_does_not_mutate_scene(case):
    _, scene, _, t = case
    before = scene.to_json()
    latents = t["first_frame_latents"].clone()
    encode_conditions(scene, latents, point_mode="point")
    encode_conditions(scene, latents, point_mode="mask")
    assert scene.to_json() == before
    assert torch.equal(latents, t["first_frame_latents"])


@pytest.fixture(scope="module")
def door():
    _, t = load_golden("cond_door")
    return load_json(SCENES["door"]), t["first_frame_latents"]


@pytest.mark.parametrize("shape", [(1, 16, 1, 30, 52), (1, 4, 1, 60, 104), (16, 1, 60, 104), (1, 16, 2, 60, 104)])
def test_wrong_first_frame_latents_shape_raises_naming_field(door, shape):
    scene, _ = door
    with pytest.raises(ConditionError, match=r"first_frame_latents: expected shape \[1, 16, 1, 60, 104\]"):
        encode_conditions(scene, torch.zeros(shape))


def test_first_frame_latents_must_be_a_tensor(door):
    scene, lat = door
    with pytest.raises(ConditionError, match="first_frame_latents"):
        encode_conditions(scene, lat.numpy())


def test_unknown_point_mode_raises(door):
    scene, lat = door
    with pytest.raises(ConditionError, match="point_mode"):
        encode_conditions(scene, lat, point_mode="points")


def test_frames_not_4k_plus_1_raise():
    scene = load_json(SCENES["synth_small"])
    cut = scene.replace(frames=16, trajectories=[t.replace(points=t.points[:16], visibility=t.visibility[:16])
                                                  for t in scene.trajectories])
    with pytest.raises(ConditionError, match="4k\\+1"):
        encode_conditions(cut, torch.zeros(1, 16, 1, 16, 28))


def test_gaussian_template_is_a_255_peaked_disc():
    g = gaussian_template()
    assert g.shape == (200, 200) and g.dtype.name == "uint8"
    assert g.max() == 255 and g[100, 100] == 255
    assert g[0, 0] == 0 and g[199, 199] == 0  # corners lie outside the inscribed circle
    assert not g.flags.writeable


def test_door_encodes_the_same_with_warm_caches(door):
    """Encoding speed is measured by bench/bench_encode.py; here: the caches it relies on change no result."""
    scene, lat = door
    for mode in ("point", "mask"):
        first, again = encode_conditions(scene, lat, point_mode=mode), encode_conditions(scene, lat, point_mode=mode)
        assert torch.equal(first.dit_channels(), again.dit_channels())
        assert all(torch.equal(first.token_masks[i], again.token_masks[i]) for i in first.token_masks)
