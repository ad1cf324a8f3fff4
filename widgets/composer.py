"""ipycanvas reference-image composer: a thin view of :class:`ComposerState`.

    composer = Composer(target_height=480, target_width=832)   # load a background and a subject image, then
    composer                                                  # click the subject, cut, place (drag/sliders), paste
    start_image = composer.state.result()                     # uint8 [480, 832, 3] for the _ref models
"""
from __future__ import annotations

import html
from typing import Callable, Optional

import ipywidgets as W
import numpy as np
from ipycanvas import MultiCanvas, hold_canvas

from wclab.sizes import DEFAULT_HEIGHT, DEFAULT_WIDTH
from widgets.composer_state import PASTE_MODES, ComposerState
from widgets.feedback import Feedback
from widgets.images import ImageLike
from widgets.segmenter import Segmenter, default_segmenter
from widgets.trajectory_editor import mask_overlay

DISPLAY_WIDTH = 640
"""CSS width (pixels) the canvases are shown at; their own resolution is the image's."""


class Composer(W.VBox):
    """Compose a start image: expand the canvas, paste subjects cut from other images."""

    def __init__(self, background: Optional[ImageLike] = None, subject_image: Optional[ImageLike] = None, *,
                 target_height: int = DEFAULT_HEIGHT, target_width: int = DEFAULT_WIDTH, segmenter: Optional[Segmenter] = None,
                 state: Optional[ComposerState] = None):
        self.state = state or ComposerState(target_height=target_height, target_width=target_width,
                                            segmenter=segmenter if segmenter is not None else default_segmenter())
        self.feedback = Feedback()
        self._syncing = False
        self._acting = False
        self.buttons: dict[str, W.Button] = {}

        def button(label: str, action: Callable[[], object], style: str = "") -> W.Button:
            b = W.Button(description=label, button_style=style, layout=W.Layout(width="auto"))
            b.on_click(lambda _: self._act(action))
            self.buttons[label] = b
            return b

        self.canvas = MultiCanvas(2, width=target_width, height=target_height,
                                  layout=W.Layout(width=f"{DISPLAY_WIDTH}px"))
        self.canvas.on_mouse_down(lambda x, y: self._act(lambda: self.state.drag_start(x, y)))
        self.canvas.on_mouse_move(self._on_drag)
        self.canvas.on_mouse_up(lambda x, y: self._act(self.state.drag_end))
        self.canvas.on_client_ready(self.redraw)
        self.source_canvas = MultiCanvas(2, width=target_width, height=target_height,
                                         layout=W.Layout(width=f"{DISPLAY_WIDTH // 2}px"))
        self.source_canvas.on_mouse_down(lambda x, y: self._act(
            lambda: self.state.on_source_click(x, y, self.polarity.value == "negative")))
        self.source_canvas.on_client_ready(self.redraw)

        self.path = W.Text(placeholder="image path", layout=W.Layout(width="320px"))
        self.polarity = W.ToggleButtons(options=["positive", "negative"], style={"button_width": "72px"})
        self.x = W.IntSlider(description="x:", min=-target_width, max=2 * target_width, continuous_update=True)
        self.y = W.IntSlider(description="y:", min=-target_height, max=2 * target_height, continuous_update=True)
        self.scale = W.FloatSlider(description="scale:", value=1.0, min=0.05, max=10.0, step=0.05)
        for c in (self.x, self.y, self.scale):
            c.observe(lambda ch: self._on_control(
                lambda: self.state.place(self.x.value, self.y.value, self.scale.value)), "value")
        self.paste_mode = W.ToggleButtons(options=list(PASTE_MODES), description="paste:",
                                          style={"button_width": "60px"},
                                          tooltips=["bounding box, grey outside the mask (original tool)",
                                                    "only the subject's pixels"])
        self.paste_mode.observe(lambda ch: self._on_control(lambda: setattr(self.state, "paste_mode", ch["new"])),
                                "value")
        self.pads = {side: W.BoundedIntText(value=0, min=0, max=8192, description=f"{side}:",
                                            layout=W.Layout(width="150px"))
                     for side in ("top", "bottom", "left", "right")}
        for p in self.pads.values():
            p.observe(lambda ch: self._show_hint(), "value")
        self.save_path = W.Text(value="start_image.jpg", layout=W.Layout(width="240px"))
        self.hint = W.HTML()
        self.status = W.HTML()

        super().__init__([
            W.HBox([self.path, button("Load background", lambda: self.state.set_background(self.path.value.strip())),
                    button("Load subject image", lambda: self.state.set_source(self.path.value.strip()))]),
            W.HBox([W.VBox([W.HTML("<b>composite</b> (drag the subject)"), self.canvas, self.hint]),
                    W.VBox([W.HTML("<b>subject image</b> (click the subject)"), self.source_canvas,
                            self.polarity, W.HBox([button("Undo click", self.state.undo_click),
                                                   button("Cut subject", self.state.cut, "success")])])]),
            self.feedback.error,
            self.status,
            W.HBox([self.x, self.y, self.scale]),
            W.HBox([self.paste_mode, button("Paste", self.state.paste, "primary"), button("Undo", self.state.undo)]),
            W.HBox(list(self.pads.values()) + [button("Expand", self._expand)]),
            W.HBox([self.save_path, button("Save (fitted to target)", lambda: self.state.save(self.save_path.value))]),
            self.feedback.details,
        ])
        self.state.subscribe(self._on_state_change)
        if background is not None:
            self._act(lambda: self.state.set_background(background))
        if subject_image is not None:
            self._act(lambda: self.state.set_source(subject_image))
        self._act(lambda: None)

    # ------------------------------------------------------------------ events
    def _act(self, action: Callable[[], object]) -> None:
        self._acting = True
        try:
            self.feedback.run(action)
        finally:
            self._acting = False
        self._sync_controls()
        self.redraw()

    def _on_state_change(self) -> None:
        """The state changed outside the widget's own events (e.g. a script): render it."""
        if not self._acting:
            self._sync_controls()
            self.redraw()

    def _on_control(self, action: Callable[[], object]) -> None:
        if not self._syncing:
            self._act(action)

    def _on_drag(self, x: float, y: float) -> None:
        if self.state._grab is not None:
            self._act(lambda: self.state.drag_to(x, y))

    def _expand(self) -> None:
        self.state.expand(**{side: int(p.value) for side, p in self.pads.items()})
        self._syncing = True
        for p in self.pads.values():
            p.value = 0
        self._syncing = False

    def _show_hint(self) -> None:
        s = self.state
        if s.canvas is None:
            self.hint.value = "load a background image"
            return
        try:
            size = s.expanded_size(**{side: int(p.value) for side, p in self.pads.items()})
        except Exception as e:  # noqa: BLE001 — a bad padding shows as the hint
            self.hint.value = f"<span style='color:#c62828'>{html.escape(str(e))}</span>"
            return
        ok, text = s.hint(size)
        pending = " (after expanding)" if size != s.canvas.shape[:2] else ""
        self.hint.value = f"<span style='color:{'#2e7d32' if ok else '#c62828'}'>{html.escape(text)}{pending}</span>"

    def _sync_controls(self) -> None:
        s = self.state
        self._syncing = True
        try:
            if s.canvas is not None:
                h, w = s.canvas.shape[:2]
                self.x.min, self.x.max = -w, 2 * w
                self.y.min, self.y.max = -h, 2 * h
            self.x.value, self.y.value, self.scale.value = s.x, s.y, s.scale
            self.paste_mode.value = s.paste_mode
        finally:
            self._syncing = False
        self._show_hint()
        self.status.value = (f"<b>segmenter:</b> {html.escape(s.segmenter.label)} &nbsp; "
                             f"<b>undo:</b> {len(s.history)}<br>{html.escape(s.message)}")

    # ------------------------------------------------------------------ drawing
    def redraw(self) -> None:
        s = self.state
        with hold_canvas():
            _show(self.canvas, s.preview() if s.canvas is not None else None, "load a background image")
            top = self.canvas[1]
            box = s.subject_box()
            if box is not None and s.canvas is not None:
                top.stroke_style = "#ffeb3b"
                top.line_width = 3
                top.set_line_dash([8, 6])
                top.stroke_rect(*box)
                top.set_line_dash([])
            _show(self.source_canvas, s.source, "load a subject image")
            layer = self.source_canvas[1]
            if s.mask is not None:
                layer.put_image_data(mask_overlay([(s.mask, "#00e676")], 0.4), 0, 0)
            for x, y, negative in s.clicks:
                layer.fill_style = "#d50000" if negative else "#00c853"
                layer.fill_circle(x, y, max(4, s.source.shape[1] // 150))


def _show(canvas: MultiCanvas, image: Optional[np.ndarray], placeholder: str) -> None:
    """Resize ``canvas`` to ``image`` and draw it on layer 0; clear the layers above."""
    for layer in canvas._canvases[1:]:
        layer.clear()
    base = canvas[0]
    if image is None:
        base.fill_style = "#444"
        base.fill_rect(0, 0, canvas.width, canvas.height)
        base.fill_style = "#ddd"
        base.font = "20px sans-serif"
        base.fill_text(placeholder, 20, 40)
        return
    h, w = image.shape[:2]
    if (canvas.width, canvas.height) != (w, h):
        canvas.width, canvas.height = w, h
    base.put_image_data(image, 0, 0)
