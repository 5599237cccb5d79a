"""The world's stand-ins for ZSCL's reference data: pretraining-like scenes and captions.

ZSCL distills a continual learner towards zero-shot CLIP on ImageNet images and Conceptual
Captions, data from the pretraining distribution that no task of the stream is about. The world
analogues (docs/continual.md#zscl): scenes sampled as pretraining samples them (several objects,
every attribute, the 20 held-out colour × shape pairs excluded) and true captions of *other*
scenes, so the captions are not descriptions of the reference images, as Conceptual Captions are
not of ImageNet. Both are rendered from fixed seeds: the same in every process and run.
"""

from __future__ import annotations

import torch

from peftclip.data.images import LabeledImageTensors
from peftclip.data.order import derived_seed
from peftclip.world.captions import caption_attributes, caption_text
from peftclip.world.render import render
from peftclip.world.scenes import sample_scenes

#: Reference images (ZSCL: ImageNet train) and scenes whose captions are drawn (ZSCL: the CC
#: validation captions).
REFERENCE_IMAGES = 2048
REFERENCE_CAPTION_SCENES = 1000


def reference_images(count: int = REFERENCE_IMAGES, image_size: int = 48) -> LabeledImageTensors:
    """``count`` pretraining-distribution scenes (labels all 0: only the images are used)."""
    generator = torch.Generator().manual_seed(derived_seed("world", "reference images"))
    scenes = sample_scenes(count, generator, held_out="exclude")
    images, _ = render(scenes, image_size, generator)
    return LabeledImageTensors(images, torch.zeros(count, dtype=torch.long))


def reference_captions(scenes: int = REFERENCE_CAPTION_SCENES) -> list[str]:
    """The distinct true captions of ``scenes`` pretraining-distribution scenes, in drawing order
    (fewer than ``scenes``: short captions repeat)."""
    generator = torch.Generator().manual_seed(derived_seed("world", "reference captions"))
    drawn = sample_scenes(scenes, generator, held_out="exclude")
    captions = caption_text(caption_attributes(drawn, generator), generator)
    return list(dict.fromkeys(captions))
