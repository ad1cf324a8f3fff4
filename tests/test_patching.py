"""Activation patching between two runs (tiny generated models, 64x112x9, 3 steps: high, high, low; fp32 CPU)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from wclab.conditions import load_json, ops
from wclab.inspect import InspectError, Patch, PatchResult, patch, patch_sweep, plot_patch_sweep
from wclab.models.loading import load_models
from wclab.sampler import Session, Settings
from wclab.testing import make_tiny_checkpoints

CI = Path(__file__).resolve().parents[1] / "examples" / "ci"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return load_models(make_tiny_checkpoints(tmp_path_factory.mktemp("tiny")), preview=False)


@pytest.fixture(scope="module")
def prepared(models):
    """A prepared session at step 0 (3 steps, CFG 5); tests branch it."""
    return Session(models, load_json(CI / "ball.json"), CI / "ball.png", Settings(steps=3, seed=1), progress=False)


@pytest.fixture(scope="module")
def pair(prepared):
    """(source, target): the same start noise; the target's ball path moved 24 px left and its caption changed."""
    scene = prepared.scene
    moved = scene.replace(trajectories=[ops.translate(t, -24, 0) if t.id == 1 else t for t in scene.trajectories])
    moved = ops.set_caption(moved, 1, "A green frog jumps over the table.")
    target = prepared.branch()
    target.set_scene(moved)
    return prepared.branch(), target


@pytest.fixture(scope="module")
def runs(pair):
    """The source's and the target's own finished runs."""
    return tuple(s.branch().run() for s in pair)


def n_blocks(s):
    return s.dit("high").cfg.num_layers


def test_patching_every_blocks_output_reproduces_the_source_exactly(pair, runs):
    source, target = pair
    result = patch(source, target, [f"blocks.{b}.hook_out" for b in range(n_blocks(target))], progress=False)
    assert isinstance(result, PatchResult)
    assert torch.equal(result.latents, runs[0].latents)
    assert torch.equal(result.x0, runs[0].x0())
    assert not torch.equal(result.latents, runs[1].latents)  # the conditions do matter
    assert source.step_index == 0 and target.step_index == 0  # neither input session moved


def test_patching_nothing_reproduces_the_target(pair, runs):
    source, target = pair
    assert torch.equal(patch(source, target, [], progress=False).latents, runs[1].latents)
    no_steps = patch(source, target, "blocks.0.cross_attn.hook_out", steps=[], progress=False)
    assert torch.equal(no_steps.latents, runs[1].latents)


def test_patching_a_later_step_changes_only_that_step_on(pair, runs):
    source, target = pair
    result = patch(source, target, "blocks.1.cross_attn.hook_out", steps=[1], progress=False)
    mine, theirs = result.session.history, runs[1].history
    assert torch.equal(mine[0].velocity, theirs[0].velocity) and torch.equal(mine[0].x0, theirs[0].x0)
    assert not torch.equal(mine[1].velocity, theirs[1].velocity)
    assert not torch.equal(result.latents, runs[1].latents)
    assert result.steps == (1,)


def test_patching_one_cfg_branch_leaves_the_others_velocity_alone(pair, runs):
    source, target = pair
    result = patch(source, target, "blocks.0.cross_attn.hook_out", steps=[0], branches="cond", progress=False)
    first, own = result.session.history[0], runs[1].history[0]
    assert torch.equal(first.uncond, own.uncond) and not torch.equal(first.cond, own.cond)


def test_patching_every_head_equals_patching_the_attention_output(pair):
    source, target = pair
    heads = range(target.dit("high").cfg.num_heads)
    for attn in ("cross_attn", "self_attn"):
        by_heads = patch(source, target, Patch(f"blocks.0.{attn}.hook_z", heads=heads), progress=False)
        whole = patch(source, target, f"blocks.0.{attn}.hook_out", progress=False)
        assert torch.equal(by_heads.latents, whole.latents), attn


def test_a_patch_replaces_only_its_heads_and_tokens():
    x, src = torch.zeros(1, 6, 4, 2), torch.ones(1, 6, 4, 2)
    out = Patch("blocks.0.cross_attn.hook_z", heads=[1, 3]).apply(x, src)
    assert out[:, :, [1, 3]].eq(1).all() and out[:, :, [0, 2]].eq(0).all()
    tokens = torch.tensor([True, False, False, True, False, False])
    out = Patch("blocks.0.cross_attn.hook_z", heads=[2], tokens=tokens).apply(x, src)
    assert out.sum() == 2 * 2 and out[0, [0, 3], 2].eq(1).all()
    with pytest.raises(InspectError, match="heads need a"):
        Patch("blocks.0.hook_out", heads=[0]).apply(torch.zeros(1, 6, 8), torch.ones(1, 6, 8))
    with pytest.raises(InspectError, match="tokens mask has 3 entries"):
        Patch("blocks.0.hook_out", tokens=torch.ones(3, dtype=torch.bool)).apply(x, src)
    with pytest.raises(InspectError, match="shape"):
        Patch("blocks.0.hook_out").apply(torch.zeros(1, 6, 8), torch.ones(1, 5, 8))


def test_patching_inside_an_objects_token_mask_changes_less_than_patching_everywhere(pair, runs):
    source, target = pair
    mask = target.conditions.token_masks["1"].bool()  # [1, 1, F', h/2, w/2]
    name = "blocks.1.hook_out"
    inside = patch(source, target, Patch(name, tokens=mask), progress=False)
    everywhere = patch(source, target, name, progress=False)
    to_source = lambda r: float((r.latents - runs[0].latents).norm())
    assert to_source(everywhere) < to_source(inside) < to_source(PatchResult(runs[1], None))


def test_bad_requests_fail_before_any_compute(pair, prepared):
    source, target = pair
    with pytest.raises(Exception, match="Did you mean"):
        patch(source, target, "blocks.0.cross_attn.hook_outt", progress=False)
    later = prepared.branch()
    later.step()
    with pytest.raises(InspectError, match="same step"):
        patch(source, later, "blocks.0.hook_out", progress=False)
    no_cfg = prepared.branch()
    no_cfg.update(cfg=1.0)
    with pytest.raises(InspectError, match="cfg 1"):
        patch(no_cfg, target, "blocks.0.hook_out", progress=False)
    with pytest.raises(InspectError, match="steps"):
        patch(source, target, "blocks.0.hook_out", steps=[3], progress=False)


# ------------------------------------------------------------------------------------------------ sweeps
def distance_to(reference):
    return lambda r: float((r.latents - reference.latents).norm())


def test_a_block_sweep_gives_one_row_per_block_with_the_metric_of_patching_that_block(pair, runs):
    source, target = pair
    metric = distance_to(runs[0])
    table = patch_sweep(source, target, metric, over="blocks", hook="hook_out", progress=False)
    assert isinstance(table, pd.DataFrame)
    assert list(table.block) == list(range(n_blocks(target)))
    assert list(table.hook) == [f"blocks.{b}.hook_out" for b in table.block]
    assert (table.source_metric == 0).all() and np.allclose(table.target_metric, metric(PatchResult(runs[1], None)))
    one = metric(patch(source, target, "blocks.0.hook_out", progress=False))
    assert table.metric[0] == one and table.effect[0] == one - table.target_metric[0]
    assert table.restored.iloc[-1] == 1.0  # the last block's output decides the velocity: the source's run


def test_sweep_groups_only_trade_memory_for_time(pair, runs):
    source, target = pair
    metric = distance_to(runs[0])
    one_by_one = patch_sweep(source, target, metric, group_size=1, progress=False)
    all_at_once = patch_sweep(source, target, metric, group_size=None, progress=False)
    pd.testing.assert_frame_equal(one_by_one, all_at_once)


def test_a_head_sweep_gives_one_row_per_block_and_head(pair, runs):
    source, target = pair
    table = patch_sweep(source, target, distance_to(runs[0]), over="heads", blocks=[1], heads=[0, 2],
                        attention="self_attn", progress=False)
    assert list(zip(table.block, table["head"])) == [(1, 0), (1, 2)]
    assert list(table.hook) == ["blocks.1.self_attn.hook_z"] * 2
    assert table.metric.notna().all() and (table.metric != table.target_metric).all()
    fig = plot_patch_sweep(table)
    assert fig.axes


def test_an_expert_sweep_patches_only_that_experts_steps(pair, runs):
    source, target = pair
    seen = []

    def metric(r):
        seen.append(r)
        return distance_to(runs[0])(r)

    table = patch_sweep(source, target, metric, blocks=[0], expert="low", record="full", progress=False)
    assert list(table.hook) == ["low.blocks.0.cross_attn.hook_out"]
    patched = seen[-1].session.history
    assert [r.expert for r in patched] == ["high", "high", "low"]
    assert all(torch.equal(a.x0, b.x0) for a, b in zip(patched[:2], runs[1].history[:2]))
    assert not torch.equal(patched[2].x0, runs[1].history[2].x0)


def test_a_sweep_can_measure_attention_in_the_token_masks(pair):
    source, target = pair
    overlap = lambda r: r.maps.overlap_with_token_masks()["1"]
    table = patch_sweep(source, target, overlap, blocks=[0], attention_maps={}, progress=False)
    assert 0 <= table.metric[0] <= 1 and table.source_metric[0] != table.target_metric[0]
