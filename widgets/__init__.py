"""Notebook widgets that produce and consume ``wclab.conditions`` objects.

- :class:`TrajectoryEditor` (state: :class:`EditorState`): pick objects with SAM, draw their trajectories,
  export a :class:`wclab.conditions.Scene` (replaces the original gradio ``draw_traj.py``).
- :class:`Composer` (state: :class:`ComposerState`): expand the canvas and paste subjects cut from other images
  into a start image for the ``_ref`` models (replaces ``ref_image_generation.py``).
- Segmenters: :class:`SamSegmenter` (segment-anything) or :class:`FallbackSegmenter` (OpenCV, no download).

Each widget keeps its state in a plain dataclass whose methods are the event handlers, so everything can be
driven without a browser.
"""
from widgets.composer import Composer
from widgets.composer_state import ComposerState
from widgets.driving_video import DrivingVideo, read_video
from widgets.editor_state import Draft, EditorError, EditorState
from widgets.images import fit_image
from widgets.segmenter import FallbackSegmenter, SamSegmenter, Segmenter, default_segmenter
from widgets.trajectory_editor import TrajectoryEditor

__all__ = ["Composer", "ComposerState", "Draft", "DrivingVideo", "EditorError", "EditorState", "FallbackSegmenter",
           "SamSegmenter", "Segmenter", "TrajectoryEditor", "default_segmenter", "fit_image", "read_video"]
