"""``peftclip data check``: is a data root laid out as the readers expect? (specs/datasets.md §8)"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from peftclip.data.registry import SPLITS, build_dataset
from peftclip.errors import DatasetMissing, PeftClipError

#: Classes and train / val / test images of each dataset (specs/datasets.md §1; ImageNet train
#: is the exact ILSVRC-2012 count). ``None``: the dataset has no such split.
EXPECTED: dict[str, tuple[int, int | None, int | None, int | None]] = {
    "imagenet": (1000, 1_281_167, None, 50_000),
    "caltech101": (100, 4_128, 1_649, 2_465),
    "oxford_pets": (37, 2_944, 736, 3_669),
    "stanford_cars": (196, 6_509, 1_635, 8_041),
    "oxford_flowers": (102, 4_093, 1_633, 2_463),
    "food101": (101, 50_500, 20_200, 30_300),
    "fgvc_aircraft": (100, 3_334, 3_333, 3_333),
    "sun397": (397, 15_880, 3_970, 19_850),
    "dtd": (47, 2_820, 1_128, 1_692),
    "eurosat": (10, 13_500, 5_400, 8_100),
    "ucf101": (101, 7_639, 1_898, 3_783),
    "imagenetv2": (1000, None, None, 10_000),
    "imagenet_sketch": (1000, None, None, 50_889),
    "imagenet_a": (200, None, None, 7_500),
    "imagenet_r": (200, None, None, 30_000),
    # MTIL extras (spec §7): official train / test.
    "cifar100": (100, 50_000, None, 10_000),
    "mnist": (10, 60_000, None, 10_000),
    # MTIL random splits (spec §7): train = int(0.8 · N) of the whole set, N = 8,677 (Caltech101
    # without BACKGROUND_Google), 27,000 (EuroSAT), 108,754 (SUN397). Checked only when named.
    "mtil_caltech101": (101, 6_941, None, 1_736),
    "mtil_eurosat": (10, 21_600, None, 5_400),
    "mtil_sun397": (397, 87_003, None, 21_751),
}


def default_names() -> list[str]:
    """The datasets checked when none is named: all but the MTIL split datasets, which need a
    generated manifest and share their folders with CoOp's eurosat."""
    return [name for name in EXPECTED if not name.startswith("mtil_")]


#: MD5 sums of files that torchvision verifies before reading them (its CIFAR100 class, which
#: ZSCL uses, refuses a file that does not match), by dataset and path under the root.
OFFICIAL_MD5: dict[str, dict[str, str]] = {
    "cifar100": {
        "cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
        "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "cifar-100-python/meta": "7973b15100ade9c7d40fb424638fde48",
    },
}


@dataclass
class DatasetCheck:
    """The verdict on one dataset: ``ok``, ``missing`` (its folder is absent) or ``problem``."""

    name: str
    status: str = "ok"
    classes: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def check_dataset(name: str, root: str, decode: bool = True, limit: int = 5) -> DatasetCheck:
    """Reads ``name`` under ``root`` and compares it with ``EXPECTED``; with ``decode`` every
    image header is opened so unreadable files are listed (the first ``limit`` of them)."""
    result = DatasetCheck(name)
    try:
        data = build_dataset(name, root)
    except DatasetMissing as error:
        result.status = "missing"
        result.problems.append(f"no folder {error.path}")
        return result
    except PeftClipError as error:
        result.status = "problem"
        result.problems.append(str(error))
        return result
    classes, *sizes = EXPECTED[name]
    result.classes = len(data.classnames)
    if result.classes != classes:
        result.problems.append(f"{result.classes} classes, expected {classes}")
    for split, expected in zip(SPLITS, sizes, strict=True):
        found = len(data.splits[split]) if split in data.splits else None
        if found is not None:
            result.counts[split] = found
        if found != expected:
            result.problems.append(f"{split}: {found or 0} images, expected {expected or 0}")
    for relpath, expected_md5 in OFFICIAL_MD5.get(name, {}).items():
        path = Path(root).expanduser() / relpath
        found_md5 = hashlib.md5(path.read_bytes()).hexdigest()
        if found_md5 != expected_md5:
            result.problems.append(
                f"'{path}' differs from the official file (md5 {found_md5}, "
                f"expected {expected_md5}); torchvision (and so ZSCL) refuses it. Extract the "
                "official archive again."
            )
    if decode:  # files only: in-memory datasets (CIFAR, MNIST) were fully parsed above
        files = [
            path for split in data.splits.values() for path, _ in getattr(split, "samples", [])
        ]
        unreadable = [path for path in files if not _readable(path)]
        if unreadable:
            shown = ", ".join(str(path) for path in unreadable[:limit])
            result.problems.append(f"{len(unreadable)} unreadable image(s): {shown}")
    if result.problems:
        result.status = "problem"
    return result


def _readable(path) -> bool:
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018  (parsing the header is the check)
        return True
    except (OSError, UnidentifiedImageError):
        return False


def data_check_command(names: list[str], *, root: str, decode: bool = True) -> int:
    """Checks a data root against the published split counts.

    For each dataset (CoOp layout, CIFAR100, MNIST; the MTIL split datasets when named): present,
    images per split and classes as published, file checksums, unreadable images. Prints one row
    per dataset; exit status 1 on any problem (an absent dataset only when it was named).

    Args:
        names: Datasets to check (none: all but the MTIL split datasets, which need a manifest).
        root: The data root <DATA>.
        decode: Open every image to find unreadable files (--no-decode: counts only).
    """
    unknown = [name for name in names if name not in EXPECTED]
    if unknown:
        raise PeftClipError(f"data check knows {', '.join(EXPECTED)}; not {', '.join(unknown)}.")
    results = [check_dataset(name, root, decode) for name in names or default_names()]

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"peftclip data check — {root}")
    for column in ("dataset", "status", "classes", *SPLITS, "problems"):
        table.add_column(column, overflow="fold")
    for result in results:
        style = {"ok": "green", "missing": "yellow", "problem": "red"}[result.status]
        counts = [str(result.counts.get(split, "–")) for split in SPLITS]
        table.add_row(result.name, f"[{style}]{result.status}[/]", str(result.classes or "–"),
                      *counts, "\n".join(result.problems))  # fmt: skip
    Console(width=160).print(table)
    # Absent datasets fail the check only when they were asked for by name.
    failed = [r for r in results if r.status == "problem" or (r.status == "missing" and names)]
    return 1 if failed else 0
