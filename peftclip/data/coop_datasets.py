"""Readers for the CoOp benchmark datasets in their standard on-disk layouts.

Layouts, split sources and pitfalls: specs/datasets.md §1–§3 and §8.1. ``root`` is the data
root ``<DATA>`` that holds one folder per dataset, as CoOp's DATASETS.md prepares it. Nothing is
ever written into it, and a missing split file is an error (the anchors silently make a new
random split, which makes numbers incomparable).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from peftclip.backbone.templates import COOP_TEMPLATES
from peftclip.data.images import LabeledImageFiles
from peftclip.data.listing import class_folders, existing_root, image_files
from peftclip.data.registry import ClassificationData, register_dataset
from peftclip.errors import DatasetMissing, PeftClipError

_CHECK = "Run `peftclip data check --root <DATA>` after fixing it; see specs/datasets.md §1."


@dataclass(frozen=True)
class ZhouLayout:
    """Where a dataset with a ``split_zhou_*.json`` file lives under ``<DATA>``."""

    directory: str
    image_prefix: str  # split paths are relative to <DATA>/<directory>/<image_prefix>
    split_file: str


ZHOU_LAYOUTS = {
    "caltech101": ZhouLayout("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "oxford_pets": ZhouLayout("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "stanford_cars": ZhouLayout("stanford_cars", "", "split_zhou_StanfordCars.json"),
    "oxford_flowers": ZhouLayout("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "food101": ZhouLayout("food-101", "images", "split_zhou_Food101.json"),
    "sun397": ZhouLayout("sun397", "SUN397", "split_zhou_SUN397.json"),
    "dtd": ZhouLayout("dtd", "images", "split_zhou_DescribableTextures.json"),
    "eurosat": ZhouLayout("eurosat", "2750", "split_zhou_EuroSAT.json"),
    "ucf101": ZhouLayout("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
}


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


def read_zhou_split(name: str, root: str | None = None) -> ClassificationData:
    """A dataset split by its ``split_zhou_<Name>.json`` file, read as-is (spec §2.1)."""
    layout = ZHOU_LAYOUTS[name]
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
    template = [COOP_TEMPLATES[name]]
    return ClassificationData(name, classnames, splits, template, prefix, split_path)


def read_fgvc_aircraft(root: str | None = None) -> ClassificationData:
    """FGVC-Aircraft from its own ``variants.txt`` and ``images_variant_<split>.txt`` (§2.2)."""
    directory = _dataset_dir(root, "fgvc_aircraft", "fgvc_aircraft")
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
                samples.append((directory / "images" / f"{image_id}.jpg", label_of[variant]))
        _require_files(samples, listing)
        splits[part] = LabeledImageFiles(samples)
    template = [COOP_TEMPLATES["fgvc_aircraft"]]
    return ClassificationData("fgvc_aircraft", classnames, splits, template, directory / "images")


def _imagenet_classnames(directory: Path, root: str | None) -> list[tuple[str, str]]:
    """``(wnid, name)`` lines of ``classnames.txt``; variants fall back to ImageNet's copy."""
    for candidate in (
        directory / "classnames.txt",
        Path(root or "") / "imagenet" / "classnames.txt",
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


def read_imagenet(root: str | None = None) -> ClassificationData:
    """ImageNet: ``images/{train,val}/<wnid>/`` + ``classnames.txt``; test = ILSVRC val, no val."""
    directory = _dataset_dir(root, "imagenet", "imagenet")
    pairs = _imagenet_classnames(directory, root)
    label_of = {wnid: label for label, (wnid, _) in enumerate(sorted(pairs))}
    splits = {}
    for part, folder in (("train", "train"), ("test", "val")):
        base = directory / "images" / folder
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
    classnames = [name for _, name in sorted(pairs)]
    template = [COOP_TEMPLATES["imagenet"]]
    return ClassificationData("imagenet", classnames, splits, template, directory / "images")


def read_imagenetv2(root: str | None = None) -> ClassificationData:
    """ImageNet-V2 matched-frequency: folders ``0…999`` ↦ the i-th wnid (numeric order)."""
    directory = _dataset_dir(root, "imagenetv2", "imagenetv2")
    pairs = _imagenet_classnames(directory, root)
    base = directory / "imagenetv2-matched-frequency-format-val"
    if not base.is_dir():
        raise PeftClipError(f"'{base}' is missing. {_CHECK}")
    # Numeric, not string, order: sorting "10" before "2" would mislabel 990 classes (§8.1).
    folders = sorted(class_folders(base), key=lambda folder: int(folder.name))
    samples = [(file, int(folder.name)) for folder in folders for file in image_files(folder)]
    classnames = [name for _, name in pairs]
    template = COOP_TEMPLATES["imagenetv2"]
    return ClassificationData(
        "imagenetv2", classnames, {"test": LabeledImageFiles(samples)}, [template]
    )


def read_imagenet_sketch(root: str | None = None) -> ClassificationData:
    """ImageNet-Sketch: ``images/<wnid>/`` (or the archive's own ``sketch/<wnid>/``)."""
    directory = _dataset_dir(root, "imagenet-sketch", "imagenet_sketch")
    pairs = _imagenet_classnames(directory, root)
    base = next((directory / n for n in ("images", "sketch") if (directory / n).is_dir()), None)
    if base is None:
        raise PeftClipError(f"'{directory}' has neither images/ nor sketch/. {_CHECK}")
    label_of = {wnid: label for label, (wnid, _) in enumerate(sorted(pairs))}
    samples = _folder_samples([f for f in class_folders(base) if f.name in label_of], label_of)
    classnames = [name for _, name in sorted(pairs)]
    template = COOP_TEMPLATES["imagenet_sketch"]
    return ClassificationData(
        "imagenet_sketch", classnames, {"test": LabeledImageFiles(samples)}, [template]
    )


#: Scoring modes of ImageNet-A/-R (specs/datasets.md §8.1).
SUBSET_HEADS = ("200", "masked1000")


def read_imagenet_subset(
    name: str, directory: str, folder: str, root: str | None = None, head: str = "200"
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
    if head not in SUBSET_HEADS:
        raise PeftClipError(
            f"dataset '{name}' takes head '200' (CoOp: a head of its 200 classes) or "
            f"'masked1000' (ZSCL: ImageNet's 1000-class head, masked); got '{head}'."
        )
    path = _dataset_dir(root, directory, name)
    pairs = _imagenet_classnames(path, root)
    names = dict(pairs)
    base = path / folder
    if not base.is_dir():
        raise PeftClipError(f"'{base}' is missing. {_CHECK}")
    folders = class_folders(base)
    unknown = [f.name for f in folders if f.name not in names]
    if unknown:
        raise PeftClipError(
            f"'{base}' has folders that are not ImageNet wnids: {', '.join(unknown[:5])}."
        )
    template = [COOP_TEMPLATES[name]]
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


for _name in ZHOU_LAYOUTS:
    register_dataset(_name, partial(read_zhou_split, _name))
register_dataset("fgvc_aircraft", read_fgvc_aircraft)
register_dataset("imagenet", read_imagenet)
register_dataset("imagenetv2", read_imagenetv2)
register_dataset("imagenet_sketch", read_imagenet_sketch)
register_dataset(
    "imagenet_a", partial(read_imagenet_subset, "imagenet_a", "imagenet-adversarial", "imagenet-a")
)
register_dataset(
    "imagenet_r", partial(read_imagenet_subset, "imagenet_r", "imagenet-rendition", "imagenet-r")
)
