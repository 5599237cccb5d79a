"""Datasets: registry, readers, torch datasets."""

from peftclip.data import (  # noqa: F401  (registers readers)
    coop_datasets,
    folders,
    mtil_extras,
    mtil_splits,
)
from peftclip.data.images import LabeledImageFiles, LabeledImageTensors
from peftclip.data.registry import (
    SPLITS,
    ClassificationData,
    build_dataset,
    list_datasets,
    register_dataset,
)

__all__ = [
    "SPLITS",
    "ClassificationData",
    "LabeledImageFiles",
    "LabeledImageTensors",
    "build_dataset",
    "list_datasets",
    "register_dataset",
]

# The world's datasets register after the readers above (they build on peftclip.data).
from peftclip.world import datasets as _world_datasets  # noqa: F401
