"""Minimal adapters for testing the extension points (real methods land in their own issues)."""

from __future__ import annotations

import torch
from torch import nn

from peftclip.adapters import Adapter, Prompts, TextInput, register_adapter
from peftclip.backbone import class_prompts


class ToyShift(Adapter):
    """Adds one learnable vector (zeros at init) to every token embedding of templated prompts.

    Args:
        template: Prompt template of the classes.
    """

    def __init__(self, template: str = "a photo of a {}.") -> None:
        super().__init__()
        self.template = template
        self.shift: nn.Parameter | None = None

    def attach(self, backbone) -> None:
        self.shift = nn.Parameter(torch.zeros(backbone.text_width))

    def text_input(self, backbone, classnames, image_features=None) -> TextInput:
        tokens = backbone.tokenize(class_prompts(classnames, self.template))
        return TextInput(
            backbone.token_embeddings(tokens) + self.shift, backbone.pool_index(tokens)
        )


class ToyShiftTwin(ToyShift):
    """A second text-input owner, to provoke a composition conflict."""


class ToyVisionPrompt(Adapter):
    """``n`` learnable vision input tokens (N(0, 0.02²)).

    Args:
        n_tokens: Number of appended tokens.
    """

    def __init__(self, n_tokens: int = 2) -> None:
        super().__init__()
        self.n_tokens = n_tokens
        self.tokens: nn.Parameter | None = None

    def attach(self, backbone) -> None:
        self.tokens = nn.Parameter(torch.randn(self.n_tokens, backbone.vision_width) * 0.02)

    def prompts(self, backbone) -> Prompts:
        return Prompts(vision_input=self.tokens)


register_adapter("toy_shift", ToyShift)
register_adapter("toy_shift_twin", ToyShiftTwin)
register_adapter("toy_vision_prompt", ToyVisionPrompt)


class ToyPrototypes(Adapter):
    """A training-free head: cosine to the mean training feature of each class (fitted)."""

    fit_views = 2

    def __init__(self) -> None:
        super().__init__()
        self.register_fitted("prototypes")
        self.fitted_views: int | None = None

    def fit_from_data(self, data) -> None:
        self.fitted_views = data.features.shape[0]
        features = torch.nn.functional.normalize(data.features.mean(0), dim=-1)
        classes = len(data.classnames)
        sums = torch.zeros(classes, features.shape[1], device=features.device)
        sums.index_add_(0, data.labels, features)
        self.prototypes = torch.nn.functional.normalize(sums, dim=-1)

    def head(self, inputs) -> torch.Tensor:
        image = torch.nn.functional.normalize(inputs.image_features.float(), dim=-1)
        return inputs.logit_scale * image @ self.prototypes.t()


class ToyClassBias(Adapter):
    """Adds a learnable per-class bias to the logits (zeros at init)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(classes))

    def extra_logits(self, inputs) -> torch.Tensor:
        return self.bias.expand(len(inputs.image_features), -1)


class ToyAnchorLoss(ToyShift):
    """ToyShift plus a KgCoOp-like term: distance of the text features to the frozen head."""

    def __init__(self, template: str = "a photo of a {}.", weight: float = 1.0) -> None:
        super().__init__(template)
        self.weight = weight

    def extra_loss(self, context) -> torch.Tensor:
        frozen = context.frozen_head()
        text = torch.nn.functional.normalize(context.text_features, dim=-1)
        return self.weight * (1 - (text * frozen).sum(-1).mean())


register_adapter("toy_prototypes", ToyPrototypes)
register_adapter("toy_class_bias", ToyClassBias)
register_adapter("toy_anchor_loss", ToyAnchorLoss)
