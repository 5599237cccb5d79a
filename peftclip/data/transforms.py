"""The image transforms of docs/datasets.md#transforms, by name (recipes pick them per protocol)."""

from __future__ import annotations

from collections.abc import Callable

from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torchvision import transforms as T

from peftclip.errors import PeftClipError

BICUBIC = T.InterpolationMode.BICUBIC


def _to_rgb(image):
    return image.convert("RGB")


def _finish() -> list:
    return [_to_rgb, T.ToTensor(), T.Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)]


def build_transform(name: str, image_size: int = 224) -> Callable:
    """One of ``dassl_train``, ``dassl_test``, ``tip_train``, ``zscl_train``, ``zscl_test``,
    ``openclip_train``.

    * ``dassl_train``: RandomResizedCrop(scale 0.08–1, bicubic) + horizontal flip (CoOp family).
    * ``tip_train``: RandomResizedCrop(scale 0.5–1, bicubic) + horizontal flip (Tip-Adapter,
      GDA, LP++; GDA's ImageNet loader alone uses ``dassl_train``'s scale).
    * ``dassl_test`` = ``zscl_test``: Resize(shorter side, bicubic) + CenterCrop.
    * ``zscl_train`` = ``openclip_train``: RandomResizedCrop(scale 0.9–1, bicubic), no flip.
    """
    crop = {
        "dassl_train": [
            T.RandomResizedCrop(image_size, scale=(0.08, 1.0), interpolation=BICUBIC),
            T.RandomHorizontalFlip(0.5),
        ],
        "tip_train": [
            T.RandomResizedCrop(image_size, scale=(0.5, 1.0), interpolation=BICUBIC),
            T.RandomHorizontalFlip(0.5),
        ],
        "zscl_train": [T.RandomResizedCrop(image_size, scale=(0.9, 1.0), interpolation=BICUBIC)],
        "openclip_train": [
            T.RandomResizedCrop(image_size, scale=(0.9, 1.0), interpolation=BICUBIC)
        ],
        "dassl_test": [T.Resize(image_size, interpolation=BICUBIC), T.CenterCrop(image_size)],
        "zscl_test": [T.Resize(image_size, interpolation=BICUBIC), T.CenterCrop(image_size)],
    }
    if name not in crop:
        raise PeftClipError(
            f"unknown transform '{name}'; choose one of {', '.join(sorted(crop))}, 'backbone' "
            "(open_clip's own) or, for training, 'eval' (no augmentation)."
        )
    return T.Compose([*crop[name], *_finish()])
