"""Reading and writing the drawing tool's JSON: exact round trips, every input form, the input left untouched."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from conftest import EXAMPLES, FIXTURES
from wclab.conditions import RLEMask, Scene, load_json, ops
from wclab.errors import ConditionError

FILES = {
    "door": EXAMPLES / "door.json",
    "mouse_dog": EXAMPLES / "mouse_dog.json",
    "synth_small": FIXTURES / "synth_small.json",
}
SIZES = {"door": (480, 832, 81), "mouse_dog": (480, 832, 81), "synth_small": (128, 224, 17)}


def original(name: str):
    return json.loads(FILES[name].read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", FILES)
def test_round_trip_reproduces_the_file_value_exactly(name):
    value = original(name)
    scene = load_json(FILES[name])
    assert json.loads(scene.to_json()) == value  # same items, same int/float types, same float bits
    assert scene.to_list() == value
    assert scene.size == SIZES[name]


@pytest.mark.parametrize("name", FILES)
def test_round_trip_keeps_key_order_and_value_types(name):
    value = original(name)
    again = json.loads(load_json(FILES[name]).to_json())
    for a, b in zip(value, again):
        assert list(a) == list(b)
        if "tracking" in a:
            assert [type(v) for v in a["tracking_vis_value"]] == [type(v) for v in b["tracking_vis_value"]]
            assert type(a["r"]) is type(b["r"])
        if "id_caption_map" in a:
            assert list(a["id_caption_map"]) == list(b["id_caption_map"])  # prompt order


@pytest.mark.parametrize("name", FILES)
def test_loader_does_not_mutate_its_input(name):
    value = original(name)
    before = copy.deepcopy(value)
    scene = load_json(value)
    assert value == before
    # nor keep references into it: changing the input afterwards leaves the scene alone
    value[-5]["color_map"]["999"] = "blue"
    value[0]["tracking"][0][0] = 12345.0
    assert "999" not in scene.color_map and scene.trajectories[0].points[0][0] != 12345.0


@pytest.mark.parametrize("form", ["path", "str_path", "text", "bytes", "bytearray", "list"])
def test_every_input_form_loads_the_same_scene(form, tmp_path):
    path = FILES["synth_small"]
    text = path.read_text(encoding="utf-8")
    source = {"path": path, "str_path": str(path), "text": text, "bytes": text.encode("utf-8"),
              "bytearray": bytearray(text.encode("utf-8")), "list": json.loads(text)}[form]
    assert load_json(source) == load_json(path)


def test_indented_text_with_leading_whitespace_is_read_as_json():
    text = json.dumps(original("door"), indent=4)  # the tool saves with indent=4
    assert load_json("\n  " + text).to_list() == original("door")


def test_to_json_writes_the_file_it_returns(tmp_path):
    scene = load_json(FILES["mouse_dog"])
    out = tmp_path / "sub" / "scene.json"
    out.parent.mkdir()
    text = scene.to_json(out)
    assert out.read_text(encoding="utf-8") == text
    assert load_json(out) == scene
    assert json.loads(scene.to_json(indent=4)) == original("mouse_dog")


def test_non_ascii_captions_survive_a_file_round_trip(tmp_path):
    value = original("synth_small")
    value[0]["text"] = value[-1]["id_caption_map"]["1"] = "一只猫 — café"
    out = tmp_path / "u.json"
    load_json(value).to_json(out)
    assert json.loads(out.read_text(encoding="utf-8")) == value


def test_errors_name_the_file_they_came_from(tmp_path):
    value = original("synth_small")
    value[1]["r"] = "big"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(value), encoding="utf-8")
    with pytest.raises(ConditionError, match=r"^.*bad\.json: item 1: r: expected a number, got str"):
        load_json(bad)
    with pytest.raises(ConditionError, match=r"^mine: item 1: r:"):
        load_json(value, name="mine")


def test_missing_file_unreadable_path_and_non_utf8_bytes_raise_condition_error(tmp_path):
    with pytest.raises(ConditionError, match="no such conditions file"):
        load_json(tmp_path / "absent.json")
    with pytest.raises(ConditionError, match="cannot read"):
        load_json(tmp_path)  # a directory
    with pytest.raises(ConditionError, match="cannot read"):
        load_json("bad\0path")
    with pytest.raises(ConditionError, match="not UTF-8"):
        load_json(b"[\xff]")
    (tmp_path / "latin1.json").write_bytes(b'["caf\xe9"]')
    with pytest.raises(ConditionError, match="cannot read"):
        load_json(tmp_path / "latin1.json")


def test_writing_an_empty_scene_raises_empty_scene():
    scene = ops.new_scene(64, 64, 9)
    with pytest.raises(ConditionError, match="^empty scene"):
        scene.to_json()


def test_writing_a_non_finite_point_raises_instead_of_writing_nan():
    scene = load_json(FILES["synth_small"])
    t = scene.trajectories[0]
    bad = scene.with_trajectory(0, t.replace(points=[(float("nan"), 1.0)] + list(t.points[1:])))
    with pytest.raises(ConditionError, match="cannot be written as JSON"):
        bad.to_json()


def test_scene_views_match_the_file():
    scene = load_json(FILES["door"])
    assert scene.object_ids == ["3", "4"]
    assert [t.is_anchor for t in scene.trajectories] == [True, True, False, False]
    assert scene.entering_ids() == {"4"}  # id 4 is drawn from frame 20: frame 0 is the [-1, -1] placeholder
    t = scene.trajectories[3]
    assert t.track.shape == (81, 2) and t.vis.shape == (81,) and not t.track.flags.writeable
    np.testing.assert_array_equal(t.active_frames(), np.arange(81) >= 20)


def test_rle_mask_decodes_to_its_area_and_round_trips_through_an_array():
    scene = load_json(FILES["mouse_dog"])
    for t in scene.trajectories:
        m = t.mask.decode()
        assert m.shape == (480, 832) and m.dtype == bool and int(m.sum()) == t.mask.area
        assert RLEMask.from_array(m) == t.mask  # pycocotools re-encodes to the same bytes


def test_scene_is_immutable():
    scene = load_json(FILES["synth_small"])
    with pytest.raises(AttributeError):
        scene.height = 3  # type: ignore[misc]
    assert isinstance(scene, Scene) and isinstance(scene.trajectories, tuple)
