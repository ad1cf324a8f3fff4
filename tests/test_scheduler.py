"""Flow-matching scheduler and start noise: parity with the reference goldens and the Euler/flow formulas."""
from __future__ import annotations

import pytest
import torch
from conftest import load_golden

from wclab.image import SizeError
from wclab.models.conditioning import make_noise
from wclab.models.scheduler import FlowMatchScheduler, SchedulerError


@pytest.fixture(scope="module")
def units():
    return load_golden("units")


@pytest.fixture(scope="module")
def e2e():
    return load_golden("e2e_synth_small")


def test_fifty_step_sigmas_and_timesteps_equal_reference_bit_for_bit(units):
    # Exact: same float32 linspace and shift arithmetic as the reference, so no tolerance is needed.
    _, golden = units
    sched = FlowMatchScheduler()
    sched.set_timesteps(50, shift=5.0)
    assert sched.sigmas.dtype == torch.float32 and sched.sigmas.shape == (50,)
    assert torch.equal(sched.sigmas, golden["sched50_sigmas"])
    assert torch.equal(sched.timesteps, golden["sched50_timesteps"])


def test_four_step_shift_five_timesteps_equal_e2e_golden(e2e):
    meta, _ = e2e
    sched = FlowMatchScheduler()
    sched.set_timesteps(meta["steps"], shift=meta["sigma_shift"])
    assert sched.timesteps.tolist() == meta["timesteps"]


def test_shift_argument_replaces_scheduler_shift():
    sched = FlowMatchScheduler(shift=1.0, num_inference_steps=4)
    assert sched.timesteps.tolist() == [1000.0, 750.0, 500.0, 250.0]  # no shift: plain linspace
    sched.set_timesteps(4, shift=5.0)
    assert sched.shift == 5.0 and sched.timesteps[1].item() == 937.5


def test_denoising_strength_starts_schedule_at_the_shifted_strength():
    sched = FlowMatchScheduler()
    sched.set_timesteps(10, denoising_strength=0.5)
    expected_first = 5 * 0.5 / (1 + 4 * 0.5)
    assert sched.sigmas[0].item() == pytest.approx(expected_first, abs=1e-7)  # float32 rounding only


def test_euler_step_reproduces_reference_first_e2e_step_exactly(e2e):
    # latents_after_step0 = latents_before_step0 + noise_pred_step0 * (sigma_1 - sigma_0), same float32 ops.
    meta, golden = e2e
    sched = FlowMatchScheduler()
    sched.set_timesteps(meta["steps"], shift=meta["sigma_shift"])
    out = sched.step(golden["noise_pred_step0"], 0, golden["latents_before_step0"])
    assert torch.equal(out, golden["latents_after_step0"])


def test_step_is_sample_plus_velocity_times_sigma_gap_and_last_step_lands_on_sigma_zero():
    sched = FlowMatchScheduler(num_inference_steps=4)
    gen = torch.Generator().manual_seed(1)
    x, v = torch.randn(2, 1, 16, 2, 4, 4, generator=gen)
    s = sched.sigmas.tolist()
    for i in range(3):
        torch.testing.assert_close(sched.step(v, i, x), x + v * (s[i + 1] - s[i]), rtol=0, atol=1e-6)
    last = sched.step(v, 3, x)
    torch.testing.assert_close(last, x - s[3] * v, rtol=0, atol=1e-6)  # float32 rounding of one fma
    torch.testing.assert_close(last, sched.x0_from_velocity(x, v, 3), rtol=0, atol=0)


def test_step_accepts_a_timestep_tensor_like_the_reference():
    sched = FlowMatchScheduler(num_inference_steps=4)
    x, v = torch.ones(3), torch.full((3,), 2.0)
    assert torch.equal(sched.step(v, sched.timesteps[2], x), sched.step(v, 2, x))
    assert sched.index(torch.tensor([833.3])) == 2 and sched.index(999.0) == 0


def test_add_noise_then_x0_from_true_velocity_recovers_clean_latents():
    sched = FlowMatchScheduler(num_inference_steps=8)
    gen = torch.Generator().manual_seed(2)
    clean, noise = torch.randn(2, 16, 3, 4, 4, generator=gen)
    for i in range(8):
        noisy = sched.add_noise(clean, noise, i)
        torch.testing.assert_close(sched.x0_from_velocity(noisy, noise - clean, i), clean, rtol=0, atol=1e-5)


def test_expert_is_high_at_and_above_boundary_and_low_below_it(e2e):
    meta, _ = e2e
    sched = FlowMatchScheduler()
    assert sched.expert_for(900.0) == "high"
    assert sched.expert_for(torch.tensor(899.999)) == "low"
    assert sched.expert_for(1000.0, boundary=0.875) == "high"
    assert sched.expert_for(875.0, boundary=0.875) == "high"
    assert sched.expert_for(874.9, boundary=0.875) == "low"
    sched.set_timesteps(meta["steps"], shift=meta["sigma_shift"])
    experts = [sched.expert_for(t, meta["switch_DiT_boundary"]) for t in sched.timesteps]
    assert experts == ["high", "high", "low", "low"]  # 1000, 937.5 | 833.3, 625


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_step_counts_raise_scheduler_error(bad):
    with pytest.raises(SchedulerError, match="steps"):
        FlowMatchScheduler().set_timesteps(bad)


def test_step_index_out_of_range_raises():
    sched = FlowMatchScheduler(num_inference_steps=4)
    with pytest.raises(SchedulerError, match="0..3, got 4"):
        sched.step(torch.zeros(1), 4, torch.zeros(1))


def test_bad_denoising_strength_raises():
    with pytest.raises(SchedulerError, match="denoising_strength"):
        FlowMatchScheduler().set_timesteps(4, denoising_strength=0.0)


def test_noise_equals_reference_start_latents_of_e2e_golden(e2e):
    meta, golden = e2e
    noise = make_noise((meta["frames"], meta["height"], meta["width"]), seed=meta["seed"])
    assert torch.equal(noise, golden["latents_before_step0"])


def test_noise_is_torch_randn_with_seeded_cpu_generator_and_reproducible():
    shape = (1, 16, 3, 6, 10)
    expected = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(123), dtype=torch.float32)
    assert torch.equal(make_noise(shape, seed=123), expected)
    assert torch.equal(make_noise(shape, seed=123), make_noise(shape, seed=123))
    assert not torch.equal(make_noise(shape, seed=124), expected)
    assert torch.equal(make_noise((9, 48, 80), seed=123), expected)  # (frames, H, W) pixels → same latent shape


def test_noise_is_drawn_in_float32_then_cast():
    shape = (1, 16, 2, 4, 4)
    half = make_noise(shape, seed=7, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert torch.equal(half, make_noise(shape, seed=7).to(torch.bfloat16))


def test_noise_rejects_shapes_that_are_neither_latent_nor_pixel_sizes():
    with pytest.raises(SizeError, match="shape"):
        make_noise((16, 3, 4, 4), seed=0)
    with pytest.raises(SizeError, match="frames"):
        make_noise((16, 128, 224), seed=0)


def test_a_step_distilled_list_keeps_those_points_of_the_shifted_1000_step_schedule():
    from wclab.models.scheduler import FlowMatchScheduler

    s = FlowMatchScheduler()
    s.set_step_list([1000, 750, 500, 250], shift=5.0)
    torch.testing.assert_close(s.sigmas, torch.tensor([1.0, 0.9375, 2.5 / 3, 0.625]), rtol=0, atol=1e-6)
    torch.testing.assert_close(s.timesteps, s.sigmas * 1000)
    assert [s.expert_for(t) for t in s.timesteps] == ["high", "high", "low", "low"]  # LightX2V's boundary index 2
    assert s.next_sigma(3) == 0


@pytest.mark.parametrize("bad", [[], [750, 1000], [1000, 1000], [1001, 500], [500, 0]])
def test_a_step_list_must_be_strictly_decreasing_timesteps(bad):
    from wclab.models.scheduler import FlowMatchScheduler, SchedulerError

    with pytest.raises(SchedulerError, match="step_list"):
        FlowMatchScheduler().set_step_list(bad)
