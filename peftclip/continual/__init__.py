"""Continual learning of CLIP: task streams, strategies, the accuracy matrix and its metrics.

See docs/continual.md. ``peftclip run continual --config RECIPE.yaml`` drives it.

The names below are imported on first use (PEP 562), so that a torch-free part such as
:mod:`peftclip.continual.metrics` (which ``peftclip leaderboard --protocol continual`` uses) can
be imported without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Exported name → the module that defines it.
_EXPORTS = {
    "ContinualMetrics": "metrics",
    "continual_metrics": "metrics",
    "ContinualModel": "model",
    "FullFineTuning": "model",
    "ContinualRecipe": "driver",
    "ContinualResult": "driver",
    "ContinualRun": "driver",
    "LwF": "distillation",
    "VRLwF": "distillation",
    "distillation_loss": "distillation",
    "random_vocabulary": "distillation",
    "build_strategy": "registry",
    "list_strategies": "registry",
    "Strategy": "strategies",
    "register_strategy": "strategies",
    "Stream": "streams",
    "Task": "streams",
    "list_streams": "streams",
    "resolve_stream": "streams",
    "TrainingSettings": "training",
    "ZSCL": "zscl",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value
