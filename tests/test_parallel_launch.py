"""Launching generation on several processes: CFG parallelism and the multi-machine torchrun arguments, on CPU
(gloo) with the tiny checkpoints. The CFG split computes each branch exactly as one process does, so its results
are bitwise equal; the sequence split (tests/test_parallel.py) equals one process up to float rounding."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import EXAMPLES, REPO, free_port, subprocess_env
from wclab.parallel import cfg_groups

TIMEOUT_S = 240


def _check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from wclab.testing import make_tiny_checkpoints

    return make_tiny_checkpoints(tmp_path_factory.mktemp("tiny"))


def generate_args(tiny: Path, out: Path) -> list[str]:
    from wclab.image import solid_image

    image = out.parent / "start.png"
    solid_image(64, 112, (90, 120, 150)).save(image)
    return ["generate", "--conditions", str(EXAMPLES / "door.json"), "--image", str(image), "--checkpoints",
            str(tiny), "--out", str(out), "--height", "64", "--width", "112", "--frames", "9", "--steps", "2",
            "--save-latents", str(out.with_suffix(".safetensors"))]


def test_auto_takes_two_cfg_groups_on_an_even_rank_count_with_cfg_on():
    assert cfg_groups("auto", 4, 5.0) == 2 and cfg_groups("auto", 2, 5.0) == 2
    assert cfg_groups("auto", 3, 5.0) == 1 and cfg_groups("auto", 1, 5.0) == 1
    assert cfg_groups("auto", 4, 1.0) == 1  # no negative branch to split off
    assert cfg_groups("1", 4, 5.0) == 1 and cfg_groups("2", 2, 5.0) == 2


@pytest.mark.slow
def test_two_nodes_by_c10d_rendezvous_with_cfg_split_equal_one_process_bitwise(tiny, tmp_path):
    """Two torchrun agents, one process each, standing for two machines: `--nnodes 2 --rdzv-backend c10d
    --rdzv-endpoint HOST:PORT`, exactly as documented for several machines."""
    nodes = tmp_path / "nodes" / "v.mp4"
    nodes.parent.mkdir()
    port = free_port()
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
              "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "wclab-test",
              "-m", "wclab.parallel", *generate_args(tiny, nodes)]
    agents = [subprocess.Popen(launch, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for _ in range(2)]
    try:
        outputs = [a.communicate(timeout=TIMEOUT_S) for a in agents]
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
    for a, (out, err) in zip(agents, outputs):
        assert a.returncode == 0, out[-2000:] + err[-4000:]
    assert "1 ranks" not in "".join(o for o, _ in outputs)
    assert any("2 ranks as 2 CFG x 1 sequence" in o for o, _ in outputs)
    assert any(re.search(r"stages \(rank 0\): load [\d.]+ s, prepare [\d.]+ s, denoise [\d.]+ s, decode [\d.]+ s", o)
               for o, _ in outputs)
    assert nodes.is_file()
    assert torch.equal(load_file(str(nodes.with_suffix(".safetensors")))["latents"], one_process_latents(tiny))


def one_process_latents(tiny: Path) -> torch.Tensor:
    """What `wclab generate` computes for `generate_args` in this process (float32 CPU, the same settings)."""
    from wclab.conditions import load_json
    from wclab.conditions.resize import resize_scene
    from wclab.image import solid_image
    from wclab.models.loading import load_models
    from wclab.sampler import Session, Settings

    scene = resize_scene(load_json(EXAMPLES / "door.json"), 64, 112, 9)
    settings = Settings(steps=2, seed=0, record="none")
    session = Session(load_models(tiny), scene, solid_image(64, 112, (90, 120, 150)), settings, progress=False)
    return session.run().latents.float()


@pytest.mark.slow
def test_parallel_e2e_bench_runs_the_distilled_preset_on_a_sequence_split(tmp_path):
    """4 steps, CFG 1 (no negative branch, so no CFG split): 1x2 equals one process up to float rounding."""
    out = tmp_path / "d"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), str(REPO / "bench" / "bench_parallel_e2e.py"), "--tiny", "--distilled",
           "--layouts", "1x1,1x2", "--steps", "4", "--out", str(out)]
    _check(subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=TIMEOUT_S))
    split = json.loads((out / "scan_1x2_4steps.json").read_text())
    assert split["setup"]["distilled"] is True and split["setup"]["cfg"] == 1.0 and len(split["step_s"]) == 4
    assert split["summary"]["max_rel_err_vs_1gpu"] < 1e-5
    assert all(g["samples"] >= 2 for g in split["gpus"])  # clocks over the run; [] where there is no nvidia-smi


def test_parallel_e2e_bench_refuses_a_cfg_split_of_the_distilled_preset(monkeypatch, capsys):
    sys.path.insert(0, str(REPO / "bench"))
    import bench_parallel_e2e

    monkeypatch.setattr(sys, "argv", ["bench_parallel_e2e.py", "--tiny", "--distilled", "--layouts", "2x1"])
    with pytest.raises(SystemExit) as exit_:
        bench_parallel_e2e.main()
    assert exit_.value.code == 2 and "1xS layouts" in capsys.readouterr().err


@pytest.mark.slow
def test_parallel_e2e_bench_scans_layouts_up_to_two_cfg_groups_of_two_and_compares_with_one_process(tmp_path):
    """Four gloo ranks (float32): layouts 1x1, 2x1, 1x2 and the 2-D mesh 2x2 (CFG x sequence) with the VAE tiles
    spread over the layout's ranks, then the faster 2-rank layout again as a "full" run."""
    out = tmp_path / "p4"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), str(REPO / "bench" / "bench_parallel_e2e.py"), "--tiny",
           "--layouts", "1x1,2x1,1x2,2x2", "--steps", "2", "--full", "2:2", "--out", str(out)]
    _check(subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=TIMEOUT_S))
    cfg_split = json.loads((out / "scan_2x1_2steps.json").read_text())
    seq_split = json.loads((out / "scan_1x2_2steps.json").read_text())
    mesh = json.loads((out / "scan_2x2_2steps.json").read_text())
    assert cfg_split["setup"]["ranks"] == 2 and cfg_split["setup"]["steps"] == 2 and mesh["setup"]["ranks"] == 4
    # "auto" as each layout resolved it: the 2-rank k/v gather on sequence pairs, no engine without a sequence split
    assert (seq_split["setup"]["sequence_engine"], mesh["setup"]["sequence_engine"]) == ("kv_gather", "kv_gather")
    assert cfg_split["setup"]["sequence_engine"] is None
    for report in (cfg_split, mesh):  # the CFG split is exact; tiles are blended in one order on every rank
        assert report["summary"]["bitwise_equal_to_1gpu"] is True
        assert report["summary"]["decoded_video_equal_to_1gpu"] is True
    assert seq_split["summary"]["max_rel_err_vs_1gpu"] < 1e-5
    assert cfg_split["summary"]["total_s"] > 0 and len(cfg_split["step_s"]) == 2
    full = list(out.glob("full_*_2steps.json"))
    assert len(full) == 1 and json.loads(full[0].read_text())["summary"]["max_rel_err_vs_1gpu"] < 1e-5
