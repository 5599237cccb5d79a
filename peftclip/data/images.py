"""Torch datasets of labelled images (files on disk, or images generated in memory)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from peftclip.errors import PeftClipError


class LabeledImageFiles(Dataset):
    """``(image, label)`` pairs read from files; ``transform`` is set by the DataModule.

    Every image is converted to RGB (grayscale, CMYK, palette files all load). An unreadable
    file is reported by path, not by a PIL traceback.
    """

    def __init__(self, samples: Sequence[tuple[Path, int]], transform: Callable | None = None):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def subset(self, indices: Sequence[int], relabel: dict[int, int]) -> LabeledImageFiles:
        """The items at ``indices`` with labels mapped through ``relabel``."""
        samples = [(self.samples[i][0], relabel[self.samples[i][1]]) for i in indices]
        return LabeledImageFiles(samples, self.transform)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            raise PeftClipError(
                f"cannot read image '{path}' ({error}). Replace it with a good copy, or drop it "
                "from the dataset (its line in the split file; for a folder dataset, the file); "
                "`peftclip data check --root DATA DATASET` lists every unreadable image."
            ) from error
        if self.transform is None:
            raise PeftClipError("no image transform set: call PeftClipDataModule.set_transforms()")
        return self.transform(image), label


class LabeledImageTensors(Dataset):
    """``(image, label)`` pairs from a ``uint8`` tensor ``(n, H, W, 3)`` held in memory."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None = None
    ):
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def subset(self, indices: Sequence[int], relabel: dict[int, int]) -> LabeledImageTensors:
        """The items at ``indices`` with labels mapped through ``relabel``."""
        index = torch.as_tensor(list(indices), dtype=torch.long)
        labels = torch.tensor(
            [relabel[int(label)] for label in self.labels[index]], dtype=torch.long
        )
        return LabeledImageTensors(self.images[index], labels, self.transform)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[index].numpy())
        if self.transform is None:
            raise PeftClipError("no image transform set: call PeftClipDataModule.set_transforms()")
        return self.transform(image), int(self.labels[index])
