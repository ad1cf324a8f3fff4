"""wclab.workers on CPU: a notebook-like driver (rank 0) and one spawned gloo worker equal one process.

The drivers are this file run as a script in two subprocesses side by side (the pytest process may hold a
torch.distributed group of other tests; a driver is rank 0 as a notebook kernel would be): they start workers, run
the scenarios, save tensors and facts, and the tests compare them with the same sessions run here in one process, on
the tiny fixture models. Tolerance (float32): rtol = atol = 1e-5 (on the 2-core CI CPU the results were bitwise
equal).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES, REPO, TINY_MODELS, TOKENIZER, finish, subprocess_env

pytestmark = pytest.mark.slow  # two driver processes start three worker groups

TIMEOUT_S = 240
PARITY = dict(rtol=1e-5, atol=1e-5)
SESSION_SIZE = (80, 112, 9)  # H, W pixels, frames -> token grid (3, 5, 7) = 105 tokens: 53 and 52 per rank
CACHED = ["high.blocks.1.self_attn.hook_q", "high.blocks.0.cross_attn.hook_bias", "high.blocks.1.hook_mod",
          "high.hook_embed", "high.blocks.1.cross_attn.hook_probs"]  # split, split, whole, whole, opt-in split


def base_session(models, scene_file: Path = FIXTURES / "synth_small.json"):
    """A 2-step session on synth_small resized to SESSION_SIZE (seed 0, CFG 5, β 30), not stepped."""
    from wclab.conditions import load_json
    from wclab.conditions.resize import resize_scene
    from wclab.image import solid_image
    from wclab.sampler import Session

    h, w, frames = SESSION_SIZE
    scene = resize_scene(load_json(scene_file), h, w, frames)
    return Session(models, scene, solid_image(h, w, (90, 120, 150)), steps=2, seed=0, progress=False)


def halve(x, hook):
    return x * 0.5


def scale_text_keys(x, hook):
    return x * 0.9


def scenarios(base) -> dict[str, torch.Tensor]:
    """What both sides compute from an unstepped session: maps, a mid-run branch with update(beta=1.0), a cache of
    split and whole hook points, and an intervention on a split and a whole (text-side) hook point."""
    from wclab.inspect import AttentionMaps

    res = {}
    s = base.branch()
    with AttentionMaps(s, words=True) as maps:
        s.run()
    res["maps_latents"] = s.latents
    res.update({f"maps_step{i}": v for i, v in maps.sums.items()})
    res["maps_counts"] = torch.tensor([maps.counts[i] for i in sorted(maps.counts)])
    b = base.branch()
    b.step()
    c = b.branch()
    c.update(beta=1.0)
    c.run()
    b.run()
    res["branch_beta1_latents"], res["branch_parent_latents"] = c.latents, b.latents
    cache = base.branch().run_with_cache(CACHED, until=1)
    res.update({f"cache.{k}": v for k, v in cache.items()})
    h = base.branch()
    with h.hooks([("blocks.0.hook_out", halve), ("high.blocks.1.cross_attn.hook_k", scale_text_keys)]):
        h.run()
    res["intervened_latents"] = h.latents
    return res


# ---------------------------------------------------------------- the driver (rank 0, like a notebook kernel)

def MIRRORED(folder: Path) -> dict:
    """`load_models` options the workers must mirror: fp8 experts and a LoRA (a PEFT pair on blocks.1.ffn.0 of the
    high expert, written to ``folder``)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(7)
    path = folder / "lora_peft.safetensors"
    save_file({"transformer.blocks.1.ffn.0.lora_A.weight": torch.randn(4, 128, generator=g),
               "transformer.blocks.1.ffn.0.lora_B.weight": 0.1 * torch.randn(256, 4, generator=g)}, str(path))
    return dict(experts="fp8", lora={"high": [(path, 0.5)]})


def kill_a_worker_mid_forward(workers, session) -> tuple:
    """Kill the first worker from inside a hook during a step: (the WorkerError's text or None, seconds taken)."""
    from wclab.workers import WorkerError

    pid = workers.pids[0]

    def kill(x, hook):
        os.kill(pid, signal.SIGKILL)
        workers._procs[0].join(10)

    t0, message = time.monotonic(), None
    with session.hooks([("high.blocks.0.hook_out", kill)]):
        try:
            session.step()
        except WorkerError as err:
            message = str(err)
    return message, time.monotonic() - t0


def drive_main(out_dir: Path) -> tuple[dict, dict]:
    """The scenarios through one worker group, then a raising hook and close: (tensors, facts)."""
    from wclab.models.loading import load_models
    from wclab.workers import start_workers

    facts: dict = {}
    models = load_models(TINY_MODELS, tokenizer=TOKENIZER, preview=False)
    t0 = time.monotonic()
    with start_workers(models, 2, progress=False, timeout=60) as workers:
        facts["start_s"] = time.monotonic() - t0
        facts["pids"] = workers.pids
        base = base_session(workers.models)
        res = scenarios(base)

        def boom(x, hook):
            raise ValueError("boom")

        e = base.branch()
        with e.hooks([("high.blocks.1.hook_in", boom)]):
            try:
                e.step()
            except ValueError as err:
                facts["hook_error"] = str(err)
        e.run()  # still in step after the raising hook
        res["after_hook_error_latents"] = e.latents
        facts["alive_after_hook_error"] = workers.alive
    facts["pids_alive_after_close"] = [_alive(p) for p in facts["pids"]]
    return res, facts


def drive_mirror(out_dir: Path) -> tuple[dict, dict]:
    """load_models' fp8 placement and LoRA files mirrored by the workers; then a worker killed in the middle of a
    forward (a clear error at once, no hang; later calls say so too); then edited experts refused."""
    from wclab.models.loading import load_models
    from wclab.workers import WorkerError, start_workers

    res, facts = {}, {}
    mirrored = load_models(TINY_MODELS, tokenizer=TOKENIZER, preview=False, **MIRRORED(out_dir))
    workers = start_workers(mirrored, 2, progress=False, timeout=20)
    s = base_session(workers.models)
    s.step()
    res["mirrored_step0_latents"] = s.latents
    pid = workers.pids[0]
    s = base_session(workers.models)  # its first step runs the high expert, where the kill hook sits
    facts["death"], facts["death_s"] = kill_a_worker_mid_forward(workers, s)
    try:
        s.step()
    except WorkerError as err:
        facts["death_next"] = str(err)
    workers.close()
    facts["death_closed_alive"] = _alive(pid)
    # the closed group's models (experts unwrapped again) with a weight changed in memory after loading: refused
    edited = workers.models
    with torch.no_grad():
        next(edited.high.parameters()).add_(1.0)
    try:
        start_workers(edited, 2, progress=False, timeout=60).close()
    except WorkerError as err:
        facts["edited_error"] = str(err)
    return res, facts


DRIVERS = {"main": drive_main, "mirror": drive_mirror}  # run side by side, each in its own process


def drive(out_dir: Path, part: str) -> None:
    """Run driver ``part`` and write its tensors and facts to OUT/part.safetensors and OUT/part.json."""
    from safetensors.torch import save_file

    res, facts = DRIVERS[part](out_dir)
    save_file({k: v.contiguous() for k, v in res.items()}, str(out_dir / f"{part}.safetensors"))
    (out_dir / f"{part}.json").write_text(json.dumps(facts))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The two driver processes, started together: {part: (process, output folder)}."""
    out = tmp_path_factory.mktemp("workers")
    procs = {part: subprocess.Popen([sys.executable, __file__, str(out), part], cwd=REPO, env=subprocess_env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for part in DRIVERS}
    yield {part: (proc, out) for part, proc in procs.items()}
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _finished(launched, part: str) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    proc, out = launched[part]
    finish(proc, f"the workers driver ({part})", TIMEOUT_S)
    return load_file(str(out / f"{part}.safetensors")), json.loads((out / f"{part}.json").read_text())


@pytest.fixture(scope="module")
def driven(launched, single):
    """(tensors, facts) of the "main" driver (``single`` is computed while it runs)."""
    return _finished(launched, "main")


@pytest.fixture(scope="module")
def mirror(launched, single):
    """(tensors, facts) of the "mirror" driver."""
    return _finished(launched, "mirror")


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict[str, torch.Tensor]:
    from conftest import fixture_models
    from wclab.models.loading import load_models

    res = scenarios(base_session(fixture_models()))  # the driver's weights (loaded once per test process)
    mirrored = load_models(TINY_MODELS, tokenizer=TOKENIZER, preview=False,
                           **MIRRORED(tmp_path_factory.mktemp("lora")))
    s = base_session(mirrored)
    s.step()
    res["mirrored_step0_latents"] = s.latents
    return res


# ---------------------------------------------------------------- tests

def test_session_and_attention_maps_match_one_process(driven, single):
    """Two steps (high then low expert, CFG) with per-object and per-word maps: latents and the complete [R, 105]
    sums (no gather needed: the hooks ran in the driver on whole tensors) and the term counts."""
    res, _ = driven
    steps = sorted(k for k in single if k.startswith("maps_step"))
    assert steps == ["maps_step0", "maps_step1"]
    torch.testing.assert_close(res["maps_latents"], single["maps_latents"], **PARITY)
    for k in steps:
        assert res[k].shape == single[k].shape and single[k].shape[1] == 105
        torch.testing.assert_close(res[k], single[k], **PARITY)
    assert torch.equal(res["maps_counts"], single["maps_counts"])


def test_branch_with_update_matches_one_process(driven, single):
    res, _ = driven
    for k in ("branch_beta1_latents", "branch_parent_latents"):
        torch.testing.assert_close(res[k], single[k], **PARITY)
    assert not torch.allclose(single["branch_beta1_latents"], single["branch_parent_latents"])  # beta mattered


def test_hooks_see_whole_tensors(driven, single):
    res, _ = driven
    keys = sorted(k for k in single if k.startswith("cache."))
    assert sorted(k for k in res if k.startswith("cache.")) == keys and len(keys) == 2 * len(CACHED)  # cond+uncond
    for k in keys:
        assert res[k].shape == single[k].shape, k
        torch.testing.assert_close(res[k], single[k], **PARITY)
    assert res["cache.step0.cond.high.blocks.1.self_attn.hook_q"].shape[1] == 105  # all tokens, not a slice
    assert res["cache.step0.cond.high.blocks.1.cross_attn.hook_probs"].shape[2] == 105


def test_hook_replacements_reach_every_rank(driven, single):
    res, _ = driven
    torch.testing.assert_close(res["intervened_latents"], single["intervened_latents"], **PARITY)
    assert not torch.allclose(single["intervened_latents"], single["maps_latents"])


def test_a_raising_hook_leaves_the_workers_in_step(driven, single):
    res, facts = driven
    assert facts["hook_error"] == "boom" and facts["alive_after_hook_error"]
    torch.testing.assert_close(res["after_hook_error_latents"], single["branch_parent_latents"], **PARITY)


def test_workers_mirror_the_fp8_placement_and_loras_load_models_applied(mirror, single):
    res, _ = mirror
    torch.testing.assert_close(res["mirrored_step0_latents"], single["mirrored_step0_latents"], **PARITY)


def test_experts_changed_after_loading_are_refused_with_what_to_do(mirror):
    _, facts = mirror
    assert "differ from the notebook's" in facts["edited_error"]
    assert "quantize_fp8" in facts["edited_error"] and "load_models" in facts["edited_error"]


def test_close_leaves_no_worker_process(driven):
    _, facts = driven
    assert facts["pids"] and facts["pids_alive_after_close"] == [False] * len(facts["pids"])


def test_a_worker_dying_mid_forward_raises_a_clear_error_without_hanging(mirror):
    """The notebook's hook kills the worker during the first block: the next collective fails (gloo: connection
    closed), the error names the worker and its exit code, and later calls refuse with a hint to restart."""
    _, facts = mirror
    assert "worker 1" in facts["death"] and "exited with code -9" in facts["death"]  # a hang fails the driver's timeout
    assert "worker 1" in facts["death_next"] and "start new ones" in facts["death_next"]
    assert not facts["death_closed_alive"]


def test_token_dims_of_every_hook_point():
    from wclab.models.dit import DiT
    from wclab.workers import token_dim

    names = DiT.from_checkpoint(TINY_MODELS / "dit_high_tiny.safetensors", num_heads=4).hook_points()
    dims = {n: token_dim(n) for n in names}
    assert dims["hook_embed"] is None and dims["hook_head_out"] is None and dims["blocks.0.hook_mod"] is None
    assert dims["blocks.0.cross_attn.hook_k"] is None and dims["blocks.0.cross_attn.hook_v"] is None
    assert dims["blocks.1.cross_attn.hook_bias"] == 2 and dims["blocks.1.cross_attn.hook_probs"] == 2
    assert dims["blocks.1.self_attn.hook_q"] == 1 and dims["blocks.1.hook_out"] == 1


def test_without_several_gpus_the_notebook_helper_does_nothing(capsys):
    from wclab.workers import workers_if_several_gpus

    if torch.cuda.device_count() > 1:
        pytest.skip("several GPUs are visible")
    assert workers_if_several_gpus(object()) is None
    assert "GPU" in capsys.readouterr().out


def test_bad_requests_name_what_was_expected():
    from types import SimpleNamespace

    from wclab.workers import WorkerError, start_workers

    cpu = SimpleNamespace(device=torch.device("cpu"))
    with pytest.raises(WorkerError, match="how many processes"):
        start_workers(cpu)
    with pytest.raises(WorkerError, match="at least 2 processes"):
        start_workers(cpu, 1)
    with pytest.raises(WorkerError, match=r"devices: expected 3"):
        start_workers(cpu, 3, devices=["cpu", "cpu"])


def drive_cuda(out_dir: Path) -> None:
    """On a machine with several GPUs (not part of the CPU suite): ``python tests/test_workers.py --cuda OUT``
    runs the scenarios on cuda:0 alone and then through workers on every GPU (NCCL), on tiny random-weight
    checkpoints, and writes OUT/cuda.json with the largest differences and the death check."""
    import tempfile

    from wclab.models.loading import load_models
    from wclab.testing import make_tiny_checkpoints
    from wclab.workers import start_workers

    scene_file = REPO / "examples" / "ci" / "ball.json"
    facts: dict = {"gpus": torch.cuda.device_count(), "torch": torch.__version__}
    tiny = make_tiny_checkpoints(tempfile.mkdtemp())  # kept: the workers load the experts from these files
    device = os.environ.get("WCLAB_WORKERS_CHECK_DEVICE", "cuda:0")  # "cpu": a dry run of this script (gloo)
    n = None if device.startswith("cuda") else 2  # None: every GPU
    models = load_models(tiny, device=device, dtype=torch.float32, preview=False)
    single = scenarios(base_session(models, scene_file))
    t0 = time.monotonic()
    with start_workers(models, n, progress=False, timeout=60) as workers:
        facts["start_s"], facts["pids"] = time.monotonic() - t0, workers.pids
        base = base_session(workers.models, scene_file)
        res = scenarios(base)
        facts["max_abs_diff"] = {k: float((res[k].float() - single[k].float().to(res[k].device)).abs().max())
                                 for k in single}
        facts["shapes_equal"] = all(res[k].shape == single[k].shape for k in single)
        t0 = time.monotonic()
        base.branch().run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        facts["two_steps_s"] = time.monotonic() - t0
    facts["pids_alive_after_close"] = [_alive(p) for p in facts["pids"]]
    (out_dir / "cuda_parity.json").write_text(json.dumps(facts, indent=1))  # before the death check
    print(json.dumps(facts), flush=True)
    workers = start_workers(models, n, progress=False, timeout=20)
    s = base_session(workers.models, scene_file)
    death, facts["death_s"] = kill_a_worker_mid_forward(workers, s)
    facts["death"] = death[-600:] if death else death
    workers.close()
    facts["alive_after_death_close"] = [_alive(p) for p in workers.pids]
    (out_dir / "cuda.json").write_text(json.dumps(facts, indent=1))
    print(json.dumps(facts, indent=1))


if __name__ == "__main__":
    if sys.argv[1] == "--cuda":
        drive_cuda(Path(sys.argv[2]))
    else:
        drive(Path(sys.argv[1]), sys.argv[2])
