"""True captions of world scenes, with attribute dropout, and which images each caption fits.

A caption mentions a subset of a scene's attributes. It is *true* of every image whose scene
agrees on every attribute the caption mentions, which is what a multi-positive contrastive
loss needs (no false negatives). The generator knows the truth, so it is computed exactly.
"""

from __future__ import annotations

import torch

from peftclip.world.scenes import BACKGROUNDS, COLOR_NAMES, POSITIONS, SHAPES, SIZES, Scenes

#: Caption attribute columns, in order; ``-1`` means "not mentioned".
ATTRIBUTES = ("shape", "color", "size", "count", "position", "background")
#: "photo" is deliberately absent: downstream templates ("a photo of a {}.") then contain a word
#: pretraining never trained, as hand-made templates are imperfect for real CLIPs, which leaves
#: prompt learning real headroom (the prototype's captions contained the template verbatim).
PREFIXES = ("an image of", "a picture of", "a rendering of", "a drawing of", "a scene with")
NUMBERS = {1: "a", 2: "two", 3: "three"}
PLURALS = {shape: shape + ("es" if shape.endswith(("s", "x")) else "s") for shape in SHAPES}
BACKGROUND_PHRASES = {
    "dark": "on a dark background",
    "light": "on a light background",
    "gradient": "on a gradient background",
    "striped": "on a striped background",
    "dotted": "on a dotted background",
}
#: Probability that each optional attribute is dropped from a caption. Shape and count are
#: always said: "a circle" is not true of an image of two circles.
DROPOUT = {"color": 0.15, "size": 0.5, "position": 0.5, "background": 0.5}


def caption_attributes(scenes: Scenes, generator: torch.Generator) -> torch.Tensor:
    """``(n, 6)`` attributes each scene's caption mentions (columns ``ATTRIBUTES``; -1 = dropped).

    A position is mentioned only for single-object scenes (it is the object's cell).
    """
    n = len(scenes)
    values = scene_attributes(scenes)
    keep = torch.ones(n, len(ATTRIBUTES), dtype=torch.bool)
    for column, name in enumerate(ATTRIBUTES):
        if name in DROPOUT:
            keep[:, column] = torch.rand(n, generator=generator) >= DROPOUT[name]
    return torch.where(keep, values, -1)


def scene_attributes(scenes: Scenes) -> torch.Tensor:
    """``(n, 6)`` full attributes of the scenes (position -1 when there are several objects)."""
    position = torch.where(scenes.count == 1, scenes.cells[:, 0], -1)
    return torch.stack(
        [scenes.shape, scenes.color, scenes.size, scenes.count, position, scenes.background], 1
    )


def caption_matches(captions: torch.Tensor, scenes: torch.Tensor) -> torch.Tensor:
    """``(n_captions, n_images)`` bool: caption ``i`` is true of image ``j``."""
    mentioned = captions[:, None, :] >= 0
    agrees = captions[:, None, :] == scenes[None, :, :]
    return (~mentioned | agrees).all(dim=-1)


def caption_text(attributes: torch.Tensor, generator: torch.Generator) -> list[str]:
    """Renders caption attribute rows into sentences with varied prefixes."""
    prefixes = torch.randint(len(PREFIXES), (len(attributes),), generator=generator).tolist()
    return [
        _sentence(row, PREFIXES[p]) for row, p in zip(attributes.tolist(), prefixes, strict=True)
    ]


def _sentence(row: list[int], prefix: str) -> str:
    shape, color, size, count, position, background = row
    plural = count > 1
    words = [prefix, NUMBERS[count]]
    if size >= 0:
        words.append(SIZES[size])
    if color >= 0:
        words.append(COLOR_NAMES[color])
    words.append(PLURALS[SHAPES[shape]] if plural else SHAPES[shape])
    if position >= 0:
        words.append(f"at the {POSITIONS[position]}" if position != 4 else "in the center")
    if background >= 0:
        words.append(BACKGROUND_PHRASES[BACKGROUNDS[background]])
    return " ".join(words)


def vocabulary() -> list[str]:
    """Every word a caption can contain (for the world model's word-level tokenizer)."""
    words = set()
    for phrase in (*PREFIXES, *NUMBERS.values(), *SIZES, *COLOR_NAMES, *SHAPES,
                   *PLURALS.values(), *POSITIONS, "at the", "in the center",
                   *BACKGROUND_PHRASES.values()):  # fmt: skip
        words.update(phrase.split())
    return sorted(words)
