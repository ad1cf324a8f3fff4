"""Parse and check a drawing-tool JSON value into a :class:`Scene`, with errors that say where and what.

Every message starts with ``<file>: item <i>: <field>:`` (or ``<file>:`` for whole-file problems) and says
what was expected and what was found. The input value is only read, never modified or kept (the scene holds
copies). Rules beyond "the shape the drawing tool writes":

- ``id_caption_map`` is the authority for captions (it is all the reference reads): it must not be empty
  (the reference returns nothing for such a file), every key must be the id of some trajectory, and no
  caption may be ``"None"`` or blank.
- A trajectory's own ``text`` is informational. A captioned trajectory whose id is missing from the map is
  accepted (the released ``mouse_dog.json`` has three), and its text need not equal the map's caption.
  But a trajectory with text ``"None"`` (an anchor) whose id *is* in the map is rejected: the reference
  would silently give the anchor that object's caption and token mask, which is almost surely an id clash.
- Visibility values are numbers in [0, 1]; coordinates, ``r`` and visibility must be finite.
"""
from __future__ import annotations

import math
import reprlib
from typing import Any, Callable, NoReturn

from wclab.conditions.rle import MAX_SIDE, RLEMask
from wclab.conditions.scene import ANCHOR_TEXT, TEXT_FIELDS, Scene, Trajectory
from wclab.errors import ConditionError
from wclab.sizes import FRAMES_PER_LATENT, TOKEN_CELL

TRAJECTORY_FIELDS = ("tracking", "tracking_vis_value", "r", "id", "mask_cluster", "text")
DICT_ITEMS = TEXT_FIELDS + ("id_caption_map",)

_MAX_DEPTH = 32  # nesting allowed inside color_map (the tool writes {id: "red"})

_repr = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 40
_repr.maxlist = _repr.maxdict = 4
_repr.maxlevel = 2


def _kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _show(v: Any) -> str:
    """``<type> <short repr>`` of a found value, safe for huge or deeply nested values."""
    try:
        return f"{_kind(v)} {_repr.repr(v)}"
    except Exception:  # a hostile __repr__ must not hide the real error
        return _kind(v)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: Any, fail: Callable[[str], NoReturn], what: str) -> Any:
    if not _is_number(v):
        fail(f"{what}: expected a number, got {_show(v)}")
    try:
        ok = math.isfinite(v)
    except OverflowError:  # an int too large for a float
        ok = False
    if not ok:
        fail(f"{what}: expected a finite number, got {_show(v)}")
    return v


def parse_scene(value: Any, where: str = "<conditions>") -> Scene:
    """Build a :class:`Scene` from the drawing tool's JSON value (a list); :class:`ConditionError` if malformed."""
    if not isinstance(value, list):
        raise ConditionError(f"{where}: expected a JSON list of trajectory items and text items, got {_kind(value)}")
    traj_items: list[tuple[int, dict]] = []
    dict_items: dict[str, tuple[int, Any]] = {}
    for i, item in enumerate(value):
        at = f"{where}: item {i}"
        if not isinstance(item, dict):
            raise ConditionError(f"{at}: expected an object (a trajectory or one of {list(DICT_ITEMS)}), "
                                 f"got {_show(item)}")
        bad_keys = [k for k in item if not isinstance(k, str)]
        if bad_keys:
            raise ConditionError(f"{at}: expected string keys, got key {_show(bad_keys[0])}")
        if any(k in TRAJECTORY_FIELDS for k in item):
            if dict_items:
                first = min(j for j, _ in dict_items.values())
                raise ConditionError(f"{at}: trajectory items must come before the text items "
                                     f"(item {first} is {next(iter(dict_items))!r})")
            traj_items.append((i, item))
            continue
        if len(item) != 1:
            raise ConditionError(
                f"{at}: expected a trajectory (fields {list(TRAJECTORY_FIELDS)}) or a one-key text item "
                f"({list(DICT_ITEMS)}), got keys {sorted(item)[:8]}")
        (key, v), = item.items()
        if key not in DICT_ITEMS:
            raise ConditionError(f"{at}: unknown field {key!r:.60}; expected one of {list(DICT_ITEMS)} or a trajectory")
        if key in dict_items:
            raise ConditionError(f"{at}: {key}: given twice (first at item {dict_items[key][0]})")
        dict_items[key] = (i, v)
    missing = [k for k in DICT_ITEMS if k not in dict_items]
    if missing:
        raise ConditionError(f"{where}: missing text item(s) {missing}; the file must end with {list(DICT_ITEMS)}")
    order = list(dict_items)
    if order != list(DICT_ITEMS):
        raise ConditionError(f"{where}: text items out of order: got {order}, expected {list(DICT_ITEMS)}")
    if not traj_items:
        raise ConditionError(f"{where}: empty scene: no trajectory items (each needs {list(TRAJECTORY_FIELDS)})")

    cm_i, color_map = dict_items["color_map"]
    if not isinstance(color_map, dict):
        raise ConditionError(f"{where}: item {cm_i}: color_map: expected an object, got {_show(color_map)}")
    _check_plain_json(color_map, f"{where}: item {cm_i}: color_map")
    for key in TEXT_FIELDS[1:]:
        i, v = dict_items[key]
        if not isinstance(v, str):
            raise ConditionError(f"{where}: item {i}: {key}: expected a string, got {_show(v)}")
    cap_i, captions = dict_items["id_caption_map"]
    captions = _check_captions(captions, f"{where}: item {cap_i}: id_caption_map")

    trajectories = [_parse_trajectory(item, f"{where}: item {i}") for i, item in traj_items]
    first_i, first = traj_items[0][0], trajectories[0]
    for (i, _), t in zip(traj_items, trajectories):
        if t.frames != first.frames:
            raise ConditionError(
                f"{where}: item {i}: tracking: expected {first.frames} frames (as item {first_i}), got {t.frames}")
        if t.mask.size != first.mask.size:
            raise ConditionError(
                f"{where}: item {i}: mask_cluster.size: expected {list(first.mask.size)} (the image size of item "
                f"{first_i}), got {list(t.mask.size)}")
        if t.text == ANCHOR_TEXT and str(t.id) in captions:
            raise ConditionError(
                f"{where}: item {i}: text: 'None' marks a camera/background anchor, but id {t.id} has caption "
                f"{captions[str(t.id)]!r:.60} in id_caption_map (item {cap_i}); give the anchor an id of its own")
    ids = {str(t.id) for t in trajectories}
    for k in captions:
        if k not in ids:
            raise ConditionError(
                f"{where}: item {cap_i}: id_caption_map[{k!r}]: expected the id of a trajectory "
                f"(ids: {sorted(ids, key=_id_order)}), got an id no trajectory has")
    height, width = first.mask.size
    return Scene(
        trajectories=tuple(trajectories),
        captions=captions,
        height=height,
        width=width,
        frames=first.frames,
        color_map=_copy_plain_json(color_map),
        description_global=dict_items["description_global"][1],
        description_motion_raw=dict_items["description_motion_raw"][1],
        description_motion=dict_items["description_motion"][1],
    )


def _id_order(k: str) -> tuple:
    return (0, int(k), "") if k.lstrip("-").isdigit() else (1, 0, k)


def _check_captions(captions: Any, at: str) -> dict[str, str]:
    if not isinstance(captions, dict):
        raise ConditionError(f"{at}: expected an object id -> caption, got {_show(captions)}")
    if not captions:
        raise ConditionError(f"{at}: expected at least one captioned object, got an empty map "
                             "(the reference refuses such files)")
    for k, c in captions.items():
        if not isinstance(k, str):
            raise ConditionError(f"{at}: expected string keys (object ids), got key {_show(k)}")
        if not isinstance(c, str):
            raise ConditionError(f"{at}[{k!r:.40}]: expected a caption string, got {_show(c)}")
        if not c.strip():
            raise ConditionError(f"{at}[{k!r:.40}]: expected a caption, got a blank string")
        if c == ANCHOR_TEXT:
            raise ConditionError(
                f"{at}[{k!r:.40}]: expected a caption, got 'None' (which marks a camera/background anchor; "
                "anchors must not be in id_caption_map)")
    return dict(captions)


def _check_plain_json(v: Any, at: str) -> None:
    """Raise unless ``v`` is plain JSON data (dict with str keys, list, str, bool, None, finite number)."""
    stack = [(v, at, 0)]
    while stack:
        x, here, depth = stack.pop()
        if isinstance(x, (dict, list)) and depth >= _MAX_DEPTH:
            raise ConditionError(f"{here}: expected at most {_MAX_DEPTH} levels of nesting, got more")
        if isinstance(x, dict):
            for k, y in x.items():
                if not isinstance(k, str):
                    raise ConditionError(f"{here}: expected string keys, got key {_show(k)}")
                stack.append((y, f"{here}[{k!r:.40}]", depth + 1))
        elif isinstance(x, list):
            stack.extend((y, f"{here}[{j}]", depth + 1) for j, y in enumerate(x))
        elif isinstance(x, float) and not math.isfinite(x):
            raise ConditionError(f"{here}: expected a finite number, got {x}")
        elif not (x is None or isinstance(x, (str, bool, int, float))):
            raise ConditionError(f"{here}: expected JSON data, got {_show(x)}")


def _copy_plain_json(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _copy_plain_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy_plain_json(x) for x in v]
    return v


def _parse_trajectory(item: dict, where: str) -> Trajectory:
    def fail(msg: str) -> NoReturn:
        raise ConditionError(f"{where}: {msg}")

    missing = [f for f in TRAJECTORY_FIELDS if f not in item]
    if missing:
        fail(f"missing field(s) {missing}; a trajectory has exactly {list(TRAJECTORY_FIELDS)}")
    extra = sorted(set(item) - set(TRAJECTORY_FIELDS))
    if extra:
        fail(f"unknown field(s) {[e[:40] for e in extra[:5]]}; a trajectory has exactly {list(TRAJECTORY_FIELDS)}")

    tracking = item["tracking"]
    if not isinstance(tracking, list) or not tracking:
        fail(f"tracking: expected a non-empty list of [x, y] pairs, got {_show(tracking)}")
    points = []
    for j, p in enumerate(tracking):
        if not isinstance(p, list) or len(p) != 2:
            fail(f"tracking[{j}]: expected an [x, y] pair, got {_show(p)}")
        points.append((_finite(p[0], fail, f"tracking[{j}][0]"), _finite(p[1], fail, f"tracking[{j}][1]")))

    vis = item["tracking_vis_value"]
    if not isinstance(vis, list):
        fail(f"tracking_vis_value: expected a list of {len(points)} numbers, got {_show(vis)}")
    if len(vis) != len(points):
        fail(f"tracking_vis_value: expected {len(points)} values (one per tracking frame), got {len(vis)}")
    for j, v in enumerate(vis):
        if not 0 <= _finite(v, fail, f"tracking_vis_value[{j}]") <= 1:
            fail(f"tracking_vis_value[{j}]: expected a visibility in [0, 1] (1 visible, 0 invisible), got {v!r}")

    r = _finite(item["r"], fail, "r")
    if r < 0:
        fail(f"r: expected a radius >= 0 pixels, got {r!r}")
    obj_id = item["id"]
    if not isinstance(obj_id, int) or isinstance(obj_id, bool):
        fail(f"id: expected an integer object id, got {_show(obj_id)}")
    text = item["text"]
    if not isinstance(text, str):
        fail(f"text: expected a caption string ('None' for an anchor), got {_show(text)}")

    mc = item["mask_cluster"]
    if not isinstance(mc, dict) or set(mc) != {"size", "counts"}:
        fail(f"mask_cluster: expected {{'size': [H, W], 'counts': base64}}, got {_show(mc)}")
    size = mc["size"]
    if (not isinstance(size, list) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= MAX_SIDE for s in size)):
        fail(f"mask_cluster.size: expected [H, W] integers in 1..{MAX_SIDE} pixels, got {_show(size)}")
    if not isinstance(mc["counts"], str):
        fail(f"mask_cluster.counts: expected a base64 string, got {_show(mc['counts'])}")
    mask = RLEMask(size=(size[0], size[1]), counts=mc["counts"])
    try:
        mask.validate()
    except ConditionError as e:
        fail(str(e))
    return Trajectory(points=tuple(points), visibility=tuple(vis), r=r, id=obj_id, mask=mask, text=text)


def check_model_size(scene: Scene, where: str = "scene") -> None:
    """Raise unless the scene fits the model: H, W multiples of 16 pixels and T = 4k+1 frames."""
    if scene.height % TOKEN_CELL or scene.width % TOKEN_CELL:
        raise ConditionError(f"{where}: image size {scene.height}x{scene.width}: expected multiples of 16 pixels")
    if (scene.frames - 1) % FRAMES_PER_LATENT:
        raise ConditionError(f"{where}: {scene.frames} frames: expected 4k+1 frames (e.g. 17, 49, 81)")
