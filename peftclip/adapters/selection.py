"""Hyperparameter selection of methods on frozen features (docs/methods/index.md#selection).

The Tip-Adapter lineage (Tip-Adapter, GDA) searches its hyperparameters on the dataset's full val
split, and on ImageNet on the test set; CoOp's linear probe on a few-shot val sample. peftclip
selects on the few-shot val sample by default; the anchors' splits need a method's ``faithful``
switch, and the split is recorded in every result (``selection_rule``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal, TypeVar

import torch

from peftclip.adapters.base import SELECTION_SPLITS, SelectionSet, TrainingFeatures
from peftclip.errors import PeftClipError

SelectionSplit = Literal["fewshot_val", "full_val", "test"]
#: The results record's ``selection_rule`` of a method that selects on each split.
SELECTION_RULE = {"fewshot_val": "best_val", "full_val": "best_full_val", "test": "best_test"}

Candidate = TypeVar("Candidate")


def check_selection_split(method: str, split: str, faithful: bool) -> None:
    """Refuses an unknown split, and the anchors' splits without the ``faithful`` switch.

    Raises:
        PeftClipError: ``split`` is not one of :data:`SELECTION_SPLITS`, or is not
            ``fewshot_val`` while ``faithful`` is false.
    """
    if split not in SELECTION_SPLITS:
        raise PeftClipError(
            f"{method}: selection_split must be one of {', '.join(SELECTION_SPLITS)}; got "
            f"'{split}'."
        )
    if split != "fewshot_val" and not faithful:
        raise PeftClipError(
            f"{method}: selecting hyperparameters on the '{split}' split is the anchors' rule, "
            "not a clean few-shot protocol; set faithful: true to reproduce it (the record's "
            "selection_rule says so), or keep selection_split: fewshot_val."
        )


def selection_set(data: TrainingFeatures, split: str, method: str) -> SelectionSet:
    """The selection split's features that ``data`` serves.

    Raises:
        PeftClipError: The run serves no selection split (a Python caller's features).
    """
    if data.selection is None:
        raise PeftClipError(
            f"{method} selects its hyperparameters on the '{split}' split, but these training "
            "features come without one; fit it through PeftClipModule (peftclip fit), or give "
            "TrainingFeatures a selection."
        )
    return data.selection(split)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (a fraction) of ``logits`` ``(n, classes)``."""
    return (logits.argmax(dim=-1) == labels).float().mean().item()


def first_best(
    candidates: Iterable[Candidate], score: Callable[[Candidate], float], initial: Candidate
) -> tuple[Candidate, float]:
    """The first candidate with the strictly highest score (ties keep the earlier one);
    ``initial`` if no candidate scores above 0 (the anchors' loops start from best = 0)."""
    best, best_score = initial, 0.0
    for candidate in candidates:
        value = score(candidate)
        if value > best_score:
            best, best_score = candidate, value
    return best, best_score
