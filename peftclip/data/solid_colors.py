"""A tiny generated dataset (noisy solid-colour images) so the pipeline runs with no files.

It stands in for the embedded procedural world until that lands; it is what the README's
first command evaluates on.
"""

from __future__ import annotations

import torch

from peftclip.data.images import LabeledImageTensors
from peftclip.data.registry import ClassificationData, register_dataset
from peftclip.world.scenes import COLORS  # the world's palette: one source of colour truth


def _images(per_class: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    base = torch.tensor(list(COLORS.values()), dtype=torch.float32)
    labels = torch.arange(len(COLORS)).repeat_interleave(per_class)
    noise = torch.randn(len(labels), size, size, 3, generator=generator) * 25
    images = (base[labels].view(-1, 1, 1, 3) + noise).clamp(0, 255).to(torch.uint8)
    return images, labels


def build_solid_colors(
    root: str | None = None, images_per_class: int = 8, image_size: int = 32, seed: int = 0
) -> ClassificationData:
    """Eight colour classes; train/val/test drawn from seeds ``seed``, ``seed+1``, ``seed+2``."""
    splits = {
        split: LabeledImageTensors(*_images(images_per_class, image_size, seed + offset))
        for offset, split in enumerate(("train", "val", "test"))
    }
    return ClassificationData("solid_colors", list(COLORS), splits, ["a photo of the color {}."])


register_dataset("solid_colors", build_solid_colors)
