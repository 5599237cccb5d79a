"""The frozen CLIP backbone: loading, attention surgery, encoders, text helpers."""

from peftclip.backbone.attention import SplitAttention, split_attention
from peftclip.backbone.frozen_clip import BackboneIdentity, DeepPrompts, FrozenClip
from peftclip.backbone.loading import BackboneSpec, load_backbone, weights_sha256
from peftclip.backbone.models import RegisteredModel, list_models, register_model
from peftclip.backbone.preprocess import BackboneTransforms, backbone_transforms
from peftclip.backbone.text import (
    TextFeatureCache,
    class_prompts,
    template_head,
    zero_shot_head,
)

__all__ = [
    "BackboneIdentity",
    "BackboneSpec",
    "BackboneTransforms",
    "DeepPrompts",
    "FrozenClip",
    "RegisteredModel",
    "SplitAttention",
    "TextFeatureCache",
    "backbone_transforms",
    "class_prompts",
    "list_models",
    "load_backbone",
    "register_model",
    "split_attention",
    "template_head",
    "weights_sha256",
    "zero_shot_head",
]
