"""The command line (`wclab generate`) and the README demo run end to end on tiny generated checkpoints."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from wclab.cli import main
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
    assert "wrote" in capsys.readouterr().out


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


def test_readme_demo_runs(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "wclab.demo", "--out", str(out), "--models", str(tmp_path / "m"),
                           "--scene", str(CI_SCENE), "--image", str(CI_IMAGE), "--steps", "2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("video.mp4", "overlay.mp4", "overlay.gif", "x0_previews.png"):
        assert (out / name).stat().st_size > 0
