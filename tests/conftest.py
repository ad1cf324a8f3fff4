"""Shared test fixtures: where ../shared lives (read-only reference goldens and tiny models)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

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
