"""A vectorised, deterministic renderer of world scenes (no Python loop over images)."""

from __future__ import annotations

import math

import torch

from peftclip.world.scenes import COLORS, MAX_OBJECTS, Scenes

_PALETTE = torch.tensor(list(COLORS.values()), dtype=torch.float32)
#: Object radius as a fraction of the image side, per size. At 48 px: about 5 and 8 px; the
#: prototype found 1–4 patch objects too small to tell shapes apart.
_RADIUS = (0.105, 0.165)


def _shape_mask(shape: int, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Inside-mask of shape ``SHAPES[shape]`` for local coordinates scaled so the radius is 1."""
    ax, ay = dx.abs(), dy.abs()
    if shape in (0, 5, 6, 9):
        r = torch.sqrt(dx**2 + dy**2)
    if shape == 0:  # circle
        return r <= 1.0
    if shape == 1:  # square
        return torch.maximum(ax, ay) <= 0.82
    if shape == 2:  # triangle, pointing up
        return (dy <= 0.75) & (ax * 1.75 <= dy + 1.0)
    if shape == 3:  # diamond
        return ax + ay <= 1.0
    if shape == 4:  # plus
        return ((ax <= 0.32) & (ay <= 0.95)) | ((ay <= 0.32) & (ax <= 0.95))
    if shape == 5:  # ring
        return (r <= 1.0) & (r >= 0.55)
    if shape == 6:  # star
        theta = torch.atan2(dy, dx)
        return r <= 0.42 + 0.58 * torch.relu(torch.cos(5 * (theta + math.pi / 2))) ** 0.7
    if shape == 7:  # hexagon
        return torch.maximum(ax * 0.866 + ay * 0.5, ay) <= 0.9
    if shape == 8:  # cross (an x)
        u, v = (dx + dy).abs() / math.sqrt(2), (dx - dy).abs() / math.sqrt(2)
        return ((u <= 0.3) & (v <= 1.0)) | ((v <= 0.3) & (u <= 1.0))
    return (r <= 1.0) & ((dx - 0.45) ** 2 + dy**2 > 0.72**2)  # crescent


def _backgrounds(scenes: Scenes, size: int, generator: torch.Generator) -> torch.Tensor:
    """Achromatic backgrounds ``(n, size, size)`` in [0, 255]: colour belongs to objects only."""
    n = len(scenes)
    coords = torch.arange(size, dtype=torch.float32) / (size - 1)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    tone = torch.rand(n, 2, generator=generator)
    dark = 25 + 30 * tone[:, :1, None]
    light = 195 + 40 * tone[:, 1:, None]
    gradient = dark + (light - dark) * y
    stripes = torch.where(((x + y) * size / 6).floor() % 2 == 0, dark, dark + 45)
    dots = torch.where(((x * size) % 6 < 2) & ((y * size) % 6 < 2), light, light - 60)
    styles = torch.stack(
        [
            dark.expand(n, size, size),
            light.expand(n, size, size),
            gradient,
            stripes,
            dots,
        ]
    )  # (5, n, size, size)
    return styles[scenes.background, torch.arange(n)]


def render(
    scenes: Scenes, image_size: int = 48, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Renders scenes.

    Args:
        scenes: The scenes to draw.
        image_size: Side of the square images in pixels.
        generator: Randomness of positions within cells, tones and colour jitter.

    Returns:
        ``uint8`` images ``(n, H, W, 3)`` and the bool object mask ``(n, H, W)``.
    """
    generator = generator or torch.Generator().manual_seed(0)
    n, size = len(scenes), image_size
    pixels = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    py, px = torch.meshgrid(pixels, pixels, indexing="ij")
    radius = torch.tensor(_RADIUS)[scenes.size]  # (n,)
    # Object centres: cell centre + jitter that keeps the object inside its cell.
    cells = scenes.cells.clamp(min=0)
    jitter = (torch.rand(n, MAX_OBJECTS, 2, generator=generator) - 0.5) * (
        1 / 3 - 2 * radius[:, None, None]
    ).clamp(min=0)
    cx = (cells % 3 + 0.5) / 3 + jitter[..., 0]
    cy = (cells // 3 + 0.5) / 3 + jitter[..., 1]
    # Local coordinates of every pixel relative to every object: (n, 3, H, W).
    dx = (px - cx[..., None, None]) / radius[:, None, None, None]
    dy = (py - cy[..., None, None]) / radius[:, None, None, None]
    masks = torch.zeros(dx.shape, dtype=torch.bool)  # (n, 3, H, W)
    for shape in scenes.shape.unique().tolist():
        rows = scenes.shape == shape
        masks[rows] = _shape_mask(shape, dx[rows], dy[rows])
    present = scenes.cells >= 0
    mask = (masks & present[..., None, None]).any(dim=1)

    color = _PALETTE[scenes.color] + torch.randn(n, 3, generator=generator) * 8
    background = _backgrounds(scenes, size, generator)[..., None].expand(-1, -1, -1, 3)
    images = torch.where(mask[..., None], color[:, None, None, :], background)
    return images.clamp(0, 255).round().to(torch.uint8), mask
