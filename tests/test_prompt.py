"""build_prompt: the reference's `Object k[ appears]: <caption>` lines, judged on the scene's own size."""
from __future__ import annotations

import pytest

from conftest import EXAMPLES, FIXTURES, load_golden
from wclab.conditions import load_json
from wclab.conditions.prompt import build_prompt
from wclab.errors import ConditionError

SCENES = {"door": EXAMPLES / "door.json", "mouse_dog": EXAMPLES / "mouse_dog.json",
          "synth_small": FIXTURES / "synth_small.json"}


@pytest.fixture(scope="module")
def synth():
    return load_json(SCENES["synth_small"])


@pytest.mark.parametrize("name", SCENES)
def test_prompt_text_and_caption_order_equal_reference_golden(name):
    meta, _ = load_golden(f"cond_{name}")
    prompt = build_prompt(load_json(SCENES[name]))
    assert prompt.text == meta["text_prompt"]
    assert prompt.caption_order == meta["id_caption_order"]
    assert list(prompt.caption_order) == list(meta["id_caption_order"])  # line order, too
    assert prompt.lines == meta["text_prompt"].split("\n")


def test_object_appears_when_a_trajectory_starts_off_image(synth):
    prompt = build_prompt(synth)
    assert prompt.entering == {"2"}  # synth_small's object 2 starts at [-1, -1]
    assert prompt.lines[1].startswith("Object 2 appears: ")
    assert prompt.lines[0].startswith("Object 1: ") and prompt.lines[2].startswith("Object 3: ")


def test_entering_is_judged_on_scene_size_not_480x832(synth):
    """x = 300 is inside an 832-wide image but outside synth_small's 224-wide one."""
    i = next(k for k, t in enumerate(synth.trajectories) if str(t.id) == "1")
    t = synth.trajectories[i]
    moved = synth.with_trajectory(i, t.replace(points=[(300.0, 50.0)] + list(t.points[1:])))
    assert build_prompt(moved).lines[0].startswith("Object 1 appears: ")
    on_edge = synth.with_trajectory(i, t.replace(points=[(synth.width - 0.5, 50.0)] + list(t.points[1:])))
    assert build_prompt(on_edge).lines[0].startswith("Object 1: ")


def test_captions_are_whitespace_collapsed_and_lines_joined_without_trailing_newline(synth):
    scene = synth.replace(captions={"1": "  a red\n\tball  ", "2": "b", "3": "c  d"})
    prompt = build_prompt(scene)
    assert prompt.text == "Object 1: a red ball\nObject 2 appears: b\nObject 3: c d"
    assert prompt.caption_order == {"1": 0, "2": 1, "3": 2}


def test_caption_order_follows_id_caption_map_order_not_ids(synth):
    scene = synth.replace(captions={"3": "c", "1": "a"})
    prompt = build_prompt(scene)
    assert prompt.caption_order == {"3": 0, "1": 1}
    assert prompt.text == "Object 1: c\nObject 2: a"
    assert prompt.ids == ["3", "1"]


def test_uncaptioned_entering_objects_are_not_in_prompt(synth):
    scene = synth.replace(captions={"1": "a", "3": "c"})  # object 2 (entering) has no caption
    prompt = build_prompt(scene)
    assert prompt.entering == frozenset()
    assert prompt.text == "Object 1: a\nObject 2: c"


def test_empty_id_caption_map_raises(synth):
    with pytest.raises(ConditionError, match="id_caption_map"):
        build_prompt(synth.replace(captions={}))
