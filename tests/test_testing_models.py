"""wclab.testing.make_tiny_checkpoints writes the released formats: same key sets and shapes as the reference's tiny
fixtures (which were saved by the reference code itself), released dtypes, a working tokenizer, sane outputs."""
from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import TINY_MODELS
from wclab.checkpoints import TINY_CONFIG_NAME, read_tiny_config
from wclab.models.text_encoder import DEFAULT_NEGATIVE_PROMPT, Tokenizer
from wclab.testing import TINY_SIZES, make_tiny_checkpoints

T5 = "Wan2.2-T2V-A14B/models_t5_umt5-xxl-enc-bf16.pth"
VAE = "Wan2.2-T2V-A14B/Wan2.1_VAE.pth"
TOKENIZER = "Wan2.2-T2V-A14B/google/umt5-xxl"
HIGH = "WorldCanvas_dit/WorldCanvas/high_model.safetensors"
LOW = "WorldCanvas_dit/WorldCanvas/low_model.safetensors"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_checkpoints(tmp_path_factory.mktemp("tiny"), seed=0)


def shapes_pth(path) -> dict:
    return {k: tuple(v.shape) for k, v in torch.load(str(path), weights_only=True).items()}


def shapes_safetensors(path) -> dict:
    with safe_open(str(path), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def test_tiny_t5_has_exactly_the_fixture_keys_and_shapes(tiny):
    assert shapes_pth(tiny / T5) == shapes_pth(TINY_MODELS / "t5_tiny.pth")


def test_tiny_vae_has_exactly_the_fixture_keys_and_shapes(tiny):
    assert shapes_pth(tiny / VAE) == shapes_pth(TINY_MODELS / "vae_tiny.pth")


@pytest.mark.parametrize("expert", [HIGH, LOW])
def test_tiny_dit_experts_have_exactly_the_fixture_keys_and_shapes(tiny, expert):
    assert shapes_safetensors(tiny / expert) == shapes_safetensors(TINY_MODELS / "dit_high_tiny.safetensors")


def test_tiny_files_use_the_released_dtypes(tiny):
    assert {v.dtype for v in torch.load(str(tiny / T5), weights_only=True).values()} == {torch.bfloat16}
    assert {v.dtype for v in torch.load(str(tiny / VAE), weights_only=True).values()} == {torch.float32}
    assert {v.dtype for v in load_file(str(tiny / HIGH)).values()} == {torch.bfloat16}


def test_wclab_tiny_json_records_the_head_counts(tiny):
    info = read_tiny_config(tiny)
    assert (tiny / TINY_CONFIG_NAME).is_file()
    assert info["dit"]["num_heads"] == 4 and info["t5"]["num_heads"] == 4
    assert info["variants"] == ["WorldCanvas"]


def digest(directory) -> dict:
    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != TINY_CONFIG_NAME}


def test_same_seed_gives_identical_files_and_another_seed_other_weights(tiny, tmp_path):
    again = digest(make_tiny_checkpoints(tmp_path / "again", seed=0))
    other = digest(make_tiny_checkpoints(tmp_path / "other", seed=1))
    assert again == digest(tiny)
    for weights in (T5, VAE, HIGH, LOW):
        assert other[weights] != again[weights]
    assert other[TOKENIZER + "/tokenizer.json"] == again[TOKENIZER + "/tokenizer.json"]  # seed-independent


def test_high_and_low_experts_and_ref_pair_hold_different_weights(tmp_path):
    root = make_tiny_checkpoints(tmp_path, seed=0, variant_ref=True)
    files = [HIGH, LOW, *(f.replace("WorldCanvas/", "WorldCanvas_ref/") for f in (HIGH, LOW))]
    firsts = [load_file(str(root / f))["patch_embedding.weight"] for f in files]
    for i in range(4):
        for j in range(i):
            assert not torch.equal(firsts[i], firsts[j]), (files[i], files[j])


def test_tiny_tokenizer_fits_the_t5_vocab_and_splits_like_umt5(tiny):
    tok = Tokenizer(tiny / TOKENIZER)
    assert len(tok.hf) <= TINY_SIZES["t5"]["vocab"]
    ids, mask = tok("Object 1: a red ball.")
    assert ids.shape == (1, 512) and mask.shape == (1, 512)
    n = int(mask.sum())
    assert ids[0, n - 1] == 1 and (ids[0, n:] == 0).all()  # </s> then <pad> like umT5
    assert tok.hf.convert_ids_to_tokens(int(ids[0, 0])).startswith("▁")  # Metaspace, prefix always


def test_tiny_tokenizer_encodes_the_chinese_negative_prompt_without_unk(tiny):
    tok = Tokenizer(tiny / TOKENIZER)
    ids, mask = tok(DEFAULT_NEGATIVE_PROMPT)
    assert int(mask.sum()) > 50 and (ids[mask.bool()] != 2).all()


def test_tiny_tokenizer_maps_unseen_characters_to_unk_like_the_fixture_tokenizer(tiny):
    """transformers' T5Tokenizer ignores sentencepiece byte fallback, so unseen characters become <unk> (id 2)
    with our tokenizer exactly as with the reference fixture tokenizer."""
    from conftest import TOKENIZER as FIXTURE_TOKENIZER

    text = "zebra 🦓"
    ours, fixture = Tokenizer(tiny / TOKENIZER), Tokenizer(FIXTURE_TOKENIZER)
    for tok in (ours, fixture):
        ids, mask = tok(text)
        assert (ids[mask.bool()] == 2).sum() == 2  # 'z' and the emoji


def test_tiny_tokenizer_offsets_locate_each_caption_line(tiny):
    tok = Tokenizer(tiny / TOKENIZER)
    prompt = "Object 1: a dog runs.\nObject 2 appears: a cat jumps."
    cleaned = tok.prepare(prompt)[0]
    ids, mask, offsets = tok(prompt, return_offsets=True)
    second = cleaned.index("Object 2")
    starts = [int(s) for (s, e), m in zip(offsets[0].tolist(), mask[0]) if m and e > s]
    assert starts[0] == 0 and second in starts
    assert cleaned[offsets[0, 1, 0]:offsets[0, 1, 1]].startswith("O")


def test_tiny_models_give_finite_bounded_outputs(tiny):
    """Random init is scaled so a whole pipeline stays sane: T5 rms ~1, DiT velocity std ~1, VAE video not
    saturated. Bounds are loose on purpose (order of magnitude), they catch blow-ups and dead outputs."""
    from wclab.models.loading import load_models

    m = load_models(tiny, preview=False)
    ctx = m.text_encoder.encode(["Object 1: a red ball rolls.", DEFAULT_NEGATIVE_PROMPT])
    assert torch.isfinite(ctx).all() and 0.3 < ctx[0, :5].pow(2).mean().sqrt() < 3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 53, 2, 4, 6, generator=g)
    for expert in (m.high, m.low):
        v = expert(x, torch.tensor([900.0]), ctx[:1])
        assert torch.isfinite(v).all() and 0.1 < v.std() < 10
    video = m.vae.decode(torch.randn(1, 16, 2, 4, 6, generator=g))
    assert video.shape == (1, 3, 5, 32, 48) and torch.isfinite(video).all()
    assert (video.abs() > 0.99).float().mean() < 0.5 and video.std() > 0.01


# ---------------------------------------------------------------- streaming writers (the released-size path)

def streamed_tensors(shapes, dtype):
    """A ``make(key, shape)`` that counts how many of its tensors are still alive when the next one is asked for."""
    import weakref

    alive, most = [], [0]

    def make(key, shape):
        alive[:] = [r for r in alive if r() is not None]
        most[0] = max(most[0], len(alive))
        t = torch.full(shape, float(len(key)), dtype=dtype)
        alive.append(weakref.ref(t))
        return t

    return make, most


def test_streaming_safetensors_writer_holds_one_tensor_and_reads_back_exactly(tmp_path):
    from wclab.testing import write_safetensors_streaming

    shapes = {"b.weight": (3, 4), "a.bias": (5,), "c": (2, 2, 2)}
    make, most = streamed_tensors(shapes, torch.bfloat16)
    path = write_safetensors_streaming(tmp_path / "x.safetensors", shapes, torch.bfloat16, make, {"format": "pt"})
    assert most[0] == 0  # the previous tensor was dropped before the next was made
    back = load_file(str(path))
    assert {k: tuple(v.shape) for k, v in back.items()} == shapes
    assert all(torch.equal(back[k], torch.full(s, float(len(k)), dtype=torch.bfloat16)) for k, s in shapes.items())


@pytest.mark.parametrize("mmap", [False, True])
def test_streaming_torch_writer_holds_one_tensor_and_loads_with_weights_only(tmp_path, mmap):
    from wclab.testing import write_torch_streaming

    shapes = {"token_embedding.weight": (7, 3), "blocks.0.norm1.weight": (3,), "norm.weight": (3,)}
    make, most = streamed_tensors(shapes, torch.float32)
    path = write_torch_streaming(tmp_path / "x.pth", shapes, torch.float32, make)
    assert most[0] == 0
    back = torch.load(str(path), weights_only=True, mmap=mmap)
    assert list(back) == list(shapes)
    assert all(torch.equal(back[k], torch.full(s, float(len(k)))) for k, s in shapes.items())


def test_writers_name_a_tensor_of_the_wrong_shape(tmp_path):
    from wclab.testing import write_safetensors_streaming, write_torch_streaming

    bad = lambda key, shape: torch.zeros(1, dtype=torch.bfloat16)
    for writer, name in ((write_safetensors_streaming, "x.safetensors"), (write_torch_streaming, "x.pth")):
        with pytest.raises(ValueError, match="make\\('w'\\)"):
            writer(tmp_path / name, {"w": (2, 2)}, torch.bfloat16, bad)


def test_write_checkpoints_at_other_sizes_passes_the_checker_and_loads(tmp_path):
    """The code path of the released-size writer (`make_released_size_checkpoints`), at sizes CI can afford: a
    released-layout directory without wclab_tiny.json, whose DiT has 128-wide heads like the released one."""
    from wclab.models.headers import read_safetensors_header, read_torch_header
    from wclab.models.shapes import expected_shapes
    from wclab.models.loading import load_models
    from wclab.testing import write_checkpoints

    sizes = {**TINY_SIZES, "dit": {**TINY_SIZES["dit"], "dim": 256, "num_heads": 2}}
    root = write_checkpoints(tmp_path, sizes, seed=3, variants=["WorldCanvas", "WorldCanvas_ref"])
    assert not (root / TINY_CONFIG_NAME).exists()
    expected = expected_shapes(sizes)
    ref = [f.replace("WorldCanvas/", "WorldCanvas_ref/") for f in (HIGH, LOW)]
    for role, f in [("t5", T5), ("vae", VAE), ("high", HIGH), ("low", LOW), ("high", ref[0]), ("low", ref[1])]:
        infos = read_torch_header(root / f) if f.endswith(".pth") else read_safetensors_header(root / f)[0]
        assert {k: i.shape for k, i in infos.items()} == expected[role], f
    models = load_models(root, variant="WorldCanvas_ref", t5_num_heads=4, preview=False)
    assert models.high.cfg.dim == 256 and models.high.cfg.num_heads == 2  # dim // 128, as for released files
