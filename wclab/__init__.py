"""wclab — a Jupyter-first research kit for WorldCanvas (trajectory + text promptable image-to-video).

Data flows one way: ``conditions`` → ``encode`` → ``models`` → ``sampler`` (steppable session) → ``inspect``.
The most used names are available here and imported on first use (``import wclab`` stays light)::

    import wclab
    models = wclab.load_models("checkpoints/")
    session = wclab.Session(models, wclab.load_json("scene.json"), "start.png", wclab.Settings(seed=0))
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

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


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'wclab' has no attribute {name!r}")
