"""wclab's own error types: every bad input raises one of these with a message naming the field/file."""
from __future__ import annotations


class WclabError(Exception):
    """Base class of all errors wclab raises on purpose."""


class ConditionError(WclabError, ValueError):
    """A conditions file or object is malformed. The message names the file, item index, field, expected and got."""


class CheckpointError(WclabError, FileNotFoundError):
    """A checkpoint is missing, unreadable or does not match the expected key set / shapes."""


class HookError(WclabError, KeyError):
    """An unknown hook name (the message lists close matches)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""
