"""Scenes drawn for WorldCanvas: dataclasses, JSON I/O in the original drawing tool's format, trajectory ops."""
from wclab.conditions import ops
from wclab.conditions.ops import (
    add_trajectory,
    make_trajectory,
    new_scene,
    polyline_track,
    remove_object,
    set_caption,
    static_anchor,
)
from wclab.conditions.prompt import Prompt, build_prompt
from wclab.conditions.resize import resize_scene
from wclab.conditions.rle import RLEMask
from wclab.conditions.load import load_json
from wclab.conditions.scene import ANCHOR_TEXT, Scene, Trajectory
from wclab.conditions.validate import check_model_size, parse_scene

__all__ = [
    "ANCHOR_TEXT", "RLEMask", "Scene", "Trajectory", "load_json", "parse_scene", "check_model_size",
    "ops", "polyline_track", "make_trajectory", "static_anchor", "new_scene", "add_trajectory", "remove_object",
    "set_caption", "Prompt", "build_prompt", "resize_scene",
]
