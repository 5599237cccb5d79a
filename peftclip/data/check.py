"""``peftclip data check``: is a data root laid out as the readers expect? (specs/datasets.md §8)"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from peftclip.data.fewshot import base_new_labels
from peftclip.data.registry import (
    SPLITS,
    PublishedCounts,
    build_dataset,
    dataset_definition,
    dataset_definitions,
)
from peftclip.errors import DatasetMissing, PeftClipError


def checked_names() -> list[str]:
    """Every dataset ``data check`` knows: the definitions with published counts, in order."""
    return [d.name for d in dataset_definitions() if d.counts is not None]


def default_names() -> list[str]:
    """The datasets checked when none is named (definitions with ``check_by_default``; not the
    MTIL split datasets, which need a generated manifest and share CoOp's folders)."""
    return [d.name for d in dataset_definitions() if d.counts is not None and d.check_by_default]


class _PublishedCountsByName(Mapping):
    """The published counts of :func:`checked_names`, read from the definitions on each use."""

    def __getitem__(self, name: str) -> PublishedCounts:
        if name not in checked_names():
            raise KeyError(name)
        return dataset_definition(name).counts

    def __iter__(self) -> Iterator[str]:
        return iter(checked_names())

    def __len__(self) -> int:
        return len(checked_names())


#: Name → published counts, a view of the dataset definitions (no copy of its own).
EXPECTED: Mapping[str, PublishedCounts] = _PublishedCountsByName()


@dataclass
class DatasetCheck:
    """The verdict on one dataset: ``ok``, ``missing`` (its folder is absent) or ``problem``."""

    name: str
    status: str = "ok"
    classes: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def check_dataset(name: str, root: str, decode: bool = True, limit: int = 5) -> DatasetCheck:
    """Reads ``name`` under ``root`` and compares it with the published counts and file checksums
    of its definition; with ``decode`` every image header is opened so unreadable files are
    listed (the first ``limit`` of them)."""
    definition = dataset_definition(name)
    if definition.counts is None:
        raise PeftClipError(
            f"dataset '{name}' has no published counts to check a tree against; data check "
            f"knows {', '.join(checked_names())}."
        )
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
    counts = definition.counts
    result.classes = len(data.classnames)
    if result.classes != counts.classes:
        result.problems.append(f"{result.classes} classes, expected {counts.classes}")
    for split in SPLITS:
        expected = counts.split_size(split)
        found = len(data.splits[split]) if split in data.splits else None
        if found is not None:
            result.counts[split] = found
        if found != expected:
            result.problems.append(f"{split}: {found or 0} images, expected {expected or 0}")
    if counts.base is not None and result.classes == counts.classes:
        base, new = (len(labels) for labels in base_new_labels(data))
        if (base, new) != (counts.base, counts.new):
            result.problems.append(
                f"base/new: {base}/{new} classes, expected {counts.base}/{counts.new} (base-to-new "
                "splits the classes present in train)"
            )
    for relpath, expected_md5 in definition.file_md5.items():
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


def data_check_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="peftclip data check",
        description="Check a data root (CoOp layout, CIFAR100, MNIST; the MTIL split datasets "
        "when named): presence, image counts per split against the expected counts, class "
        "counts, file checksums, unreadable images. Exit code 1 on any problem.",
    )
    parser.add_argument("--root", required=True, help="the data root <DATA>")
    parser.add_argument(
        "names", nargs="*", help=f"datasets (default: all of {', '.join(default_names())})"
    )
    parser.add_argument("--no-decode", action="store_true", help="skip opening every image")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in EXPECTED]
    if unknown:
        raise PeftClipError(f"data check knows {', '.join(EXPECTED)}; not {', '.join(unknown)}.")
    names = args.names or default_names()
    results = [check_dataset(n, args.root, not args.no_decode) for n in names]

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"peftclip data check — {args.root}")
    for column in ("dataset", "status", "classes", *SPLITS, "problems"):
        table.add_column(column, overflow="fold")
    for result in results:
        style = {"ok": "green", "missing": "yellow", "problem": "red"}[result.status]
        counts = [str(result.counts.get(split, "–")) for split in SPLITS]
        table.add_row(result.name, f"[{style}]{result.status}[/]", str(result.classes or "–"),
                      *counts, "\n".join(result.problems))  # fmt: skip
    Console(width=160).print(table)
    # Absent datasets fail the check only when they were asked for by name.
    failed = [r for r in results if r.status == "problem" or (r.status == "missing" and args.names)]
    return 1 if failed else 0
