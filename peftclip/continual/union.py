"""Task-agnostic evaluation: every image against the classes of all of a stream's datasets.

X-TAIL's rule (docs/continual.md#x-tail; CoDyRA's ``main.py``): the head is the concatenation
of every evaluated dataset's class prompts, each dataset with its first template, in stream
order; an image of dataset ``d`` is right when the top logit is its label plus the number of
classes of the datasets before ``d``. Restricted to dataset ``d``'s block of columns the logits
are exactly those of a task-identity head with the same template, so task-agnostic accuracy can
only be lower: the other datasets' classes are extra ways to be wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import torch
from torch.utils.data import DataLoader

from peftclip.adapters.base import HeadInput
from peftclip.continual.model import ContinualModel
from peftclip.continual.training import TrainingSettings, _autocast
from peftclip.errors import PeftClipError


@dataclass(frozen=True)
class UnionTest:
    """One dataset of a task-agnostic evaluation.

    Attributes:
        dataset: Its name (the row's key).
        test: Its test images (evaluation transform), labels ``0 … len(classnames) − 1``.
        classnames: Its classes, in label order.
        template: The one template of its block of the head.
    """

    dataset: str
    test: Any
    classnames: list[str]
    template: str


def label_offsets(class_counts: list[int]) -> list[int]:
    """Where each dataset's block starts in the union head: the cumulative class count of the
    datasets before it (``[100, 47, 10] → [0, 100, 147]``)."""
    return [0, *accumulate(class_counts)][:-1]


def union_counts(
    logits: torch.Tensor, labels: torch.Tensor, offset: int, classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class ``(correct, total)`` of one batch of a dataset whose block starts at
    ``offset``: an image is right when the arg-max over the whole union is ``offset + label``."""
    predictions = logits.argmax(dim=-1).cpu()
    right = predictions == labels + offset
    return (
        torch.bincount(labels[right], minlength=classes),
        torch.bincount(labels, minlength=classes),
    )


@torch.inference_mode()
def evaluate_union(
    model: ContinualModel, tests: list[UnionTest], settings: TrainingSettings
) -> dict[str, dict[str, list[int]]]:
    """Per-dataset, per-class ``correct`` and ``total`` counts of the union head.

    Raises:
        PeftClipError: The model's class text depends on the image (one head per image cannot
            be shared by all datasets' images).
    """
    device = settings.torch_device()
    classifier = model.classifier
    model.eval()
    if classifier.image_conditioned:
        raise PeftClipError(
            "task-agnostic (union) evaluation needs class text features that do not depend on "
            "the image; this composition conditions them on each image (e.g. cocoop): evaluate "
            "the stream with evaluation: task."
        )
    blocks = []
    for test in tests:
        classifier.templates = [test.template]
        blocks.append(classifier.text_features(test.classnames))
    text_features = torch.cat(blocks)
    classnames = [name for test in tests for name in test.classnames]
    offsets = label_offsets([len(test.classnames) for test in tests])
    prompts = classifier.prompts()
    counts = {}
    for test, offset in zip(tests, offsets, strict=True):
        classes = len(test.classnames)
        correct = torch.zeros(classes, dtype=torch.long)
        total = torch.zeros(classes, dtype=torch.long)
        loader = DataLoader(
            test.test,
            batch_size=settings.eval_batch_size,
            num_workers=settings.num_workers,
            generator=torch.Generator().manual_seed(0),
        )
        for images, labels in loader:
            with _autocast(settings, device):
                image_features = model.backbone.encode_image(
                    images.to(device), prompts.vision_input, prompts.vision_deep
                )
                logits = classifier.head(
                    HeadInput(image_features, text_features, classifier.logit_scale, classnames)
                )
            batch_correct, batch_total = union_counts(logits, labels, offset, classes)
            correct += batch_correct
            total += batch_total
        counts[test.dataset] = {"correct": correct.tolist(), "total": total.tolist()}
    return counts
