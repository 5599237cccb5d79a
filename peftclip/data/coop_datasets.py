"""Readers for the CoOp benchmark datasets in their standard on-disk layouts.

Layouts, split sources and pitfalls: docs/datasets.md#on-disk-layouts and
docs/datasets.md#peftclip-data-check. ``root`` is the data root ``<DATA>`` that holds one folder
per dataset, as CoOp's DATASETS.md prepares it. Nothing is ever written into it, and a missing
split file is an error (the anchors silently make a new random split, which makes numbers
incomparable).

Each dataset is one :class:`~peftclip.data.registry.DatasetDefinition` at the end of this
module: its layout, CoOp's template for it and its published counts. A new dataset in the
``split_zhou`` layout is one more such entry (CONTRIBUTING.md, "Adding a dataset").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from peftclip.data.images import LabeledImageFiles
from peftclip.data.listing import FolderLayout, class_folders, existing_root, image_files
from peftclip.data.registry import (
    ClassificationData,
    DatasetDefinition,
    PublishedCounts,
    register_dataset,
)
from peftclip.errors import DatasetMissing, PeftClipError

_CHECK = (
    "Run `peftclip data check --root <DATA>` after fixing it; see docs/datasets.md#on-disk-layouts."
)


@dataclass(frozen=True)
class ZhouLayout:
    """Where a dataset with a ``split_zhou_*.json`` file lives under ``<DATA>``."""

    directory: str
    image_prefix: str  # split paths are relative to <DATA>/<directory>/<image_prefix>
    split_file: str


#: ImageNet's folder: its variants fall back to its ``classnames.txt``.
_IMAGENET_DIRECTORY = "imagenet"


def _dataset_dir(root: str | None, directory: str, name: str) -> Path:
    path = existing_root(root, "the data root that holds the dataset folders") / directory
    if not path.is_dir():
        raise DatasetMissing(
            f"dataset '{name}' expects the folder '{path}', which is missing. {_CHECK}", path
        )
    return path


def _require_files(samples: list[tuple[Path, int]], source: Path) -> None:
    missing = [str(path) for path, _ in samples if not path.is_file()]
    if missing:
        raise PeftClipError(
            f"{len(missing)} image(s) listed in '{source}' do not exist, e.g. "
            f"{', '.join(missing[:5])}. Restore them (classes are never dropped silently). {_CHECK}"
        )


def read_zhou_split(definition: DatasetDefinition, root: str | None = None) -> ClassificationData:
    """A dataset split by its ``split_zhou_<Name>.json`` file, read as-is.

    Class names are those of the split file (CoOp's renaming rules are already applied there);
    see docs/datasets.md#split-files.
    """
    name, layout = definition.name, definition.layout
    directory = _dataset_dir(root, layout.directory, name)
    split_path = directory / layout.split_file
    if not split_path.is_file():
        raise PeftClipError(
            f"dataset root '{directory}' has no {layout.split_file}; download it from CoOp's "
            f"DATASETS.md into that folder. peftclip never generates a split. {_CHECK}"
        )
    try:
        split = json.loads(split_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PeftClipError(f"'{split_path}' is not a valid split file ({error}).") from error
    names: dict[int, str] = {}
    splits = {}
    prefix = directory / layout.image_prefix
    for part in ("train", "val", "test"):
        samples = []
        for relpath, label, classname in split.get(part, []):
            if names.setdefault(label, classname) != classname:
                raise PeftClipError(
                    f"'{split_path}' gives label {label} two class names: '{names[label]}' and "
                    f"'{classname}'. The file is corrupt; download it again."
                )
            samples.append((prefix / relpath, label))
        _require_files(samples, split_path)
        splits[part] = LabeledImageFiles(samples)
    if sorted(names) != list(range(len(names))):
        raise PeftClipError(f"'{split_path}' labels are not 0…{len(names) - 1}.")
    classnames = [names[label] for label in range(len(names))]
    templates = list(definition.templates)
    return ClassificationData(name, classnames, splits, templates, prefix, split_path)


def read_fgvc_aircraft(
    definition: DatasetDefinition, root: str | None = None
) -> ClassificationData:
    """FGVC-Aircraft from its own ``variants.txt`` and ``images_variant_<split>.txt``.

    See docs/datasets.md#split-files.

    Class names: the lines of ``variants.txt``, in order.
    """
    name, layout = definition.name, definition.layout
    directory = _dataset_dir(root, layout.directory, name)
    images = directory / layout.image_folders[0]
    variants_file = directory / "variants.txt"
    if not variants_file.is_file():
        raise PeftClipError(
            f"'{variants_file}' is missing (the data/ folder of fgvc-aircraft-2013b)."
        )
    classnames = [line.strip() for line in variants_file.read_text().splitlines() if line.strip()]
    label_of = {name: label for label, name in enumerate(classnames)}
    splits = {}
    for part in ("train", "val", "test"):
        listing = directory / f"images_variant_{part}.txt"
        if not listing.is_file():
            raise PeftClipError(f"'{listing}' is missing. {_CHECK}")
        samples = []
        for line in listing.read_text().splitlines():
            if line.strip():
                image_id, variant = line.strip().split(" ", 1)
                if variant not in label_of:
                    raise PeftClipError(f"'{listing}': variant '{variant}' is not in variants.txt.")
                samples.append((images / f"{image_id}.jpg", label_of[variant]))
        _require_files(samples, listing)
        splits[part] = LabeledImageFiles(samples)
    return ClassificationData(name, classnames, splits, list(definition.templates), images)


def _imagenet_classnames(directory: Path, root: str | None) -> list[tuple[str, str]]:
    """``(wnid, name)`` lines of ``classnames.txt``; variants fall back to ImageNet's copy."""
    for candidate in (
        directory / "classnames.txt",
        Path(root or "") / _IMAGENET_DIRECTORY / "classnames.txt",
    ):
        if candidate.is_file():
            lines = [line.strip() for line in candidate.read_text().splitlines() if line.strip()]
            pairs = [tuple(line.split(" ", 1)) for line in lines]
            if len(pairs) != 1000 or any(len(pair) != 2 for pair in pairs):
                raise PeftClipError(
                    f"'{candidate}' must have 1000 lines '<wnid> <class name>'; found {len(pairs)}."
                )
            return pairs
    raise PeftClipError(
        f"no classnames.txt in '{directory}' or in '<DATA>/imagenet/'; copy CoOp's ImageNet "
        f"classnames.txt there. {_CHECK}"
    )


def _folder_samples(folders: list[Path], label_of: dict[str, int]) -> list[tuple[Path, int]]:
    return [(file, label_of[folder.name]) for folder in folders for file in image_files(folder)]


def read_imagenet(definition: DatasetDefinition, root: str | None = None) -> ClassificationData:
    """ImageNet: ``images/{train,val}/<wnid>/`` + ``classnames.txt``; test = ILSVRC val, no val.

    Class names: ``classnames.txt`` in sorted wnid order.
    """
    name, layout = definition.name, definition.layout
    directory = _dataset_dir(root, layout.directory, name)
    images = directory / layout.image_folders[0]
    pairs = _imagenet_classnames(directory, root)
    label_of = {wnid: label for label, (wnid, _) in enumerate(sorted(pairs))}
    splits = {}
    for part, folder in (("train", "train"), ("test", "val")):
        base = images / folder
        if not base.is_dir():
            raise PeftClipError(f"'{base}' is missing. {_CHECK}")
        folders = class_folders(base)
        if not folders and image_files(base):
            raise PeftClipError(
                f"'{base}' holds its images flat; the reader needs '{base}/<wnid>/'. Run the "
                "standard ImageNet val re-foldering script (valprep.sh) first."
            )
        unknown = [f.name for f in folders if f.name not in label_of]
        if unknown or len(folders) != 1000:
            raise PeftClipError(
                f"'{base}' must hold the 1000 wnid folders of classnames.txt; found "
                f"{len(folders)} folders; unknown ones: {', '.join(unknown[:5]) or 'none'}."
            )
        splits[part] = LabeledImageFiles(_folder_samples(folders, label_of))
    classnames = [classname for _, classname in sorted(pairs)]
    return ClassificationData(name, classnames, splits, list(definition.templates), images)


def read_imagenetv2(definition: DatasetDefinition, root: str | None = None) -> ClassificationData:
    """ImageNet-V2 matched-frequency: folders ``0…999`` ↦ the i-th wnid (numeric order)."""
    name, layout = definition.name, definition.layout
    directory = _dataset_dir(root, layout.directory, name)
    pairs = _imagenet_classnames(directory, root)
    base = directory / layout.image_folders[0]
    if not base.is_dir():
        raise PeftClipError(f"'{base}' is missing. {_CHECK}")
    # Numeric, not string, order: sorting "10" before "2" would mislabel 990 classes
    # (docs/datasets.md#split-files).
    folders = sorted(class_folders(base), key=lambda folder: int(folder.name))
    samples = [(file, int(folder.name)) for folder in folders for file in image_files(folder)]
    classnames = [classname for _, classname in pairs]
    test = {"test": LabeledImageFiles(samples)}
    return ClassificationData(name, classnames, test, list(definition.templates))


def read_imagenet_sketch(
    definition: DatasetDefinition, root: str | None = None
) -> ClassificationData:
    """ImageNet-Sketch: ``images/<wnid>/`` (or the archive's own ``sketch/<wnid>/``)."""
    name, layout = definition.name, definition.layout
    directory = _dataset_dir(root, layout.directory, name)
    pairs = _imagenet_classnames(directory, root)
    folders = layout.image_folders
    base = next((directory / n for n in folders if (directory / n).is_dir()), None)
    if base is None:
        listed = " nor ".join(f"{folder}/" for folder in folders)
        raise PeftClipError(f"'{directory}' has neither {listed}. {_CHECK}")
    label_of = {wnid: label for label, (wnid, _) in enumerate(sorted(pairs))}
    samples = _folder_samples([f for f in class_folders(base) if f.name in label_of], label_of)
    classnames = [classname for _, classname in sorted(pairs)]
    test = {"test": LabeledImageFiles(samples)}
    return ClassificationData(name, classnames, test, list(definition.templates))


#: Scoring modes of ImageNet-A/-R (docs/protocols/domain-generalization.md).
SUBSET_HEADS = ("200", "masked1000")


def read_imagenet_subset(
    definition: DatasetDefinition, root: str | None = None, head: str = "200"
) -> ClassificationData:
    """ImageNet-A / -R: 200 wnid folders (README.txt beside them is ignored).

    Args:
        head: ``200`` (CoOp): a 200-way head over the sorted folders, labels 0…199.
            ``masked1000`` (ZSCL, after WiSE-FT's ``ImageNetSubsample``): the 1000 ImageNet
            class names, labels in ImageNet's 1000-class space, and ``class_mask`` = the
            ImageNet indices of the 200 classes, ascending; the head scores all 1000 classes
            and predicts the argmax over the masked columns. The dataset is then named
            ``<name>:masked1000`` so result records name the mode.
    """
    name, layout = definition.name, definition.layout
    if head not in SUBSET_HEADS:
        raise PeftClipError(
            f"dataset '{name}' takes head '200' (CoOp: a head of its 200 classes) or "
            f"'masked1000' (ZSCL: ImageNet's 1000-class head, masked); got '{head}'."
        )
    path = _dataset_dir(root, layout.directory, name)
    pairs = _imagenet_classnames(path, root)
    names = dict(pairs)
    base = path / layout.image_folders[0]
    if not base.is_dir():
        raise PeftClipError(f"'{base}' is missing. {_CHECK}")
    folders = class_folders(base)
    unknown = [f.name for f in folders if f.name not in names]
    if unknown:
        raise PeftClipError(
            f"'{base}' has folders that are not ImageNet wnids: {', '.join(unknown[:5])}."
        )
    template = list(definition.templates)
    if head == "masked1000":
        # ImageNet's label order: the sorted wnids (as read_imagenet labels its folders).
        imagenet_label = {wnid: label for label, (wnid, _) in enumerate(sorted(pairs))}
        label_of = {folder.name: imagenet_label[folder.name] for folder in folders}
        samples = _folder_samples(folders, label_of)
        classnames = [classname for _, classname in sorted(pairs)]
        mask = sorted(label_of.values())
        test = {"test": LabeledImageFiles(samples)}
        return ClassificationData(f"{name}:masked1000", classnames, test, template, class_mask=mask)
    label_of = {folder.name: label for label, folder in enumerate(folders)}
    classnames = [names[folder.name] for folder in folders]
    samples = _folder_samples(folders, label_of)
    return ClassificationData(name, classnames, {"test": LabeledImageFiles(samples)}, template)


# ---------------------------------------------------------------------------- definitions
# Templates: CoOp's hand-crafted one per dataset (CoOp ``trainers/zsclip.py``). Counts: classes
# and train / val / test images of the distributed splits (ImageNet train is the exact ILSVRC-2012
# count; ``None``: no such split), and the base / new classes of base-to-new generalization
# (docs/datasets.md, docs/protocols/base-to-new.md).
register_dataset(
    DatasetDefinition(
        "imagenet",
        read_imagenet,
        FolderLayout(_IMAGENET_DIRECTORY, ("images",)),
        templates=("a photo of a {}.",),
        counts=PublishedCounts(1000, 1_281_167, None, 50_000, base=500, new=500),
        benchmark="coop",
    )
)
register_dataset(
    DatasetDefinition(
        "caltech101",
        read_zhou_split,
        ZhouLayout("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
        templates=("a photo of a {}.",),
        counts=PublishedCounts(100, 4_128, 1_649, 2_465, base=50, new=50),
        benchmark="coop",
    )
)
register_dataset(
    DatasetDefinition(
        "oxford_pets",
        read_zhou_split,
        ZhouLayout("oxford_pets", "images", "split_zhou_OxfordPets.json"),
        templates=("a photo of a {}, a type of pet.",),
        counts=PublishedCounts(37, 2_944, 736, 3_669, base=19, new=18),
        benchmark="coop",
    )
)
register_dataset(
    DatasetDefinition(
        "stanford_cars",
        read_zhou_split,
        ZhouLayout("stanford_cars", "", "split_zhou_StanfordCars.json"),
        templates=("a photo of a {}.",),
        counts=PublishedCounts(196, 6_509, 1_635, 8_041, base=98, new=98),
        benchmark="coop",
    )
)
register_dataset(
    DatasetDefinition(
        "oxford_flowers",
        read_zhou_split,
        ZhouLayout("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
        templates=("a photo of a {}, a type of flower.",),
        counts=PublishedCounts(102, 4_093, 1_633, 2_463, base=51, new=51),
        benchmark="coop",
    )
)
register_dataset(
    DatasetDefinition(
        "food101",
        read_zhou_split,
        ZhouLayout("food-101", "images", "split_zhou_Food101.json"),
        templates=("a photo of {}, a type of food.",),
        counts=PublishedCounts(101, 50_500, 20_200, 30_300, base=51, new=50),
        benchmark="coop",
    )
)
register_dataset(
    DatasetDefinition(
        "fgvc_aircraft",
        read_fgvc_aircraft,
        FolderLayout("fgvc_aircraft", ("images",)),
        templates=("a photo of a {}, a type of aircraft.",),
        counts=PublishedCounts(100, 3_334, 3_333, 3_333, base=50, new=50),
        benchmark="coop",
    )
)
register_dataset(
    DatasetDefinition(
        "sun397",
        read_zhou_split,
        ZhouLayout("sun397", "SUN397", "split_zhou_SUN397.json"),
        templates=("a photo of a {}.",),
        counts=PublishedCounts(397, 15_880, 3_970, 19_850, base=199, new=198),
        benchmark="coop",
    )
)
register_dataset(
    DatasetDefinition(
        "dtd",
        read_zhou_split,
        ZhouLayout("dtd", "images", "split_zhou_DescribableTextures.json"),
        templates=("{} texture.",),
        counts=PublishedCounts(47, 2_820, 1_128, 1_692, base=24, new=23),
        benchmark="coop",
    )
)
register_dataset(
    DatasetDefinition(
        "eurosat",
        read_zhou_split,
        ZhouLayout("eurosat", "2750", "split_zhou_EuroSAT.json"),
        templates=("a centered satellite photo of {}.",),
        counts=PublishedCounts(10, 13_500, 5_400, 8_100, base=5, new=5),
        benchmark="coop",
    )
)
register_dataset(
    DatasetDefinition(
        "ucf101",
        read_zhou_split,
        ZhouLayout("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
        templates=("a photo of a person doing {}.",),
        counts=PublishedCounts(101, 7_639, 1_898, 3_783, base=51, new=50),
        benchmark="coop",
    )
)
register_dataset(
    DatasetDefinition(
        "imagenetv2",
        read_imagenetv2,
        FolderLayout("imagenetv2", ("imagenetv2-matched-frequency-format-val",)),
        templates=("a photo of a {}.",),
        counts=PublishedCounts(1000, None, None, 10_000),
        benchmark="coop",
    )
)
register_dataset(
    DatasetDefinition(
        "imagenet_sketch",
        read_imagenet_sketch,
        FolderLayout("imagenet-sketch", ("images", "sketch")),
        templates=("a photo of a {}.",),
        counts=PublishedCounts(1000, None, None, 50_889),
        benchmark="coop",
    )
)
register_dataset(
    DatasetDefinition(
        "imagenet_a",
        read_imagenet_subset,
        FolderLayout("imagenet-adversarial", ("imagenet-a",)),
        templates=("a photo of a {}.",),
        counts=PublishedCounts(200, None, None, 7_500),
        benchmark="coop",
    )
)
register_dataset(
    DatasetDefinition(
        "imagenet_r",
        read_imagenet_subset,
        FolderLayout("imagenet-rendition", ("imagenet-r",)),
        templates=("a photo of a {}.",),
        counts=PublishedCounts(200, None, None, 30_000),
        benchmark="coop",
    )
)
