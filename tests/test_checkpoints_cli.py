"""python -m wclab.checkpoints DIR: presence, key sets/shapes, dtypes, download commands and exit codes."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from wclab.checkpoints import check_checkpoints, main
from wclab.models.layout import SAM_URL, released_files
from wclab.models.shapes import dit_config, dit_shapes, t5_shapes, vae_shapes
from wclab.testing import make_tiny_checkpoints

HIGH = "WorldCanvas_dit/WorldCanvas/high_model.safetensors"
LOW = "WorldCanvas_dit/WorldCanvas/low_model.safetensors"
VAE = "Wan2.2-T2V-A14B/Wan2.1_VAE.pth"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_checkpoints(tmp_path_factory.mktemp("tiny"))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "wclab.checkpoints", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_on_a_generated_directory_exits_0_with_every_required_file_ok(tiny):
    r = run_cli(tiny)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines()[3:9]}
    assert rows == {"t5": "ok", "vae": "ok", "tokenizer": "ok", "high": "ok", "low": "ok", "sam": "absent"}
    assert "tiny layout" in r.stdout and r.stdout.rstrip().endswith("complete")


def test_cli_on_an_empty_directory_exits_1_and_prints_every_download_command(tmp_path):
    r = run_cli(tmp_path)
    assert r.returncode == 1
    out = r.stdout
    wan = tmp_path / "Wan2.2-T2V-A14B"
    for cmd in (f"huggingface-cli download Wan-AI/Wan2.2-T2V-A14B models_t5_umt5-xxl-enc-bf16.pth --local-dir {wan}",
                f"huggingface-cli download Wan-AI/Wan2.2-T2V-A14B Wan2.1_VAE.pth --local-dir {wan}",
                f"huggingface-cli download Wan-AI/Wan2.2-T2V-A14B --include 'google/umt5-xxl/*' --local-dir {wan}",
                "huggingface-cli download hlwang06/WorldCanvas WorldCanvas/high_model.safetensors "
                f"--local-dir {tmp_path / 'WorldCanvas_dit'}",
                f"curl -L -o {tmp_path / 'sam_vit_h_4b8939.pth'} {SAM_URL}"):
        assert cmd in out
    for size in ("~11.4 GB", "~508 MB", "~28.6 GB"):
        assert size in out
    assert "INCOMPLETE: 5 missing, 0 wrong" in out


def test_ref_variant_requires_the_ref_pair(tiny, capsys):
    assert main([str(tiny), "--variant", "WorldCanvas_ref"]) == 1
    out = capsys.readouterr().out
    assert "huggingface-cli download hlwang06/WorldCanvas WorldCanvas_ref/low_model.safetensors" in out


def test_a_dit_with_36_input_channels_is_wrong_and_the_key_is_named(tmp_path):
    """Plain Wan2.2-I2V experts take 36 channels; WorldCanvas needs 53."""
    root = make_tiny_checkpoints(tmp_path)
    sd = load_file(str(root / HIGH))
    sd["patch_embedding.weight"] = sd["patch_embedding.weight"][:, :36].contiguous()
    save_file(sd, str(root / HIGH))
    report = check_checkpoints(root)
    item = next(i for i in report.items if i.file.role == "high")
    assert not report.ok and item.status == "wrong"
    assert "'patch_embedding.weight' has shape [128, 36, 1, 2, 2], expected [128, 53, 1, 2, 2]" in item.detail


def test_missing_and_unexpected_keys_are_counted(tmp_path):
    root = make_tiny_checkpoints(tmp_path)
    sd = torch.load(str(root / VAE), weights_only=True)
    sd["extra.weight"] = sd.pop("conv2.weight")
    torch.save(sd, root / VAE)
    item = next(i for i in check_checkpoints(root).items if i.file.role == "vae")
    assert item.status == "wrong"
    assert "1 keys missing (e.g. 'conv2.weight')" in item.detail and "'extra.weight'" in item.detail


def test_a_truncated_safetensors_file_is_wrong(tmp_path):
    root = make_tiny_checkpoints(tmp_path)
    data = (root / LOW).read_bytes()
    (root / LOW).write_bytes(data[: len(data) // 2])
    item = next(i for i in check_checkpoints(root).items if i.file.role == "low")
    assert item.status == "wrong" and "truncated" in item.detail


def test_a_corrupt_pth_is_unreadable_not_a_crash(tmp_path):
    root = make_tiny_checkpoints(tmp_path)
    (root / VAE).write_bytes(b"not a checkpoint")
    item = next(i for i in check_checkpoints(root).items if i.file.role == "vae")
    assert item.status == "wrong" and "unreadable" in item.detail


def test_deep_check_finds_nan_weights_that_headers_cannot_show(tmp_path):
    root = make_tiny_checkpoints(tmp_path)
    sd = load_file(str(root / HIGH))
    sd["blocks.0.ffn.2.bias"][3] = float("nan")
    save_file(sd, str(root / HIGH))
    assert check_checkpoints(root).ok
    deep = check_checkpoints(root, deep=True)
    item = next(i for i in deep.items if i.file.role == "high")
    assert not deep.ok and "'blocks.0.ffn.2.bias' holds NaN/inf" in item.detail
    assert [i.status for i in deep.items if i.file.role in ("t5", "vae", "tokenizer")] == ["ok"] * 3


def test_other_float_dtypes_pass_with_a_note(tmp_path):
    root = make_tiny_checkpoints(tmp_path)
    save_file({k: v.float() for k, v in load_file(str(root / HIGH)).items()}, str(root / HIGH))
    item = next(i for i in check_checkpoints(root).items if i.file.role == "high")
    assert item.status == "ok" and "float32; released files are bfloat16" in item.detail


def test_released_key_tables_add_up_to_the_stated_file_sizes():
    """The approximate sizes in the table agree with the key tables derived from the full-size configs (1%)."""
    params = {"t5": t5_shapes(), "vae": vae_shapes(), "high": dit_shapes(dit_config())}
    sizes = {f.role: f for f in released_files()}
    for role, shapes in params.items():
        nbytes = sum(math.prod(s) for s in shapes.values()) * sizes[role].dtype.itemsize
        assert nbytes / 1e9 == pytest.approx(sizes[role].approx_gb, rel=0.01), role
    assert dit_shapes(dit_config())["patch_embedding.weight"] == (5120, 53, 1, 2, 2)
    assert t5_shapes()["blocks.23.pos_embedding.embedding.weight"] == (32, 64)


def write_sparse_safetensors(path, shapes: dict, dtype: str = "BF16", itemsize: int = 2) -> None:
    """A safetensors file with a real header and a sparse (unwritten) data section of the right length."""
    import json
    import struct

    header, offset = {}, 0
    for k, shape in shapes.items():
        n = math.prod(shape) * itemsize
        header[k] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)


def test_released_layout_expects_full_size_experts(tmp_path):
    """Headers of full-size (14B, 53-channel) experts pass; tiny experts without wclab_tiny.json do not."""
    full = dit_shapes(dit_config())
    write_sparse_safetensors(tmp_path / HIGH, full)
    write_sparse_safetensors(tmp_path / LOW, {**full, "patch_embedding.weight": (128, 53, 1, 2, 2)})
    report = check_checkpoints(tmp_path)
    rows = {i.file.role: i for i in report.items}
    assert report.layout == "released" and not report.ok
    assert rows["high"].status == "ok" and rows["high"].size == pytest.approx(28.6e9, rel=0.01)
    assert rows["low"].status == "wrong" and "expected [5120, 53, 1, 2, 2]" in rows["low"].detail
    assert rows["t5"].status == "missing" and rows["vae"].status == "missing"
