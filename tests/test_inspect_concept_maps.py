"""Concept maps (wclab.inspect.concept_maps) on the tiny fixture models (the shared 2-step synth_small session:
token grid 5x8x14 = 560 tokens, 2 blocks x 4 heads per expert; step 0 high expert, step 1 low)."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_base_session
from wclab.inspect import (AttentionMaps, ConceptMaps, ConceptMass, InspectError, encode_concept, overlap_curves,
                           plot_overlap_curves, uncaption)
from wclab.models.attention import attention_logits
from wclab.sampler import Session

GRID = (5, 8, 14)


@pytest.fixture(scope="module")
def base() -> Session:
    return tiny_base_session()


def one_caption(base: Session, beta: float) -> Session:
    """A branch whose prompt is object 1's caption line alone (objects 2 and 3 become anchors)."""
    s = base.branch()
    s.set_scene(uncaption(uncaption(s.scene, 2), 3))
    s.update(beta=beta)
    assert s.caption_spans() == ((0, s.caption_spans()[0][1]),)
    return s


@pytest.fixture(scope="module")
def unbiased(base):
    """β = 1 (no bias): the caption itself and another phrase as concepts, beside AttentionMaps; plus block 1's
    cross-attention output and values at step 0 (cond)."""
    s = one_caption(base, 1.0)
    seen = {}

    def keep(x, hook):
        if hook.ctx.branch == "cond" and hook.ctx.step == 0:
            seen[hook.name.rpartition(".")[2]] = x.detach().clone()

    with ConceptMaps(s, {"caption": s.text_condition().text, "ball": "a red ball"}) as cm, AttentionMaps(s) as am, \
            s.hooks([("high.blocks.1.cross_attn.hook_out", keep), ("high.blocks.1.cross_attn.hook_v", keep)]):
        s.run()
    return s, cm, am, seen


def test_a_concept_equal_to_the_caption_reproduces_its_map_without_bias(unbiased):
    s, cm, am, _ = unbiased
    assert cm.recorded_steps == [0, 1] and cm.recorded_blocks == [0, 1]
    for step in (0, 1, None):
        concept, caption = cm.per_concept(step)["caption"], am.per_object(step)["1"]
        assert tuple(concept.shape) == GRID
        torch.testing.assert_close(concept, caption, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(cm.per_concept()["ball"], am.per_object()["1"], rtol=0.05)


def test_with_the_bias_on_the_caption_map_gains_inside_its_mask_and_the_concept_map_does_not(base):
    s = one_caption(base, 30.0)
    with ConceptMaps(s, {"caption": s.text_condition().text}, spaces="cross") as cm, AttentionMaps(s) as am:
        s.run(until=1)
    mask = s.conditions.token_masks["1"][0, 0].bool()
    concept, caption = cm.per_concept()["caption"], am.per_object()["1"]
    assert (caption[mask] > 1.5 * concept[mask]).all()
    torch.testing.assert_close(concept[~mask], caption[~mask], rtol=0.2, atol=0)  # outside: only Z_s changes


def test_selected_blocks_heads_and_steps(base):
    s = one_caption(base, 1.0)
    sel = dict(blocks=[1], heads=[1, 3], steps=[1])
    with ConceptMaps(s, [s.text_condition().text], experts=["low"], **sel) as cm, AttentionMaps(s, **sel) as am:
        s.run()
    assert cm.recorded_steps == [1] and cm.recorded_blocks == [1] and cm.counts["cross"] == {(1, 1): 2}
    assert cm.counts["output"] == {(1, 1): 1} and cm.step_experts == {1: "low"}
    torch.testing.assert_close(cm.per_concept()[s.text_condition().text], am.per_object()["1"], rtol=1e-5, atol=1e-6)


def test_output_space_is_the_dot_product_of_outputs_with_the_concepts_value_outputs(unbiased):
    s, cm, _, seen = unbiased
    ca = s.dit("high").blocks[1].cross_attn
    s0, s1 = s.caption_spans()[0]
    with torch.no_grad():
        values = ca.o(seen["hook_v"][0, s0:s1].flatten(-2))  # what attending only to each caption token adds
    expected = (seen["hook_out"][0] @ values.mean(0)).reshape(GRID)
    got = cm.per_concept(step=0, block=1, space="output", normalize="none")["caption"]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    soft = cm.per_concept(space="output", normalize="softmax")
    torch.testing.assert_close(soft["caption"] + soft["ball"], torch.ones(GRID))


def test_overlap_curves_are_a_tidy_table_per_step_and_block(unbiased):
    s, cm, _, _ = unbiased
    table = cm.overlap_curves()
    assert list(table.columns) == ["concept", "mask", "step", "expert", "block", "overlap", "area"]
    assert len(table) == 2 * 1 * 2 * 2  # concepts x masks (object 1) x steps x blocks
    row = table[(table.concept == "ball") & (table.step == 1) & (table.block == 0)].iloc[0]
    m = cm.per_concept(1, 0, normalize="none")["ball"]
    mask = s.conditions.token_masks["1"][0, 0]
    assert row.expert == "low" and row.overlap == pytest.approx(float((m * mask).sum() / m.sum()), rel=1e-5)
    assert row.area == pytest.approx(float(mask.mean()))
    out = overlap_curves(cm, {"left": torch.arange(560).reshape(GRID) % 14 < 7}, space="output")
    assert out["overlap"].between(0, 1).all() and set(out["mask"]) == {"left"}
    fig = plot_overlap_curves(table, by="step")
    assert len(fig.axes[0].lines) == 2 + 1 and fig.axes[0].get_xlabel() == "step"  # 2 curves + 1 area line


def test_attaching_concept_maps_leaves_the_generation_bitwise_unchanged(base):
    plain = base.branch().run(until=1)
    s = base.branch()
    with ConceptMaps(s, ["a red ball", "sky"]):
        s.run(until=1)
    assert torch.equal(plain.latents, s.latents)


def test_concept_mass_equals_the_explicit_ratio_in_any_chunking():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 37, 3, 8, generator=g), torch.randn(2, 11, 3, 8, generator=g)
    kc, bias = torch.randn(1, 4, 3, 8, generator=g), torch.randn(2, 1, 37, 11, generator=g)
    sel = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=torch.float32)
    mass = ConceptMass()
    for b in (bias, None):
        z = attention_logits(q, k, b).logsumexp(-1, keepdim=True)  # [B, H, S, 1]
        ratio = (attention_logits(q, kc.expand(2, -1, -1, -1)) - z).exp()  # [B, H, S, C]
        expected = (ratio[:, [0, 2]].sum((0, 1)) @ sel).T
        for chunk in (1 << 20, 2 * 37 * 15, 2 * 37 * 15 - 1, 2 * 15 * 5):
            torch.testing.assert_close(mass(q, k, b, kc, sel, heads=[0, 2], chunk_elements=chunk), expected)


def test_bad_concepts_selections_and_requests_raise(base, unbiased):
    with pytest.raises(InspectError, match="concepts"):
        ConceptMaps(base, ["ball", "  "])
    with pytest.raises(InspectError, match="concepts: expected at least one"):
        ConceptMaps(base, [])
    with pytest.raises(InspectError, match="distinct"):
        ConceptMaps(base, ["x", "x"])
    for kwargs, match in [({"blocks": [2]}, "blocks"), ({"heads": [4]}, "heads"), ({"spaces": "values"}, "spaces"),
                          ({"experts": ["mid"]}, "experts"), ({"steps": [3]}, "steps")]:
        with pytest.raises(InspectError, match=match):
            ConceptMaps(base, ["ball"], **kwargs)
    with pytest.raises(InspectError, match="no concept maps were recorded"):
        ConceptMaps(base, ["ball"]).per_concept()
    _, cm, _, _ = unbiased
    with pytest.raises(InspectError, match="space='output'"):
        cm.per_concept(normalize="softmax")
    with pytest.raises(InspectError, match="non-negative"):
        cm.per_concept(space="output", normalize="max")
    with pytest.raises(InspectError, match="not recorded"):
        cm.per_concept(step=4)
    with pytest.raises(InspectError, match=r"masks\['m'\]"):
        cm.overlap_curves({"m": torch.ones(5, 8)})
    assert encode_concept(base.models, "a red ball").num_tokens >= 3
