"""Errors shown in the widget: a red line for wclab errors, the traceback too for anything unexpected."""
from __future__ import annotations

import html
import traceback
from typing import Callable

import ipywidgets as W

from wclab.errors import WclabError


class Feedback:
    """``error`` (HTML line) and ``details`` (Output with tracebacks) to place next to a canvas."""

    def __init__(self) -> None:
        self.error = W.HTML()
        self.details = W.Output(layout=W.Layout(max_height="160px", overflow="auto"))

    def run(self, action: Callable[[], object]) -> bool:
        """Run ``action``; return False (and show why) if it raised. Nothing is left to a lost kernel log."""
        try:
            action()
        except WclabError as e:
            self.error.value = f"<b style='color:#c62828'>⚠ {html.escape(str(e))}</b>"
            return False
        except Exception as e:  # noqa: BLE001 — shown in the widget instead of vanishing in the kernel log
            self.error.value = (f"<b style='color:#c62828'>⚠ internal error: {html.escape(type(e).__name__)}: "
                                f"{html.escape(str(e))} (traceback below)</b>")
            self.details.append_stderr(traceback.format_exc())
            return False
        self.error.value = ""
        return True

    @property
    def message(self) -> str:
        """The error line as plain text ('' when the last action succeeded)."""
        return html.unescape(self.error.value.replace("<b style='color:#c62828'>", "").replace("</b>", ""))
