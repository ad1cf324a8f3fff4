"""Caption token spans (golden text_cut_positions) and the cross-attention bias (golden dit_bias), exactly."""
from __future__ import annotations

import pytest
import torch

from conftest import FIXTURES, TOKENIZER, load_golden
from wclab.conditions import load_json
from wclab.conditions.prompt import build_prompt
from wclab.encode import BiasSpec, caption_spans, cross_attention_bias, encode_conditions, negative_bias, word_spans
from wclab.errors import ConditionError
from wclab.models.text_encoder import clean_text

LOG30 = torch.log(torch.tensor(30.0))


@pytest.fixture(scope="module", params=["transformers", "tokenizer.json", "wclab"])
def tokenizer(request):
    """transformers 5 rebuilds T5 tokenizers with offsets after a "▁"'s space; the raw tokenizer.json pipeline
    (what transformers 4 loads) puts them on the space. Spans must not depend on which one is used."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if request.param == "transformers":
        return AutoTokenizer.from_pretrained(str(TOKENIZER))
    if request.param == "tokenizer.json":
        return PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER / "tokenizer.json"),
                                       eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    from wclab.models.text_encoder import Tokenizer

    return Tokenizer(TOKENIZER)


def hf_of(tokenizer):
    return getattr(tokenizer, "hf", tokenizer)


@pytest.fixture(scope="module")
def units():
    return load_golden("units")


def spans_of(positions):
    return [tuple(p) for p in positions]


@pytest.mark.parametrize("name", ["door", "mouse_dog", "synth_small"])
def test_caption_spans_equal_reference_text_cut_positions(tokenizer, name):
    meta, _ = load_golden(f"cond_{name}")
    assert caption_spans(meta["text_prompt"], tokenizer) == spans_of(meta["text_cut_positions"])


def test_caption_spans_of_two_object_prompt_equal_reference(tokenizer, units):
    meta, _ = units
    assert caption_spans(meta["prompt"], tokenizer) == spans_of(meta["text_cut_positions"])


def test_negative_prompt_is_one_span_of_its_tokens_without_eos(tokenizer, units):
    meta, _ = units
    spans = caption_spans(meta["negative_prompt"], tokenizer)
    assert spans == spans_of(meta["text_cut_positions_negative"])
    n_real = len(hf_of(tokenizer)(clean_text(meta["negative_prompt"]))["input_ids"])  # includes </s>
    assert spans == [(0, n_real - 1)]


def test_spans_of_prompt_object_equal_spans_of_its_text(tokenizer):
    prompt = build_prompt(load_json(FIXTURES / "synth_small.json"))
    assert caption_spans(prompt, tokenizer) == caption_spans(prompt.text, tokenizer)


def test_spans_tile_the_real_tokens_in_order(tokenizer, units):
    meta, t = units
    spans = caption_spans(meta["prompt"], tokenizer)
    n_real = int(t["t5_attention_mask"].sum())  # includes </s>
    assert spans[0][0] == 0 and spans[-1][1] == n_real - 1
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_prompt_truncated_before_a_line_raises(tokenizer, units):
    meta, _ = units
    with pytest.raises(ConditionError, match="prompt line 2: no tokens within the first 20"):
        caption_spans(meta["prompt"], tokenizer, text_len=20)


def test_empty_prompt_line_raises(tokenizer):
    with pytest.raises(ConditionError, match="prompt line 2: empty"):
        caption_spans("Object 1: a dog\n \nObject 2: a cat", tokenizer)


def test_word_spans_cover_the_caption_words_in_order(tokenizer, units):
    meta, t = units
    words = word_spans(meta["prompt"], tokenizer, 1)
    assert [w for w, _ in words] == "A cat jumps through the door.".split()
    line = caption_spans(meta["prompt"], tokenizer)[1]
    assert line[0] < words[0][1][0] and words[-1][1][1] == line[1]  # after the "Object 2 appears:" label
    assert all(a[1] == b[0] for (_, a), (_, b) in zip(words, words[1:]))  # contiguous: "▁" tokens go with the word
    ids = t["t5_input_ids"][0]
    assert hf_of(tokenizer).decode(ids[slice(*words[2][1])]).strip() == "jumps"


def test_word_spans_line_index_out_of_range_raises(tokenizer, units):
    meta, _ = units
    with pytest.raises(ConditionError, match="line_index: expected 0..1"):
        word_spans(meta["prompt"], tokenizer, 2)


# ---------------------------------------------------------------------------------------------- bias
def golden_token_masks(meta, grid=(3, 4, 6)):
    """dit_traj_mask_tokens: caption order -> [start, end) over the flattened (F', h/2, w/2) token grid."""
    masks = {}
    for k, (a, b) in meta["dit_traj_mask_tokens"].items():
        m = torch.zeros(grid).reshape(-1)
        m[a:b] = 1.0
        masks[k] = m.reshape(1, 1, *grid)
    return masks, {k: int(k) for k in masks}


def test_bias_equals_reference_dit_bias(units):
    meta, t = units
    masks, order = golden_token_masks(meta)
    bias = cross_attention_bias(masks, order, meta["text_cut_positions"])
    assert bias.shape == t["dit_bias"].shape == (1, 1, 72, 512)
    torch.testing.assert_close(bias, t["dit_bias"], rtol=0, atol=1e-6)  # log(30) in float32, else 0


def test_bias_binds_span_k_to_caption_order_k_not_dict_order(units):
    meta, t = units
    masks, _ = golden_token_masks(meta)
    renamed = {"7": masks["0"], "3": masks["1"]}
    bias = cross_attention_bias(renamed, {"3": 1, "7": 0}, meta["text_cut_positions"])
    assert torch.equal(bias, t["dit_bias"])


def test_negative_bias_binds_the_single_span_to_object_0(units):
    meta, _ = units
    masks, order = golden_token_masks(meta)
    bias = negative_bias(masks, order, meta["text_cut_positions_negative"])[0, 0]
    inside = torch.zeros(72, 512, dtype=torch.bool)
    inside[0:36, 0:138] = True  # object 0 tokens x the negative prompt's tokens
    assert torch.equal(bias[inside], LOG30.expand(int(inside.sum())))
    assert not bias[~inside].any()
    assert negative_bias(masks, order, meta["text_cut_positions_negative"], mode="none") is None


def test_bias_spec_dense_equals_functions_and_casts(units):
    meta, t = units
    masks, order = golden_token_masks(meta)
    spec = BiasSpec.from_token_masks(masks, order, meta["text_cut_positions"])
    assert spec.token_masks.shape == (2, 72) and spec.num_video_tokens == 72
    assert torch.equal(spec.dense(512), t["dit_bias"])
    half = spec.dense(512, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.equal(half, t["dit_bias"].to(torch.bfloat16))


def test_bias_from_encoded_scene_marks_object_tokens_against_their_span(tokenizer):
    meta, t = load_golden("cond_synth_small")
    scene = load_json(FIXTURES / "synth_small.json")
    enc = encode_conditions(scene, t["first_frame_latents"])
    spans = caption_spans(enc.prompt, tokenizer)
    bias = enc.bias_spec(spans).dense(512)[0, 0]
    assert bias.shape == (5 * 8 * 14, 512)
    for obj_id, k in enc.caption_order.items():
        tokens = enc.token_masks[obj_id].reshape(-1) > 0.5
        s0, s1 = spans[k]
        assert torch.equal(bias[:, s0:s1] != 0, tokens[:, None].expand(-1, s1 - s0))
    assert not bias[:, spans[-1][1]:].any()


@pytest.mark.parametrize("spans, message", [
    ([(0, 25)], r"spans: expected one per captioned object \(2\), got 1"),
    ([(0, 25), (24, 48)], "overlap"),
    ([(0, 25), (30, 30)], r"spans\[1\]: expected 0 <= s0 < s1"),
    ([(0, 25), (25, 600)], "beyond text_len=512"),
])
def test_bad_spans_raise(units, spans, message):
    meta, _ = units
    masks, order = golden_token_masks(meta)
    with pytest.raises(ConditionError, match=message):
        cross_attention_bias(masks, order, spans)


def test_missing_mask_or_bad_caption_order_raises(units):
    meta, _ = units
    masks, order = golden_token_masks(meta)
    spans = meta["text_cut_positions"]
    with pytest.raises(ConditionError, match=r"no mask for captioned object id\(s\) \['1'\]"):
        cross_attention_bias({"0": masks["0"]}, order, spans)
    with pytest.raises(ConditionError, match="caption_order: expected orders 0..1"):
        cross_attention_bias(masks, {"0": 0, "1": 2}, spans)
    with pytest.raises(ConditionError, match=r"token_masks\['1'\]: expected \[1, 1, F', h/2, w/2\]"):
        cross_attention_bias({"0": masks["0"], "1": masks["1"][..., :3]}, order, spans)
    with pytest.raises(ConditionError, match="negative spans: expected 1..2"):
        negative_bias(masks, order, [(0, 1), (1, 2), (2, 3)])
    with pytest.raises(ConditionError, match="mode"):
        negative_bias(masks, order, [(0, 138)], mode="drop")
