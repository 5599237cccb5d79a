"""The frozen CLIP backbone: loading, attention surgery, encoders, text helpers."""

from peftclip.backbone.attention import SplitAttention, split_attention
from peftclip.backbone.frozen_clip import BackboneIdentity, DeepPrompts, FrozenClip
from peftclip.backbone.loading import BackboneSpec, load_backbone, weights_sha256
from peftclip.backbone.preprocess import BackboneTransforms, backbone_transforms
from peftclip.backbone.text import (
    TextFeatureCache,
    class_prompts,
    resolve_templates,
    template_head,
    zero_shot_head,
)

__all__ = [
    "BackboneIdentity",
    "BackboneSpec",
    "BackboneTransforms",
    "DeepPrompts",
    "FrozenClip",
    "SplitAttention",
    "TextFeatureCache",
    "backbone_transforms",
    "class_prompts",
    "load_backbone",
    "resolve_templates",
    "split_attention",
    "template_head",
    "weights_sha256",
    "zero_shot_head",
]
