"""One object palette for every view: the editor canvas, trajectory plots, video overlays and mask overlays.

An object's colour depends on its id only (so it does not change while objects are added or removed):
id k gets ``OBJECT_PALETTE[(k - 1) % 10]`` (matplotlib's tab10 order: object 1 blue, 2 orange, ...), camera/
background anchors (caption ``"None"``) grey.
"""
from __future__ import annotations

from typing import Union

OBJECT_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
"""tab10, as hex strings."""
ANCHOR_HEX = "#a0a0a0"
"""Camera/background anchors."""


def object_hex(obj_id: Union[int, str], anchor: bool = False) -> str:
    """``'#rrggbb'`` of object ``obj_id`` (an int or its string form); grey for an anchor."""
    if anchor:
        return ANCHOR_HEX
    try:
        k = int(obj_id)
    except (TypeError, ValueError):
        raise ValueError(f"object id: expected an integer (or its string), got {obj_id!r}") from None
    return OBJECT_PALETTE[(k - 1) % len(OBJECT_PALETTE)]


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """``'#rrggbb'`` → ``(r, g, b)`` in 0..255."""
    if not (isinstance(color, str) and len(color) == 7 and color[0] == "#"):
        raise ValueError(f"colour: expected '#rrggbb', got {color!r}")
    return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))


def object_rgb(obj_id: Union[int, str], anchor: bool = False) -> tuple[int, int, int]:
    """``(r, g, b)`` of object ``obj_id``; grey for an anchor."""
    return hex_to_rgb(object_hex(obj_id, anchor))
