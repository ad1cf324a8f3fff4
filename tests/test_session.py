"""Session behaviour beyond parity: caches, hooks, interventions between steps (tiny generated models, 64x112x9)."""
from __future__ import annotations

import dataclasses
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


def test_hooks_of_a_with_block_belong_to_its_session_not_to_branches_made_inside_it(fresh):
    """Issue 15: the branch copied the hook list, so the block's hooks kept firing in it after the block closed."""
    s = fresh.branch()
    fired = []
    with s.hooks([("blocks.0.hook_out", lambda x, hook: fired.append(hook.name))]):
        inside = s.branch()
        inside.step()
        assert fired == []  # a branch made inside the block starts without the block's hooks
        s.step()
        assert len(fired) == 2  # the session's own forwards (cond + uncond) still run them
    inside.step()
    s.step()
    assert len(fired) == 2  # after the block: neither the session nor its branch runs them


def test_hooks_receive_the_forward_context_step_timestep_sigma_expert_branch_and_session(fresh):
    s = fresh.branch()
    seen = []
    with s.hooks([("blocks.0.hook_out", lambda x, hook: seen.append(hook.ctx))]):
        s.run()
    assert [(c.step, c.branch) for c in seen] == [(i, b) for i in range(3) for b in ("cond", "uncond")]
    for c in seen:
        rec = s.history[c.step]
        assert (c.timestep, c.sigma, c.expert) == (rec.timestep, rec.sigma, rec.expert) and c.session is s
    with pytest.raises(dataclasses.FrozenInstanceError):
        seen[0].step = 5  # read-only
    x = s.model_input()
    t = torch.tensor([s.history[0].timestep])
    text = s.text_condition("cond")
    with s.models.high.hooks([("blocks.0.hook_out", lambda x, hook: seen.append(hook.ctx))]):
        s.models.high(x, t, text.context, text.bias)  # a bare model call has no session context
    assert seen[-1] is None


def test_under_cfg_parallelism_the_context_names_the_branch_this_rank_computes(fresh, monkeypatch):
    for dit in (fresh.models.high, fresh.models.low):  # a rank of a CFG split that computes "uncond"
        monkeypatch.setattr(dit, "cfg_branch", "uncond", raising=False)
        monkeypatch.setattr(dit, "join_cfg", lambda out: (out, out), raising=False)
    s = fresh.branch()
    seen = []
    with s.hooks([("blocks.0.hook_out", lambda x, hook: seen.append((hook.ctx.step, hook.ctx.branch)))]):
        s.step()
    assert seen == [(0, "uncond")]


def test_text_condition_and_caption_spans_per_cfg_branch(fresh):
    s = fresh.branch()
    cond, uncond = s.text_condition("cond"), s.text_condition("uncond")
    assert cond.text == s.conditions.prompt.text and uncond.text == s.settings.negative_prompt
    assert s.caption_spans("cond") == cond.spans and len(cond.spans) == len(s.conditions.caption_order)
    assert s.caption_spans("uncond") == uncond.spans and len(uncond.spans) == 1
    assert cond.bias is not None and tuple(cond.context.shape[:2]) == (1, cond.bias.shape[-1])
    s.update(negative_bias="none")
    assert s.text_condition("uncond").bias is None and fresh.text_condition("uncond").bias is not None
    with pytest.raises(SessionError, match="cond"):
        s.text_condition("positive")


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


def test_the_step_distilled_preset_runs_four_steps_without_a_negative_branch(models, scene):
    s = Session(models, scene, CI / "ball.png", Settings.step_distilled(seed=3), progress=False)
    s.run()
    assert [round(r.timestep, 1) for r in s.history] == [1000.0, 937.5, 833.3, 625.0]
    assert [r.expert for r in s.history] == ["high", "high", "low", "low"]
    assert all(r.uncond is None for r in s.history) and s.settings.seed == 3
    with pytest.raises(SessionError, match="step_list has 4 timesteps but steps is 5"):
        Session(models, scene, CI / "ball.png", Settings.step_distilled(steps=5), progress=False)
