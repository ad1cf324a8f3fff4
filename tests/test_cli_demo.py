"""The command line (`wclab generate`) and the README demo run end to end on tiny generated checkpoints."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from wclab.cli import main
from wclab.models.device import DeviceError
from wclab.models.loading import load_models
from wclab.testing import make_tiny_checkpoints

REPO = Path(__file__).resolve().parents[1]
CI_SCENE = REPO / "examples" / "ci" / "ball.json"
CI_IMAGE = REPO / "examples" / "ci" / "ball.png"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_checkpoints(tmp_path_factory.mktemp("tiny"))


def test_generate_writes_video_and_latents(tiny_dir, tmp_path, capsys):
    out, lat = tmp_path / "v.mp4", tmp_path / "lat.safetensors"
    rc = main(["generate", "--conditions", str(CI_SCENE), "--image", str(CI_IMAGE), "--checkpoints", str(tiny_dir),
               "--out", str(out), "--steps", "2", "--seed", "3", "--save-latents", str(lat), "--device", "cpu"])
    assert rc == 0
    assert out.stat().st_size > 1000
    latents = load_file(str(lat))["latents"]
    assert tuple(latents.shape) == (1, 16, 3, 8, 14)  # 64x112x9 scene: F'=3, h=8, w=14
    printed = capsys.readouterr().out
    assert "wrote" in printed
    assert re.search(r"stages: load [\d.]+ s, prepare [\d.]+ s, denoise [\d.]+ s, decode [\d.]+ s", printed)


def test_generate_can_retarget_the_scene_size(tiny_dir, tmp_path):
    lat = tmp_path / "lat.safetensors"
    rc = main(["generate", "--conditions", str(CI_SCENE), "--image", str(CI_IMAGE), "--checkpoints", str(tiny_dir),
               "--out", str(tmp_path / "v.gif"), "--steps", "1", "--height", "32", "--width", "64", "--frames", "5",
               "--save-latents", str(lat), "--device", "cpu"])
    assert rc == 0
    assert tuple(load_file(str(lat))["latents"].shape) == (1, 16, 2, 4, 8)


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    rc = main(["generate", "--conditions", str(CI_SCENE), "--image", str(CI_IMAGE), "--checkpoints",
               str(tmp_path / "nothing"), "--out", str(tmp_path / "v.mp4"), "--device", "cpu"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "wclab: error:" in err and "models_t5_umt5-xxl-enc-bf16.pth" in err


def test_bad_conditions_file_names_the_file(tiny_dir, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("[{\"tracking\": 3}]")
    rc = main(["generate", "--conditions", str(bad), "--image", str(CI_IMAGE), "--checkpoints", str(tiny_dir),
               "--out", str(tmp_path / "v.mp4"), "--device", "cpu"])
    assert rc == 2
    assert "bad.json" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ({"--image": "missing.png"}, "missing.png: image file not found"),
    ({"--image": "not_an_image.png"}, "not_an_image.png: cannot read as an image"),
    ({"--steps": "0"}, "--steps: expected at least 1"),
])
def test_bad_image_or_steps_fail_before_any_model_is_loaded(tmp_path, capsys, change, message):
    """The checkpoint folder does not exist: the error must be about the argument, raised before loading."""
    (tmp_path / "not_an_image.png").write_text("plain text")
    args = {"--conditions": str(CI_SCENE), "--image": str(CI_IMAGE), "--checkpoints": str(tmp_path / "nothing"),
            "--out": str(tmp_path / "v.mp4"), "--device": "cpu"}
    args.update({k: str(tmp_path / v) if k == "--image" else v for k, v in change.items()})
    assert main(["generate", *[x for kv in args.items() for x in kv]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wclab: error:") and message in err and "checkpoint" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
def test_cuda_device_on_a_cpu_only_torch_is_a_one_line_error(tmp_path, capsys):
    rc = main(["generate", "--conditions", str(CI_SCENE), "--image", str(CI_IMAGE), "--checkpoints",
               str(tmp_path), "--out", str(tmp_path / "v.mp4"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--device: device 'cuda'" in err and "no usable CUDA" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
def test_load_models_on_cuda_with_a_cpu_only_torch_is_a_one_line_error(tiny_dir):
    with pytest.raises(DeviceError, match="no usable CUDA") as e:
        load_models(tiny_dir, device="cuda")
    assert "\n" not in str(e.value)


def test_readme_demo_runs(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "wclab.demo", "--out", str(out), "--models", str(tmp_path / "m"),
                           "--scene", str(CI_SCENE), "--image", str(CI_IMAGE), "--steps", "2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("video.mp4", "overlay.mp4", "overlay.gif", "x0_previews.png"):
        assert (out / name).stat().st_size > 0
