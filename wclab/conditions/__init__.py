"""Scenes drawn for WorldCanvas: dataclasses, JSON I/O in the original drawing tool's format, trajectory ops."""
from wclab.conditions.rle import RLEMask
from wclab.conditions.scene import ANCHOR_TEXT, Scene, Trajectory, load_json

__all__ = ["ANCHOR_TEXT", "RLEMask", "Scene", "Trajectory", "load_json"]
