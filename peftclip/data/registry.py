"""Dataset registry: a name → a builder that returns a :class:`ClassificationData`."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import Dataset

from peftclip.backbone.templates import DEFAULT_TEMPLATE
from peftclip.errors import PeftClipError

SPLITS = ("train", "val", "test")


@dataclass
class ClassificationData:
    """A classification dataset: class names, its splits and its default prompt templates.

    Attributes:
        name: Registry name.
        classnames: Class names in label order (underscores allowed; prompts turn them into spaces).
        splits: ``train`` / ``val`` / ``test`` datasets yielding ``(image, label)``; absent
            splits are missing keys. Each has a settable ``transform`` attribute.
        templates: Default templates of the dataset (a single one for most datasets).
        image_root: Folder that file paths are relative to in few-shot manifests (``None``
            for datasets rendered in memory, which need no manifest).
        split_file: The split file the lists were read from, when there is one.
        class_mask: Labels the head may predict, when only some of ``classnames`` occur
            (ZSCL's masked 1000-way scoring of ImageNet-A/-R): score with the head over all
            ``classnames`` and take the argmax over these columns only. ``None``: all classes.
    """

    name: str
    classnames: list[str]
    splits: dict[str, Dataset]
    templates: list[str] = field(default_factory=lambda: [DEFAULT_TEMPLATE])
    image_root: Path | None = None
    split_file: Path | None = None
    class_mask: list[int] | None = None


DatasetBuilder = Callable[..., ClassificationData]
_DATASETS: dict[str, DatasetBuilder] = {}


def register_dataset(name: str, builder: DatasetBuilder) -> DatasetBuilder:
    """Registers ``builder(root=..., **options)`` under ``name``."""
    if name in _DATASETS and _DATASETS[name] is not builder:
        raise ValueError(f"dataset name '{name}' is already registered")
    _DATASETS[name] = builder
    return builder


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def build_dataset(name: str, root: str | None = None, **options) -> ClassificationData:
    if name not in _DATASETS:
        close = difflib.get_close_matches(name, list(_DATASETS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise PeftClipError(
            f"unknown dataset '{name}'.{hint} Known datasets: {', '.join(list_datasets())}."
        )
    return _DATASETS[name](root=root, **options)
