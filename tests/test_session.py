"""Session behaviour beyond parity: caches, hooks, interventions between steps (tiny generated models, 64x112x9)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wclab.conditions import load_json, ops
from wclab.errors import HookError
from wclab.models.loading import load_models
from wclab.sampler import Session, SessionError, Settings
from wclab.testing import make_tiny_checkpoints

CI = Path(__file__).resolve().parents[1] / "examples" / "ci"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return load_models(make_tiny_checkpoints(tmp_path_factory.mktemp("tiny")), preview=False)


@pytest.fixture(scope="module")
def scene():
    return load_json(CI / "ball.json")


@pytest.fixture(scope="module")
def fresh(models, scene):
    """A prepared session at step 0; tests branch it so they never disturb each other."""
    return Session(models, scene, CI / "ball.png", Settings(steps=3, seed=1), progress=False)


def test_run_with_cache_keeps_only_the_requested_hooks_per_step_and_branch(fresh):
    s = fresh.branch()
    cache = s.run_with_cache(["blocks.0.hook_out", "high.hook_embed"], until=2)
    keys = sorted(cache.keys())
    assert keys == sorted(f"step{i}.{b}.{e}.{n}" for i in range(2) for b in ("cond", "uncond")
                          for e, n in (("high", "blocks.0.hook_out"), ("low", "blocks.0.hook_out"), ("high", "hook_embed"))
                          if not (e == "low" and s.history[i].expert == "high")
                          and not (e == "high" and s.history[i].expert == "low"))
    assert all(v.device.type == "cpu" for v in cache.values())
    assert s.step_index == 2


def test_cached_activation_is_what_a_plain_hook_sees(fresh):
    seen = {}
    a = fresh.branch()
    def look(x, hook):
        seen.setdefault(a.current_branch, x.clone())  # returns None: a hook that returns a tensor replaces

    with a.hooks([("high.blocks.1.cross_attn.hook_out", look)]):
        a.step()
    b = fresh.branch()
    cache = b.run_with_cache("blocks.1.cross_attn.hook_out", until=1, branch="cond")
    assert torch.equal(cache["step0.cond.high.blocks.1.cross_attn.hook_out"], seen["cond"])
    assert "step0.uncond.high.blocks.1.cross_attn.hook_out" not in cache
    assert torch.equal(a.latents, b.latents)  # caching does not change the run


def test_zeroing_the_bias_through_a_hook_equals_beta_one(fresh):
    hooked = fresh.branch()
    with hooked.hooks([(f"blocks.{i}.cross_attn.hook_bias", lambda x, hook: torch.zeros_like(x)) for i in range(2)]):
        hooked.run()
    no_bias = fresh.branch()
    no_bias.update(beta=1.0)
    no_bias.run()
    assert torch.equal(hooked.latents, no_bias.latents)
    biased = fresh.branch().run()
    assert not torch.equal(biased.latents, no_bias.latents)


def test_unknown_hook_name_suggests_close_names(fresh):
    with pytest.raises(HookError, match="(?i)did you mean"):
        with fresh.branch().hooks([("high.blocks.0.cross_attn.hook_prob", lambda x, h: None)]):
            pass


def test_set_latents_changes_what_follows_and_checks_the_shape(fresh):
    s = fresh.branch()
    with pytest.raises(SessionError, match="expected shape"):
        s.set_latents(torch.zeros(1, 16, 1, 1, 1))
    s.set_latents(torch.zeros_like(s.latents))
    s.step()
    t = fresh.branch()
    t.step()
    assert not torch.equal(s.latents, t.latents)
    assert torch.equal(s.history[0].latents, torch.zeros_like(s.latents))


def test_swapping_a_trajectory_mid_run_changes_only_later_steps(fresh, scene):
    base = fresh.branch().run()
    s = fresh.branch().run(until=1)
    moved = scene.with_trajectory(0, ops.translate(scene.trajectories[0], 0, 20))
    s.set_scene(moved)
    s.run()
    assert torch.equal(s.history[0].next_latents, base.history[0].next_latents)
    assert not torch.equal(s.latents, base.latents)
    assert s.conditions.gaussian.ne(base.conditions.gaussian).any()


def test_changing_the_boundary_mid_run_switches_experts(fresh):
    s = fresh.branch()
    s.update(boundary=0.0)  # timestep >= 0 always: the high-noise expert throughout
    s.run()
    assert [h.expert for h in s.history] == ["high"] * 3
    s2 = fresh.branch()
    s2.update(boundary=1.01)
    s2.run()
    assert [h.expert for h in s2.history] == ["low"] * 3


def test_cfg_one_skips_the_negative_branch(fresh):
    s = fresh.branch()
    s.update(cfg=1.0)
    rec = s.step()
    assert rec.uncond is None and torch.equal(rec.velocity, rec.cond)


def test_settings_fixed_at_preparation_cannot_change_mid_run(fresh):
    with pytest.raises(SessionError, match="cannot change"):
        fresh.branch().update(steps=10)
    with pytest.raises(SessionError, match="unknown setting"):
        fresh.settings.replace(guidance=3)


def test_x0_and_preview_need_a_recorded_step(fresh):
    with pytest.raises(SessionError, match="no step"):
        fresh.branch().x0()
