"""Reading a scene: `load_json` takes a path, JSON text/bytes or a parsed list and returns a checked `Scene`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence, Union

from wclab.conditions.scene import Scene
from wclab.conditions.validate import parse_scene
from wclab.errors import ConditionError


def load_json(source: Union[str, Path, Sequence, bytes], *, name: str | None = None) -> Scene:
    """Read a scene from a path, JSON text (str starting with ``[`` or ``{``, or bytes), or an already-parsed list.

    Never mutates its input. Raises :class:`ConditionError` naming the file, item index and field on any
    malformed input (including duplicate keys and the non-JSON constants ``NaN``/``Infinity``).
    """
    if isinstance(source, (bytes, bytearray)):
        where = name or "<json bytes>"
        try:
            text = bytes(source).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConditionError(f"{where}: not UTF-8 ({e})") from None
        value = _parse_text(text, where)
    elif isinstance(source, str) and source.lstrip()[:1] in ("[", "{"):
        where = name or "<json text>"
        value = _parse_text(source, where)
    elif isinstance(source, (str, Path)):
        where = name or str(source)
        try:
            text = Path(source).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConditionError(f"{where}: no such conditions file (JSON text must start with '[')") from None
        except (OSError, UnicodeDecodeError, ValueError) as e:  # ValueError: e.g. a NUL in the path
            raise ConditionError(f"{where}: cannot read conditions file ({e})") from None
        value = _parse_text(text, where)
    else:
        where = name or "<conditions>"
        value = source
    return parse_scene(value, where)


def _parse_text(text: str, where: str) -> Any:
    """``json.loads`` that raises ConditionError; ``NaN``/``Infinity`` become floats so the validator can say where."""

    def no_duplicates(pairs: list) -> dict:
        out: dict = {}
        for k, v in pairs:
            if k in out:
                raise ConditionError(f"{where}: key {k!r} appears twice in one JSON object")
            out[k] = v
        return out

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except ConditionError:
        raise
    except json.JSONDecodeError as e:
        raise ConditionError(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except ValueError as e:  # e.g. an integer literal longer than Python's int digit limit
        raise ConditionError(f"{where}: not usable JSON ({e})") from None
    except RecursionError:
        raise ConditionError(f"{where}: JSON nested too deeply") from None
