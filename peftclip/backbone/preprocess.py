"""The image transforms of a backbone, built from its configuration without loading weights."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import open_clip
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

from peftclip.backbone.models import require_model_config


@dataclass(frozen=True)
class BackboneTransforms:
    """open_clip's own training and evaluation transforms of a model, and its input size."""

    train: Callable
    eval: Callable
    image_size: int


def backbone_transforms(model_name: str, pretrained: str | None = None) -> BackboneTransforms:
    """The transforms ``open_clip.create_model_and_transforms`` gives ``model_name``.

    Reads only configurations: the model's input size and, for a pretrained tag, the tag's
    normalization and resize settings (a local weights file uses open_clip's defaults, as
    open_clip does). So a data module can build its transforms without the model.
    """
    config = require_model_config(model_name)
    settings = asdict(PreprocessCfg())
    if pretrained and not Path(pretrained).expanduser().is_file():
        tag = open_clip.get_pretrained_cfg(model_name, pretrained)
        if tag:
            settings = merge_preprocess_dict(settings, tag)
    size = config["vision_cfg"].get("image_size", 224)
    settings["size"] = size
    preprocess = PreprocessCfg(**settings)
    return BackboneTransforms(
        train=image_transform_v2(preprocess, is_train=True),
        eval=image_transform_v2(preprocess, is_train=False),
        image_size=size if isinstance(size, int) else size[0],
    )
