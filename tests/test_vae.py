"""Wan 2.1 VAE (diffusers AutoencoderKLWan + Wan normalisation and tiling) and the latent RGB preview."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_MODELS, load_golden
from wclab.errors import CheckpointError, WclabError
from wclab.models.latent_preview import LatentPreview, video_on_latent_grid
from wclab.models.vae import VAE, VAEConfig, ramp_1d, tile_spans, vae_shapes

SMALL_TILES = dict(tile_size=(4, 6), tile_stride=(2, 3))  # 3 x 3 tiles over the 8 x 12 latent golden clip


@pytest.fixture(scope="module")
def golden():
    return load_golden("units")[1]


@pytest.fixture(scope="module")
def vae():
    return VAE.from_checkpoint(TINY_MODELS / "vae_tiny.pth")


@pytest.fixture(scope="module")
def untiled(golden, vae):
    """(encode of the golden clip, decode of the golden latents), untiled."""
    return vae.encode(golden["vae_in_video"]), vae.decode(golden["vae_latents"])


# ---------------------------------------------------------------------------------------------- parity
def test_config_is_inferred_from_the_wan_checkpoint(vae):
    assert vae.config.base_dim == 8 and vae.config.z_dim == 16


def test_encode_matches_reference_latents(golden, untiled):
    z = untiled[0]
    # fp32 CPU; diffusers vs reference convolutions differ only in op order: measured 1.5e-6 on |z| <= 1.8
    torch.testing.assert_close(z, golden["vae_latents"], atol=1e-5, rtol=1e-5)


def test_decode_matches_reference_reconstruction(golden, untiled):
    video = untiled[1]
    assert video.shape == golden["vae_recon"].shape == (1, 3, 9, 64, 96)
    # measured 4.1e-6 on values in [-1, 1]
    torch.testing.assert_close(video, golden["vae_recon"], atol=2e-5, rtol=1e-5)


@pytest.mark.slow
def test_decoded_uint8_video_matches_reference_end_to_end_output(vae):
    _, e2e = load_golden("e2e_synth_small")
    frames = VAE.to_uint8(vae.decode(e2e["latents_after_step3"]))
    ref = e2e["video_uint8"]
    assert frames.shape == ref.shape == (17, 128, 224, 3) and frames.dtype == torch.uint8
    diff = (frames.int() - ref.int()).abs()
    # uint8 truncation turns the ~5e-6 float difference into an off-by-one at a few exact boundaries
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3


def test_to_uint8_truncates_like_the_reference():
    video = torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0]).view(1, 1, 1, 6).expand(3, 1, 1, 6)
    assert VAE.to_uint8(video)[0, 0, :, 0].tolist() == [0, 0, 127, 254, 255, 255]


# ---------------------------------------------------------------------------------------------- tiling
def test_tile_spans_follow_the_reference_grid():
    assert tile_spans(60, 30, 15) == [(0, 30), (15, 45), (30, 60)]  # 480 px, default tiles
    assert tile_spans(104, 52, 26) == [(0, 52), (26, 78), (52, 104)]  # 832 px
    assert tile_spans(11, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10), (8, 12)]  # last tile cut short
    assert tile_spans(3, 30, 15) == [(0, 30)]


def test_ramp_rises_and_falls_linearly_over_the_overlap():
    torch.testing.assert_close(ramp_1d(6, True, True, 2), torch.tensor([0.5, 1, 1, 1, 1, 0.5]))
    torch.testing.assert_close(ramp_1d(5, False, True, 3), torch.tensor([1, 1, 1, 2 / 3, 1 / 3]))
    torch.testing.assert_close(ramp_1d(4, True, True, 3), torch.tensor([1 / 3, 1, 2 / 3, 1 / 3]))  # end wins


def test_tiled_equals_untiled_when_one_tile_covers_the_frame(golden, vae, untiled):
    big = dict(tile_size=(8, 12), tile_stride=(4, 6))
    assert torch.equal(vae.encode(golden["vae_in_video"], tiled=True, **big), untiled[0])
    assert torch.equal(vae.decode(golden["vae_latents"], tiled=True, **big), untiled[1])


def _local_encode(video, progress=False):  # per 8x8 block and per frame group, so tiling cannot change the result
    first, rest = video[:, :, :1], video[:, :, 1::4]
    pooled = F.avg_pool3d(torch.cat([first, rest], 2), (1, 8, 8))
    return pooled.repeat(1, 6, 1, 1, 1)[:, :16] * torch.linspace(-1, 1, 16).view(1, 16, 1, 1, 1)


def _local_decode(z, progress=False):
    rgb = z[:, :3] - z[:, 3:6]
    rgb = torch.cat([rgb[:, :, :1], rgb[:, :, 1:].repeat_interleave(4, dim=2)], dim=2)
    return rgb.repeat_interleave(8, dim=3).repeat_interleave(8, dim=4) * 3  # beyond [-1, 1] before clamping


def test_tiled_blending_is_exact_for_a_spatially_local_model(golden, vae, monkeypatch):
    monkeypatch.setattr(vae, "_encode_one", _local_encode)
    monkeypatch.setattr(vae, "_decode_one", _local_decode)
    video, latents = golden["vae_in_video"], golden["vae_latents"]
    # the blend weights sum to 1 everywhere, so only float rounding separates tiled from untiled
    torch.testing.assert_close(vae.encode(video, tiled=True, **SMALL_TILES), vae.encode(video), atol=1e-6, rtol=0)
    torch.testing.assert_close(vae.decode(latents, tiled=True, **SMALL_TILES), vae.decode(latents), atol=1e-6, rtol=0)


def _reference_tiling(x, fn, size, stride, factor, out_shape):
    """The reference tiling written out independently: grid on the input's own pixel/cell axes, weight of each
    tile element = min over rows/cols of (i+1)/b at a start with a neighbour, (L-i)/b at an end with one."""
    _, _, _, H, W = x.shape
    values, weight = torch.zeros(out_shape), torch.zeros(1, 1, *out_shape[2:])
    for h in range(0, H, stride[0]):
        if h - stride[0] >= 0 and h - stride[0] + size[0] >= H:
            continue
        for w in range(0, W, stride[1]):
            if w - stride[1] >= 0 and w - stride[1] + size[1] >= W:
                continue
            y = fn(x[:, :, :, h:h + size[0], w:w + size[1]])
            L_h, L_w = y.shape[3:]
            b_h, b_w = int((size[0] - stride[0]) * factor), int((size[1] - stride[1]) * factor)
            mask = torch.ones(L_h, L_w)
            for i in range(L_h):
                for j in range(L_w):
                    r = c = 1.0
                    if h > 0 and i < b_h:
                        r = (i + 1) / b_h
                    if h + size[0] < H and i >= L_h - b_h:
                        r = (L_h - i) / b_h
                    if w > 0 and j < b_w:
                        c = (j + 1) / b_w
                    if w + size[1] < W and j >= L_w - b_w:
                        c = (L_w - j) / b_w
                    mask[i, j] = min(r, c)
            oh, ow = int(h * factor), int(w * factor)
            values[:, :, :, oh:oh + L_h, ow:ow + L_w] += y * mask
            weight[:, :, :, oh:oh + L_h, ow:ow + L_w] += mask
    return values / weight


@pytest.mark.slow
def test_tiled_encode_and_decode_follow_the_reference_tiling(golden, vae):
    # a corner of the golden inputs still gives a 2x2 grid of overlapping tiles
    video, latents = golden["vae_in_video"][:, :, :5, :48, :64], golden["vae_latents"][:, :, :2, :6, :8]
    ref_z = _reference_tiling(video, vae._encode_one, (32, 48), (16, 24), 1 / 8, (1, 16, 2, 6, 8))
    ref_v = _reference_tiling(latents, vae._decode_one, (4, 6), (2, 3), 8, (1, 3, 5, 48, 64)).clamp(-1, 1)
    # same tiles through the same model; only the order of float ops in the blend may differ
    torch.testing.assert_close(vae.encode(video, tiled=True, **SMALL_TILES), ref_z, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(vae.decode(latents, tiled=True, **SMALL_TILES), ref_v, atol=1e-6, rtol=1e-6)


def test_tiled_decode_blends_unclamped_tiles_and_clamps_once(vae, monkeypatch):
    def tile_dependent(z):  # out of [-1, 1] and different per tile: clamping each tile first would change the blend
        return 0.3 * _local_decode(z) + 2 * z[0, 0, 0, 0, 0]

    monkeypatch.setattr(vae, "_decode_one", tile_dependent)
    latents = torch.randn(1, 16, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    out = vae.decode(latents, tiled=True, **SMALL_TILES)
    grid = (latents, tile_dependent, (4, 6), (2, 3), 8, (1, 3, 9, 64, 96))
    expected = _reference_tiling(*grid).clamp(-1, 1)
    per_tile_clamped = _reference_tiling(latents, lambda z: tile_dependent(z).clamp(-1, 1), *grid[2:])
    assert (expected - per_tile_clamped).abs().max() > 0.5  # the check below can tell the two apart
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


def test_untiled_encode_is_diffusers_encode_run_chunk_by_chunk(golden, vae):
    video = golden["vae_in_video"]
    mu = vae.model.encode(video).latent_dist.mean
    expected = (mu - vae.latents_mean.view(1, -1, 1, 1, 1)) * vae.latents_inv_std.view(1, -1, 1, 1, 1)
    torch.testing.assert_close(vae.encode(video), expected, atol=0, rtol=0)


def test_untiled_encode_and_decode_show_a_progress_bar_over_latent_frames(golden, vae, monkeypatch):
    import wclab.models.vae as vae_module

    bars = []

    def recording_tqdm(iterable, desc=None, disable=False, **kwargs):
        items = list(iterable)
        bars.append((desc, len(items), disable))
        return items

    monkeypatch.setattr(vae_module, "tqdm", recording_tqdm)
    video, latents = golden["vae_in_video"], golden["vae_latents"]  # 9 frames = 3 latent frames
    vae.encode(video)
    vae.decode(latents)
    assert bars == [("VAE encoding", 3, False), ("VAE decoding", 3, False)]


# ---------------------------------------------------------------------------------------------- bad input
def test_encode_rejects_frame_counts_that_are_not_4k_plus_1(vae):
    with pytest.raises(WclabError, match="4k\\+1, got 8"):
        vae.encode(torch.zeros(1, 3, 8, 64, 96))


def test_missing_checkpoint_file_names_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="Wan2.1_VAE.pth"):
        VAE.from_checkpoint(tmp_path / "Wan2.1_VAE.pth")


def test_corrupt_checkpoint_file_names_the_file(tmp_path):
    bad = tmp_path / "corrupt_vae.pth"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="corrupt_vae.pth"):
        VAE.from_checkpoint(bad)


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.pop("decoder.head.2.bias"), "missing the weight diffusers calls 'decoder.conv_out.bias'"),
    (lambda sd: sd.__setitem__("decoder.extra.weight", torch.zeros(1)), "unexpected key 'decoder.extra.weight'"),
    (lambda sd: sd.__setitem__("decoder.head.2.bias", torch.zeros(4)), r"decoder.head.2.bias has shape \(4,\)"),
])
def test_checkpoint_with_wrong_keys_is_rejected_naming_the_key(tmp_path, edit, message):
    sd = torch.load(TINY_MODELS / "vae_tiny.pth", weights_only=True)
    edit(sd)
    torch.save(sd, tmp_path / "edited.pth")
    with pytest.raises(CheckpointError, match=message):
        VAE.from_checkpoint(tmp_path / "edited.pth")


# ---------------------------------------------------------------------------------------------- latent preview
class _LinearVAE:
    """A 'VAE' whose decode is exactly a per-cell linear map, so the fit must recover it."""

    class config:
        z_dim = 16

    def __init__(self, weight, bias):
        self.weight, self.bias = weight, bias

    def decode(self, z, tiled=False):
        rgb = torch.einsum("oc,bcfhw->bofhw", self.weight, z) + self.bias.view(1, 3, 1, 1, 1)
        return _local_decode(torch.cat([rgb, torch.zeros_like(rgb)], 1)) / 3

    def encode(self, video, tiled=False):  # 16 distinct functions of the pooled RGB, so latents have full rank
        p = _local_encode(video)[:, :3]
        return torch.cat([p, p**2, p**3, torch.sin(3 * p), torch.cos(2 * p), p[:, :1] * p[:, 1:2]], dim=1)


def test_preview_fit_recovers_an_exactly_linear_decoder():
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(3, 16, generator=g) * 0.2, torch.randn(3, generator=g) * 0.1
    latents = torch.randn(2, 16, 3, 4, 5, generator=g)
    preview = LatentPreview.fit(_LinearVAE(weight, bias), latents)
    torch.testing.assert_close(preview.weight, weight, atol=1e-5, rtol=0)
    torch.testing.assert_close(preview.bias, bias, atol=1e-5, rtol=0)


def test_preview_fit_on_the_tiny_vae_beats_a_zero_projection_on_held_out_latents(golden, vae):
    g = torch.Generator().manual_seed(1)
    train = [torch.randn(1, 16, 3, 8, 12, generator=g), golden["vae_latents"]]
    preview = LatentPreview.fit(vae, train)
    test = torch.randn(1, 16, 3, 8, 12, generator=g)
    target = video_on_latent_grid(vae.decode(test))
    fitted_err = (preview.project(test) - target).pow(2).mean()
    zero_err = target.pow(2).mean()
    # measured 0.018 vs 0.026: a random VAE is far from linear, the gain is mostly the fitted mean colour (bias);
    # exact recovery of a truly linear decoder is tested above
    assert fitted_err < 0.8 * zero_err


def test_preview_fit_accepts_videos_by_encoding_them_first():
    g = torch.Generator().manual_seed(2)
    linear_vae = _LinearVAE(torch.randn(3, 16, generator=g), torch.randn(3, generator=g))
    video = torch.rand(1, 3, 9, 32, 48, generator=g) * 2 - 1
    from_video = LatentPreview.fit(linear_vae, video)
    from_latents = LatentPreview.fit(linear_vae, linear_vae.encode(video))
    assert torch.equal(from_video.weight, from_latents.weight) and torch.equal(from_video.bias, from_latents.bias)


def test_preview_frames_are_uint8_one_per_latent_frame_and_upscaled(golden):
    frames = LatentPreview.wan21()(golden["vae_latents"], upscale=8)
    assert frames.shape == (3, 64, 96, 3) and frames.dtype == torch.uint8
    small = LatentPreview.wan21()(golden["vae_latents"][0])
    assert torch.equal(frames[:, ::8, ::8], small)


def test_wan21_preview_coefficients_map_16_channels_to_rgb():
    p = LatentPreview.wan21()
    assert p.weight.shape == (3, 16) and p.bias.shape == (3,)
    assert p.weight[:, 0].tolist() == pytest.approx([-0.1299, -0.1692, 0.2932])


def test_preview_save_load_round_trip(tmp_path):
    p = LatentPreview(torch.randn(3, 16), torch.randn(3))
    p.save(tmp_path / "preview.safetensors")
    q = LatentPreview.load(tmp_path / "preview.safetensors")
    assert torch.equal(p.weight, q.weight) and torch.equal(p.bias, q.bias)


def test_preview_load_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing.safetensors"):
        LatentPreview.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        LatentPreview.load(bad)


def test_key_shape_table_derived_from_the_config_is_the_reference_file_format():
    """Wan key names come from diffusers' converter run backwards over Wan's naming, shapes from the config."""
    sizes = json.loads((TINY_MODELS / "config.json").read_text())["vae"]
    sd = torch.load(TINY_MODELS / "vae_tiny.pth", weights_only=True)
    assert vae_shapes(VAEConfig.from_wan_args(**sizes)) == {k: tuple(v.shape) for k, v in sd.items()}
