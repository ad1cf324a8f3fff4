"""Parse and check a drawing-tool JSON value into a :class:`Scene`, with errors that say where and what.

Every message starts with ``<file>: item <i>: <field>:`` and says what was expected and what was found.
The input value is only read, never modified.
"""
from __future__ import annotations

import math
from typing import Any

from wclab.conditions.rle import RLEMask
from wclab.conditions.scene import ANCHOR_TEXT, TEXT_FIELDS, Scene, Trajectory
from wclab.errors import ConditionError

TRAJECTORY_FIELDS = ("tracking", "tracking_vis_value", "r", "id", "mask_cluster", "text")
DICT_ITEMS = TEXT_FIELDS + ("id_caption_map",)


def _kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: Any, fail, what: str) -> Any:
    if not _is_number(v):
        fail(f"{what}: expected a number, got {_kind(v)} {v!r:.40}")
    if isinstance(v, float) and not math.isfinite(v):
        fail(f"{what}: expected a finite number, got {v}")
    return v


def parse_scene(value: Any, where: str = "<conditions>") -> Scene:
    """Build a :class:`Scene` from the drawing tool's JSON value (a list); raise :class:`ConditionError` if malformed."""
    if not isinstance(value, list):
        raise ConditionError(f"{where}: expected a JSON list of trajectory items and text items, got {_kind(value)}")
    traj_items: list[tuple[int, dict]] = []
    dict_items: dict[str, tuple[int, Any]] = {}
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ConditionError(f"{where}: item {i}: expected an object, got {_kind(item)}")
        if "tracking" in item:
            if dict_items:
                raise ConditionError(f"{where}: item {i}: trajectory items must come before the text items")
            traj_items.append((i, item))
            continue
        if len(item) != 1:
            raise ConditionError(
                f"{where}: item {i}: expected a trajectory (with 'tracking') or one of {list(DICT_ITEMS)}, "
                f"got keys {sorted(item)}")
        (key, v), = item.items()
        if key not in DICT_ITEMS:
            raise ConditionError(f"{where}: item {i}: unknown field {key!r}; expected one of {list(DICT_ITEMS)}")
        if key in dict_items:
            raise ConditionError(f"{where}: item {i}: {key!r} given twice (first at item {dict_items[key][0]})")
        dict_items[key] = (i, v)
    order = [k for k in dict_items]
    if order != [k for k in DICT_ITEMS if k in dict_items] or len(order) != len(DICT_ITEMS):
        missing = [k for k in DICT_ITEMS if k not in dict_items]
        if missing:
            raise ConditionError(f"{where}: missing text item(s) {missing}; the file must end with {list(DICT_ITEMS)}")
        raise ConditionError(f"{where}: text items out of order: got {order}, expected {list(DICT_ITEMS)}")
    if not traj_items:
        raise ConditionError(f"{where}: empty scene: no trajectory items (each needs {list(TRAJECTORY_FIELDS)})")

    captions_i, captions = dict_items["id_caption_map"]
    if not isinstance(captions, dict):
        raise ConditionError(f"{where}: item {captions_i}: id_caption_map: expected an object id -> caption, got {_kind(captions)}")
    for k, c in captions.items():
        if not isinstance(c, str):
            raise ConditionError(f"{where}: item {captions_i}: id_caption_map[{k!r}]: expected a caption string, got {_kind(c)}")
        if not c.strip():
            raise ConditionError(f"{where}: item {captions_i}: id_caption_map[{k!r}]: empty caption")
        if c == ANCHOR_TEXT:
            raise ConditionError(
                f"{where}: item {captions_i}: id_caption_map[{k!r}]: caption 'None' marks a camera/background anchor; "
                "anchors must not be in id_caption_map")
    for key in TEXT_FIELDS[1:]:
        i, v = dict_items[key]
        if not isinstance(v, str):
            raise ConditionError(f"{where}: item {i}: {key}: expected a string, got {_kind(v)}")
    cm_i, color_map = dict_items["color_map"]
    if not isinstance(color_map, dict):
        raise ConditionError(f"{where}: item {cm_i}: color_map: expected an object, got {_kind(color_map)}")

    trajectories = [_parse_trajectory(item, f"{where}: item {i}") for i, item in traj_items]
    frames = trajectories[0].frames
    height, width = trajectories[0].mask.size
    for (i, _), t in zip(traj_items, trajectories):
        if t.frames != frames:
            raise ConditionError(
                f"{where}: item {i}: tracking: expected {frames} frames (as item {traj_items[0][0]}), got {t.frames}")
        if t.mask.size != (height, width):
            raise ConditionError(
                f"{where}: item {i}: mask_cluster.size: expected {[height, width]} (the image size of item "
                f"{traj_items[0][0]}), got {list(t.mask.size)}")
        t.mask.decode()  # checks the RLE now, so a corrupt mask fails at load time with the item index
    ids = {str(t.id) for t in trajectories}
    for k in captions:
        if k not in ids:
            raise ConditionError(
                f"{where}: item {captions_i}: id_caption_map[{k!r}]: no trajectory has id {k} (ids: {sorted(ids)})")
    return Scene(
        trajectories=tuple(trajectories),
        captions=dict(captions),
        height=height,
        width=width,
        frames=frames,
        color_map=dict(color_map),
        description_global=dict_items["description_global"][1],
        description_motion_raw=dict_items["description_motion_raw"][1],
        description_motion=dict_items["description_motion"][1],
    )


def _parse_trajectory(item: dict, where: str) -> Trajectory:
    def fail(msg: str):
        raise ConditionError(f"{where}: {msg}")

    missing = [f for f in TRAJECTORY_FIELDS if f not in item]
    if missing:
        fail(f"missing field(s) {missing}")
    extra = sorted(set(item) - set(TRAJECTORY_FIELDS))
    if extra:
        fail(f"unknown field(s) {extra}; a trajectory has exactly {list(TRAJECTORY_FIELDS)}")

    tracking = item["tracking"]
    if not isinstance(tracking, list) or not tracking:
        fail(f"tracking: expected a non-empty list of [x, y] pairs, got {_kind(tracking)}")
    points = []
    for j, p in enumerate(tracking):
        if not isinstance(p, list) or len(p) != 2:
            fail(f"tracking[{j}]: expected an [x, y] pair, got {p!r:.60}")
        points.append((_finite(p[0], fail, f"tracking[{j}][0]"), _finite(p[1], fail, f"tracking[{j}][1]")))

    vis = item["tracking_vis_value"]
    if not isinstance(vis, list):
        fail(f"tracking_vis_value: expected a list of {len(points)} numbers, got {_kind(vis)}")
    if len(vis) != len(points):
        fail(f"tracking_vis_value: expected {len(points)} values (one per tracking frame), got {len(vis)}")
    visibility = tuple(_finite(v, fail, f"tracking_vis_value[{j}]") for j, v in enumerate(vis))

    r = _finite(item["r"], fail, "r")
    if r < 0:
        fail(f"r: expected a radius >= 0, got {r}")
    obj_id = item["id"]
    if not isinstance(obj_id, int) or isinstance(obj_id, bool):
        fail(f"id: expected an integer object id, got {_kind(obj_id)} {obj_id!r:.40}")
    text = item["text"]
    if not isinstance(text, str):
        fail(f"text: expected a caption string ('None' for an anchor), got {_kind(text)}")

    mc = item["mask_cluster"]
    if not isinstance(mc, dict) or set(mc) != {"size", "counts"}:
        fail(f"mask_cluster: expected {{'size': [H, W], 'counts': base64}}, got {mc!r:.80}")
    size = mc["size"]
    if (not isinstance(size, list) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        fail(f"mask_cluster.size: expected [H, W] positive integers, got {size!r:.60}")
    if not isinstance(mc["counts"], str):
        fail(f"mask_cluster.counts: expected a base64 string, got {_kind(mc['counts'])}")
    mask = RLEMask(size=(size[0], size[1]), counts=mc["counts"])
    try:
        mask.decode()
    except ConditionError as e:
        fail(str(e))
    return Trajectory(points=tuple(points), visibility=visibility, r=r, id=obj_id, mask=mask, text=text)


def check_model_size(scene: Scene, where: str = "scene") -> None:
    """Raise unless the scene fits the model: H, W multiples of 16 pixels and T = 4k+1 frames."""
    if scene.height % 16 or scene.width % 16:
        raise ConditionError(f"{where}: image size {scene.height}x{scene.width}: expected multiples of 16 pixels")
    if (scene.frames - 1) % 4:
        raise ConditionError(f"{where}: {scene.frames} frames: expected 4k+1 frames (e.g. 17, 49, 81)")
