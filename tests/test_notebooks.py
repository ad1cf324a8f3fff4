"""Every notebook in notebooks/ runs top to bottom headless on the CI profile (tiny models, smallest sizes, fixed
seeds), and is stored in git without outputs."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import run_notebooks  # noqa: E402

from wclab.checkpoints import released_files
from wclab.models.loading import resolve_paths
from wclab.profile import ProfileError, released_available, select, tiny_checkpoints

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT = 300  # seconds for one cell: a hang fails the test instead of stalling CI
# what each notebook shows on the CI profile: (matplotlib figures, inline videos)
SHOWS = {"01": (1, 2), "02": (2, 6), "03": (3, 8), "04": (5, 2), "05": (3, 1), "06": (2, 1), "07": (2, 0),
         "08": (8, 4)}


def execute(path: Path, profile: str = "ci", cache: Path | None = None) -> tuple[nbformat.NotebookNode, float]:
    """Run ``path`` in a fresh python3 kernel (working directory: notebooks/) with ``WCLAB_PROFILE=profile``
    (bench/run_notebooks.py's runner); fails the test naming the cell on the first error. Returns the executed
    notebook and the seconds it took."""
    env = {"WCLAB_CACHE": str(cache)} if cache else {}  # one thread per kernel, as every process here (conftest)
    nb, seconds, error = run_notebooks.execute(path, profile, env, cell_timeout=CELL_TIMEOUT)
    if error:
        pytest.fail(f"{path.name} failed on the {profile} profile:\n{error}")
    return nb, seconds


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One tiny-checkpoint cache for all test workers (the profile writes it atomically on first use)."""
    path = tmp_path_factory.getbasetemp().parent / "wclab-cache"
    path.mkdir(exist_ok=True)
    return path


# ------------------------------------------------------------------------------------------------ the switch
def test_auto_profile_follows_wclab_profile(monkeypatch):
    monkeypatch.setenv("WCLAB_PROFILE", "ci")
    assert select("auto").name == "ci"
    assert select("tiny").name == "tiny"  # an explicit name wins over the environment


def test_auto_profile_is_tiny_without_and_released_with_the_released_files(tmp_path, monkeypatch):
    monkeypatch.delenv("WCLAB_PROFILE", raising=False)
    monkeypatch.setenv("WCLAB_CHECKPOINTS", str(tmp_path))
    assert select().name == "tiny" and not released_available()
    for f in released_files("WorldCanvas"):
        if f.required:
            path = tmp_path / f.path
            if f.role == "tokenizer":
                path.mkdir(parents=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
    profile = select()
    assert profile.name == "released" and profile.checkpoint_dir == tmp_path
    assert profile.size == (480, 832, 81) and profile.steps == 50 and profile.examples == "full"


def test_gpu_profile_is_the_full_size_with_few_steps_and_needs_a_gpu(monkeypatch, tmp_path):
    import torch

    monkeypatch.setenv("WCLAB_CHECKPOINTS", str(tmp_path))
    if not torch.cuda.is_available():
        with pytest.raises(ProfileError, match="needs a CUDA GPU"):
            select("gpu")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    profile = select("gpu")
    assert profile.size == (480, 832, 81) and profile.steps == 4 and profile.examples == "full"
    assert profile.checkpoint_dir == tmp_path and profile.dtype == torch.bfloat16


def test_the_model_cache_holds_one_set_at_a_time(monkeypatch, tmp_path):
    """Asking for another variant frees the cached one first: two full-size sets never sit in memory together."""
    import wclab.profile as wp

    loaded = []
    monkeypatch.setattr(wp, "tiny_checkpoints", lambda: tmp_path)
    monkeypatch.setattr("wclab.models.loading.load_models", lambda d, variant, **kw: loaded.append(variant) or variant)
    wp.clear_models()
    ci = select("ci")
    assert ci.models() == "WorldCanvas" and ci.models() == "WorldCanvas" and loaded == ["WorldCanvas"]
    assert ci.models("WorldCanvas_ref") == "WorldCanvas_ref" and list(wp._models_cache.values()) == ["WorldCanvas_ref"]
    wp.clear_models()


def test_unknown_profile_or_example_raises_naming_the_choices():
    with pytest.raises(ProfileError, match="'tiny', 'ci', 'released'"):
        select("fast")
    with pytest.raises(ProfileError, match="ball"):
        select("ci").example("no_such_scene")


def test_profile_settings_carry_its_steps_and_take_overrides():
    settings = select("ci").settings(seed=3, cfg=2.0)
    assert (settings.steps, settings.seed, settings.cfg) == (2, 3, 2.0)
    assert settings.height is None  # sizes come from the scene


def test_tiny_checkpoints_are_written_once_with_both_variants(tmp_path, monkeypatch):
    monkeypatch.setenv("WCLAB_CACHE", str(tmp_path))
    first = tiny_checkpoints()
    stamp = (first / "wclab_tiny.json").stat().st_mtime_ns
    assert tiny_checkpoints() == first and (first / "wclab_tiny.json").stat().st_mtime_ns == stamp
    for variant in ("WorldCanvas", "WorldCanvas_ref"):
        assert resolve_paths(first, variant=variant).layout == "tiny"
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no scratch folders left behind


# ------------------------------------------------------------------------------------------------ notebooks
def test_the_eight_numbered_notebooks_are_there():
    assert [p.name[:3] for p in PATHS] == [f"{i:02d}_" for i in range(1, 9)]


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"cell {i} has outputs: strip them"
    assert "widgets" not in nb.metadata, "saved widget state: strip it (nbstripout)"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_is_what_nbstripout_would_commit(path):
    nbstripout = pytest.importorskip("nbstripout")  # in the test extras; the git filter of notebooks/README.md
    nb = nbformat.read(path, as_version=4)
    stripped = nbstripout.strip_output(copy.deepcopy(nb), keep_output=False, keep_count=False, keep_id=False)
    assert stripped == nb


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_has_the_profile_switch_first(path):
    nb = nbformat.read(path, as_version=4)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert first_code.source.strip() == 'PROFILE = "auto"'


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_runs_top_to_bottom_on_the_ci_profile_and_shows_its_figures_and_videos(path, shared_cache):
    nb, seconds = execute(path, "ci", shared_cache)
    seen = run_notebooks.shown(nb)
    assert seen["errors"] == 0
    assert (seen["figures"], seen["videos"]) == SHOWS[path.name[:2]], seen
    print(f"{path.name}: {seconds:.1f} s, {seen}")
