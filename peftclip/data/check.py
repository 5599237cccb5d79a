"""``peftclip data check``: is a data root laid out as the readers expect?

See docs/datasets.md#peftclip-data-check.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from peftclip.data.fewshot import base_new_labels, short_classes
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
    """The verdict on one dataset.

    Attributes:
        name: The dataset.
        status: ``ok``; ``warning`` (only warnings); ``problem`` (any problem); ``missing``
            (its folder is absent; printed as "not present").
        classes: Classes found (``None`` where the dataset could not be read).
        counts: Images found per split.
        problems: What makes the tree unusable as the published dataset (exit status 1).
        warnings: What a deliberately partial tree may hold: counts below the published ones
            under ``partial``, classes short of ``shots`` training images.
        below_published: Whether some count is below the published one (a problem unless
            ``partial``).
    """

    name: str
    status: str = "ok"
    classes: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    below_published: bool = False

    def compare(self, what: str, found: int, expected: int, *, partial: bool, unit: str) -> None:
        """Records a count that differs from the published one: below it, a warning under
        ``partial`` (a partial download) and otherwise a problem; above it, always a problem
        (the tree holds images the published dataset does not)."""
        if found == expected:
            return
        if found < expected:
            self.below_published = True
            if partial:
                self.warnings.append(f"{what}{found} {unit} of {expected} published")
                return
        self.problems.append(f"{what}{found} {unit}, expected {expected}")


def check_dataset(
    name: str,
    root: str,
    decode: bool = True,
    limit: int = 5,
    *,
    partial: bool = False,
    shots: int | None = None,
    required: bool = False,
) -> DatasetCheck:
    """Reads ``name`` under ``root`` and compares it with the published counts and file checksums
    of its definition; with ``decode`` every image is decoded in full so unreadable (corrupt or
    truncated) files are listed (the first ``limit`` of them).

    Args:
        partial: Counts below the published ones are warnings, not problems (a tree with part
            of a dataset); counts above them, missing or unreadable images and checksum
            mismatches stay problems.
        shots: Warn about the classes with fewer than ``shots`` training images.
        required: An absent dataset folder is a problem (the dataset was asked for by name),
            not ``missing``.
    """
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
        result.status = "problem" if required else "missing"
        result.problems.append(f"no folder {error.path}")
        return result
    except PeftClipError as error:
        result.status = "problem"
        result.problems.append(str(error))
        return result
    counts = definition.counts
    result.classes = len(data.classnames)
    result.compare("", result.classes, counts.classes, partial=partial, unit="classes")
    for split in SPLITS:
        found = len(data.splits[split]) if split in data.splits else None
        if found is not None:
            result.counts[split] = found
        expected = counts.split_size(split) or 0
        result.compare(f"{split}: ", found or 0, expected, partial=partial, unit="images")
    if counts.base is not None and result.classes == counts.classes:
        base, new = (len(labels) for labels in base_new_labels(data))
        if (base, new) != (counts.base, counts.new):
            # base-to-new splits the classes present in train: a class without train images
            # moves the split point.
            found, expected = f"{base}/{new}", f"{counts.base}/{counts.new}"
            if partial and base <= counts.base and new <= counts.new:
                result.warnings.append(f"base/new: {found} classes of {expected} published")
            else:
                result.problems.append(
                    f"base/new: {found} classes, expected {expected} (base-to-new splits the "
                    "classes present in train)"
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
    if shots is not None and "train" in data.splits:
        short = short_classes(data, shots, shown=limit)
        if short is not None:
            result.warnings.append(f"--shots {shots}: {short}")
    result.status = "problem" if result.problems else "warning" if result.warnings else "ok"
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


def data_check_command(
    names: list[str],
    *,
    root: str,
    decode: bool = True,
    partial: bool = False,
    shots: int | None = None,
) -> int:
    """Checks a data root against the published split counts.

    For each dataset (CoOp layout, CIFAR100, MNIST; the MTIL split datasets when named): present,
    images per split and classes as published, file checksums, unreadable images. Prints one line
    per dataset, its problems and warnings below it, and a summary line; exit status 1 on any
    problem (an absent dataset only when it was named), 0 when there are only warnings.

    Args:
        names: Datasets to check (none: all but the MTIL split datasets, which need a manifest).
        root: The data root <DATA>.
        decode: Decode every image in full to find corrupt or truncated files (--no-decode:
            counts only, much faster).
        partial: The root holds part of the data on purpose: counts below the published ones
            are warnings, not problems (counts above them, missing or unreadable images and
            checksum mismatches stay problems).
        shots: Warn about the classes with fewer than this many training images (a K-shot run
            then uses all there are, as Dassl does).
    """
    known = checked_names()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise PeftClipError(f"data check knows {', '.join(known)}; not {', '.join(unknown)}.")
    if shots is not None and shots < 1:
        raise PeftClipError(f"--shots must be at least 1 (training images per class); got {shots}.")
    if not Path(root).expanduser().is_dir():
        raise PeftClipError(
            f"--root '{root}' is not a folder; give the data root that holds the dataset folders."
        )
    results = [
        check_dataset(name, root, decode, partial=partial, shots=shots, required=bool(names))
        for name in names or default_names()
    ]
    options = [
        flag for flag, given in (("--partial", partial), (f"--shots {shots}", shots)) if given
    ]
    print(f"peftclip data check — {root}" + (f" ({', '.join(options)})" if options else ""))
    width = max(len(result.name) for result in results) + 2
    for result in results:
        print(f"{result.name:<{width}}{_STATUS_WORDS[result.status]:<13}{_found(result)}")
        if result.classes is None:
            continue  # not read: its one problem (or absence) is on its line
        for kind, messages in (("problem", result.problems), ("warning", result.warnings)):
            for message in messages:
                print(f"    {kind}: {message}")
    tally = Counter(result.status for result in results)
    summary = ", ".join(f"{tally[status]} {words}" for status, words in _SUMMARY_WORDS.items())
    print(f"{len(results)} dataset(s): {summary}")
    if not partial and any(result.below_published for result in results):
        print("Counts below the published ones are warnings with --partial (a partial root).")
    return 1 if tally["problem"] else 0


#: How each status is printed on a dataset's line, and in the summary line.
_STATUS_WORDS = {"ok": "ok", "warning": "warning", "problem": "problem", "missing": "not present"}
_SUMMARY_WORDS = {
    "ok": "ok",
    "warning": "with warnings",
    "problem": "with problems",
    "missing": "not present",
}


def _found(result: DatasetCheck) -> str:
    """What was found, on the dataset's own line: classes and images per split, or why the
    dataset could not be read (absent, or the reader's error)."""
    if result.classes is None:
        return result.problems[0]
    splits = ", ".join(f"{split} {count}" for split, count in result.counts.items())
    return f"{result.classes} classes; {splits}"
