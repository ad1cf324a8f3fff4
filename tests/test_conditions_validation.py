"""Malformed conditions raise ConditionError naming the item index, the field, what was expected and what was found.

Each test breaks one thing in a copy of ``fixtures/synth_small.json`` (items 0-4 trajectories of 17 frames on a
128×224 image, item 5 color_map, 6-8 descriptions, 9 id_caption_map {1, 2, 3}; ids 4 and 5 are anchors).
"""
from __future__ import annotations

import base64
import copy
import json
import re

import pytest

from conftest import EXAMPLES, FIXTURES
from wclab.conditions import load_json
from wclab.conditions.rle import MAX_SIDE, RLEMask
from wclab.errors import ConditionError

SYNTH = json.loads((FIXTURES / "synth_small.json").read_text(encoding="utf-8"))


def base() -> list:
    return copy.deepcopy(SYNTH)


def fails(value, *patterns: str) -> str:
    """Load ``value``; assert ConditionError whose message contains every regex in ``patterns``."""
    with pytest.raises(ConditionError) as info:
        load_json(value, name="synth.json")
    msg = str(info.value)
    assert msg.startswith("synth.json"), msg
    for p in patterns:
        assert re.search(p, msg), f"{p!r} not in {msg!r}"
    return msg


def counts_of(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


# ----------------------------------------------------------------------------- file structure
def test_top_level_must_be_a_list():
    fails({"tracking": []}, r"expected a JSON list", r"got dict")


def test_item_that_is_not_an_object_names_its_index():
    v = base()
    v.insert(2, [1, 2])
    fails(v, r"item 2: expected an object", r"got list")


def test_empty_scene_without_trajectories_is_rejected():
    fails(base()[5:], r"empty scene")


def test_missing_text_item_is_named():
    v = base()
    del v[7]
    fails(v, r"missing text item\(s\) \['description_motion_raw'\]")


def test_text_items_out_of_order_are_rejected():
    v = base()
    v[6], v[7] = v[7], v[6]
    fails(v, r"out of order", r"expected \['color_map', 'description_global'")


def test_text_item_given_twice_names_both_items():
    v = base()
    v.insert(7, {"description_global": "again"})
    fails(v, r"item 7: description_global: given twice \(first at item 6\)")


def test_unknown_text_item_is_rejected():
    v = base()
    v.insert(5, {"crop": [0, 0]})
    fails(v, r"item 5: unknown field 'crop'")


def test_trajectory_after_the_text_items_is_rejected():
    v = base()
    v.insert(7, copy.deepcopy(v[0]))
    fails(v, r"item 7: trajectory items must come before the text items")


def test_duplicate_key_in_json_text_is_rejected_not_silently_overwritten():
    text = json.dumps(base()).replace('"r": 5,', '"r": 5, "r": 6,', 1)
    fails(text, r"key 'r' appears twice")


def test_invalid_json_text_reports_line_and_column():
    fails("[\n  {,}]", r"not valid JSON", r"line 2 column 4")


# ----------------------------------------------------------------------------- trajectory fields
def test_missing_trajectory_field_names_item_and_field():
    v = base()
    del v[2]["r"]
    fails(v, r"item 2: missing field\(s\) \['r'\]")


def test_item_with_only_some_trajectory_fields_is_a_trajectory_missing_the_rest():
    v = base()
    v.insert(1, {"id": 7, "text": "x"})
    fails(v, r"item 1: missing field\(s\) \['tracking', 'tracking_vis_value', 'r', 'mask_cluster'\]")


def test_extra_trajectory_field_is_rejected():
    v = base()
    v[3]["speed"] = 2
    fails(v, r"item 3: unknown field\(s\) \['speed'\]")


def test_tracking_must_be_a_non_empty_list():
    v = base()
    v[1]["tracking"] = []
    fails(v, r"item 1: tracking: expected a non-empty list of \[x, y\] pairs, got list")


def test_tracking_entry_that_is_not_a_pair_names_the_frame():
    v = base()
    v[1]["tracking"][5] = [1.0, 2.0, 3.0]
    fails(v, r"item 1: tracking\[5\]: expected an \[x, y\] pair, got list \[1\.0, 2\.0, 3\.0\]")


@pytest.mark.parametrize("bad, got", [("12", "str '12'"), (None, "null"), (True, "bool True"), ([3], "list")])
def test_non_numeric_coordinate_names_frame_and_axis(bad, got):
    v = base()
    v[0]["tracking"][4][1] = bad
    fails(v, r"item 0: tracking\[4\]\[1\]: expected a number, got " + re.escape(got))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 10 ** 400])
def test_non_finite_coordinate_in_a_value_is_rejected(bad):
    v = base()
    v[2]["tracking"][3][0] = bad
    fails(v, r"item 2: tracking\[3\]\[0\]: expected a finite number")


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinity_constants_in_json_text_are_located(token):
    v = base()
    v[2]["tracking"][3][0] = 7777.5
    text = json.dumps(v).replace("7777.5", token)
    fails(text, r"item 2: tracking\[3\]\[0\]: expected a finite number")


def test_track_length_differs_from_the_first_trajectory():
    v = base()
    v[3]["tracking"].pop()
    v[3]["tracking_vis_value"].pop()
    fails(v, r"item 3: tracking: expected 17 frames \(as item 0\), got 16")


def test_visibility_length_must_match_tracking():
    v = base()
    v[2]["tracking_vis_value"].append(1)
    fails(v, r"item 2: tracking_vis_value: expected 17 values \(one per tracking frame\), got 18")


def test_visibility_must_be_a_list():
    v = base()
    v[2]["tracking_vis_value"] = 1
    fails(v, r"item 2: tracking_vis_value: expected a list of 17 numbers, got int")


@pytest.mark.parametrize("bad, expect", [(2, r"expected a visibility in \[0, 1\].*got 2"), ("1", r"expected a number, got str"),
                                         (float("nan"), r"expected a finite number")])
def test_visibility_values_are_numbers_in_0_1(bad, expect):
    v = base()
    v[4]["tracking_vis_value"][9] = bad
    fails(v, r"item 4: tracking_vis_value\[9\]: " + expect)


@pytest.mark.parametrize("bad, expect", [(-1, r"expected a radius >= 0"), ("5", r"expected a number, got str"),
                                         (float("inf"), r"expected a finite number")])
def test_radius_must_be_a_finite_non_negative_number(bad, expect):
    v = base()
    v[1]["r"] = bad
    fails(v, r"item 1: r: " + expect)


@pytest.mark.parametrize("bad, got", [("3", "str '3'"), (3.0, "float 3.0"), (False, "bool False"), (None, "null")])
def test_id_must_be_an_integer(bad, got):
    v = base()
    v[0]["id"] = bad
    fails(v, r"item 0: id: expected an integer object id, got " + re.escape(got))


def test_text_must_be_a_string():
    v = base()
    v[3]["text"] = None
    fails(v, r"item 3: text: expected a caption string \('None' for an anchor\), got null")


# ----------------------------------------------------------------------------- masks
def test_mask_cluster_needs_exactly_size_and_counts():
    v = base()
    del v[1]["mask_cluster"]["counts"]
    fails(v, r"item 1: mask_cluster: expected \{'size': \[H, W\], 'counts': base64\}")


@pytest.mark.parametrize("bad", [[128], [0, 224], [128, 224.0], "128x224", [MAX_SIDE + 1, 1]])
def test_mask_size_must_be_two_positive_integers(bad):
    v = base()
    v[2]["mask_cluster"]["size"] = bad
    fails(v, r"item 2: mask_cluster\.size: expected \[H, W\] integers in 1\.\.")


def test_mask_size_differing_from_the_image_size_is_rejected():
    v = base()
    v[3]["mask_cluster"] = RLEMask.full(64, 224).to_json()
    fails(v, r"item 3: mask_cluster\.size: expected \[128, 224\] \(the image size of item 0\), got \[64, 224\]")


@pytest.mark.parametrize("counts, expect", [("ab!d", "undecodable"), ("abc", "undecodable"), ("Zm9v\u00e9", "undecodable")])
def test_corrupt_base64_counts_are_rejected(counts, expect):
    v = base()
    v[1]["mask_cluster"]["counts"] = counts
    fails(v, r"item 1: mask_cluster\.counts: expected base64 of COCO RLE bytes, got " + expect)


@pytest.mark.parametrize("raw, expect", [
    (b"\x01\x02", r"byte .* at 0 is not a COCO RLE character"),
    (b"0P", r"truncated RLE run"),
    (b"0@", r"RLE run 1 has negative length"),
    (b"000", r"RLE runs cover 0 pixels, expected size\[0\]\*size\[1\] = 28672"),
    (b"o" * 9, r"RLE run 0 is longer than 7 characters"),
])
def test_corrupt_rle_bytes_are_rejected(raw, expect):
    v = base()
    v[4]["mask_cluster"]["counts"] = counts_of(raw)
    fails(v, r"item 4: mask_cluster\.counts: " + expect)


def test_rle_covering_the_wrong_pixel_count_is_rejected_even_though_pycocotools_would_decode_it():
    v = base()
    v[0]["mask_cluster"]["counts"] = RLEMask.full(128, 225).counts  # one column too many
    fails(v, r"item 0: mask_cluster\.counts: RLE runs cover 28800 pixels, expected .* = 28672")


# ----------------------------------------------------------------------------- captions and ids
def test_id_caption_map_id_without_a_trajectory_is_rejected():
    v = base()
    v[9]["id_caption_map"]["42"] = "a ghost"
    fails(v, r"item 9: id_caption_map\['42'\]: expected the id of a trajectory \(ids: \['1', '2', '3', '4', '5'\]\)")


def test_caption_none_in_id_caption_map_is_rejected():
    v = base()
    v[9]["id_caption_map"]["2"] = "None"
    fails(v, r"item 9: id_caption_map\['2'\]: expected a caption, got 'None'")


@pytest.mark.parametrize("bad, expect", [("  \n", "expected a caption, got a blank string"), (3, "expected a caption string, got int")])
def test_caption_must_be_a_non_blank_string(bad, expect):
    v = base()
    v[9]["id_caption_map"]["1"] = bad
    fails(v, r"item 9: id_caption_map\['1'\]: " + expect)


def test_empty_id_caption_map_is_rejected_like_the_reference_does():
    v = base()
    v[9]["id_caption_map"] = {}
    fails(v, r"item 9: id_caption_map: expected at least one captioned object, got an empty map")


def test_id_caption_map_must_be_an_object():
    v = base()
    v[9]["id_caption_map"] = [["1", "a"]]
    fails(v, r"item 9: id_caption_map: expected an object id -> caption, got list")


def test_anchor_trajectory_whose_id_has_a_caption_is_rejected():
    v = base()
    v[0]["text"] = "None"  # id 1 is captioned in the map
    fails(v, r"item 0: text: 'None' marks a camera/background anchor, but id 1 has caption", r"\(item 9\)")


def test_captioned_trajectory_whose_id_is_not_in_the_map_loads_as_in_mouse_dog():
    # mouse_dog.json: id 1 (three mouse trajectories) has caption text but only id 2 is in the map
    scene = load_json(EXAMPLES / "mouse_dog.json")
    assert scene.object_ids == ["2"]
    assert [t.id for t in scene.trajectories if not t.is_anchor] == [1, 1, 1, 2]


def test_trajectory_text_differing_from_its_caption_loads_and_the_map_wins():
    v = base()
    v[0]["text"] = "an old caption"
    scene = load_json(v)
    assert scene.captions["1"] == "object 1 moves along its path."
    assert scene.trajectories[0].text == "an old caption"  # kept as written, so the file round-trips


def test_every_caption_in_the_example_files_equals_its_trajectories_text():
    # the fact behind the rule above: in released files map captions and trajectory texts agree
    for name in ("door", "mouse_dog"):
        scene = load_json(EXAMPLES / f"{name}.json")
        for obj_id, caption in scene.captions.items():
            assert {t.text for t in scene.trajectories_of(obj_id)} == {caption}


# ----------------------------------------------------------------------------- other text items
@pytest.mark.parametrize("bad, expect", [({"1": float("nan")}, r"color_map\['1'\]: expected a finite number"),
                                         ({"1": {1, 2}}, r"color_map\['1'\]: expected JSON data, got set"),
                                         ("red", r"color_map: expected an object, got str")])
def test_color_map_must_be_plain_json(bad, expect):
    v = base()
    v[5]["color_map"] = bad
    fails(v, r"item 5: " + expect)


def test_description_must_be_a_string():
    v = base()
    v[8]["description_motion"] = ["walk"]
    fails(v, r"item 8: description_motion: expected a string, got list")


def test_python_dict_with_non_string_keys_is_rejected():
    v = base()
    v[9]["id_caption_map"] = {1: "object 1"}
    fails(v, r"item 9: id_caption_map: expected string keys \(object ids\), got key int 1")
