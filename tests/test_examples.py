"""The example scenes in examples/: loadable, of the size their folder claims, showing the features they claim,
and exactly what examples/make_examples.py regenerates."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wclab.conditions import load_json
from wclab.conditions.prompt import build_prompt
from wclab.profile import select

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load_script():
    spec = importlib.util.spec_from_file_location("make_examples", EXAMPLES / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


make_examples = _load_script()
CASES = [(size, name) for size in make_examples.SIZES for name in make_examples.SCENES]


def _scene(size: str, name: str):
    return load_json(EXAMPLES / size / f"{name}.json")


def _captioned(scene):
    return [t for t in scene.trajectories if not t.is_anchor]


def _displacement(traj) -> np.ndarray:
    """(dx, dy) pixels from the first to the last active point."""
    pts = traj.track[traj.active_frames()]
    return pts[-1] - pts[0]


def _on_image(xy, scene) -> bool:
    return 0 <= xy[0] < scene.width and 0 <= xy[1] < scene.height


def has_moving_object(scene) -> bool:
    """A captioned trajectory travels at least a tenth of the image's smaller side."""
    return any(np.hypot(*_displacement(t)) >= 0.1 * min(scene.height, scene.width) for t in _captioned(scene))


def has_entering_object(scene) -> bool:
    """A captioned trajectory's first drawn point lies off-image, later ones on it, and the prompt says 'appears'."""
    for k, obj_id in enumerate(scene.captions, start=1):
        for t in scene.trajectories_of(obj_id):
            pts = t.track[t.active_frames()]
            if not _on_image(pts[0], scene) and _on_image(pts[-1], scene):
                return f"Object {k} appears: " in build_prompt(scene).text
    return False


def has_invisible_segment(scene) -> bool:
    """A captioned trajectory is invisible for some frames strictly between visible ones."""
    for t in _captioned(scene):
        vis = t.vis[t.active_frames()] > 0
        hidden = np.flatnonzero(~vis)
        if len(hidden) and vis[: hidden[0]].any() and vis[hidden[-1] + 1:].any():
            return True
    return False


def has_camera_anchors(scene) -> bool:
    """At least two anchors (caption "None") move, all in the same direction (a camera motion)."""
    moves = [_displacement(t) for t in scene.trajectories if t.is_anchor]
    moves = [d / np.hypot(*d) for d in moves if np.hypot(*d) >= 0.05 * scene.width]
    return len(moves) >= 2 and all(float(a @ moves[0]) > 0.99 for a in moves)


CHECKS = {"moving object": has_moving_object, "entering object": has_entering_object,
          "invisible segment": has_invisible_segment, "camera anchors": has_camera_anchors}


# ------------------------------------------------------------------------------------------------ the files
@pytest.mark.parametrize("size,name", CASES)
def test_example_loads_at_its_folders_size_with_a_matching_image(size, name):
    scene = _scene(size, name)
    assert scene.size == make_examples.SIZES[size]
    with Image.open(EXAMPLES / size / f"{name}.png") as im:
        assert im.mode == "RGB" and im.size == (scene.width, scene.height)


@pytest.mark.parametrize("size,name", CASES)
def test_example_shows_the_features_it_claims(size, name):
    scene = _scene(size, name)
    claimed = make_examples.FEATURES[name]
    for feature in claimed:
        assert CHECKS[feature](scene), f"{size}/{name} should show: {feature}"


def test_the_examples_cover_every_required_feature():
    assert set().union(*make_examples.FEATURES.values()) == set(CHECKS)
    assert set(make_examples.FEATURES) == set(make_examples.SCENES)


@pytest.mark.parametrize("size,name", CASES)
def test_every_on_image_start_point_lies_on_its_objects_mask(size, name):
    scene = _scene(size, name)
    for t in scene.trajectories:
        mask = t.mask.decode()
        assert mask.any()
        x, y = t.track[t.active_frames()][0]
        if _on_image((x, y), scene):
            assert mask[int(y), int(x)], f"trajectory id {t.id} starts at ({x}, {y}) outside its mask"


def test_features_checks_reject_a_scene_without_them():
    still = _scene("small", "ball")
    ball = still.trajectories[0]
    frozen = ball.replace(points=np.repeat(ball.track[:1], ball.frames, axis=0))
    static = still.with_trajectory(0, frozen)
    assert not any(check(static) for check in CHECKS.values())


def test_profiles_find_their_examples():
    for name in ("tiny", "ci"):
        profile = select(name)
        example = profile.example("ball")
        assert example.scene.size == profile.size
        assert example.image.shape == (profile.height, profile.width, 3) and example.image.dtype == np.uint8


# ------------------------------------------------------------------------------------------------ regeneration
def test_make_examples_regenerates_byte_identical_files(tmp_path):
    make_examples.main(["--out", str(tmp_path)])
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(EXAMPLES) for size in make_examples.SIZES
                       for p in (EXAMPLES / size).rglob("*") if p.is_file())
    assert made == committed  # no missing and no stale example files
    for rel in made:
        assert (tmp_path / rel).read_bytes() == (EXAMPLES / rel).read_bytes(), f"{rel} differs when regenerated"
