"""ipycanvas trajectory editor: a thin view of :class:`EditorState` (replaces the original gradio ``draw_traj.py``).

Canvas layers (bottom to top): start image; committed objects (masks, trajectories with direction arrows and
a tick every 4 frames); where each object is at the slider's frame (a Play button runs the slider: a preview of
the dots moving over the image); work in progress (mask preview, clicks,
polyline, pending trajectory) — the top layer receives the mouse and keyboard. Errors show under the canvas.
The canvas keeps the model's pixel size and is shown ``zoom`` times larger (fitted to a notebook column, at most
its width), so clicks arrive in exact model pixels. The view renders ``state.summary()`` after every change of
the state (a script's too); a one-line hint under the canvas says what to do next. Objects have the colours of
the plots and overlays (:mod:`wclab.colors`).

Driving video mode (Load video with a path in the text field, or ``editor.load_driving_video(frames)``): the
canvas shows the video's first frame fitted to the scene as the start image is; clicks add numbered points
(Backspace or Undo removes them); Track follows them through the video (OpenCV Lucas-Kanade) and adds one
trajectory each — the caption field's object, or background anchors when it is empty — then the normal view
comes back with them selected; Cancel leaves without changes (:mod:`widgets.driving_video` for the pixel map).

    editor = TrajectoryEditor("start.jpg")          # or TrajectoryEditor(scene="conditions.json", image=...)
    editor                                          # draw, then:
    scene = editor.scene()                          # a wclab.conditions.Scene
"""
from __future__ import annotations

import html
import io
import re
from pathlib import Path
from typing import Callable, Optional, Union

import ipywidgets as W
import numpy as np
from ipycanvas import MultiCanvas, hold_canvas
from PIL import Image

from wclab.colors import OBJECT_PALETTE, object_hex
from wclab.conditions import ANCHOR_TEXT, Scene, Trajectory, load_json
from wclab.sizes import DEFAULT_FRAMES, DEFAULT_HEIGHT, DEFAULT_WIDTH
from wclab.conditions.motion import CAMERA_PRESETS, EDGES, SPEED_CURVES
from widgets.editor_state import MODES, PATHS, SAMPLE_BY, SHORTCUTS, EditorError, EditorState
from widgets.feedback import Feedback
from widgets.images import ImageLike
from widgets.segmenter import Segmenter, default_segmenter

PALETTE = OBJECT_PALETTE
"""The one object palette (:mod:`wclab.colors`): the plots and video overlays use the same colours."""
INVISIBLE = "#9a9a9a"
TICK_EVERY = 4
"""Frames between time ticks (one latent group)."""


FIT_WIDTH = 720
"""Pixels: the canvas opens scaled to about this width (a notebook column), at most ``MAX_ZOOM`` times."""
MAX_ZOOM = 8.0
PREVIEW_FPS = 16
"""Frames per second of the Play preview (Wan's video rate)."""


def object_color(obj_id: int, anchor: bool = False) -> str:
    """``'#rrggbb'`` of an object, as in the plots and overlays; grey for a camera/background anchor."""
    return object_hex(obj_id, anchor)


def fit_zoom(width: int) -> float:
    """Zoom (a multiple of 0.25, 1 to ``MAX_ZOOM``) that shows a ``width``-pixel canvas at about ``FIT_WIDTH``."""
    return float(np.clip(np.floor(FIT_WIDTH / width * 4) / 4, 1.0, MAX_ZOOM))


def _rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)


def mask_overlay(masks: list[tuple[np.ndarray, str]], alpha: float) -> np.ndarray:
    """``uint8 [H, W, 4]`` RGBA: each ``(bool [H, W] mask, '#rrggbb')`` tinted with ``alpha``, later ones on top."""
    h, w = masks[0][0].shape
    out = np.zeros((h, w, 4), np.uint8)
    for mask, color in masks:
        out[mask, :3] = _rgb(color)
        out[mask, 3] = int(alpha * 255)
    return out


class TrajectoryEditor(W.VBox):
    """Draw WorldCanvas conditions on a start image. ``state`` holds everything; the widget only shows it."""

    def __init__(self, image: Optional[ImageLike] = None, scene: Union[Scene, str, Path, None] = None, *,
                 height: int = DEFAULT_HEIGHT, width: int = DEFAULT_WIDTH, frames: int = DEFAULT_FRAMES, segmenter: Optional[Segmenter] = None,
                 state: Optional[EditorState] = None):
        segmenter = segmenter if segmenter is not None else default_segmenter()
        if state is None:
            if scene is not None:
                state = EditorState.from_scene(scene, image=image, segmenter=segmenter)
            else:
                state = EditorState(height=height, width=width, frames=frames, segmenter=segmenter, image=image)
        self.state = state
        self._syncing = False
        self._batch = 0
        self._scene_key = self._image_key = None
        s = state

        self.canvas = MultiCanvas(4, width=s.width, height=s.height)
        self.canvas.on_mouse_down(self._on_mouse_down)
        self.canvas.on_mouse_move(self._on_mouse_move)
        self.canvas.on_mouse_up(self._on_mouse_up)
        self.canvas.on_mouse_out(self._on_mouse_up)
        self.zoom = W.FloatSlider(value=fit_zoom(s.width), min=1.0, max=MAX_ZOOM, step=0.25, description="zoom:",
                                  readout_format=".2f", continuous_update=False, layout=W.Layout(width="300px"))
        self.zoom.observe(lambda ch: self._apply_zoom(), "value")
        self._apply_zoom()
        self.canvas.on_key_down(
            lambda key, shift, ctrl, meta: self._act(lambda: self.state.on_key(key, shift, ctrl, meta)))
        self.canvas.on_client_ready(self.redraw)

        def button(label: str, method: Union[str, Callable[[], object]], tip: str = "", style: str = "") -> W.Button:
            """A button calling ``self.state.<method>()`` (or ``self.<method>()`` for widget-level actions, or
            ``method()`` when it is a callable)."""
            b = W.Button(description=label, tooltip=tip, button_style=style, layout=W.Layout(width="auto"))
            if callable(method):
                target = method
            else:
                target = (lambda: getattr(self, method)()) if method.startswith("_") else \
                    (lambda: getattr(self.state, method)())
            b.on_click(lambda _: self._act(target))
            self.buttons[label] = b
            return b

        self.buttons: dict[str, W.Button] = {}

        # loading
        self.path = W.Text(placeholder="image, conditions .json or driving video path",
                           layout=W.Layout(width="320px"))
        self.upload = W.FileUpload(accept="image/*,.json", multiple=False, description="Upload")
        self.upload.observe(lambda ch: self._act(lambda: self._load_upload(ch["new"])), "value")
        # mask
        self.mode = W.ToggleButtons(options=list(MODES), description="mode:", style={"button_width": "64px"},
                                    tooltips=["pick the object (m)", "click the trajectory (d)",
                                              "two clicks hide a stretch (e)"])
        self.polarity = W.ToggleButtons(options=["positive", "negative"], description="mask click:",
                                        style={"button_width": "72px"}, tooltips=["x toggles"] * 2)
        self.mode.observe(lambda ch: self._on_control(lambda: self.state.set_mode(ch["new"])), "value")
        self.polarity.observe(lambda ch: self._on_control(
            lambda: self.state.set_negative_clicks(ch["new"] == "negative")), "value")
        # trajectory
        self.st_et = W.IntRangeSlider(value=(0, s.frames), min=0, max=s.frames, description="frames:",
                                      continuous_update=False, layout=W.Layout(width="420px"))
        self.st_et.observe(lambda ch: self._on_control(lambda: self.state.set_st_et(*ch["new"])), "value")
        self.obj_id = W.BoundedIntText(value=s.draft.obj_id, min=0, max=10 ** 6, description="object id:",
                                       layout=W.Layout(width="160px"))
        self.caption = W.Text(placeholder="caption (None: camera/background anchor)", continuous_update=False,
                              layout=W.Layout(width="460px"))
        self.anchor = W.Checkbox(value=False, description="anchor (None)", indent=False)
        self.obj_id.observe(lambda ch: self._on_control(lambda: self.state.set_object(int(ch["new"]))), "value")
        self.caption.observe(lambda ch: self._on_control(self._push_object), "value")
        self.anchor.observe(lambda ch: self._on_control(self._push_object), "value")
        self.trajectories = W.Dropdown(options=[("—", None)], description="selected:", layout=W.Layout(width="420px"))
        self.trajectories.observe(lambda ch: self._on_control(lambda: self.state.select(ch["new"])), "value")
        self.frame = W.IntSlider(value=0, min=0, max=s.frames - 1, description="frame:",
                                 layout=W.Layout(width="420px"))
        self.frame.observe(lambda ch: self._on_frame(ch["new"]), "value")
        self.play = W.Play(value=0, min=0, max=s.frames - 1, interval=round(1000 / PREVIEW_FPS), show_repeat=True,
                           description="preview", tooltip="play the dots over the image (frame slider)")
        W.link((self.play, "value"), (self.frame, "value"))  # the preview moves the frame slider, and back
        self.save_path = W.Text(value="conditions.json", layout=W.Layout(width="240px"))
        # motion tools
        self.path_kind = W.ToggleButtons(options=list(PATHS), description="path:", style={"button_width": "72px"},
                                         tooltips=["straight segments (the drawing tool's)", "Catmull-Rom spline"])
        self.tension = W.FloatSlider(value=0.5, min=0.0, max=2.0, step=0.05, description="tension:",
                                     continuous_update=False, layout=W.Layout(width="260px"))
        self.sample_by = W.ToggleButtons(options=list(SAMPLE_BY), description="spline by:",
                                         style={"button_width": "92px"},
                                         tooltips=["equal time per segment", "constant speed"])
        self.speed = W.Dropdown(options=list(SPEED_CURVES), description="speed:", layout=W.Layout(width="220px"))
        self.timing = W.Text(description="reach at:", placeholder="frame of each point, e.g. 0, 6, 16",
                             continuous_update=False, layout=W.Layout(width="320px"))
        self.timing_kind = W.HTML()
        for control in (self.path_kind, self.tension, self.sample_by):
            control.observe(lambda ch: self._on_control(lambda: self.state.set_path(
                self.path_kind.value, self.tension.value, self.sample_by.value)), "value")
        self.speed.observe(lambda ch: self._on_control(lambda: self.state.set_speed(ch["new"])), "value")
        self.timing.observe(lambda ch: self._on_control(self._push_timing), "value")
        self.camera_amount = W.Text(placeholder="default", description="amount:", layout=W.Layout(width="170px"),
                                    tooltip="pixels (pan), factor (zoom), degrees (rotate)")
        self.edge = W.Dropdown(options=list(EDGES), description="edge:", layout=W.Layout(width="170px"))
        self.event_frames = W.Text(placeholder="auto", description="frames:", layout=W.Layout(width="150px"),
                                   tooltip="frames off-image (enter/leave) or hidden (pass behind)")
        self.tracks_path = W.Text(value="tracks.pth", layout=W.Layout(width="200px"))
        self.tracks_style = W.ToggleButtons(options=["ati", "wanmove"], style={"button_width": "72px"})
        # feedback
        self.status = W.HTML()
        self.hint = W.HTML()
        self.video_info = W.HTML()
        self.notes = W.HTML()
        frames_label = W.HTML("<small>first frame / end frame (exclusive) &nbsp;·&nbsp; the slider shows frame "
                              "k of 0…T−1</small>")
        self.feedback = Feedback()
        help_rows = "".join(f"<tr><td><kbd>{html.escape(k)}</kbd></td><td>{html.escape(v)}</td></tr>"
                            for k, v in SHORTCUTS.items())
        shortcuts = W.Accordion(children=[W.HTML(f"<table>{help_rows}</table>")], titles=("keyboard shortcuts",),
                                selected_index=None)

        super().__init__([
            W.HBox([self.path, button("Load image", "_load_image_path"), button("Load JSON", "_load_json_path"),
                    button("Load video", "_load_video_path", "a driving video: click points on its first frame, "
                           "Track turns them into trajectories"), self.upload]),
            W.HBox([self.mode, self.polarity]),
            W.HBox([button("Confirm mask", "confirm_mask", "Enter", "success"),
                    button("Whole-image mask", "use_whole_image", "w: for camera/background anchors"),
                    button("Clear mask points", "clear_points", "Escape")]),
            self.canvas,  # nothing above it changes height while drawing: the canvas never moves under the mouse
            self.hint,
            W.HBox([button("Track", "_track_video", "Enter: follow the clicked points through the driving video",
                           "primary"),
                    button("Cancel", "cancel_video", "Escape: leave the driving video, nothing added"),
                    self.video_info]),
            self.zoom,
            self.feedback.error,
            self.notes,
            self.status,
            W.HBox([self.st_et, self.play, self.frame]),
            frames_label,
            W.HBox([self.obj_id, self.caption, self.anchor]),
            W.HBox([button("Add trajectory", "commit", "Enter (draw/erase mode)", "primary"),
                    button("New object", "new_object", "n"),
                    button("Edit selected", "edit_selected", "s: drag its points, change frames/caption"),
                    button("Draw selected again", "reuse_selected", "r: same mask, id and caption"),
                    button("Undo", "undo", "z / Ctrl+Z"),
                    button("Redo", "redo", "y / Ctrl+Shift+Z"), button("Delete selected", "delete", "Delete")]),
            W.HBox([self.trajectories]),
            W.HTML("<b>motion tools</b> <small>(the drawing tool's polyline with equal frames per segment is the "
                   "default; these change the trajectory being drawn)</small>"),
            W.HBox([self.path_kind, self.tension, self.sample_by]),
            W.HBox([self.timing, button("Equal frames", lambda: self.state.set_timing(None),
                                        "the drawing tool's timing"), self.timing_kind, self.speed]),
            W.HBox([W.HTML("camera:")] + [
                button(k.replace("_", " ").capitalize() if k != "static" else "Static camera",
                       (lambda k=k: self.state.add_camera(k, self._number(self.camera_amount, float))),
                       "add background anchors that move so") for k in CAMERA_PRESETS] + [self.camera_amount],
                   layout=W.Layout(flex_flow="row wrap")),
            W.HBox([W.HTML("event (selected):")] + [
                button(label, (lambda k=k: self.state.apply_event(
                    k, edge=self.edge.value, frames=self._number(self.event_frames, int))), tip)
                for label, k, tip in [("Enter from edge", "enter", "comes in through the edge"),
                                      ("Leave through edge", "leave", "goes out through the edge"),
                                      ("Pass behind", "pass_behind", "hidden from the slider's frame"),
                                      ("Stop here", "stop", "stays put from the slider's frame"),
                                      ("Turn back here", "turn_back", "retraces its path from the slider's frame")]]
                + [self.edge, self.event_frames], layout=W.Layout(flex_flow="row wrap")),
            W.HBox([self.tracks_path, self.tracks_style,
                    button("Export tracks", lambda: self.state.export_tracks(self.tracks_path.value.strip(),
                                                                             self.tracks_style.value)),
                    button("Import tracks", lambda: self.state.import_tracks(self.tracks_path.value.strip()),
                           "as background anchors of a new id (ATI or Wan-Move .npy/.pth)")]),
            W.HBox([self.save_path, button("Save JSON", "_save_json")]),
            shortcuts,
            self.feedback.details,
        ])
        self.state.subscribe(self._on_state_change)
        self.redraw()

    # ------------------------------------------------------------------ public API
    def scene(self) -> Scene:
        """The committed trajectories as a :class:`Scene` (raises if there are none)."""
        return self.state.to_scene()

    def load_image(self, image: ImageLike) -> None:
        self._act(lambda: self.state.load_image(image))

    def load_driving_video(self, video: Union[str, Path, np.ndarray], source: str = "") -> None:
        """Show a driving video's first frame (a path, or uint8 ``[T, H, W, 3]``) to click the points to track;
        Track adds them as trajectories (:meth:`EditorState.load_driving_video`)."""
        self._act(lambda: self.state.load_driving_video(video, source=source))

    def load_scene(self, scene: Union[Scene, str, Path], image: Optional[ImageLike] = None) -> None:
        """Continue editing ``scene`` (or a conditions JSON path); keeps the current image if none is given."""
        def load():
            old = self.state
            self._rebind(EditorState.from_scene(scene, image=image if image is not None else old.image,
                                                segmenter=old.segmenter))
        self._act(load)

    # ------------------------------------------------------------------ event plumbing
    def _act(self, action: Callable[[], object]) -> None:
        """Run a handler; errors show under the canvas (see :class:`Feedback`), then the view is rendered once."""
        self._batch += 1
        try:
            self.feedback.run(action)
        finally:
            self._batch -= 1
        self.redraw()

    def _on_state_change(self) -> None:
        """The state changed (through the widget or a script): render it (once per widget action)."""
        if not self._batch:
            self.redraw()

    def _apply_zoom(self) -> None:
        """Show the canvas ``zoom`` times its model size (CSS scaling: clicks still arrive in model pixels)."""
        z = float(self.zoom.value)
        self.canvas.layout.width = f"{round(self.state.width * z)}px"
        self.canvas.layout.height = "auto"  # a narrower notebook shrinks the width; the aspect ratio stays
        self.canvas.layout.max_width = "100%"

    def view_summary(self) -> dict:
        """What the widget shows now, as plain values (equal to ``state.summary()`` whenever the view is current)."""
        def text(h: str) -> str:
            return html.unescape(re.sub(r"<[^>]+>", "", h.replace("<br>", "\n")))

        status, _, message = text(self.status.value).partition("\n")
        notes = text(self.notes.value)
        return {"mode": self.mode.value, "negative_clicks": self.polarity.value == "negative",
                "st_et": tuple(self.st_et.value), "frame": self.frame.value, "obj_id": self.obj_id.value,
                "caption": ANCHOR_TEXT if self.anchor.value else self.caption.value,
                "selected": self.trajectories.value,
                "trajectories": tuple(label for label, _ in self.trajectories.options[1:]),
                "status": status, "message": message, "hint": text(self.hint.value).removeprefix("→ "),
                "notes": tuple(n.removeprefix("⚠ ") for n in notes.split("\n") if n),
                "path": self.path_kind.value, "tension": self.tension.value, "by": self.sample_by.value,
                "speed": self.speed.value,
                "reach_frames": tuple(int(f) for f in self.timing.value.split(",") if f.strip()),
                "timing": text(self.timing_kind.value).strip("()"), "video": text(self.video_info.value)}

    def _on_mouse_down(self, x: float, y: float) -> None:
        # SAM may take a while (the first click embeds the image)
        if self.state.draft.mode == "mask" and not self.state.draft.driving:
            self.status.value += " &nbsp; <i>segmenting…</i>"
        self._act(lambda: self.state.press(x, y))

    def _on_mouse_move(self, x: float, y: float) -> None:
        if self.state.dragging:
            self._act(lambda: self.state.drag(x, y))

    def _on_mouse_up(self, x: float, y: float) -> None:
        if self.state.dragging:
            self._act(lambda: self.state.release(x, y))

    def _on_control(self, action: Callable[[], object]) -> None:
        if not self._syncing:
            self._act(action)

    def _on_frame(self, frame: int) -> None:
        if not self._syncing:
            self.state.set_frame(frame)

    def _push_timing(self) -> None:
        text = self.timing.value.strip()
        if not text:
            self.state.set_timing(None)
            return
        try:
            frames = [int(f) for f in re.split(r"[,\s]+", text) if f]
        except ValueError:
            raise EditorError(f"reach at: expected frame numbers separated by commas, got {text!r}") from None
        self.state.set_timing(frames)

    @staticmethod
    def _number(field: W.Text, kind: type):
        """The number in a text field (None when empty: the default)."""
        text = field.value.strip()
        if not text:
            return None
        try:
            return kind(text)
        except ValueError:
            raise EditorError(f"{field.description.rstrip(':')}: expected a number, got {text!r}") from None

    def _push_object(self) -> None:
        caption = ANCHOR_TEXT if self.anchor.value else self.caption.value
        self.state.set_object(int(self.obj_id.value), caption)

    def _load_image_path(self) -> None:
        self.state.load_image(self.path.value.strip())

    def _load_video_path(self) -> None:
        self.state.load_driving_video(self.path.value.strip())

    def _track_video(self) -> None:
        if self.state.draft.driving and self.state.draft.video_points:  # LK over a long video takes a moment
            self.status.value += " &nbsp; <i>tracking…</i>"
        self.state.track_video()

    def _load_json_path(self) -> None:
        old = self.state
        self._rebind(EditorState.from_scene(self.path.value.strip(), image=old.image, segmenter=old.segmenter))

    def _save_json(self) -> None:
        self.state.save_json(self.save_path.value.strip())

    def _load_upload(self, files) -> None:
        if not files:
            return
        f = files[0]
        data = bytes(f["content"])
        if f["name"].lower().endswith(".json"):
            old = self.state
            self._rebind(EditorState.from_scene(load_json(data, name=f["name"]), image=old.image,
                                                segmenter=old.segmenter))
        else:
            self.state.load_image(Image.open(io.BytesIO(data)))

    def _rebind(self, state: EditorState) -> None:
        """Show another state (after loading a scene, whose size may differ)."""
        self.state.unsubscribe(self._on_state_change)
        self.state = state
        state.subscribe(self._on_state_change)
        self.canvas.width, self.canvas.height = state.width, state.height
        self._apply_zoom()
        self._scene_key = self._image_key = None

    def _sync_controls(self) -> None:
        """Set every control and status line from ``state.summary()``."""
        s, v = self.state, self.state.summary()
        self._syncing = True
        try:
            self.mode.value = v["mode"]
            self.polarity.value = "negative" if v["negative_clicks"] else "positive"
            self.st_et.max = s.frames
            self.st_et.value = v["st_et"]
            self.frame.max = self.play.max = s.frames - 1
            self.frame.value = v["frame"]
            self.obj_id.value = v["obj_id"]
            self.anchor.value = v["caption"] == ANCHOR_TEXT
            self.caption.value = "" if self.anchor.value else v["caption"]
            self.caption.disabled = self.anchor.value
            self.trajectories.options = [("—", None)] + [(label, i) for i, label in enumerate(v["trajectories"])]
            self.trajectories.value = v["selected"]
            self.path_kind.value, self.tension.value, self.sample_by.value = v["path"], v["tension"], v["by"]
            self.speed.value = v["speed"]
            self.timing.value = ", ".join(map(str, v["reach_frames"]))
            self.timing.disabled = not v["reach_frames"]
            self.tension.disabled = self.sample_by.disabled = v["path"] != "spline"
        finally:
            self._syncing = False
        self.status.value = f"<small>{html.escape(v['status'])}</small><br>{html.escape(v['message'])}"
        self.hint.value = f"<b>→ {html.escape(v['hint'])}</b>"
        self.timing_kind.value = f"<small>({html.escape(v['timing'])})</small>"
        self.video_info.value = f"<small>{html.escape(v['video'])}</small>"
        self.buttons["Track"].disabled = self.buttons["Cancel"].disabled = not v["video"]
        self.notes.value = "<br>".join(f"<span style='color:#b26a00'>⚠ {html.escape(n)}</span>" for n in v["notes"])

    # ------------------------------------------------------------------ drawing
    def redraw(self) -> None:
        """Render the state: every control and status line, and every canvas layer that may have changed (the
        image and committed layers only when they did). Runs by itself after every change of ``state``."""
        self._sync_controls()
        with hold_canvas():
            self._draw_image()
            self._draw_committed()
            self._draw_frame()
            self._draw_live()

    def _draw_image(self) -> None:
        s, layer = self.state, self.canvas[0]
        video = s.draft.video
        key = (id(s.image), id(video), s.width, s.height)
        if key == self._image_key:
            return
        self._image_key = key
        layer.clear()
        if video is not None:
            layer.put_image_data(video.first_frame(), 0, 0)
        elif s.image is None:
            layer.fill_style = "#444"
            layer.fill_rect(0, 0, s.width, s.height)
            layer.fill_style = "#ddd"
            layer.font = "20px sans-serif"
            layer.fill_text("load a start image", 20, 40)
        else:
            layer.put_image_data(s.image, 0, 0)

    def _draw_committed(self) -> None:
        s, d, layer = self.state, self.state.draft, self.canvas[1]
        key = (d.trajectories, d.selected, d.editing, d.driving, s.width, s.height)
        if key == self._scene_key:
            return
        self._scene_key = key
        layer.clear()
        if d.driving:  # the video's first frame alone: the scene's objects are not on it
            return
        masks = [(t.mask.decode(), object_color(t.id)) for i, t in enumerate(d.trajectories)
                 if not t.is_anchor and i != d.selected and i != d.editing]
        if d.selected is not None and d.selected != d.editing:
            sel = d.trajectories[d.selected]
            masks.append((sel.mask.decode(), "#ffffff" if sel.is_anchor else object_color(sel.id)))
        if masks and masks[0][0].shape == (s.height, s.width):
            layer.put_image_data(mask_overlay(masks, 0.22), 0, 0)
        for i, t in enumerate(d.trajectories):
            if i != d.editing:  # the one being edited is drawn live, on top
                _draw_trajectory(layer, t, object_color(t.id, t.is_anchor), width=4 if i == d.selected else 2,
                                 label=str(t.id))

    def _draw_frame(self) -> None:
        s, layer = self.state, self.canvas[2]
        with hold_canvas():
            layer.clear()
            if s.draft.driving:
                layer.fill_style = "white"
                layer.font = "14px monospace"
                layer.fill_text("driving video: first frame", 8, s.height - 8)
                return
            for i, x, y, visible in s.positions_at():
                if i == s.draft.editing:
                    continue
                t = s.draft.trajectories[i] if i >= 0 else None
                color = object_color(t.id, t.is_anchor) if t is not None else \
                    object_color(s.draft.obj_id, s.draft.caption == ANCHOR_TEXT)
                layer.line_width = 3
                layer.stroke_style = "white"
                layer.fill_style = color if visible else INVISIBLE
                layer.fill_circle(x, y, 8)
                layer.stroke_circle(x, y, 8)
            layer.fill_style = "white"
            layer.font = "14px monospace"
            layer.fill_text(f"frame {s.frame}/{s.frames - 1}", 8, s.height - 8)

    def _draw_live(self) -> None:
        s, d, layer = self.state, self.state.draft, self.canvas[3]
        layer.clear()
        if d.driving:  # the points to track, numbered
            layer.font = "bold 12px sans-serif"
            for k, (x, y) in enumerate(d.video_points, 1):
                layer.fill_style = "#00e5ff"
                layer.stroke_style = "#000000"
                layer.line_width = 2
                layer.fill_circle(x, y, 5)
                layer.stroke_circle(x, y, 5)
                layer.fill_style = "#ffffff"
                layer.stroke_text(str(k), x + 7, y - 7)
                layer.fill_text(str(k), x + 7, y - 7)
            return
        if d.mask is not None:
            color = object_color(d.obj_id) if d.mask_confirmed else "#00e676"
            layer.put_image_data(mask_overlay([(d.mask, color)], 0.35 if not d.mask_confirmed else 0.15), 0, 0)
        for x, y, negative in d.clicks:
            layer.fill_style = "#d50000" if negative else "#00c853"
            layer.stroke_style = "white"
            layer.line_width = 2
            layer.fill_circle(x, y, 6)
            layer.stroke_circle(x, y, 6)
        pending = s.pending() if d.polyline else None
        if pending is not None:
            label = f"editing {d.editing}" if d.editing is not None else "new"
            _draw_trajectory(layer, pending, "#ffeb3b", width=2, label=label)
        layer.fill_style = "#ffeb3b"
        layer.stroke_style = "#000000"
        layer.line_width = 1
        for x, y in d.polyline:  # handles: drag one to move it
            layer.fill_circle(x, y, 4)
            layer.stroke_circle(x, y, 4)
        if d.erase_start is not None:
            layer.stroke_style = "#00e5ff"
            layer.line_width = 2
            layer.stroke_circle(*d.erase_start, 9)


def _draw_trajectory(layer, traj: Trajectory, color: str, width: int, label: str) -> None:
    """Solid where visible, dashed grey where invisible; a tick every TICK_EVERY frames, an arrow at the end."""
    track, vis, active = traj.track, traj.vis, traj.active_frames()
    frames = np.flatnonzero(active)
    if len(frames) == 0:
        return
    layer.line_width = width
    for a, b in zip(frames[:-1], frames[1:]):
        if b != a + 1:
            continue
        visible = vis[a] > 0 and vis[b] > 0
        layer.stroke_style = color if visible else INVISIBLE
        layer.set_line_dash([] if visible else [6, 4])
        layer.stroke_line(*track[a], *track[b])
    layer.set_line_dash([])
    for f in frames:
        if f % TICK_EVERY == 0:
            layer.fill_style = color if vis[f] > 0 else INVISIBLE
            layer.fill_circle(*track[f], width + 1)
    first, last = track[frames[0]], track[frames[-1]]
    layer.font = "12px sans-serif"
    layer.fill_style = color
    if np.allclose(first, last):  # static anchor / object
        layer.stroke_style = color
        layer.stroke_rect(first[0] - 7, first[1] - 7, 14, 14)
    else:
        prev = next((track[f] for f in frames[::-1] if not np.allclose(track[f], last)), first)
        _arrow_head(layer, prev, last, color, 10 + 2 * width)
    layer.fill_text(f"{label} [{frames[0]},{frames[-1] + 1})", first[0] + 8, first[1] - 8)


def _arrow_head(layer, p0: np.ndarray, p1: np.ndarray, color: str, size: float) -> None:
    d = np.asarray(p1, float) - np.asarray(p0, float)
    n = np.hypot(*d)
    if n == 0:
        return
    d /= n
    side = np.array([-d[1], d[0]])
    base = p1 - d * size
    layer.fill_style = color
    layer.fill_polygon([tuple(p1), tuple(base + side * size * 0.5), tuple(base - side * size * 0.5)])
