"""Shared test fixtures: where ../shared lives (read-only reference goldens and tiny models)."""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

# One CPU thread in every process of the suite (subprocesses, notebook kernels and torchrun's ranks inherit it).
# torchrun gives each of several ranks one OpenMP thread anyway, and on some CPUs (AVX-512 builds of MKL / oneDNN) a
# kernel's float rounding depends on how many threads split it: the tests that hold one process and several ranks
# bitwise equal need the same count here. The suite runs on 2 cores as 2 pytest-xdist workers, so one thread each is
# also what uses the machine (idle OpenMP threads spinning on a busy machine cost more than they save).
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

torch.set_num_threads(1)

# Property tests draw the same examples on every run (no example database, no random seed), so a result never
# depends on what an earlier run stored.
settings.register_profile("wclab", derandomize=True, database=None, deadline=None)
settings.load_profile("wclab")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WCLAB_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"
REFERENCE = FIXTURES / "reference"
TINY_MODELS = REFERENCE / "models"
TOKENIZER = FIXTURES / "tokenizer"
EXAMPLES = FIXTURES / "worldcanvas_examples"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"reference fixture missing: {path} (set WCLAB_SHARED to the shared/ folder)")
    return path


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return _need(REFERENCE)


@pytest.fixture(scope="session")
def tiny_models_dir() -> Path:
    return _need(TINY_MODELS)


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    return _need(TOKENIZER)


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return _need(EXAMPLES)


def load_golden(name: str):
    """(meta dict, tensors dict) of ``reference/golden_<name>.{json,safetensors}``."""
    from safetensors.torch import load_file

    meta = json.loads(_need(REFERENCE / f"golden_{name}.json").read_text(encoding="utf-8"))
    tensors = load_file(str(_need(REFERENCE / f"golden_{name}.safetensors")))
    return meta, tensors


@functools.lru_cache(maxsize=1)
def fixture_models():
    """The reference's tiny fixture models (fp32, CPU), loaded once per test process."""
    from wclab.models.loading import load_models

    return load_models(_need(TINY_MODELS), tokenizer=_need(TOKENIZER))


@functools.lru_cache(maxsize=1)
def tiny_base_session():
    """Prepared, not stepped: synth_small (128x224x17), solid start image, seed 0, 2 steps, CFG 5, β 30, full
    per-step records, on the fixture models. Shared by test modules: always ``.branch()`` it before use."""
    from wclab.conditions import load_json
    from wclab.image import solid_image
    from wclab.sampler import Session, Settings

    scene = load_json(_need(FIXTURES / "synth_small.json"))
    return Session(fixture_models(), scene, solid_image(128, 224, (90, 120, 150)), Settings(steps=2, seed=0),
                   progress=False)


# ---------------------------------------------------------------- helpers for tests that start processes

def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(**extra: str) -> dict:
    """This environment (one OpenMP thread: see the top of this file) with the repository first on PYTHONPATH."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **extra)


def finish(proc, what: str, timeout_s: float) -> tuple[str, str]:
    """Wait for a ``subprocess.Popen`` started with text pipes; fail the test naming ``what`` with its output when
    it times out or exits non-zero. Returns (stdout, stderr)."""
    import subprocess

    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
        pytest.fail(f"{what} did not finish in {timeout_s} s:\n{stderr[-3000:]}")
    if proc.returncode != 0:
        pytest.fail(f"{what} failed ({proc.returncode}):\n{stdout[-2000:]}\n{stderr[-6000:]}")
    return stdout, stderr

