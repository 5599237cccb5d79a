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
