"""wclab — a Jupyter-first research kit for WorldCanvas (trajectory + text promptable image-to-video).

Data flows one way: ``conditions`` → ``encode`` → ``models`` → ``sampler`` (steppable session) → ``inspect``.
The most used names are available here and imported on first use (``import wclab`` stays light)::

    import wclab
    models = wclab.load_models("checkpoints/")
    session = wclab.Session(models, wclab.load_json("scene.json"), "start.png", wclab.Settings(seed=0))
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

__version__ = "0.1.0"


def _lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` whose names (``exports``: name -> module) are imported from
    their module on first use, then kept in the package."""
    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__


_EXPORTS = {
    "load_json": "wclab.conditions",
    "Scene": "wclab.conditions",
    "Trajectory": "wclab.conditions",
    "encode_conditions": "wclab.encode",
    "load_models": "wclab.models.loading",
    "Models": "wclab.models.loading",
    "Session": "wclab.sampler",
    "Settings": "wclab.sampler",
    "generate": "wclab.sampler",
    "AttentionMaps": "wclab.inspect",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
