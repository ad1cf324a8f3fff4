"""wclab.models.fast on the CPU with a tiny random DiT (float32): every fast path computes what it claims.

Tolerances: float32 RoPE vs float64 RoPE differs by float32 rounding of the rotation (observed ~4e-7 relative
on outputs of size ~1), so 1e-5; fp8 (e4m3, 3 mantissa bits) rounds each weight and activation by up to 2^-4
relative, which averages to a few percent on a 128-wide dot product, so 0.1 relative L2 for a Linear and the
whole model.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from wclab.models import fast
from wclab.models.dit import DiT, DiTConfig, apply_rope, rope_cos_sin, rope_freqs

CFG = DiTConfig(dim=64, ffn_dim=128, freq_dim=256, text_dim=32, in_dim=53, out_dim=16, num_heads=2, num_layers=3)
SPANS = [(1, 4), (5, 9)]  # text-token spans of two objects


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


def make_model(seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    return DiT.from_config(CFG).eval()


def make_inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, CFG.in_dim, 3, 4, 6, generator=g)  # token grid (3, 2, 3): 18 tokens
    ctx = torch.randn(1, 12, CFG.text_dim, generator=g)
    bias = torch.zeros(1, 1, 18, 12)
    bias[:, :, :6, 1:4] = math.log(30)
    bias[:, :, 9:, 5:9] = math.log(30)
    return x, torch.tensor([700.0]), ctx, bias


def test_float32_rope_rotates_like_the_float64_complex_rope():
    x = torch.randn(2, 18, 4, 32)  # head_dim 32: 12 frame + 10 row + 10 column channels
    grid = (3, 2, 3)
    torch.testing.assert_close(apply_rope(x, rope_cos_sin(32, grid)), apply_rope(x, rope_freqs(32, grid)),
                               rtol=1e-6, atol=1e-6)


def test_float32_rope_model_matches_the_default_model_to_float32_rounding():
    model, inputs = make_model(), make_inputs()
    ref = model(*inputs)
    model.rope_dtype = torch.float32
    torch.testing.assert_close(model(*inputs), ref, rtol=1e-5, atol=1e-5)


def test_speed_up_compiles_each_block_into_one_graph_and_reset_restores_the_default():
    import torch._dynamo

    model, inputs = make_model(), make_inputs()
    ref = model(*inputs)
    model.rope_dtype = torch.float32
    ref32 = model(*inputs)
    torch._dynamo.reset()
    fast.speed_up(model, backend="eager")
    assert model.rope_dtype == torch.float32
    assert torch.equal(model(*inputs), ref32)  # backend "eager" runs the traced ops themselves
    explained = torch._dynamo.explain(type(model.blocks[0]).forward)(
        model.blocks[0], torch.randn(1, 18, CFG.dim), torch.randn(1, 12, CFG.dim), torch.randn(1, 6, CFG.dim),
        rope_cos_sin(CFG.head_dim, (3, 2, 3)), inputs[3])
    assert explained.graph_break_count == 0
    fast.reset_speed_up(model)
    assert model.rope_dtype == torch.float64 and all("forward" not in vars(b) for b in model.blocks)
    assert torch.equal(model(*inputs), ref)


def test_fp8_linear_is_the_product_of_row_quantised_weight_and_tokens():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    q = fast.Fp8Linear(linear)
    assert q.weight.dtype == torch.float8_e4m3fn and q.weight_scale.shape == (1, 32)
    x = torch.randn(5, 7, 64)
    xq, xs = fast._quantize_rows(x.reshape(-1, 64))
    expected = (xq.float() * xs) @ (q.weight.float() * q.weight_scale.T).T + linear.bias
    torch.testing.assert_close(q(x), expected.reshape(5, 7, 32), rtol=1e-6, atol=1e-6)
    ref = linear(x)
    assert float((q(x) - ref).norm() / ref.norm()) < 0.1


def test_quantize_fp8_replaces_the_ten_block_linears_and_stays_close():
    model, inputs = make_model(), make_inputs()
    ref = model(*inputs)
    fast.quantize_fp8(model)
    assert sum(isinstance(m, fast.Fp8Linear) for m in model.modules()) == 10 * CFG.num_layers
    assert isinstance(model.text_embedding[0], nn.Linear) and isinstance(model.head.head, nn.Linear)
    err = fast.relative_error(model(*inputs), ref)
    assert err["nan"] == 0 and err["l2_rel"] < 0.1


def test_block_offload_streams_weights_and_gives_bitwise_equal_outputs():
    model, inputs = make_model(), make_inputs()
    ref = model(*inputs)
    weight = model.blocks[1].ffn[0].weight
    off = fast.BlockOffload(model, "cpu")
    assert weight.data.data_ptr() == off.host[1][[id(t) for t in off.tensors[1]].index(id(weight))].data_ptr()
    assert torch.equal(model(*inputs), ref)
    assert torch.equal(model(*inputs), ref)  # second call: slots reused, prefetch of block 0 from the last block
    assert weight.data.data_ptr() == off.host[1][[id(t) for t in off.tensors[1]].index(id(weight))].data_ptr()
    off.remove()
    assert torch.equal(model(*inputs), ref) and not model.blocks[0]._forward_pre_hooks


@pytest.mark.parametrize("compiled", [False, True])
def test_attention_map_hooks_match_hook_probs_and_leave_the_output_unchanged(compiled):
    """AttentionMaps' hooks and reduction on a bare DiT, eager and inside compiled blocks (backend "eager": the
    traced ops themselves, so outputs stay bitwise equal). Maps are float32 sums of the same probabilities as
    hook_probs in another order, and blocks after the first see inputs that differ by float32 rounding (the
    hook_probs run attends explicitly, not through SDPA): 1e-5."""
    import torch._dynamo

    from wclab.inspect.attention import cross_attention_hooks, span_mass, span_selector

    model, inputs = make_model(), make_inputs()
    if compiled:
        torch._dynamo.reset()
        fast.speed_up(model, backend="eager")
    ref = model(*inputs)
    sel = span_selector(SPANS, 12)
    masses: list = []
    blocks = [f"blocks.{b}.cross_attn" for b in range(CFG.num_layers)]
    with model.hooks(cross_attention_hooks(blocks, lambda q, k, bias: masses.append(span_mass(q, k, bias, sel)))):
        out = model(*inputs)
    assert torch.equal(out, ref) and len(masses) == CFG.num_layers
    probs = {}
    with model.hooks([(lambda n: n.endswith("cross_attn.hook_probs"), lambda p, h: probs.setdefault(h.name, p))]):
        model(*inputs)
    for b, mass in enumerate(masses):
        expected = (probs[f"blocks.{b}.cross_attn.hook_probs"][0].sum(0) @ sel).T  # [K, S]: heads and spans summed
        torch.testing.assert_close(mass, expected, rtol=1e-5, atol=1e-5)
    assert not any(hp.active for hp in model.hook_points().values())


def test_step_cache_reuses_every_other_forward_per_context_and_detaches_cleanly():
    model, (x, t, ctx, bias) = make_model(), make_inputs()
    neg = torch.randn_like(ctx)
    ref, ref_neg = model(x, t, ctx, bias), model(x, t, neg, None)
    with fast.StepCache(model, fast.FixedCache(every=2)) as cache:
        assert torch.equal(model(x, t, ctx, bias), ref) and torch.equal(model(x, t, neg, None), ref_neg)
        # same inputs again: block 1..N-1 skipped, last residual added back (equal up to one float32 rounding)
        torch.testing.assert_close(model(x, t, ctx, bias), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(x, t, neg, None), ref_neg, rtol=1e-5, atol=1e-5)
        assert torch.equal(model(x, t, ctx, bias), ref)  # max_reuse=1: computed again
        assert (cache.computed, cache.reused) == (3, 2)
    assert type(model.blocks) is nn.ModuleList and len(list(model.blocks)) == CFG.num_layers
    assert torch.equal(model(x, t, ctx, bias), ref)


def test_step_cache_keeps_residuals_per_session_branch_and_cfg_branch():
    """Issue 15: branches of a session share its text-embedding tensors, so keying by ``context`` made a branch
    reuse another branch's residual. Keyed by (session, CFG branch), each stream computes its own."""
    import gc

    from conftest import tiny_base_session

    base = tiny_base_session()
    a, b = base.branch(), base.branch()
    b.set_latents(torch.randn(a.latents.shape, generator=torch.Generator().manual_seed(3)))
    plain_a, plain_b = a.predict(), b.predict()  # step 0: the high expert, cond and uncond
    with fast.StepCache(a.models.high, fast.FixedCache(every=2)) as cache:
        cached_a = a.predict()
        cached_b = b.predict()  # same context tensors as a, other latents: computed, not a's residual
        assert (cache.computed, cache.reused) == (4, 0)
        assert all(torch.equal(x, y) for x, y in zip(cached_a + cached_b, plain_a + plain_b))
        again_a = a.predict()  # a's own streams: reused
        assert (cache.computed, cache.reused) == (4, 2)
        for x, y in zip(again_a, plain_a):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
        assert len(cache.state) == 4  # (a, cond), (a, uncond), (b, cond), (b, uncond)
        del b, cached_b
        gc.collect()
        assert len(cache.state) == 2  # b's streams went with b


def test_step_cache_with_zero_threshold_never_reuses():
    model, inputs = make_model(), make_inputs()
    ref = model(*inputs)
    with fast.StepCache(model, threshold=0.0, max_reuse=5) as cache:
        outs = [model(*inputs) for _ in range(3)]
    assert all(torch.equal(o, ref) for o in outs) and (cache.computed, cache.reused) == (3, 0)


def test_relative_error_reports_zero_for_equal_tensors_and_rejects_shape_mismatch():
    a = torch.randn(3, 4)
    assert fast.relative_error(a, a) == {"max_rel": 0.0, "mean_rel": 0.0, "l2_rel": 0.0, "max_abs": 0.0, "nan": 0}
    assert fast.relative_error(a + 0.5, a)["max_abs"] == pytest.approx(0.5)
    with pytest.raises(fast.FastPathError, match="shapes differ"):
        fast.relative_error(a, a.T)


@pytest.mark.slow
def test_inductor_speed_up_keeps_eager_bf16_rounding_so_capture_hooks_leave_outputs_bitwise_equal():
    """With Inductor, graph breaks at hook points split the fused kernels; `speed_up` keeps eager's bf16 rounding
    between fused ops, so the split graphs compute the same numbers (on a CPU bitwise; GPU figures:
    bench/RESULTS.md)."""
    import torch._dynamo

    from wclab.inspect.attention import cross_attention_hooks, span_mass, span_selector

    torch.manual_seed(0)
    model = DiT.from_config(CFG, dtype=torch.bfloat16).eval()
    inputs = [t.to(torch.bfloat16) for t in make_inputs()]
    torch._dynamo.reset()
    fast.speed_up(model)  # Inductor
    ref = model(*inputs)
    sel, masses = span_selector(SPANS, 12), []
    blocks = [f"blocks.{b}.cross_attn" for b in range(CFG.num_layers)]
    with model.hooks(cross_attention_hooks(blocks, lambda q, k, bias: masses.append(span_mass(q, k, bias, sel)))):
        out = model(*inputs)
    assert len(masses) == CFG.num_layers
    assert torch.equal(out, ref)
