"""The text prompt WorldCanvas builds from a scene's captions: one ``Object k: <caption>`` line per object."""
from __future__ import annotations

import re
from dataclasses import dataclass

from wclab.conditions.scene import Scene
from wclab.errors import ConditionError

LINE_SEPARATOR = "\n"  # the reference joins with os.linesep (Linux) and drops the final one


@dataclass(frozen=True)
class Prompt:
    """The prompt and how its lines map to objects.

    text: the lines joined by ``"\\n"``. lines: ``Object k: <caption>`` or ``Object k appears: <caption>``
    (k = 1.. in ``id_caption_map`` order). caption_order: object id (str) → k-1, the index of its line and
    of its caption span. entering: ids with a trajectory whose frame-0 point is off-image.
    """

    text: str
    caption_order: dict[str, int]
    lines: list[str]
    entering: frozenset[str]

    @property
    def ids(self) -> list[str]:
        """Captioned object ids in line order."""
        return list(self.caption_order)


def collapse_whitespace(caption: str) -> str:
    """Runs of whitespace (newlines included) become one space; ends stripped."""
    return re.sub(r"\s+", " ", caption).strip()


def build_prompt(scene: Scene) -> Prompt:
    """One line per captioned object, in ``id_caption_map`` order; ``appears`` when the object enters the image.

    Entering is judged on the scene's own ``height`` × ``width`` (frame-0 point outside the image).
    """
    if not scene.captions:
        raise ConditionError("id_caption_map: empty; the prompt needs at least one captioned object")
    entering = frozenset(scene.entering_ids())
    lines, order = [], {}
    for k, (obj_id, caption) in enumerate(scene.captions.items()):
        verb = " appears" if obj_id in entering else ""
        lines.append(f"Object {k + 1}{verb}: {collapse_whitespace(caption)}")
        order[obj_id] = k
    return Prompt(text=LINE_SEPARATOR.join(lines), caption_order=order, lines=lines,
                  entering=frozenset(i for i in entering if i in order))
