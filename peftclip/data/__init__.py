"""Datasets: one registry entry per dataset, readers, templates, torch datasets."""

from peftclip.data.images import LabeledImageFiles, LabeledImageTensors
from peftclip.data.registry import (
    SPLITS,
    ClassificationData,
    DatasetDefinition,
    PublishedCounts,
    build_dataset,
    dataset_definition,
    dataset_definitions,
    list_datasets,
    register_dataset,
)
from peftclip.data.templates import resolve_templates, template_sets

__all__ = [
    "SPLITS",
    "ClassificationData",
    "DatasetDefinition",
    "LabeledImageFiles",
    "LabeledImageTensors",
    "PublishedCounts",
    "build_dataset",
    "dataset_definition",
    "dataset_definitions",
    "list_datasets",
    "register_dataset",
    "resolve_templates",
    "template_sets",
]
