"""Domain shifts of world images, each with a severity in [0, 1] (0 = no change).

They play the roles of ImageNet-Sketch / -V2 / -A / -R for the embedded world. Severity is a
knob because the prototype found strong versions collapse to colour-only recognition.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from peftclip.errors import PeftClipError

DEFAULT_SEVERITY = 0.5


def _float(images: torch.Tensor) -> torch.Tensor:
    return images.float()


def sketch(images, mask, severity, generator):
    """Dark object outlines on a white page, blended with the original by ``severity``."""
    inside = mask.float()[:, None]
    eroded = -F.max_pool2d(-inside, 3, stride=1, padding=1)
    outline = (inside - eroded)[:, 0, ..., None]
    page = 245 - outline * 215
    return torch.lerp(_float(images), page.expand_as(images), severity)


def noise(images, mask, severity, generator):
    """Additive Gaussian pixel noise, σ = 40·severity (grey levels)."""
    return _float(images) + torch.randn(images.shape, generator=generator) * 40 * severity


def blur(images, mask, severity, generator):
    """Gaussian blur, σ = 1.6·severity pixels."""
    if severity == 0:
        return _float(images)
    chw = _float(images).permute(0, 3, 1, 2)
    return gaussian_blur(chw, kernel_size=7, sigma=1.6 * severity).permute(0, 2, 3, 1)


def low_contrast(images, mask, severity, generator):
    """Contrast towards each image's mean grey, down to 15 % at severity 1."""
    x = _float(images)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + (x - mean) * (1 - 0.85 * severity)


def texture(images, mask, severity, generator):
    """A grey mosaic of 6-px tiles, never seen in pretraining, blended into the background.

    Achromatic like every world background, so it changes the background style without
    inventing colours (a colourful or full-contrast texture collapses recognition to chance).
    """
    n, height, width, _ = images.shape
    cells = 60 + torch.rand(n, 1, height // 6 + 1, width // 6 + 1, generator=generator) * 140
    pattern = F.interpolate(cells, scale_factor=6, mode="nearest")[:, :, :height, :width]
    pattern = pattern.permute(0, 2, 3, 1).expand(-1, -1, -1, 3)
    background = torch.lerp(_float(images), pattern, severity)
    return torch.where(mask[..., None], _float(images), background)


SHIFTS = {
    "sketch": sketch,
    "noise": noise,
    "blur": blur,
    "low_contrast": low_contrast,
    "texture": texture,
}


def apply_shift(
    name: str,
    images: torch.Tensor,
    mask: torch.Tensor,
    severity: float = DEFAULT_SEVERITY,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Shifts ``uint8`` images ``(n, H, W, 3)`` whose object mask is ``(n, H, W)``."""
    if name not in SHIFTS:
        raise PeftClipError(f"unknown world shift '{name}'; known: {', '.join(SHIFTS)}.")
    if not 0 <= severity <= 1:
        raise PeftClipError(f"shift severity must be in [0, 1], got {severity}.")
    generator = generator or torch.Generator().manual_seed(0)
    shifted = SHIFTS[name](images, mask, severity, generator)
    return shifted.clamp(0, 255).round().to(torch.uint8)
