"""Continual learning of CLIP: task streams, strategies, the accuracy matrix and its metrics.

See docs/continual.md. ``peftclip run continual --config RECIPE.yaml`` drives it.
"""

from peftclip.continual.distillation import LwF, VRLwF, distillation_loss, random_vocabulary
from peftclip.continual.driver import ContinualRecipe, ContinualResult, ContinualRun
from peftclip.continual.metrics import ContinualMetrics, continual_metrics
from peftclip.continual.model import ContinualModel, FullFineTuning
from peftclip.continual.registry import build_strategy, list_strategies
from peftclip.continual.strategies import Strategy, register_strategy
from peftclip.continual.streams import Stream, Task, list_streams, resolve_stream
from peftclip.continual.training import TrainingSettings
from peftclip.continual.zscl import ZSCL

__all__ = [
    "ZSCL",
    "ContinualMetrics",
    "ContinualModel",
    "ContinualRecipe",
    "ContinualResult",
    "ContinualRun",
    "FullFineTuning",
    "LwF",
    "Strategy",
    "Stream",
    "Task",
    "TrainingSettings",
    "VRLwF",
    "build_strategy",
    "continual_metrics",
    "distillation_loss",
    "list_strategies",
    "list_streams",
    "random_vocabulary",
    "register_strategy",
    "resolve_stream",
]
