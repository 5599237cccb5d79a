"""``peftclip data check``: is a data root laid out as the readers expect?

See docs/datasets.md#peftclip-data-check.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from peftclip.data.fewshot import base_new_labels
from peftclip.data.registry import (
    SPLITS,
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
    of its definition; with ``decode`` every image is decoded in full so unreadable (corrupt or
    truncated) files are listed (the first ``limit`` of them)."""
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
    """Whether the image decodes in full, as training reads it (a header can parse while the
    data after it is truncated)."""
    try:
        with Image.open(path) as image:
            image.load()
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
        decode: Decode every image in full to find corrupt or truncated files (--no-decode:
            counts only, much faster).
    """
    known = checked_names()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise PeftClipError(f"data check knows {', '.join(known)}; not {', '.join(unknown)}.")
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
