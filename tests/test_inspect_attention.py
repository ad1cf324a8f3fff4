"""Per-object attention maps (wclab.inspect.attention) on the tiny fixture models.

One prepared 2-step session on synth_small (128x224x17: F'=5 latent frames, token grid 5x8x14 = 560 tokens,
2 blocks x 4 heads per expert; step 0 runs the high expert, step 1 the low one) is shared by the inspect test
modules through `conftest.tiny_base_session()`; every test branches it, so runs never affect each other.
"""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_base_session
from wclab.encode import word_spans
from wclab.inspect import AttentionMaps, InspectError, span_mass, span_selector
from wclab.inspect import attention as attention_module
from wclab.models.attention import attention_logits
from wclab.sampler import Session

GRID = (5, 8, 14)


@pytest.fixture(scope="module")
def base() -> Session:
    return tiny_base_session()


def run_with_maps(base: Session, until=None, **kwargs) -> tuple[Session, AttentionMaps]:
    s = base.branch()
    settings = {k: kwargs.pop(k) for k in ("beta", "negative_bias") if k in kwargs}
    s.update(**settings)
    with AttentionMaps(s, **kwargs) as maps:
        s.run(until=until)
    return s, maps


@pytest.fixture(scope="module")
def biased(base):
    return run_with_maps(base, beta=30.0, words=True)


@pytest.fixture(scope="module")
def unbiased(base):
    return run_with_maps(base, beta=1.0)


def test_maps_concentrate_inside_token_masks_when_the_bias_is_on(biased, unbiased):
    _, on = biased
    _, off = unbiased
    inside_on, inside_off, area = on.overlap_with_token_masks(), off.overlap_with_token_masks(), on.mask_area_fraction()
    assert set(inside_on) == {"1", "2", "3"}
    for i in inside_on:
        assert inside_on[i] > inside_off[i] + 0.05, (i, inside_on[i], inside_off[i])
        assert inside_on[i] > area[i] + 0.05, (i, inside_on[i], area[i])


def test_attaching_maps_leaves_the_generation_bitwise_unchanged(base, biased):
    plain = base.branch().run()
    with_maps, _ = biased
    assert torch.equal(plain.latents, with_maps.latents)


def test_state_is_one_targets_by_tokens_sum_per_step(biased):
    s, maps = biased
    n_words = len(word_spans(s.conditions.prompt, s.models.tokenizer, 0)) + \
        len(word_spans(s.conditions.prompt, s.models.tokenizer, 1)) + \
        len(word_spans(s.conditions.prompt, s.models.tokenizer, 2))
    assert maps.recorded_steps == [0, 1]
    for step, total in maps.sums.items():
        assert tuple(total.shape) == (3 + n_words, 560) and total.dtype == torch.float32
        assert maps.counts[step] == 2 * 4  # one (cond) forward x 2 blocks x 4 heads
    assert all(tuple(sel.shape) == (512, 3 + n_words) for sel in maps._selector_cache.values())


def test_shapes_and_normalisations(biased):
    _, maps = biased
    mean = maps.per_object()
    assert all(tuple(m.shape) == GRID for m in mean.values())
    # captions are disjoint spans, so the mean mass a token gives to all of them is a probability (<= 1)
    total = sum(mean.values())
    assert total.min() > 0 and total.max() <= 1 + 1e-6
    assert all(abs(float(m.sum()) - 1) < 1e-5 for m in maps.per_object(normalize="sum").values())
    assert all(abs(float(m.max()) - 1) < 1e-6 for m in maps.per_object(normalize="max").values())
    torch.testing.assert_close(sum(maps.per_step(normalize="none")[i]["2"] for i in (0, 1)),
                               maps.per_object(normalize="none")["2"])
    words = maps.per_word(1)
    assert list(words) == ["object", "1", "moves", "along", "its", "path."]


def test_a_branch_made_while_maps_are_attached_adds_nothing_to_them(base):
    """Issue 15: maps' hooks leaked into branches and added the branches' forwards into the parent's sums."""
    alone, only = run_with_maps(base, until=1)
    s = base.branch()
    with AttentionMaps(s) as maps:
        s.run(until=1)
        inside = s.branch()
        inside.run()  # step 1 inside the block, on the branch
    inside.branch().run()
    s.branch().run()  # and after the block
    assert maps.recorded_steps == [0] and maps.counts == only.counts == {0: 2 * 4}
    assert torch.equal(maps.sums[0], only.sums[0])


def test_maps_equal_explicit_probabilities_summed_over_heads_and_spans(base):
    """Both the recomputed maps and the explicit pattern (opt-in hook_probs) see the same q/k in one forward."""
    s = base.branch()
    probs = {}

    def keep(x, hook):
        probs[hook.ctx.branch] = x.detach().clone()

    with AttentionMaps(s, blocks=[1], heads=[0, 2], words=[1]) as cond, \
            AttentionMaps(s, blocks=[1], heads=[0, 2], branches="uncond") as uncond, \
            s.hooks([("high.blocks.1.cross_attn.hook_probs", keep)]):
        s.run(until=1)
    # float32 sums of the same probabilities in a different order: agree to ~1e-6 relative
    p = probs["cond"][0, [0, 2]].sum(0)  # [S, L]
    for i, (s0, s1) in zip(["1", "2", "3"], s.caption_spans("cond")):
        torch.testing.assert_close(cond.per_object(normalize="none")[i], p[:, s0:s1].sum(1).reshape(GRID),
                                   rtol=1e-5, atol=1e-5)
    (w0, w1) = word_spans(s.conditions.prompt, s.models.tokenizer, 0)[2][1]
    torch.testing.assert_close(cond.per_word("1", normalize="none")["moves"], p[:, w0:w1].sum(1).reshape(GRID),
                               rtol=1e-5, atol=1e-5)
    # uncond: only object 1 (caption order 0) is bound to the negative prompt's single span
    q = probs["uncond"][0, [0, 2]].sum(0)
    (n0, n1), = s.caption_spans("uncond")
    maps = uncond.per_object(normalize="none")
    torch.testing.assert_close(maps["1"], q[:, n0:n1].sum(1).reshape(GRID), rtol=1e-5, atol=1e-5)
    assert float(maps["2"].abs().max()) == 0 and float(maps["3"].abs().max()) == 0


def test_span_mass_is_the_pattern_summed_over_heads_and_groups_in_any_chunking():
    """float32 sums of the same probabilities in other orders: assert_close's float32 default (1.3e-6 rel)."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 37, 3, 8, generator=g), torch.randn(2, 11, 3, 8, generator=g)
    bias = torch.randn(2, 1, 37, 11, generator=g)
    selector = span_selector([(0, 4), (4, 5), None, (7, 11)], 11)
    per_head = 2 * 37 * 11  # logits of one head
    for b in (bias, None):
        probs = attention_logits(q, k, b).softmax(-1)  # [B, H, S, L], the explicit pattern
        expected = (probs[:, [0, 2]].sum((0, 1)) @ selector).T  # [R, S]
        assert float(expected[2].abs().max()) == 0
        for chunk in (1 << 20, per_head, per_head - 1, 2 * 11 * 5):  # both heads; one head; tokens 36 / 5 at a time
            torch.testing.assert_close(span_mass(q, k, b, selector, heads=[0, 2], chunk_elements=chunk), expected)
        torch.testing.assert_close(span_mass(q, k, b, selector), (probs.sum((0, 1)) @ selector).T)


def test_span_mass_computation_traces_into_one_graph():
    """On CUDA span_mass runs through torch.compile: its computation must trace without graph breaks."""
    import torch._dynamo

    g = torch.Generator().manual_seed(1)
    q, k, bias = torch.randn(1, 20, 4, 8, generator=g), torch.randn(1, 6, 4, 8, generator=g), torch.randn(1, 1, 20, 6)
    selector = span_selector([(1, 3), (3, 6)], 6)
    torch._dynamo.reset()
    traced = torch.compile(attention_module._span_mass, backend="eager", fullgraph=True, dynamic=False)
    torch.testing.assert_close(traced(q, k, bias, selector, 2, 20), span_mass(q, k, bias, selector))


def test_span_selector_marks_each_span_and_rejects_spans_outside_the_text():
    sel = span_selector([(1, 3), None], 5)
    assert sel.dtype == torch.float32 and sel.T.tolist() == [[0, 1, 1, 0, 0], [0, 0, 0, 0, 0]]
    with pytest.raises(InspectError, match=r"spans\[1\] = \(4, 9\)"):
        span_selector([(0, 3), (4, 9)], 6)


def test_negative_bias_setting_shows_on_the_uncond_branch(base):
    _, ref = run_with_maps(base, until=1, branches="uncond", objects=["1"], negative_bias="reference")
    _, none = run_with_maps(base, until=1, branches="uncond", objects=["1"], negative_bias="none")
    # the negative prompt's one long span takes most of the mass everywhere; the bias still more than
    # doubles the share of object 1's map that falls inside its mask (1.4 % of the tokens)
    assert ref.overlap_with_token_masks()["1"] > 2 * none.overlap_with_token_masks()["1"]


def test_filters_select_steps_experts_blocks_and_heads(base):
    _, low = run_with_maps(base, experts=["low"], blocks=[0], heads=[3])
    assert low.recorded_steps == [1] and low.counts == {1: 1}
    _, never = run_with_maps(base, until=1, steps=[1])  # step 1 is selected but never runs
    with pytest.raises(InspectError, match="no attention was recorded"):
        never.per_object()


@pytest.mark.parametrize("kwargs, match", [
    ({"objects": ["9"]}, "objects"), ({"blocks": [2]}, "blocks"), ({"heads": [4]}, "heads"),
    ({"steps": [2]}, "steps"), ({"branches": "both"}, "branches"), ({"experts": ["mid"]}, "experts")])
def test_bad_selections_raise(base, kwargs, match):
    with pytest.raises(InspectError, match=match):
        AttentionMaps(base, **kwargs)


def test_results_asked_for_wrongly_raise(biased):
    _, maps = biased
    with pytest.raises(InspectError, match="not recorded"):
        maps.per_object(step=5)
    with pytest.raises(InspectError, match="normalize"):
        maps.per_object(normalize="softmax")
    with pytest.raises(InspectError, match="no word maps"):
        AttentionMaps(biased[0], objects=["2"]).per_word("2")
