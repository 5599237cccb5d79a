"""Bring-your-own data: a folder per class, or CSV files of ``path,label``."""

from __future__ import annotations

import csv
from pathlib import Path

from peftclip.data.images import LabeledImageFiles
from peftclip.data.listing import IMAGE_SUFFIXES, class_folders, existing_root, image_files
from peftclip.data.registry import SPLITS, ClassificationData, DatasetDefinition, register_dataset
from peftclip.errors import PeftClipError


def build_image_folder(
    definition: DatasetDefinition, root: str | None = None, template: str | None = None
) -> ClassificationData:
    """``root/<split>/<class>/<image>`` for splits train/val/test (any subset), or
    ``root/<class>/<image>`` (then everything is the ``test`` split, e.g. for zero-shot).

    Class names are the folder names (sorted; label = index). A class folder without images
    is an error: a run never silently drops a class. ``template`` replaces the default one.
    """
    path = existing_root(root, "a folder with one sub-folder of images per class")
    split_dirs = {split: path / split for split in SPLITS if (path / split).is_dir()}
    if not split_dirs:
        split_dirs = {"test": path}
    per_split = {split: class_folders(folder) for split, folder in split_dirs.items()}
    classnames = sorted({folder.name for folders in per_split.values() for folder in folders})
    if not classnames:
        raise PeftClipError(
            f"dataset root '{path}' has no class folders. Expected '{path}/<class>/<image>' or "
            f"'{path}/<train|val|test>/<class>/<image>'."
        )
    label_of = {name: label for label, name in enumerate(classnames)}
    splits = {}
    for split, folders in per_split.items():
        samples, empty = [], []
        for folder in folders:
            files = image_files(folder)
            empty += [] if files else [str(folder)]
            samples += [(file, label_of[folder.name]) for file in files]
        if empty:
            raise PeftClipError(
                f"{len(empty)} class folder(s) of split '{split}' contain no images "
                f"({', '.join(IMAGE_SUFFIXES)}): {', '.join(empty[:5])}. Add images or remove "
                "the folders; classes are never dropped silently."
            )
        splits[split] = LabeledImageFiles(samples)
    templates = [template] if template else list(definition.templates)
    return ClassificationData(definition.name, classnames, splits, templates, image_root=path)


def build_csv(
    definition: DatasetDefinition, root: str | None = None, template: str | None = None
) -> ClassificationData:
    """CSV files with a ``path,label`` header: ``root/{train,val,test}.csv`` (any subset) or a
    single CSV file (then it is the ``test`` split).

    ``label`` is a class name. Class order is ``classnames.txt`` next to the CSVs (one name per
    line) when present, else the sorted set of labels. Relative paths are relative to the CSV.
    ``template`` replaces the default one.
    """
    path = existing_root(root, "a CSV file or a folder of train/val/test.csv")
    files = (
        {"test": path}
        if path.is_file()
        else {split: path / f"{split}.csv" for split in SPLITS if (path / f"{split}.csv").is_file()}
    )
    if not files:
        raise PeftClipError(f"no train.csv, val.csv or test.csv in '{path}'.")
    rows = {split: _read_csv(file) for split, file in files.items()}
    names_file = (path.parent if path.is_file() else path) / "classnames.txt"
    if names_file.is_file():
        classnames = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    else:
        classnames = sorted({label for split_rows in rows.values() for _, label, _ in split_rows})
    label_of = {name: label for label, name in enumerate(classnames)}
    splits = {}
    for split, split_rows in rows.items():
        unknown = [
            f"line {line}: '{label}'" for _, label, line in split_rows if label not in label_of
        ]
        missing = [f"line {line}: {file}" for file, _, line in split_rows if not file.is_file()]
        for problem, items in (
            ("labels not in classnames.txt", unknown),
            ("missing files", missing),
        ):
            if items:
                raise PeftClipError(
                    f"{files[split]} has {len(items)} {problem} ({'; '.join(items[:5])}). Fix "
                    "the rows or the files; relative paths are relative to the CSV's folder."
                )
        splits[split] = LabeledImageFiles(
            [(file, label_of[label]) for file, label, _ in split_rows]
        )
    csv_folder = path.parent if path.is_file() else path
    templates = [template] if template else list(definition.templates)
    return ClassificationData(definition.name, classnames, splits, templates, image_root=csv_folder)


def _read_csv(file: Path) -> list[tuple[Path, str, int]]:
    with file.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
            raise PeftClipError(
                f"{file} must start with a 'path,label' header; found {reader.fieldnames}."
            )
        rows = [
            ((file.parent / row["path"]).expanduser(), row["label"].strip(), line)
            for line, row in enumerate(reader, start=2)
        ]
    if not rows:
        raise PeftClipError(f"{file} has a header but no rows.")
    return rows


# The root is the dataset's own folder (or CSV file), not a data root of several datasets.
register_dataset(DatasetDefinition("image_folder", build_image_folder))
register_dataset(DatasetDefinition("csv", build_csv))
