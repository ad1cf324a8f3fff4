"""End-to-end parity with the reference pipeline (golden_e2e_synth_small), and stepping == one-shot generation.

Setup of the golden: seed 0, 4 steps, CFG 5, shift 5, boundary 0.9, untiled VAE, 128x224x17, a solid
(90, 120, 150) start image, conditions from fixtures/synth_small.json, the tiny fixture models.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import FIXTURES, fixture_models, load_golden
from wclab.conditions import load_json, resize_scene
from wclab.image import solid_image
from wclab.sampler import Session, SessionError, Settings, generate

pytestmark = pytest.mark.slow  # whole generations against the reference


@pytest.fixture(scope="module")
def golden():
    return load_golden("e2e_synth_small")


@pytest.fixture(scope="module")
def models():
    return fixture_models()


@pytest.fixture(scope="module")
def scene():
    return load_json(FIXTURES / "synth_small.json")


@pytest.fixture(scope="module")
def settings(golden):
    meta, _ = golden
    return Settings(steps=meta["steps"], seed=meta["seed"], cfg=meta["cfg_scale"], shift=meta["sigma_shift"],
                    boundary=meta["switch_DiT_boundary"], tiled=meta["tiled"], point_mode=meta["vae_channel"])


@pytest.fixture(scope="module")
def finished(models, scene, settings):
    """One full run, stepped one step at a time."""
    session = Session(models, scene, solid_image(128, 224, (90, 120, 150)), settings, progress=False)
    while not session.done:
        session.step()
    return session


def test_prompt_and_timesteps_match_the_reference(finished, golden):
    meta, _ = golden
    assert finished.conditions.prompt.text == meta["prompt"]
    assert [h.timestep for h in finished.history] == pytest.approx(meta["timesteps"], abs=0)


def test_start_noise_is_the_reference_noise_bitwise(finished, golden):
    _, g = golden
    assert torch.equal(finished.history[0].latents, g["latents_before_step0"])


def test_step0_noise_prediction_matches(finished, golden):
    # fp32 on CPU: two tiny DiT forwards (cond + uncond) combined with CFG 5 amplify float rounding of
    # ~2e-6 per forward to ~2e-5 on values up to ~10.
    _, g = golden
    torch.testing.assert_close(finished.history[0].velocity, g["noise_pred_step0"], rtol=1e-4, atol=1e-4)


def test_latents_after_every_step_match(finished, golden):
    # Each Euler step carries the CFG rounding above forward; 4 steps stay below 1e-4 absolute.
    _, g = golden
    for i, rec in enumerate(finished.history):
        torch.testing.assert_close(rec.next_latents, g[f"latents_after_step{i}"], rtol=1e-4, atol=1e-4)


def test_experts_switch_at_the_boundary(finished):
    assert [h.expert for h in finished.history] == ["high", "high", "low", "low"]


def test_decoded_video_matches_within_one_level(finished, golden):
    _, g = golden
    video = finished.decode()
    expected = g["video_uint8"].numpy()
    assert video.shape == expected.shape and video.dtype == np.uint8
    assert np.abs(video.astype(int) - expected.astype(int)).max() <= 1


@pytest.fixture(scope="module")
def small(models, scene, settings):
    """The golden's settings at the smallest model size (64x112x9): (scene, image, settings, stepped session).
    Stepping vs one-shot and branching are properties of the session, not of the size."""
    small_scene = resize_scene(scene, 64, 112, 9)
    image = solid_image(64, 112, (90, 120, 150))
    session = Session(models, small_scene, image, settings, progress=False)
    while not session.done:
        session.step()
    return small_scene, image, settings, session


def test_stepping_is_bitwise_one_shot_generation(models, small):
    scene, image, settings, stepped = small
    result = generate(models, scene, image, settings, progress=False)
    assert [h.expert for h in stepped.history] == ["high", "high", "low", "low"]  # both experts ran
    assert torch.equal(result.latents, stepped.latents)
    assert np.array_equal(result.video, stepped.decode())


def test_branch_shares_prefix_and_diverges_independently(models, small):
    scene, image, settings, finished = small
    s = Session(models, scene, image, settings, progress=False).run(until=2)
    b = s.branch()
    b.update(cfg=1.0)
    b.run()
    s.run()
    assert torch.equal(s.latents, finished.latents)  # the original is untouched by its branch
    assert not torch.equal(b.latents, finished.latents)
    assert b.history[:2] == s.history[:2]
    assert b.history[2].uncond is None and s.history[2].uncond is not None


def test_run_past_the_end_is_an_error(finished):
    with pytest.raises(SessionError, match="all 4 steps"):
        finished.step()


def test_settings_must_match_the_scene_size(models, scene):
    with pytest.raises(SessionError, match="differs from the scene"):
        Session(models, scene, solid_image(128, 224, (0, 0, 0)), Settings(steps=1, height=256), progress=False)
