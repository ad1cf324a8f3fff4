"""Property-based fuzzing of the conditions loader: any input either loads or raises ConditionError, never
anything else; whatever loads writes back the very value it was given; valid scenes round-trip.

Inputs: arbitrary JSON values, raw text and bytes, byte edits of a valid file, and structured mutations of valid
scenes (fields dropped/added, wrong types, NaN/inf, wrong lengths, corrupt base64 and RLE bytes).
"""
from __future__ import annotations

import base64
import copy
import json
import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as mask_util

from conftest import FIXTURES
from wclab.conditions import load_json, ops
from wclab.conditions.rle import RLEMask, _parse_rle_bytes
from wclab.conditions.validate import DICT_ITEMS, TRAJECTORY_FIELDS
from wclab.errors import ConditionError

FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SYNTH = json.loads((FIXTURES / "synth_small.json").read_text(encoding="utf-8"))


def _tiny_scene_value() -> list:
    """A second, smaller valid base: 16×32 image, 5 frames, an entering object and an anchor."""
    m = np.zeros((16, 32), bool)
    m[2:6, 3:9] = True
    scene = ops.new_scene(16, 32, 5)
    scene = ops.add_trajectory(scene, ops.make_trajectory([(-4, 3), (20, 8)], 1, 5, obj_id=7, mask=m, frames=5,
                                                          text="a kite"))
    scene = ops.add_trajectory(scene, ops.static_anchor((30, 15), obj_id=8, mask=~m, frames=5))
    return scene.to_list()


BASES = [SYNTH, _tiny_scene_value()]
FIELD_NAMES = list(TRAJECTORY_FIELDS) + list(DICT_ITEMS) + ["size", "counts", "1", "2", "4"]
SPECIALS = [float("nan"), float("inf"), -float("inf"), -1, 0, 1, 2, -1.0, 1e308, 10 ** 30, True, None, "", "None",
            "1", [], {}, [-1, -1], [0.5, float("nan")], {"size": [1, 1], "counts": "MQ=="}]

scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
           | st.sampled_from(SPECIALS))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), inner, max_size=4),
    max_leaves=6,
)


def check_loads_or_condition_error(source) -> str:
    """The property itself: success, or ConditionError (anything else propagates and fails the test)."""
    try:
        scene = load_json(source)
    except ConditionError as e:
        assert str(e)  # a message, not an empty error
        event(re.sub(r"\d+|'[^']*'|\[.*", "#", str(e).split(": ", 1)[-1])[:48])  # --hypothesis-show-statistics
        return "error"
    event("loads")
    if isinstance(source, list):  # what loads must write back the same value (nothing dropped or "fixed")
        assert json.loads(scene.to_json()) == source
    else:
        scene.to_json()
    return "ok"


# ----------------------------------------------------------------------------- arbitrary inputs
@FUZZ
@given(value=st.lists(json_values, max_size=6) | json_values)  # mostly lists, as a conditions file is
def test_arbitrary_json_values_load_or_raise_condition_error(value):
    check_loads_or_condition_error(value)
    check_loads_or_condition_error(json.dumps(value).encode("utf-8"))


@FUZZ
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass")),
       text=st.text(max_size=200))
def test_raw_bytes_and_text_load_or_raise_condition_error(raw, text):
    check_loads_or_condition_error(raw)
    check_loads_or_condition_error("[" + text)
    check_loads_or_condition_error(text)  # not JSON-looking: read as a path


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_byte_edits_of_a_valid_file_load_or_raise_condition_error(data):
    raw = bytearray(json.dumps(data.draw(st.sampled_from(BASES))).encode("utf-8"))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        edit = data.draw(st.sampled_from(["replace", "delete", "insert"]))
        b = data.draw(st.integers(0, 255) | st.sampled_from(list(b'[]{}",:-.0123456789eNaI ')))
        if edit == "replace":
            raw[i] = b
        elif edit == "delete":
            del raw[i]
        else:
            raw.insert(i, b)
    check_loads_or_condition_error(bytes(raw))


# ----------------------------------------------------------------------------- structured mutations of valid scenes
def all_paths(value) -> dict[tuple, list[list]]:
    """Every path (keys/indices) into ``value``, grouped by kind: the path with list indices written ``#``."""
    kinds: dict[tuple, list[list]] = {}
    stack: list[tuple[list, object]] = [([], value)]
    while stack:
        path, node = stack.pop()
        if path:
            kinds.setdefault(tuple("#" if isinstance(k, int) else k for k in path), []).append(path)
        if isinstance(node, dict):
            stack.extend((path + [k], v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((path + [i], v) for i, v in enumerate(node))
    return kinds


BASE_PATHS = [(all_paths(b), sorted(all_paths(b), key=repr)) for b in BASES]


def corrupt_text(s: str, i: int, c: str, how: int) -> str:
    i = i % (len(s) + 1)
    return [s[:i] + c + s[i + 1:], s[:i] + s[i + 1:], s[:i] + c + s[i:], s[:i]][how % 4]


def corrupt_b64(s: str, i: int, b: int, how: int) -> str:
    raw = bytearray(base64.b64decode(s))
    i = i % (len(raw) + 1)
    raw = [raw[:i] + bytes([b]) + raw[i + 1:], raw[:i] + raw[i + 1:], raw[:i] + bytes([b]) + raw[i:], raw[:i]][how % 4]
    return base64.b64encode(bytes(raw)).decode("ascii")


OPS = ["replace", "replace", "delete", "insert", "corrupt", "corrupt", "resize"]
replacements = st.one_of(st.sampled_from(SPECIALS), scalars, scalars, json_values)
edits = st.lists(st.tuples(
    st.integers(0, 2 ** 16), st.integers(0, 2 ** 16),  # which kind of field, which place of that kind
    st.sampled_from(OPS), replacements,
    st.integers(0, 2 ** 10), st.integers(0, 255) | st.integers(48, 111), st.sampled_from("=+/A0@P\x00é"),
    st.integers(0, 3),  # how to corrupt: replace / delete / insert a character, or truncate
), min_size=1, max_size=3)


def mutate(value: list, base: int, edit: tuple) -> None:
    """Apply one edit in place at a path of the base scene (skipped if an earlier edit removed that path or
    replaced a container on it by a scalar, e.g. a string)."""
    kind, place, op, new, i, byte, char, how = edit
    new = copy.deepcopy(new)  # SPECIALS are shared module objects: never put (and later edit) them in place
    kinds, names = BASE_PATHS[base]
    places = kinds[names[kind % len(names)]]
    *up, key = places[place % len(places)]
    parent, node = None, value
    for k in (*up, key):
        if not isinstance(node, (dict, list)):  # a string from an earlier edit is no container
            return
        try:
            parent, node = node, node[k]
        except (KeyError, IndexError, TypeError):
            return
    if op == "delete":
        del parent[key]
    elif op == "insert" and isinstance(node, dict):
        node[FIELD_NAMES[i % len(FIELD_NAMES)] if how % 2 else char] = new
    elif op == "insert" and isinstance(node, list):
        node.insert(i % (len(node) + 1), new)
    elif op == "corrupt" and isinstance(node, str):
        parent[key] = corrupt_b64(node, i, byte, how) if key == "counts" and how < 3 else corrupt_text(node, i, char, how)
    elif op == "resize" and isinstance(node, list) and node:
        parent[key] = node[:-1] if how % 2 else node + [copy.deepcopy(node[-1])]
    else:
        parent[key] = new


def test_an_edit_below_a_string_left_by_an_earlier_edit_is_skipped():
    """Regression: an edit that turned a container into a string made later edits index that string."""
    kinds, names = BASE_PATHS[0]
    for kind in range(len(names)):
        places = kinds[names[kind]]
        for place, path in enumerate(places):
            if len(path) < 2 or not isinstance(path[-1], int):  # a string's characters are indexed by ints
                continue
            value = copy.deepcopy(BASES[0])
            parent = value
            for k in path[:-2]:
                parent = parent[k]
            parent[path[-2]] = "a string now"
            for op in ("delete", "insert", "corrupt", "resize", "replace"):
                mutate(value, 0, (kind, place, op, 1, 0, 0, "x", 0))  # must neither raise nor edit
            assert parent[path[-2]] == "a string now"
            return
    raise AssertionError("no nested path in the base scene")


@FUZZ
@given(base=st.sampled_from(range(len(BASES))), edits=edits)
def test_mutated_scenes_load_or_raise_condition_error(base, edits):
    value = copy.deepcopy(BASES[base])
    for edit in edits:
        mutate(value, base, edit)
    as_list = check_loads_or_condition_error(value)
    # the text form says the same (NaN/Infinity become JSON constants there, which the loader also locates)
    assert check_loads_or_condition_error(json.dumps(value).encode("utf-8")) == as_list


# ----------------------------------------------------------------------------- valid scenes
coords = st.floats(-50, 300, allow_nan=False).filter(lambda v: v != -1)


@st.composite
def scenes(draw):
    h, w, frames = draw(st.integers(4, 24)), draw(st.integers(4, 24)), draw(st.integers(1, 12))
    scene = ops.new_scene(h, w, frames)
    for i in range(draw(st.integers(1, 4))):
        mask = draw(arrays(bool, (h, w)))
        st_ = draw(st.integers(0, frames - 1))
        et_ = draw(st.integers(st_ + 1, frames))
        k = draw(st.integers(1, max(1, min(4, et_ - st_ + 1))))
        poly = draw(st.lists(st.tuples(coords, coords), min_size=k, max_size=k))
        text = draw(st.just("None") | st.text(min_size=1, max_size=20).filter(lambda s: s.strip() and s != "None"))
        try:
            traj = ops.make_trajectory(poly, st_, et_, obj_id=i, mask=mask, frames=frames, text=text)
        except ConditionError:  # the resampled path hit the (-1, -1) placeholder exactly
            continue
        if draw(st.booleans()):
            traj = ops.erase(traj, draw(st.integers(0, frames - 1)), draw(st.integers(0, frames - 1)))
        scene = ops.add_trajectory(scene, traj)
    if not scene.trajectories or not scene.captions:
        scene = ops.add_trajectory(scene, ops.static_anchor((1.5, 2.5), obj_id=99, mask=np.ones((h, w), bool),
                                                            frames=frames, text="a placeholder object"))
    return scene


@settings(max_examples=150, deadline=None)
@given(scene=scenes())
def test_valid_scenes_round_trip(scene):
    text = scene.to_json()
    again = load_json(text)
    assert again == scene
    assert again.to_json() == text
    assert load_json(json.loads(text)).to_list() == json.loads(text)


# ----------------------------------------------------------------------------- RLE against pycocotools
@settings(max_examples=300, deadline=None)
@given(mask=st.integers(1, 20).flatmap(lambda h: st.integers(1, 20).flatmap(lambda w: arrays(bool, (h, w)))))
def test_rle_masks_round_trip_and_agree_with_pycocotools(mask):
    rle = RLEMask.from_array(mask)
    np.testing.assert_array_equal(rle.decode(), mask)
    assert rle.area == int(mask.sum()) and sum(rle.runs) == mask.size


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on numpy 2
@settings(max_examples=500, deadline=None)
@given(runs=st.lists(st.integers(0, 3000), min_size=1, max_size=12), edits=st.lists(
    st.tuples(st.integers(0, 10 ** 6), st.integers(48, 111)), max_size=2))
def test_rle_bytes_that_pass_our_check_decode_in_pycocotools_to_the_same_area(runs, edits):
    # encode runs with pycocotools, tweak a byte or two, and compare our parser with pycocotools' decoder
    total = sum(runs)
    if total == 0:
        return
    raw = bytearray(mask_util.frPyObjects({"size": [1, total], "counts": runs}, 1, total)["counts"])
    for pos, b in edits:
        raw[pos % len(raw)] = b
    try:
        parsed = _parse_rle_bytes(bytes(raw), total)
    except ConditionError:
        return
    decoded = mask_util.decode({"size": [1, total], "counts": bytes(raw)})
    assert int(decoded.sum()) == sum(parsed[1::2]) and math.prod(decoded.shape) == total
