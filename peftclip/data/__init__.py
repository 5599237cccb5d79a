"""Datasets: registry, readers, torch datasets."""

from peftclip.data import folders, solid_colors  # noqa: F401  (registers the built-in readers)
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
