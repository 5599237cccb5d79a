"""The embedded world: procedural scenes with true captions, a renderer and domain shifts.

Deterministic by seed. The tiny CLIP pretrained on it and the world datasets build on these.
"""

from peftclip.world.captions import (
    ATTRIBUTES,
    caption_attributes,
    caption_matches,
    caption_text,
    scene_attributes,
    vocabulary,
)
from peftclip.world.render import render
from peftclip.world.scenes import (
    BACKGROUNDS,
    COLOR_NAMES,
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scenes,
    is_held_out,
    sample_scenes,
)
from peftclip.world.shifts import DEFAULT_SEVERITY, SHIFTS, apply_shift

__all__ = [
    "ATTRIBUTES",
    "BACKGROUNDS",
    "COLORS",
    "COLOR_NAMES",
    "DEFAULT_SEVERITY",
    "POSITIONS",
    "SHAPES",
    "SHIFTS",
    "SIZES",
    "Scenes",
    "apply_shift",
    "caption_attributes",
    "caption_matches",
    "caption_text",
    "is_held_out",
    "render",
    "sample_scenes",
    "scene_attributes",
    "vocabulary",
]
