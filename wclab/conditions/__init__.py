"""Scenes drawn for WorldCanvas: dataclasses, JSON I/O in the original drawing tool's format, trajectory ops."""
from wclab.conditions import motion, ops
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
from wclab.conditions.motion import (
    CAMERA_PRESETS,
    SPEED_CURVES,
    camera_anchors,
    default_frames_at,
    eased,
    enter_from_edge,
    leave_through_edge,
    pass_behind,
    path_track,
    spline_path,
    stop_at,
    timed_track,
    turn_back,
)
from wclab.conditions.scene import ANCHOR_TEXT, Scene, Trajectory
from wclab.conditions.tracks import Tracks, add_tracks, load_tracks, save_tracks, tracks_from_video
from wclab.conditions.validate import check_model_size, parse_scene

__all__ = [
    "ANCHOR_TEXT", "RLEMask", "Scene", "Trajectory", "load_json", "parse_scene", "check_model_size",
    "ops", "polyline_track", "make_trajectory", "static_anchor", "new_scene", "add_trajectory", "remove_object",
    "set_caption", "Prompt", "build_prompt", "resize_scene",
    "motion", "SPEED_CURVES", "CAMERA_PRESETS", "default_frames_at", "timed_track", "eased", "spline_path",
    "path_track", "camera_anchors", "enter_from_edge", "leave_through_edge", "pass_behind", "stop_at", "turn_back",
    "Tracks", "add_tracks", "load_tracks", "save_tracks", "tracks_from_video",
]
