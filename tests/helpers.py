"""Small helpers several test modules share."""

from __future__ import annotations

import torch

from peftclip.adapters import StepContext
from peftclip.data.templates import templates_of_dataset


def one_line_error(capsys, code: int, *expected: str) -> str:
    """Asserts exit 2 and exactly one stderr line, ``peftclip: error: ...`` with ``expected``."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("peftclip: error: "), err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def step_context(classifier, classes: list[str], images: torch.Tensor, labels: torch.Tensor):
    """The :class:`StepContext` a training step of ``classifier`` on ``classes`` gives."""
    outputs = classifier(images, classes)
    return StepContext(
        images=images,
        labels=labels,
        logits=outputs["logits"],
        image_features=outputs["image_features"],
        text_features=outputs["text_features"],
        classnames=classes,
        # as the module does for the trained dataset (none here: a family is the run's templates)
        frozen_head=lambda templates=None: classifier.frozen_head(
            classes, templates_of_dataset(templates, "")
        ),
    )
