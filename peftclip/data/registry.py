"""Dataset registry: one :class:`DatasetDefinition` per dataset, holding every fact about it.

A definition says where the dataset lives under the data root (its layout), how it is read
(its reader), its class-name rule where the files do not carry the names, its default prompt
templates, and the published counts that ``peftclip data check`` compares a tree with. Nothing
else in peftclip keeps a second copy of these facts: the readers, ``data check``, the named
template sets (``coop:<dataset>``) and the DataModule all read them from here.

Lookups load what peftclip ships first (:func:`peftclip.builtins.load_builtins`), so a caller
never has to import a reader module or the world to find a dataset.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from peftclip.errors import PeftClipError

SPLITS = ("train", "val", "test")
#: The template of a dataset that names none.
DEFAULT_TEMPLATE = "a photo of a {}."


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


@dataclass(frozen=True)
class PublishedCounts:
    """The published size of a dataset, which ``peftclip data check`` compares a tree with.

    Attributes:
        classes: Number of classes.
        train: Training images; ``None`` where the dataset has no such split (as for val/test).
        val: Validation images.
        test: Test images.
        base: Classes of the base half in base-to-new generalization (the first ⌈n/2⌉ sorted
            labels present in train, docs/protocols/base-to-new.md); ``None`` where the protocol
            does not use the dataset.
        new: Classes of the new half.
    """

    classes: int
    train: int | None
    val: int | None
    test: int | None
    base: int | None = None
    new: int | None = None

    def split_size(self, split: str) -> int | None:
        return {"train": self.train, "val": self.val, "test": self.test}[split]


#: ``reader(definition, root=..., **options)``: reads the dataset a definition describes.
DatasetReader = Callable[..., ClassificationData]


@dataclass(frozen=True)
class DatasetDefinition:
    """Everything peftclip knows about one dataset: the single registry entry of its name.

    Attributes:
        name: Registry name (``oxford_pets``); data recipes refer to it as ``data.dataset``.
        reader: ``reader(definition, root=..., **options) -> ClassificationData``; gets this
            definition, so one reader serves every dataset of a layout (all ``split_zhou``
            datasets share :func:`peftclip.data.coop_datasets.read_zhou_split`).
        layout: Where the dataset lives under the data root, in the reader's own terms
            (:class:`~peftclip.data.coop_datasets.ZhouLayout`, ``FolderLayout``,
            ``MtilSplitLayout``); ``None`` for datasets that are not read from a data root.
        templates: Default prompt templates (CoOp's hand-crafted one for CoOp's datasets).
        classnames: Class names in label order where the reader fixes them (MNIST, the world
            tasks); ``None`` where the files carry them (split files, ``classnames.txt``).
        counts: Published counts checked by ``peftclip data check``; ``None``: not checked.
        check_by_default: Whether ``data check`` without dataset names checks this dataset
            (the MTIL split datasets need a generated manifest, so they are checked only when
            named).
        file_md5: MD5 sums of files under the data root that ``data check`` verifies (torchvision
            refuses a CIFAR-100 file that does not match, and so does ZSCL).
        benchmark: The collection whose definition the entry follows (``coop``, ``mtil``,
            ``world``). The templates of a ``coop`` entry are also the named template set
            ``coop:<name>``.
    """

    name: str
    reader: DatasetReader
    layout: Any = None
    templates: tuple[str, ...] = (DEFAULT_TEMPLATE,)
    classnames: tuple[str, ...] | None = None
    counts: PublishedCounts | None = None
    check_by_default: bool = True
    file_md5: Mapping[str, str] = field(default_factory=dict)
    benchmark: str | None = None

    def __post_init__(self) -> None:
        bad = [template for template in self.templates if template.count("{}") != 1]
        if not self.templates or bad:
            raise ValueError(
                f"dataset '{self.name}': templates must be one or more strings with exactly one "
                f"'{{}}' placeholder; got {list(self.templates)}"
            )
        fixed = self.classnames
        if self.counts is not None and fixed is not None and self.counts.classes != len(fixed):
            raise ValueError(
                f"dataset '{self.name}': {len(fixed)} class names but published counts say "
                f"{self.counts.classes} classes"
            )


_DATASETS: dict[str, DatasetDefinition] = {}


def register_dataset(definition: DatasetDefinition) -> DatasetDefinition:
    """Registers ``definition`` under its name; returns it.

    Registering the same definition twice is harmless; another definition under a taken name
    is an error.
    """
    known = _DATASETS.get(definition.name)
    if known is not None and known != definition:
        raise ValueError(f"dataset name '{definition.name}' is already registered")
    _DATASETS[definition.name] = definition
    return definition


def _load_builtins() -> None:
    from peftclip.builtins import load_builtins

    load_builtins()


def dataset_definitions() -> Iterator[DatasetDefinition]:
    """Every registered definition, in registration order (``data check`` reports in it)."""
    _load_builtins()
    return iter(list(_DATASETS.values()))


def list_datasets() -> list[str]:
    """The registered dataset names, sorted."""
    _load_builtins()
    return sorted(_DATASETS)


def dataset_definition(name: str) -> DatasetDefinition:
    """The definition registered under ``name``; a clear error naming close matches if none."""
    if name not in _DATASETS:
        _load_builtins()
    if name not in _DATASETS:
        close = difflib.get_close_matches(name, list(_DATASETS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise PeftClipError(
            f"unknown dataset '{name}'.{hint} Known datasets: {', '.join(list_datasets())}."
        )
    return _DATASETS[name]


def build_dataset(name: str, root: str | None = None, **options) -> ClassificationData:
    """Reads dataset ``name`` under the data root ``root`` (``options``: its reader's options)."""
    definition = dataset_definition(name)
    return definition.reader(definition, root=root, **options)
