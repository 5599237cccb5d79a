"""Few-shot sampling (Dassl's algorithm) and base/new class splits (specs/datasets.md §4.1,
specs/protocols.md §4)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from peftclip.data.registry import ClassificationData
from peftclip.errors import PeftClipError


def sample_per_class(labels: Sequence[int], shots: int, rng: random.Random) -> list[int]:
    """Dassl's ``generate_fewshot_dataset`` on one list, returning positions into ``labels``.

    Classes are visited in first-appearance order; a class with at least ``shots`` items gets
    ``rng.sample(items, shots)``, a smaller class keeps all its items (no repetition).
    """
    by_label: dict[int, list[int]] = {}
    for position, label in enumerate(labels):
        by_label.setdefault(label, []).append(position)
    chosen = []
    for items in by_label.values():
        chosen += rng.sample(items, shots) if len(items) >= shots else items
    return chosen


def few_shot(data: ClassificationData, shots: int, seed: int) -> ClassificationData:
    """``shots`` training images per class and ``min(shots, 4)`` validation images per class.

    One ``random.Random(seed)`` stream serves train then val, as in the anchors (which seed
    Python's global ``random`` once and sample train, then val). Test is untouched.
    """
    if "train" not in data.splits:
        raise PeftClipError(f"few-shot sampling needs a train split; '{data.name}' has none.")
    rng = random.Random(seed)
    identity = {label: label for label in range(len(data.classnames))}
    splits = dict(data.splits)
    for split, k in (("train", shots), ("val", min(shots, 4))):
        if split in splits:
            positions = sample_per_class(splits[split].targets, k, rng)
            splits[split] = splits[split].subset(positions, identity)
    return ClassificationData(data.name, data.classnames, splits, data.templates)


def base_new_split(data: ClassificationData, half: str) -> ClassificationData:
    """The ``base`` (first ⌈n/2⌉ sorted labels) or ``new`` (the rest) half, relabelled from 0.

    Applied to every split; class names are kept (spec protocols.md §4.3).
    """
    if half not in ("base", "new"):
        raise PeftClipError(f"subsample must be 'all', 'base' or 'new', got '{half}'.")
    labels = sorted(
        set(data.splits["train"].targets if "train" in data.splits else range(len(data.classnames)))
    )
    m = math.ceil(len(labels) / 2)
    kept = labels[:m] if half == "base" else labels[m:]
    relabel = {label: index for index, label in enumerate(kept)}
    splits = {
        split: dataset.subset(
            [i for i, label in enumerate(dataset.targets) if label in relabel], relabel
        )
        for split, dataset in data.splits.items()
    }
    classnames = [data.classnames[label] for label in kept]
    return ClassificationData(f"{data.name}:{half}", classnames, splits, data.templates)
