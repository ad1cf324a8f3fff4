"""Start-image preparation (load, cover-resize + centre-crop, [-1, 1] tensors) and the image condition ``y``."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from wclab.image import (ImageLoadError, SizeError, center_crop, crop_and_resize, image_to_tensor, load_image,
                         solid_image, video_to_tensor)
from wclab.models.conditioning import frame_mask, image_condition, latent_shape


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


# Expected resize sizes and crop boxes below are worked out by hand from the reference formula
# s = max(W_t / w, H_t / h), size = (round(h s), round(w s)), top/left = int(round(excess / 2)).
@pytest.mark.parametrize("src_wh, target_hw, resized_wh, box", [
    ((300, 170), (128, 224), (226, 128), (1, 0, 225, 128)),      # wide: height fits, width 225.88 → 226
    ((97, 411), (160, 96), (96, 407), (0, 124, 96, 284)),        # tall: width fits, 406.76 → 407, top 123.5 → 124
    ((50, 30), (64, 112), (112, 67), (0, 2, 112, 66)),           # upscale: 67.2 → 67, top 1.5 → 2
    ((96, 405), (160, 96), (96, 405), (0, 122, 96, 282)),        # no resize, top round(122.5) = 122 (half-even)
])
def test_crop_and_resize_matches_pil_bilinear_resize_then_centre_crop(src_wh, target_hw, resized_wh, box):
    img = noise_image(*src_wh)
    expected = img.resize(resized_wh, Image.BILINEAR) if resized_wh != src_wh else img
    expected = np.asarray(expected.crop(box))
    out = crop_and_resize(img, *target_hw)
    assert out.size == (target_hw[1], target_hw[0])
    np.testing.assert_array_equal(np.asarray(out), expected)  # exact: same PIL calls, uint8


def test_center_crop_zero_pads_like_torchvision_when_image_is_smaller():
    img = solid_image(10, 10, (200, 100, 50))
    out = np.asarray(center_crop(img, 16, 32))
    assert out.shape == (16, 32, 3)
    inside = np.zeros((16, 32), bool)
    inside[3:13, 11:21] = True  # left (32-10)//2 = 11, top (16-10)//2 = 3
    assert (out[inside] == (200, 100, 50)).all() and (out[~inside] == 0).all()


@pytest.mark.parametrize("hw", [(100, 224), (128, 200), (0, 224)])
def test_crop_and_resize_rejects_sizes_that_are_not_multiples_of_16(hw):
    with pytest.raises(SizeError, match="multiple of 16"):
        crop_and_resize(noise_image(64, 64), *hw)


def test_image_to_tensor_maps_pixels_to_minus_one_one_like_the_pipeline():
    img = noise_image(48, 32, seed=3)
    x = image_to_tensor(img)
    assert x.shape == (1, 3, 32, 48) and x.dtype == torch.float32
    pixels = torch.from_numpy(np.asarray(img).astype(np.float32)).permute(2, 0, 1)
    assert torch.equal(x[0], pixels * (2 / 255) - 1)  # same float32 ops as preprocess_image
    assert x.min() >= -1 and x.max() <= 1 + 1e-6  # 255 maps to 1 up to float32 rounding


def test_solid_image_tensor_holds_its_colour_everywhere():
    x = image_to_tensor(solid_image(128, 224, (90, 120, 150)))
    assert x.shape == (1, 3, 128, 224)
    expected = torch.tensor([90.0, 120.0, 150.0]) * (2 / 255) - 1
    assert torch.equal(x.amin(dim=(0, 2, 3)), expected) and torch.equal(x.amax(dim=(0, 2, 3)), expected)


def test_video_to_tensor_stacks_frames_on_the_time_axis():
    frames = [solid_image(16, 32, (i * 40, 0, 0)) for i in range(5)]
    v = video_to_tensor(frames)
    assert v.shape == (1, 3, 5, 16, 32)
    for t, f in enumerate(frames):
        assert torch.equal(v[:, :, t], image_to_tensor(f))
    with pytest.raises(SizeError, match="one size"):
        video_to_tensor([solid_image(16, 32, (0, 0, 0)), solid_image(32, 32, (0, 0, 0))])


def test_load_image_returns_rgb_and_drops_alpha(tmp_path):
    rgba = np.dstack([np.asarray(noise_image(20, 10)), np.full((10, 20), 7, np.uint8)])
    path = tmp_path / "start.png"
    Image.fromarray(rgba, "RGBA").save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (20, 10)
    np.testing.assert_array_equal(np.asarray(img), rgba[..., :3])


def test_load_image_names_the_file_when_missing_or_unreadable(tmp_path):
    with pytest.raises(ImageLoadError, match="nope.png: image file not found"):
        load_image(tmp_path / "nope.png")
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ImageLoadError, match="notes.png: cannot read"):
        load_image(bad)


def test_latent_shape_groups_frames_by_four_and_cells_by_eight_pixels():
    assert latent_shape(480, 832, 81) == (1, 16, 21, 60, 104)
    assert latent_shape(128, 224, 17) == (1, 16, 5, 16, 28)
    assert latent_shape(16, 16, 1) == (1, 16, 1, 2, 2)


@pytest.mark.parametrize("hwt, field", [((120, 224, 17), "height"), ((128, 200, 17), "width"),
                                         ((128, 224, 16), "frames"), ((128, 224, 0), "frames"),
                                         ((128.0, 224, 17), "height")])
def test_latent_shape_rejects_sizes_the_model_cannot_take(hwt, field):
    with pytest.raises(SizeError, match=field):
        latent_shape(*hwt)


def reference_mask(frames: int, height: int, width: int) -> torch.Tensor:
    """The reference's msk construction (first pixel frame known), written out step by step."""
    msk = torch.ones(1, frames, height // 8, width // 8)
    msk[:, 1:] = 0
    msk = torch.cat([msk[:, 0:1].repeat_interleave(4, dim=1), msk[:, 1:]], dim=1)
    msk = msk.view(1, msk.shape[1] // 4, 4, height // 8, width // 8)
    return msk.transpose(1, 2)


@pytest.mark.parametrize("frames", [1, 5, 17, 81])
def test_frame_mask_matches_reference_layout_first_latent_frame_ones(frames):
    known = torch.zeros(frames)
    known[0] = 1
    mask = frame_mask(known, 32, 48)
    assert torch.equal(mask, reference_mask(frames, 32, 48))
    assert (mask[:, :, 0] == 1).all() and (mask[:, :, 1:] == 0).all()


class PoolingVAE:
    """Stand-in VAE with the real API: causal time groups (1, 4, 4, ...), 8×8 average pool, 3 → 16 channels."""

    def __init__(self):
        self.calls = []

    def encode(self, video, *, tiled=False, tile_size=(30, 52), tile_stride=(15, 26)):
        self.calls.append(dict(video=video.clone(), tiled=tiled, tile_size=tile_size, tile_stride=tile_stride))
        groups = [video[:, :, :1]] + [video[:, :, i:i + 4] for i in range(1, video.shape[2], 4)]
        pooled = torch.stack([g.mean(dim=2) for g in groups], dim=2)  # [B, 3, F', H, W]
        pooled = F.avg_pool3d(pooled, (1, 8, 8))
        weights = torch.arange(1, 16 * 3 + 1, dtype=video.dtype).view(16, 3) / 48
        return torch.einsum("kc,bcfhw->bkfhw", weights, pooled)


def test_image_condition_is_mask_then_latents_of_image_followed_by_black_frames():
    vae = PoolingVAE()
    image = image_to_tensor(noise_image(48, 32, seed=5))
    y, first = image_condition(vae, image, frames=9, tiled=True, tile_size=(2, 2), tile_stride=(1, 1))
    assert y.shape == (1, 20, 3, 4, 6) and first.shape == (1, 16, 1, 4, 6)

    video_in, image_in = vae.calls[0]["video"], vae.calls[1]["video"]
    assert video_in.shape == (1, 3, 9, 32, 48)
    assert torch.equal(video_in[:, :, 0], image) and (video_in[:, :, 1:] == 0).all()
    assert torch.equal(image_in, image[:, :, None])
    assert all(c["tiled"] and c["tile_size"] == (2, 2) and c["tile_stride"] == (1, 1) for c in vae.calls)

    assert torch.equal(y[:, :4], reference_mask(9, 32, 48))
    assert torch.equal(y[:, 4:], PoolingVAE().encode(video_in))
    assert torch.equal(first, PoolingVAE().encode(image[:, :, None]))


def test_image_condition_rejects_bad_image_shapes_and_frame_counts():
    vae = PoolingVAE()
    with pytest.raises(SizeError, match="1, 3, H, W"):
        image_condition(vae, torch.zeros(3, 32, 48), frames=9)
    with pytest.raises(SizeError, match="frames"):
        image_condition(vae, torch.zeros(1, 3, 32, 48), frames=8)
    with pytest.raises(SizeError, match="width"):
        image_condition(vae, torch.zeros(1, 3, 32, 40), frames=9)


def test_image_condition_reports_a_vae_returning_the_wrong_latent_shape():
    class HalfVAE(PoolingVAE):
        def encode(self, video, **kw):
            return super().encode(video, **kw)[..., ::2, :]

    with pytest.raises(SizeError, match=r"expected latents \[1, 16, 3, 4, 6\], got \[1, 16, 3, 2, 6\]"):
        image_condition(HalfVAE(), torch.zeros(1, 3, 32, 48), frames=9)
