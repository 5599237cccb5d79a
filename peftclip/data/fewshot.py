"""Few-shot sampling (Dassl's algorithm) and base/new class splits
(docs/datasets.md#few-shot-samples, docs/protocols/base-to-new.md)."""

from __future__ import annotations

import hashlib
import json
import math
import random
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from peftclip.atomic_files import write_text_atomically
from peftclip.data.registry import ClassificationData
from peftclip.errors import PeftClipError


def sample_per_class(
    labels: Sequence[int], shots: int, rng: random.Random, repeat: bool = False
) -> list[int]:
    """Dassl's ``generate_fewshot_dataset`` on one list, returning positions into ``labels``.

    Classes are visited in first-appearance order; a class with at least ``shots`` items gets
    ``rng.sample(items, shots)``; a smaller class keeps all its items (no repetition), or with
    ``repeat`` (the Tip-Adapter lineage's ``repeat=True``) gets ``rng.choices(items, k=shots)``.
    """
    by_label: dict[int, list[int]] = {}
    for position, label in enumerate(labels):
        by_label.setdefault(label, []).append(position)
    chosen = []
    for items in by_label.values():
        if len(items) >= shots:
            chosen += rng.sample(items, shots)
        else:
            chosen += rng.choices(items, k=shots) if repeat else items
    return chosen


#: The samplers that draw a sample (docs/datasets.md#few-shot-samples): per split, the shots
#: of a K-shot sample and whether a short class is filled by repetition, in drawing order.
#: ``tip_train_only`` draws train exactly as Tip-Adapter and GDA do (their first draw after
#: seeding; they select on the full val split), then peftclip's few-shot val; ``lpp`` is LP++'s
#: K train then K val images per class, both repeat-filled.
SAMPLERS = {
    "dassl": lambda k: (("train", k, False), ("val", min(k, 4), False)),
    "tip_train_only": lambda k: (("train", k, True), ("val", min(k, 4), False)),
    "lpp": lambda k: (("train", k, True), ("val", k, True)),
}


MANIFEST_FORMAT = "peftclip-fewshot/1"


def manifest_path(cache_dir: Path, dataset: str, shots: int, seed: int, sampler: str = "dassl"):
    """``<cache>/fewshot/<dataset>/shot_<K>-seed_<s>-<sampler>.json``.

    See docs/datasets.md#few-shot-samples.
    """
    return Path(cache_dir) / "fewshot" / dataset / f"shot_{shots}-seed_{seed}-{sampler}.json"


def source_sha256(data: ClassificationData) -> str:
    """Hash of what a sample is drawn from: the split file, or else the train/val listing."""
    if data.split_file is not None:
        return hashlib.sha256(data.split_file.read_bytes()).hexdigest()
    listing = [
        [_relative(path, data.image_root), label]
        for split in ("train", "val")
        if split in data.splits
        for path, label in data.splits[split].samples
    ]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def _relative(path: Path, root: Path) -> str:
    return Path(path).relative_to(root).as_posix()


def few_shot(
    data: ClassificationData,
    shots: int,
    seed: int,
    cache_dir: Path | None = None,
    sampler: str = "dassl",
) -> ClassificationData:
    """``shots`` training images per class and ``min(shots, 4)`` validation images per class.

    One ``random.Random(seed)`` stream serves train then val, as in the anchors (which seed
    Python's global ``random`` once and sample train, then val). Test is untouched. With
    ``cache_dir``, file datasets reuse the JSON manifest of (dataset, shots, seed) or write it.
    ``sampler="dassl-pkl"`` uses a manifest imported from Dassl's pkl (``peftclip data
    import-pkl``).
    """
    if "train" not in data.splits:
        raise PeftClipError(f"few-shot sampling needs a train split; '{data.name}' has none.")
    path = None
    if cache_dir is not None and data.image_root is not None:
        path = manifest_path(cache_dir, data.name, shots, seed, sampler)
        if path.is_file():
            sample = _apply_manifest(data, path)
            _warn_short_classes(sample, shots)
            return sample
    if sampler not in SAMPLERS:
        raise PeftClipError(
            f"no imported '{sampler}' manifest for {data.name}, {shots} shots, seed {seed} "
            f"(looked for '{path}'). Import it with `peftclip data import-pkl`."
        )
    rng = random.Random(seed)
    identity = {label: label for label in range(len(data.classnames))}
    splits = dict(data.splits)
    for split, k, repeat in SAMPLERS[sampler](shots):
        if split in splits:
            positions = sample_per_class(splits[split].targets, k, rng, repeat)
            splits[split] = splits[split].subset(positions, identity)
    sample = replace(data, splits=splits)
    if path is not None:
        _write_manifest(sample, data, shots, seed, path, sampler)
    _warn_short_classes(sample, shots)
    return sample


def short_classes(data: ClassificationData, shots: int, shown: int = 10) -> str | None:
    """The classes whose train split has fewer than ``shots`` images, in words; ``None`` if none.

    E.g. ``"1 of 3 classes of 'pets' have fewer training images, and all of them are used (as in
    Dassl): 'cat' (2)"``: at most ``shown`` classes by name, with their counts, then "and N
    more". Dassl keeps every image of such a class (no repetition), and so does
    :func:`few_shot`; the run is then not the K-shot setting its recipe names, which a user
    should know. The training warning and ``peftclip data check --shots`` both say it so.
    """
    counts = Counter(data.splits["train"].targets)
    short = [
        (name, counts[label]) for label, name in enumerate(data.classnames) if counts[label] < shots
    ]
    if not short:
        return None
    listed = ", ".join(f"'{name}' ({count})" for name, count in short[:shown])
    more = f" and {len(short) - shown} more" if len(short) > shown else ""
    return (
        f"{len(short)} of {len(data.classnames)} classes of '{data.name}' have fewer training "
        f"images, and all of them are used (as in Dassl): {listed}{more}"
    )


def _warn_short_classes(sample: ClassificationData, shots: int) -> None:
    """Warns once about the classes whose sampled train split has fewer than ``shots`` images."""
    short = short_classes(sample, shots)
    if short is not None:
        warnings.warn(f"data.shots is {shots}, but {short}.", stacklevel=3)


def _write_manifest(sample, data, shots: int, seed: int, path: Path, sampler: str) -> None:
    try:
        entries = {
            split: [
                [_relative(file, data.image_root), label, data.classnames[label]]
                for file, label in sample.splits[split].samples
            ]
            for split in ("train", "val")
            if split in sample.splits
        }
    except ValueError:
        return  # files outside image_root (e.g. absolute CSV paths): keep the sample in memory
    manifest = {
        "format": MANIFEST_FORMAT,
        "dataset": data.name,
        "shots": shots,
        "seed": seed,
        "sampler": sampler,
        "source_split": {
            "file": data.split_file.name if data.split_file else None,
            "sha256": source_sha256(data),
        },
        **entries,
    }
    try:
        write_text_atomically(path, json.dumps(manifest, indent=1) + "\n")
    except OSError as error:
        raise PeftClipError(
            f"cannot write the few-shot manifest '{path}' ({error.strerror}); the data root may be "
            "read-only. Set data.cache_dir to a writable folder."
        ) from error


def _apply_manifest(data: ClassificationData, path: Path) -> ClassificationData:
    manifest = json.loads(path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise PeftClipError(f"'{path}' is not a {MANIFEST_FORMAT} manifest.")
    if manifest["source_split"]["sha256"] != source_sha256(data):
        raise PeftClipError(
            f"few-shot manifest '{path}' was drawn from a different version of the split of "
            f"'{data.name}'; delete it to draw a new sample (numbers will then differ)."
        )
    splits = dict(data.splits)
    identity = {label: label for label in range(len(data.classnames))}
    for split in ("train", "val"):
        if split not in manifest:
            continue
        index_of = {
            _relative(file, data.image_root): i for i, (file, _) in enumerate(splits[split].samples)
        }
        positions = []
        for relpath, label, classname in manifest[split]:
            if relpath not in index_of or data.classnames[label] != classname:
                raise PeftClipError(
                    f"few-shot manifest '{path}' lists '{relpath}' ({classname}), which the "
                    f"{split} split of '{data.name}' does not hold; delete the manifest."
                )
            positions.append(index_of[relpath])
        splits[split] = splits[split].subset(positions, identity)
    return replace(data, splits=splits)


def base_new_labels(data: ClassificationData) -> tuple[list[int], list[int]]:
    """The base and new classes: of the n labels present in train (all classes without a train
    split), sorted, the first ⌈n/2⌉ are base and the rest new (docs/protocols/base-to-new.md).

    ``data check`` compares their sizes with the published ones of the dataset's definition.
    """
    if "train" in data.splits:
        labels = sorted(set(data.splits["train"].targets))
    else:
        labels = list(range(len(data.classnames)))
    m = math.ceil(len(labels) / 2)
    return labels[:m], labels[m:]


def base_new_split(data: ClassificationData, half: str) -> ClassificationData:
    """The ``base`` or ``new`` half (:func:`base_new_labels`), relabelled from 0.

    Applied to every split; class names are kept (docs/protocols/base-to-new.md).
    """
    if half not in ("base", "new"):
        raise PeftClipError(f"subsample must be 'all', 'base' or 'new', got '{half}'.")
    base, new = base_new_labels(data)
    kept = base if half == "base" else new
    relabel = {label: index for index, label in enumerate(kept)}
    splits = {
        split: dataset.subset(
            [i for i, label in enumerate(dataset.targets) if label in relabel], relabel
        )
        for split, dataset in data.splits.items()
    }
    classnames = [data.classnames[label] for label in kept]
    return replace(data, name=f"{data.name}:{half}", classnames=classnames, splits=splits)
