"""Scenes of the embedded world: attributes, sampling, and the held-out shape×colour rule.

A scene is one kind of object (shape, colour, size) drawn ``count`` times in distinct cells of
a 3×3 grid, on one of five achromatic backgrounds. Everything is a tensor so batches of scenes
sample and render without Python loops over images.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

SHAPES = (
    "circle", "square", "triangle", "diamond", "plus",
    "ring", "star", "hexagon", "cross", "crescent",
)  # fmt: skip
COLORS = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (45, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (135, 50, 175),
    "orange": (240, 135, 25),
    "pink": (240, 130, 190),
    "cyan": (40, 200, 210),
}
COLOR_NAMES = tuple(COLORS)
SIZES = ("small", "large")
COUNTS = (1, 2, 3)
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
BACKGROUNDS = ("dark", "light", "gradient", "striped", "dotted")
MAX_OBJECTS = max(COUNTS)


def is_held_out(shape: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    """The 20 of 80 shape×colour pairs that never appear in pretraining.

    ``(3·shape + colour) mod 4 == 0`` holds out two colours per shape, and every shape and every
    colour still appears in pretraining with other partners (so the pairs are composable).
    """
    return (3 * shape + color) % 4 == 0


@dataclass
class Scenes:
    """A batch of ``n`` scenes; every field is a ``(n,)`` long tensor except ``cells``.

    Attributes:
        shape, color, size, background: Indices into ``SHAPES``, ``COLOR_NAMES``, ``SIZES``,
            ``BACKGROUNDS``.
        count: Number of objects, 1–3.
        cells: ``(n, 3)`` grid cells (0–8, row-major) of the objects; ``-1`` past ``count``.
            A single object's cell is its caption position.
    """

    shape: torch.Tensor
    color: torch.Tensor
    size: torch.Tensor
    count: torch.Tensor
    cells: torch.Tensor
    background: torch.Tensor

    def __len__(self) -> int:
        return len(self.shape)

    def __getitem__(self, index) -> Scenes:
        return Scenes(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def sample_scenes(n: int, generator: torch.Generator, held_out: str = "exclude") -> Scenes:
    """Samples ``n`` scenes uniformly over the attributes.

    Args:
        n: Number of scenes.
        generator: Source of randomness (the world is deterministic by seed).
        held_out: ``exclude`` (pretraining: never a held-out pair), ``only`` (only held-out
            pairs) or ``include`` (all 80 pairs).
    """
    pairs = torch.cartesian_prod(torch.arange(len(SHAPES)), torch.arange(len(COLORS)))
    held = is_held_out(pairs[:, 0], pairs[:, 1])
    allowed = {"exclude": pairs[~held], "only": pairs[held], "include": pairs}[held_out]
    pair = allowed[torch.randint(len(allowed), (n,), generator=generator)]
    count = torch.randint(1, MAX_OBJECTS + 1, (n,), generator=generator)
    # Distinct cells: the first `count` entries of a random permutation of the 9 cells.
    cells = torch.rand(n, len(POSITIONS), generator=generator).argsort(dim=1)[:, :MAX_OBJECTS]
    cells = torch.where(torch.arange(MAX_OBJECTS) < count[:, None], cells, -1)
    return Scenes(
        shape=pair[:, 0],
        color=pair[:, 1],
        size=torch.randint(len(SIZES), (n,), generator=generator),
        count=count,
        cells=cells,
        background=torch.randint(len(BACKGROUNDS), (n,), generator=generator),
    )
