"""StepCache policies on the tiny fixture models (float32, CPU): a 30-step CFG run of synth_small at 64×112×9
(11 high-noise and 19 low-noise steps, 60 forwards in all), uncached vs cached.

Numbers stated here are for these random-weight models, whose outputs change much more from step to step than
the released models' (EasyCache's predicted change per step is ~0.3-0.5 here, a few per cent on real video
models), so the thresholds that skip anything are far larger than the published 0.05.
"""
from __future__ import annotations

import copy
import dataclasses
import gc

import pytest
import torch

from conftest import tiny_base_session
from wclab.conditions.resize import resize_scene
from wclab.image import solid_image
from wclab.models import fast
from wclab.sampler import Session

pytestmark = pytest.mark.slow  # 30-step runs under each policy

STEPS = 30


@pytest.fixture(scope="module")
def prepared() -> Session:
    """Prepared (not stepped) 30-step session; branch it for each run."""
    base = tiny_base_session()
    scene = resize_scene(base.scene, 64, 112, 9)  # 84 video tokens: the policies' logic, not the model's size
    return Session(base.models, scene, solid_image(64, 112, (90, 120, 150)),
                   base.settings.replace(steps=STEPS, record="none", height=64, width=112, frames=9), progress=False)


def cached_run(prepared: Session, policy, models=None):
    """(finished session, caches) of one run of a branch of ``prepared`` with ``policy`` on both experts."""
    s = prepared.branch()
    if models is not None:
        s.models = models
    with fast.step_caches(s.models, policy) as caches:
        s.run()
    return s, caches


@pytest.fixture(scope="module")
def exact(prepared) -> Session:
    return prepared.branch().run()


@pytest.fixture(scope="module")
def easy(prepared) -> dict:
    """threshold -> (session, caches) of EasyCache runs."""
    return {th: cached_run(prepared, fast.EasyCache(th)) for th in (0.0, 0.5, 1.0, float("inf"))}


def reused(caches) -> int:
    return sum(c.reused for c in caches)


def test_easycache_at_threshold_zero_computes_every_forward_and_equals_the_exact_run(easy, exact):
    session, caches = easy[0.0]
    assert reused(caches) == 0 and sum(c.computed for c in caches) == 2 * STEPS
    assert torch.equal(session.latents, exact.latents)


def test_easycache_skips_fewer_forwards_as_the_threshold_goes_to_zero(easy):
    counts = [reused(easy[th][1]) for th in (float("inf"), 1.0, 0.5, 0.0)]
    assert counts == sorted(counts, reverse=True) and len(set(counts)) == 4, counts
    assert counts[-1] == 0


def test_easycache_deviation_from_the_exact_run_is_bounded(easy, exact):
    """At threshold 0.5 over a third of the forwards are skipped (measured: 23 of 60) and the final latents are off
    by 7.1 % mean relative; bound with some room."""
    session, caches = easy[0.5]
    assert reused(caches) >= 2 * STEPS // 4
    assert fast.relative_error(session.latents, exact.latents)["mean_rel"] < 0.1


def test_every_expert_computes_its_first_and_last_steps_under_easycache(easy, prepared):
    _, caches = easy[float("inf")]  # skip whatever may be skipped
    experts = [prepared.scheduler.expert_for(float(t), prepared.settings.boundary) for t in prepared.scheduler.timesteps]
    first_low, last = experts.index("low"), len(experts) - 1
    computed = {(e.step, e.branch) for c in caches for e in c.events if not e.reused}
    for step in (0, 1, first_low - 1, first_low, first_low + 1, last):  # warmup 2, the last step of each expert
        assert {(step, "cond"), (step, "uncond")} <= computed, step


def test_fixed_cache_alternates_and_stays_within_a_stated_deviation(prepared, exact):
    """FixedCache(2) reuses every other forward of each stream (the first step of each expert computed):
    measured 2.5 % mean relative on the final latents."""
    session, caches = cached_run(prepared, fast.FixedCache(2))
    pattern = "".join("r" if e.reused else "c" for e in caches[0].events if e.branch == "cond")
    assert pattern == "crcrcrcrcrc"  # the 11 high-noise steps
    assert fast.relative_error(session.latents, exact.latents)["mean_rel"] < 0.05


@pytest.mark.parametrize("policy", [fast.FixedCache(2), fast.FirstBlockCache(float("inf"), 3),
                                    fast.EasyCache(float("inf"))], ids=lambda p: type(p).__name__)
def test_one_model_serving_both_experts_starts_afresh_at_the_switch(prepared, policy):
    """With one DiT object as both experts, one StepCache sees both: at the high→low switch each stream is
    reset, so the run equals one with two separate (identical) expert objects, and no reused forward adds a
    residual another expert computed."""
    models = prepared.models
    shared = dataclasses.replace(models, low=models.high)
    separate = dataclasses.replace(models, low=copy.deepcopy(models.high))
    a, (cache,) = cached_run(prepared, policy, shared)
    b, _ = cached_run(prepared, policy, separate)
    assert torch.equal(a.latents, b.latents)
    uses = [(e.expert, e.source[1]) for e in cache.events if e.reused]
    assert {"high", "low"} == {x for x, _ in uses} and all(x == y for x, y in uses), uses
    first_low = next(e for e in cache.events if e.expert == "low")
    assert not first_low.reused


def test_easycache_streams_do_not_share_state(prepared):
    """Two branches with different latents stepped in turn under one cache give what each gives alone, and a
    session's cond and uncond streams keep their own stored outputs."""
    policy = fast.EasyCache(0.5)
    a, b = prepared.branch(), prepared.branch()
    b.set_latents(torch.randn(a.latents.shape, generator=torch.Generator().manual_seed(3)))
    def run_alone(s: Session) -> torch.Tensor:
        with fast.step_caches(s.models, policy):
            return s.branch().run().latents

    alone = [run_alone(a), run_alone(b)]
    a.update(record="full")
    with fast.step_caches(a.models, policy) as caches:
        while not a.done:
            a.step()
            b.step()
        low = caches[1]
        assert {k for k in low.state if k[1] == id(a)} == {("session", id(a), "cond"), ("session", id(a), "uncond")}
        last = a.history[-1]  # the last step is always computed
        torch.testing.assert_close(low.state[("session", id(a), "cond")].computed_output, last.cond, rtol=0, atol=0)
        torch.testing.assert_close(low.state[("session", id(a), "uncond")].computed_output, last.uncond, rtol=0,
                                   atol=0)
        assert torch.equal(a.latents, alone[0]) and torch.equal(b.latents, alone[1])
        del b
        gc.collect()
        assert len(low.state) == 2  # b's streams went with b


def test_policies_reject_bad_parameters_and_the_old_keywords_still_work():
    model = tiny_base_session().models.high
    with pytest.raises(fast.FastPathError, match="threshold"):
        fast.EasyCache(threshold=-0.1)
    with pytest.raises(fast.FastPathError, match="every"):
        fast.FixedCache(every=0)
    with pytest.raises(fast.FastPathError, match="not both"):
        fast.StepCache(model, fast.FixedCache(2), threshold=0.1)
    with pytest.raises(fast.FastPathError, match="policy must be one of"):
        fast.StepCache(model, {"threshold": 0.1})
    with fast.StepCache(model, threshold=float("inf"), max_reuse=2) as cache:
        assert cache.policy == fast.FirstBlockCache(float("inf"), 2)
