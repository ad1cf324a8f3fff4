"""Motion maps (wclab.inspect.motion_maps) on the tiny fixture models.

The shared 2-step synth_small session (token grid 5x8x14 = 560 tokens, 2 blocks x 4 heads per expert; step 0 runs
the high expert, step 1 the low one). Trajectory 0 (object 1) is drawn on every latent frame but invisible on
latent frames 2 and 3; trajectory 1 (object 2) enters: no drawn point on latent frame 0.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_base_session
from wclab.inspect import InspectError, MotionMaps, QueryRowMass, trajectory_token_mask
from wclab.models.attention import attention_logits
from wclab.sampler import Session

GRID = (5, 8, 14)
S = 560


@pytest.fixture(scope="module")
def base() -> Session:
    return tiny_base_session()


@pytest.fixture(scope="module")
def block1_step0(base):
    """Maps of block 1, heads 0 and 2, step 0 (high expert), and the q / k that block saw on the cond branch."""
    s = base.branch()
    seen = {}

    def keep(x, hook):
        if hook.ctx.branch == "cond":
            seen[hook.name.rpartition(".")[2]] = x.detach().clone()

    with MotionMaps(s, blocks=[1], heads=[0, 2], steps=[0]) as maps, \
            s.hooks([("high.blocks.1.self_attn.hook_q", keep), ("high.blocks.1.self_attn.hook_k", keep)]):
        s.run(until=1)
    return s, maps, seen["hook_q"], seen["hook_k"]


def test_rows_equal_the_full_softmax_of_the_hooked_q_and_k(block1_step0):
    s, maps, q, k = block1_step0
    probs = attention_logits(q, k).softmax(-1)[0, [0, 2]].sum(0)  # [S, S] float32, the naive full pattern
    assert maps.counts == {0: 2}  # one cond forward x 2 heads
    for t in range(5):
        query = torch.from_numpy(trajectory_token_mask(s.scene, t)).reshape(5, -1)
        m = maps.map(t)
        assert tuple(m.shape) == (5, *GRID)
        for f in range(5):
            rows = torch.nonzero(query[f]).flatten()
            if len(rows) == 0:
                assert torch.isnan(m[f]).all()
                continue
            expected = probs[rows].sum(0) / (2 * len(rows))
            torch.testing.assert_close(m[f].reshape(-1), expected, rtol=1e-5, atol=1e-5)
            assert abs(float(m[f].sum()) - 1) < 1e-5  # a distribution over all keys of all frames


def test_path_mass_counts_path_cells_also_where_the_trajectory_is_invisible(block1_step0):
    s, maps, _, _ = block1_step0
    path = torch.from_numpy(trajectory_token_mask(s.scene, 0, "path")).float()
    visible = trajectory_token_mask(s.scene, 0, "visible").any((1, 2))
    assert visible.tolist() == [True, True, False, False, True]
    assert path.sum((1, 2)).min() > 0  # drawn on every latent frame
    pm = maps.path_mass(0)
    torch.testing.assert_close(pm, (maps.map(0) * path[None]).sum((2, 3)), equal_nan=True)
    assert torch.isnan(pm[2:4]).all() and (pm[[0, 1, 4]][:, 2:4] > 0).all()  # invisible key frames count
    assert float(pm[1, 0]) == pytest.approx(float(maps.map(0)[1, 0][path[0].bool()].sum()))
    # the entering trajectory has no drawn point on latent frame 0: no path cell there, so no mass
    assert trajectory_token_mask(s.scene, 1, "path")[0].sum() == 0 and (maps.path_mass(1)[1:, 0] == 0).all()
    table = maps.to_frame()
    assert len(table) == 5 * 25 and set(table.columns) >= {"trajectory", "query_frame", "key_frame", "path_mass",
                                                           "uniform", "key_visible"}
    row = table[(table.trajectory == 0) & (table.query_frame == 1) & (table.key_frame == 3)].iloc[0]
    assert row.path_mass == pytest.approx(float(pm[1, 3])) and not row.key_visible


def test_path_queries_include_invisible_frames(base):
    s = base.branch()
    with MotionMaps(s, trajectories=[0], blocks=[0], heads=[1], queries="path", expert="high") as maps:
        s.run(until=1)
    m = maps.map(0)
    assert not torch.isnan(m).any()
    torch.testing.assert_close(m.sum((1, 2, 3)), torch.ones(5))
    assert maps.queries_per_frame[0].tolist() == trajectory_token_mask(s.scene, 0, "path").sum((1, 2)).tolist()


def test_visible_query_cells_are_the_objects_token_masks(base):
    """Objects 1-3 have one trajectory each: its visible cells are exactly the encoder's token mask."""
    for t, obj in [(0, "1"), (1, "2"), (2, "3")]:
        mask = base.conditions.token_masks[obj][0, 0].bool().numpy()
        assert np.array_equal(trajectory_token_mask(base.scene, t), mask)


def test_attaching_motion_maps_leaves_the_generation_bitwise_unchanged(base):
    plain = base.branch().run()
    s = base.branch()
    with MotionMaps(s, trajectories=[0, 1]) as maps:
        s.run()
        s.branch().run(until=1)  # a branch made inside the block adds nothing
    assert torch.equal(plain.latents, s.latents)
    assert maps.recorded_steps == [0, 1] and maps.counts == {0: 2 * 4, 1: 2 * 4}
    assert all(tuple(v.shape) == (2 * 5, S) and v.dtype == torch.float32 for v in maps.sums.values())


def test_selection_arguments(base):
    s = base.branch()
    with MotionMaps(s, trajectories=[3], blocks=[0], heads=[1, 3], expert="low", branches=["cond", "uncond"]) as m:
        s.run()
    assert m.recorded_steps == [1] and m.counts == {1: 2 * 2}  # cond + uncond forwards x 2 heads, block 0 only
    with pytest.raises(InspectError, match="mapped trajectories"):
        m.map(0)
    one = m.map(3, step=1)
    torch.testing.assert_close(one, m.map(3))
    with pytest.raises(InspectError, match="not recorded"):
        m.map(3, step=0)


def test_video_and_plot(block1_step0):
    s, maps, _, _ = block1_step0
    v = maps.video(0, 1)
    assert v.shape == (5, 128, 224, 3) and v.dtype == np.uint8
    assert maps.video(0, 1, frames="video").shape == (17, 128, 224, 3)
    with pytest.raises(InspectError, match="no query tokens at latent frame 2"):
        maps.video(0, 2)
    with pytest.raises(InspectError, match="query_frame"):
        maps.video(0, 5)
    fig = maps.plot_path_mass(0)
    assert fig.axes[0].get_xlabel() == "key latent frame g"


@pytest.mark.parametrize("kwargs, match", [
    ({"trajectories": [5]}, "trajectories"), ({"trajectories": [-1]}, "trajectories"), ({"blocks": [2]}, "blocks"),
    ({"heads": [4]}, "heads"), ({"steps": [2]}, "steps"), ({"expert": "mid"}, "expert"),
    ({"branches": "both"}, "branches"), ({"queries": "all"}, "queries")])
def test_bad_selections_raise(base, kwargs, match):
    with pytest.raises(InspectError, match=match):
        MotionMaps(base, **kwargs)


def test_results_before_running_and_bad_trajectory_indices_raise(base):
    with pytest.raises(InspectError, match="no self-attention was recorded"):
        MotionMaps(base).map(0)
    with pytest.raises(InspectError, match="trajectory: expected an index in 0..4"):
        trajectory_token_mask(base.scene, 7)


def test_query_row_mass_equals_the_pattern_in_any_chunking():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 30, 3, 8, generator=g), torch.randn(2, 30, 3, 8, generator=g)
    rows = torch.tensor([1, 4, 5, 17, 29])
    sel = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 1, 1, 1], [0, 1, 0, 1, 0]], dtype=torch.float32)
    probs = attention_logits(q, k).softmax(-1)  # [B, H, S, S]
    expected = sel @ probs[:, [0, 2]][:, :, rows].sum((0, 1))  # [G, S]
    mass = QueryRowMass()
    for chunk in (1 << 20, 2 * 5 * 30, 2 * 5 * 30 - 1, 2 * 30):  # both heads; one head; 4 rows; 1 row at a time
        torch.testing.assert_close(mass(q, k, rows, sel, heads=[0, 2], chunk_elements=chunk), expected)
