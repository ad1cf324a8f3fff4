"""Reference-image composer: expanding, cutting a subject, placing/dragging, pasting, and the widget's events.

Images are small synthetic pictures with flat colours, so every expected pixel is known exactly.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from widgets import Composer, ComposerState, FallbackSegmenter
from widgets.composer_state import FILL, ComposerError, Subject, aspect_hint, cut_subject, paste

BLUE, RED, WHITE = (30, 60, 200), (200, 30, 30), (240, 240, 240)


def background(h: int = 60, w: int = 80) -> np.ndarray:
    return np.full((h, w, 3), BLUE, np.uint8)


def subject_image() -> np.ndarray:
    img = np.full((50, 50, 3), WHITE, np.uint8)
    img[10:30, 20:36] = RED  # a 16 x 20 red subject
    return img


@pytest.fixture
def state() -> ComposerState:
    s = ComposerState(target_height=48, target_width=96, segmenter=FallbackSegmenter())
    s.set_background(background())
    s.set_source(subject_image())
    return s


def test_expand_adds_grey_borders_and_keeps_the_picture_in_place(state):
    assert state.expanded_size(top=5, left=10) == (65, 90)
    state.expand(top=5, bottom=0, left=10, right=2)
    c = state.canvas
    assert c.shape == (65, 92, 3)
    assert (c[:5] == FILL).all() and (c[:, :10] == FILL).all() and (c[:, -2:] == FILL).all()
    assert (c[5:, 10:-2] == BLUE).all()
    with pytest.raises(ComposerError, match="left: expected a whole number of pixels >= 0"):
        state.expand(left=-3)


def test_cut_subject_is_the_mask_bounding_box_with_grey_outside_the_mask():
    img = subject_image()
    mask = np.zeros((50, 50), bool)
    mask[10:30, 20:36] = True
    mask[10, 20] = False  # a hole at the box corner stays grey
    sub = cut_subject(img, mask)
    assert sub.pixels.shape == (20, 16, 3) and sub.mask.shape == (20, 16)
    assert (sub.pixels[0, 0] == FILL).all() and (sub.pixels[5, 5] == RED).all()
    with pytest.raises(ComposerError, match="empty mask"):
        cut_subject(img, np.zeros((50, 50), bool))


def test_paste_box_mode_copies_the_whole_box_and_mask_mode_only_the_subject():
    pixels = np.full((4, 4, 3), RED, np.uint8)
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    pixels[~mask] = FILL
    sub = Subject(pixels, mask)
    bg = background(10, 10)
    box = paste(bg, sub, 2, 3, 1.0, "box")
    assert (box[3:7, 2:6] == pixels).all() and (box[:3] == BLUE).all()
    only = paste(bg, sub, 2, 3, 1.0, "mask")
    assert (only[4:6, 3:5] == RED).all() and (only[3, 2] == BLUE).all()
    assert (bg == BLUE).all()  # inputs untouched


def test_paste_scales_and_clips_at_the_canvas_edges():
    sub = Subject(np.full((4, 6, 3), RED, np.uint8), np.ones((4, 6), bool))
    out = paste(background(10, 10), sub, 7, -2, 2.0)  # 12 x 8 px, top-left (7, -2)
    assert (out[0:6, 7:10] == RED).all()
    assert (out[6:, :] == BLUE).all() and (out[:, :7] == BLUE).all()
    assert (paste(background(10, 10), sub, 50, 50, 1.0) == BLUE).all()  # entirely outside: unchanged
    with pytest.raises(ComposerError, match="scale"):
        paste(background(), sub, 0, 0, 0.0)


def test_click_cut_place_paste_and_paste_again(state):
    state.on_source_click(28, 20)
    assert state.mask[10:30, 20:36].all() and state.mask.sum() == 16 * 20
    sub = state.cut()
    assert sub.pixels.shape == (20, 16, 3)
    state.place(x=4, y=6)
    state.paste()
    state.place(x=50, y=30, scale=0.5)
    state.paste()
    c = state.canvas
    assert (c[6:26, 4:20] == RED).all() and (c[30:40, 50:58] == RED).all()
    assert (c[27:, 21:49] == BLUE).all()
    state.undo()
    assert (state.canvas[30:40, 50:58] == BLUE).all() and (state.canvas[6:26, 4:20] == RED).all()


def test_drag_grabs_the_subject_and_moves_it_by_the_mouse_offset(state):
    state.on_source_click(28, 20)
    state.cut()
    state.place(10, 10)
    state.drag_start(15, 12)   # inside the 16 x 20 box
    state.drag_to(40, 30)
    state.drag_end()
    state.drag_to(0, 0)        # not dragging any more
    assert (state.x, state.y) == (35, 28)
    state.drag_start(70, 50)   # outside: the subject's centre jumps there
    assert state.subject_box() == (62, 40, 16, 20)


def test_expanding_moves_the_placed_subject_with_the_picture(state):
    state.on_source_click(28, 20)
    state.cut()
    state.place(10, 10)
    state.expand(top=4, left=6)
    assert (state.x, state.y) == (16, 14)


def test_aspect_hint_compares_against_the_target_ratio():
    ok, text = aspect_hint(480, 832, 480, 832)
    assert ok and "good" in text
    ok, text = aspect_hint(300, 400, 480, 832)
    assert not ok and "400 (W) x 300 (H)" in text and "cropped" in text


def test_result_is_fitted_to_the_target_size_and_saved(state, tmp_path):
    assert state.result().shape == (48, 96, 3)
    path = state.save(tmp_path / "start.png")
    assert np.asarray(Image.open(path)).shape == (48, 96, 3)
    state.save(tmp_path / "raw.png", fitted=False)
    assert np.asarray(Image.open(tmp_path / "raw.png")).shape == (60, 80, 3)


@pytest.mark.parametrize("action, message", [
    (lambda s: s.paste(), "no subject"),
    (lambda s: s.cut(), "no mask"),
    (lambda s: s.undo_click(), "no click"),
    (lambda s: s.place(scale=-1), "scale"),
    (lambda s: ComposerState(segmenter=FallbackSegmenter()).expand(top=1), "no background"),
    (lambda s: ComposerState(segmenter=FallbackSegmenter()).on_source_click(1, 1), "no subject image"),
])
def test_bad_actions_raise_a_clear_error(state, action, message):
    with pytest.raises(ComposerError, match=message):
        action(state)


# ---------------------------------------------------------------------------------------------- widget
def msg(widget, event: str, x: float, y: float) -> None:
    widget._handle_custom_msg({"event": event, "x": x, "y": y}, [])


def test_widget_events_compose_a_start_image(tmp_path):
    c = Composer(background(), subject_image(), target_height=48, target_width=96, segmenter=FallbackSegmenter())
    c.buttons["Paste"].click()
    assert "no subject" in c.feedback.message
    msg(c.source_canvas, "mouse_down", 28, 20)
    c.buttons["Cut subject"].click()
    assert c.feedback.message == ""
    msg(c.canvas, "mouse_down", 40, 30)            # outside the subject: its centre moves here
    msg(c.canvas, "mouse_move", 45, 32)            # drag
    msg(c.canvas, "mouse_up", 45, 32)
    assert (c.state.x, c.state.y) == (37, 22) and (c.x.value, c.y.value) == (37, 22)
    c.scale.value = 0.5
    c.buttons["Paste"].click()
    assert (c.state.canvas[22:32, 37:45] == RED).all()
    c.pads["left"].value = 20
    assert "100 (W) x 60 (H)" in c.hint.value and "after expanding" in c.hint.value
    c.buttons["Expand"].click()
    assert c.state.canvas.shape == (60, 100, 3) and c.pads["left"].value == 0
    assert "good" in c.hint.value or "cropped" in c.hint.value
    c.save_path.value = str(tmp_path / "start.jpg")
    c.buttons["Save (fitted to target)"].click()
    assert np.asarray(Image.open(tmp_path / "start.jpg")).shape == (48, 96, 3)


def test_widget_negative_clicks_and_sliders_reach_the_state():
    c = Composer(background(), subject_image(), target_height=48, target_width=96, segmenter=FallbackSegmenter())
    msg(c.source_canvas, "mouse_down", 28, 20)
    c.polarity.value = "negative"
    msg(c.source_canvas, "mouse_down", 22, 12)
    assert c.state.clicks[-1] == (22.0, 12.0, True) and not c.state.mask[12, 22]
    c.x.value = 5
    assert c.state.x == 5


def test_the_widget_renders_changes_a_script_makes_to_its_state():
    """No redraw() needed: the controls follow the state whoever changed it."""
    c = Composer(background(), subject_image(), target_height=48, target_width=96, segmenter=FallbackSegmenter())
    c.state.on_source_click(28, 20)
    c.state.cut()
    c.state.place(x=7, y=9, scale=0.5)
    assert (c.x.value, c.y.value, c.scale.value) == (7, 9, 0.5)
    c.state.paste()
    assert "pasted at (7, 9)" in c.status.value and "undo:</b> 1" in c.status.value
    c.state.undo()
    assert "undone" in c.status.value and "undo:</b> 0" in c.status.value
