"""The model a continual run trains: a CLIP with its trainable parameterization.

By default every CLIP weight of both towers except ``logit_scale`` trains (ZSCL's
``--train-mode whole``); with adapters (``codyra``, ``lora``, ...) only they train. The state a
checkpoint keeps is what changes: the CLIP's weights under full fine-tuning, the adapters'
tensors otherwise (an adapter checkpoint re-applies its merged tasks onto the pretrained CLIP).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from peftclip.adapters import Adapter
from peftclip.backbone import FrozenClip
from peftclip.classifier import PeftClipClassifier


class FullFineTuning(Adapter):
    """Makes every CLIP weight trainable except ``logit_scale`` (ZSCL's ``--train-mode whole``).

    Not a registered method: it is a continual run's default parameterization (an empty
    ``adapters`` list). Both towers count as adapted, so class text features are recomputed
    with gradients, never served from the frozen-feature cache.
    """

    name: ClassVar[str] = "full_fine_tuning"
    adapted_towers: ClassVar[frozenset[str]] = frozenset({"vision", "text"})

    def attach(self, backbone: FrozenClip) -> None:
        backbone.requires_grad_(True)
        backbone.model.logit_scale.requires_grad_(False)


class ContinualModel(nn.Module):
    """A CLIP and its trainable parameterization, as a continual strategy sees it.

    Args:
        backbone: The CLIP (its weights train under full fine-tuning).
        adapters: The trainable methods; empty: full fine-tuning of both towers.
    """

    def __init__(self, backbone: FrozenClip, adapters: Sequence[Adapter] = ()) -> None:
        super().__init__()
        self.full_fine_tuning = not adapters
        parts = list(adapters) or [FullFineTuning()]
        self.classifier = PeftClipClassifier(backbone, parts)

    @property
    def backbone(self) -> FrozenClip:
        return self.classifier.backbone

    @property
    def adapters(self) -> nn.ModuleList:
        return self.classifier.adapters

    def trainable(self) -> dict[str, nn.Parameter]:
        """The parameters that train, by name (what WiSE-FT and ZSCL average)."""
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def trainable_count(self) -> int:
        return sum(p.numel() for p in self.trainable().values())

    def deployed_count(self) -> int:
        """Parameters of the model as deployed: CLIP plus whatever adapters add."""
        return sum(p.numel() for p in self.parameters())

    def state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps: CLIP's weights (full fine-tuning) or the adapters' state."""
        part = self.backbone if self.full_fine_tuning else self.adapters
        return {key: value.detach().clone() for key, value in part.state_dict().items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        part = self.backbone if self.full_fine_tuning else self.adapters
        part.load_state_dict(state)

    def frozen_copy(self) -> ContinualModel:
        """A copy with nothing trainable, in eval mode: a teacher."""
        teacher = copy.deepcopy(self)
        teacher.requires_grad_(False)
        return teacher.eval()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalized image features of the composition (prompts included)."""
        prompts = self.classifier.prompts()
        features = self.backbone.encode_image(images, prompts.vision_input, prompts.vision_deep)
        return nn.functional.normalize(features.float(), dim=-1)

    def encode_tokens(self, tokens: torch.Tensor, chunk_size: int = 256) -> torch.Tensor:
        """Normalized text features of tokenized sentences (the plain, prompt-free path)."""
        features = [
            self.backbone.encode_text_tokens(tokens[start : start + chunk_size])
            for start in range(0, len(tokens), chunk_size)
        ]
        return nn.functional.normalize(torch.cat(features).float(), dim=-1)
