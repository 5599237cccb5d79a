"""World datasets in the dataset registry, rendered deterministically in memory.

Each is a classification task over one attribute (or colour × shape) of single-kind scenes:

* ``world_objects`` — 80 classes ``"<colour> <shape>"`` (one object per image), including the
  20 pairs never seen in pretraining; ``world_objects_<shift>`` are test-only shifted copies
  (the analogues of ImageNet-Sketch/-V2/-A/-R).
* ``world_shapes``, ``world_colors``, ``world_backgrounds``, ``world_counts``, ``world_sizes`` —
  further tasks for cross-dataset transfer and as a continual task stream. Backgrounds and sizes
  are attributes the captions often leave out, so prompt learning has headroom there.

Default template: ``"a photo of a {}."``, whose word "photo" pretraining never used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial

import torch

from peftclip.data.images import LabeledImageTensors
from peftclip.data.registry import ClassificationData, DatasetDefinition, register_dataset
from peftclip.world.render import render
from peftclip.world.scenes import (
    BACKGROUNDS,
    COLOR_NAMES,
    SHAPES,
    SIZES,
    Scenes,
    sample_scenes,
)
from peftclip.world.shifts import DEFAULT_SEVERITY, SHIFTS, apply_shift

#: Images per class in each split (train is what few-shot manifests sample from).
SPLIT_SIZES = {"train": 32, "val": 8, "test": 25}
_SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class WorldTask:
    """One world classification task: its class names and how a scene's label is read."""

    classnames: tuple[str, ...]
    label: Callable[[Scenes], torch.Tensor]
    single_object: bool = True
    template: str = "a photo of a {}."


TASKS = {
    "world_objects": WorldTask(
        tuple(f"{color} {shape}" for shape in SHAPES for color in COLOR_NAMES),
        lambda s: s.shape * len(COLOR_NAMES) + s.color,
    ),
    "world_shapes": WorldTask(SHAPES, lambda s: s.shape),
    "world_colors": WorldTask(COLOR_NAMES, lambda s: s.color, template="a photo of a {} shape."),
    "world_backgrounds": WorldTask(
        tuple(f"{name} background" for name in BACKGROUNDS), lambda s: s.background
    ),
    "world_counts": WorldTask(
        ("one shape", "two shapes", "three shapes"), lambda s: s.count - 1, single_object=False
    ),
    "world_sizes": WorldTask(tuple(f"{size} shape" for size in SIZES), lambda s: s.size),
}


def _balanced_scenes(task: WorldTask, per_class: int, seed: int) -> tuple[Scenes, torch.Tensor]:
    """Samples scenes (all 80 shape×colour pairs allowed) until every class has ``per_class``."""
    generator = torch.Generator().manual_seed(seed)
    kept, counts = [], torch.zeros(len(task.classnames), dtype=torch.long)
    while (counts < per_class).any():
        scenes = sample_scenes(4096, generator, held_out="include")
        if task.single_object:
            scenes.count = torch.ones_like(scenes.count)
            scenes.cells[:, 1:] = -1
        label = task.label(scenes)
        # Keep the first (per_class - counts[c]) scenes of each class c, in sampling order.
        order = torch.argsort(label, stable=True)
        sorted_labels = label[order]
        rank = torch.arange(len(order)) - torch.searchsorted(sorted_labels, sorted_labels)
        keep = order[rank < (per_class - counts)[sorted_labels]].sort().values
        counts += torch.bincount(label[keep], minlength=len(counts))
        kept.append(scenes[keep])
    picked = Scenes(*(torch.cat([getattr(b, f.name) for b in kept]) for f in fields(Scenes)))
    return picked, task.label(picked)


def build_world_dataset(
    definition: DatasetDefinition,
    root: str | None = None,
    task: str = "world_objects",
    shift: str | None = None,
    severity: float = DEFAULT_SEVERITY,
    image_size: int = 48,
    seed: int = 0,
    splits: tuple[str, ...] = ("train", "val", "test"),
) -> ClassificationData:
    """Renders a world task. ``root`` is unused (nothing is read from disk).

    Args:
        definition: The registry entry (its class names and templates are the task's).
        task: One of ``TASKS``.
        shift: A domain shift applied to the test images (the shifted dataset is test-only).
        severity: Shift severity in [0, 1].
        image_size: Image side in pixels (the world CLIP uses 48).
        seed: Seed of the whole dataset (splits use derived seeds).
        splits: Which splits to render (evaluation needs only ``test``).
    """
    spec = TASKS[task]
    rendered = {}
    for split, per_class in SPLIT_SIZES.items():
        if split not in splits or (shift is not None and split != "test"):
            continue  # shifted variants are evaluation-only, like ImageNet-Sketch
        split_seed = seed * 1000 + _SPLIT_SEEDS[split] * 100 + sorted(TASKS).index(task)
        scenes, labels = _balanced_scenes(spec, per_class, split_seed)
        generator = torch.Generator().manual_seed(split_seed)
        images, mask = render(scenes, image_size, generator)
        if shift is not None:
            images = apply_shift(shift, images, mask, severity, generator)
        rendered[split] = LabeledImageTensors(images, labels)
    classnames, templates = list(definition.classnames), list(definition.templates)
    return ClassificationData(definition.name, classnames, rendered, templates)


def _definition(task: str, shift: str | None = None) -> DatasetDefinition:
    return DatasetDefinition(
        task if shift is None else f"{task}_{shift}",
        partial(build_world_dataset, task=task, shift=shift),
        templates=(TASKS[task].template,),
        classnames=TASKS[task].classnames,
        benchmark="world",
    )


for _task in TASKS:
    register_dataset(_definition(_task))
for _shift in SHIFTS:
    register_dataset(_definition("world_objects", _shift))
