"""Zero-shot measurements of a world CLIP (the numbers of the model card).

Everything runs through the same ``FrozenClip`` + template-ensemble code path as real CLIPs.
"""

from __future__ import annotations

import torch

from peftclip.backbone import FrozenClip, zero_shot_head
from peftclip.data import build_dataset
from peftclip.world.pretrain import to_model_input
from peftclip.world.scenes import COLOR_NAMES, is_held_out
from peftclip.world.shifts import SHIFTS

#: Caption-style template (how pretraining text reads) and the downstream default template.
CAPTION_TEMPLATE = "an image of a {}"
PHOTO_TEMPLATE = "a photo of a {}."
#: Caption-style template of each world task (how pretraining text would describe its classes).
TASK_TEMPLATES = {
    "world_objects": CAPTION_TEMPLATE,
    "world_shapes": CAPTION_TEMPLATE,
    "world_colors": "an image of a {} circle",
    "world_backgrounds": "an image of a circle on a {}",
    "world_counts": "an image of {}",
    "world_sizes": "an image of a {}",
}


@torch.no_grad()
def zero_shot_accuracy(
    backbone: FrozenClip,
    dataset: str,
    template: str,
    classes: list[int] | None = None,
    batch_size: int = 500,
) -> float:
    """Top-1 (%) on the test split of ``dataset``, optionally restricted to ``classes``."""
    data = build_dataset(dataset, splits=("test",))
    test = data.splits["test"]
    classes = classes if classes is not None else list(range(len(data.classnames)))
    keep = torch.isin(test.labels, torch.tensor(classes))
    names = [data.classnames[index] for index in classes]
    head = zero_shot_head(backbone, names, [template])
    device = head.device
    images = test.images[keep]
    labels = torch.searchsorted(torch.tensor(classes), test.labels[keep])
    correct = 0
    for start in range(0, len(images), batch_size):
        batch = to_model_input(images[start : start + batch_size]).to(device)
        predictions = backbone.logits(backbone.encode_image(batch), head).argmax(-1).cpu()
        correct += (predictions == labels[start : start + batch_size]).sum().item()
    return 100 * correct / len(images)


def model_card_numbers(backbone: FrozenClip) -> dict[str, float]:
    """All zero-shot figures of the model card, in %."""
    pairs = [(index // len(COLOR_NAMES), index % len(COLOR_NAMES)) for index in range(80)]
    unseen = [i for i, (s, c) in enumerate(pairs) if is_held_out(torch.tensor(s), torch.tensor(c))]
    numbers = {
        "objects_80way_caption_template": zero_shot_accuracy(
            backbone, "world_objects", CAPTION_TEMPLATE
        ),
        "objects_80way_photo_template": zero_shot_accuracy(
            backbone, "world_objects", PHOTO_TEMPLATE
        ),
        "unseen_pairs_20way": zero_shot_accuracy(
            backbone, "world_objects", CAPTION_TEMPLATE, classes=unseen
        ),
    }
    for task, label in (
        ("world_shapes", "shapes_10way"),
        ("world_colors", "colors_8way"),
        ("world_backgrounds", "backgrounds_5way"),
        ("world_counts", "counts_3way"),
        ("world_sizes", "sizes_2way"),
    ):
        numbers[label] = zero_shot_accuracy(backbone, task, TASK_TEMPLATES[task])
    for shift in SHIFTS:
        numbers[f"objects_80way_{shift}"] = zero_shot_accuracy(
            backbone, f"world_objects_{shift}", CAPTION_TEMPLATE
        )
    return numbers


def full_fine_tuning_forgetting(
    backbone: FrozenClip,
    train_task: str = "world_counts",
    held_out_tasks: tuple[str, ...] = (
        "world_objects",
        "world_shapes",
        "world_colors",
        "world_backgrounds",
    ),
    steps: int = 200,
    lr: float = 1e-4,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Fine-tunes *every* weight of ``backbone`` on one task; returns (before, after) top-1 (%)
    of that task and of held-out tasks, each with its caption-style template.

    The forgetting probe of the model card: continual-learning methods need a model that
    measurably forgets. ``backbone`` is modified in place (unfrozen and trained).
    """
    templates = TASK_TEMPLATES
    tasks = (train_task, *held_out_tasks)
    before = {task: zero_shot_accuracy(backbone, task, templates[task]) for task in tasks}
    data = build_dataset(train_task, splits=("train",)).splits["train"]
    names = build_dataset(train_task, splits=()).classnames
    model = backbone.model.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    tokens = backbone.tokenize([templates[train_task].format(name) for name in names])
    for _ in range(steps):
        index = torch.randint(len(data), (batch_size,), generator=generator)
        images = to_model_input(data.images[index])
        logits = backbone.logits(backbone.encode_image(images), backbone.encode_text_tokens(tokens))
        loss = torch.nn.functional.cross_entropy(logits, data.labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.requires_grad_(False)
    after = {task: zero_shot_accuracy(backbone, task, templates[task]) for task in tasks}
    return {task: (before[task], after[task]) for task in tasks}
