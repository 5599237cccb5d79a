"""Frozen backbone + adapter set → logits over the prompts of a class set (no Lightning)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from peftclip.adapters import Adapter, Prompts, TextInput, check_composition
from peftclip.backbone import FrozenClip, TextFeatureCache, template_head, zero_shot_head
from peftclip.data.templates import resolve_templates
from peftclip.errors import PeftClipError


class PeftClipClassifier(nn.Module):
    """Classifies images against class-name prompts with a frozen CLIP and its adapters.

    Without adapters this is zero-shot CLIP with a template ensemble (spec methods.md §2).

    Args:
        backbone: The frozen CLIP.
        adapters: Methods to compose; at most one may own each exclusive extension point.
        templates: Templates for classes whose text is not built by an adapter.
        text_chunk_size: Prompts encoded per text-encoder call when building a frozen head.
        text_cache: Cache of frozen text features (in memory and optionally on disk).
    """

    def __init__(
        self,
        backbone: FrozenClip,
        adapters: Sequence[Adapter] = (),
        templates: str | Sequence[str] = "a photo of a {}.",
        text_chunk_size: int = 256,
        text_cache: TextFeatureCache | None = None,
    ) -> None:
        super().__init__()
        check_composition(adapters)
        self.backbone = backbone
        self.adapters = nn.ModuleList(adapters)
        self.templates = resolve_templates(templates)
        self.text_chunk_size = text_chunk_size
        self.text_cache = text_cache if text_cache is not None else TextFeatureCache()
        self._eval_head: tuple[tuple, torch.Tensor] | None = None
        for adapter in self.adapters:
            adapter.attach(backbone)

    def _owner(self, point: str) -> Adapter | None:
        for adapter in self.adapters:
            if getattr(type(adapter), point) is not getattr(Adapter, point):
                return adapter
        return None

    @property
    def text_tower_adapted(self) -> bool:
        """Whether a weight-space adapter changes the text encoder (no frozen-feature cache)."""
        return any("text" in getattr(a, "adapted_towers", ()) for a in self.adapters)

    @property
    def image_conditioned(self) -> bool:
        owner = self._owner("text_input")
        return owner is not None and owner.image_conditioned

    def prompts(self) -> Prompts:
        owner = self._owner("prompts")
        prompts = owner.prompts(self.backbone) if owner is not None else None
        return prompts if prompts is not None else Prompts()

    def forget_text_features(self) -> None:
        """Drops the cached evaluation head (call when adapter parameters changed)."""
        self._eval_head = None

    def text_features(
        self,
        classnames: Sequence[str],
        prompts: Prompts | None = None,
        image_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Class text features: ``(classes, d)``, or ``(batch, classes, d)`` if image-conditioned.

        Outside training, features that do not depend on the images are computed once per
        class set and reused until :meth:`forget_text_features` (anchors recompute them for
        every test batch; the values are identical).
        """
        key = (tuple(classnames), tuple(self.templates))
        cacheable = not self.training and not self.image_conditioned
        device = self.backbone.model.logit_scale.device
        if cacheable and self._eval_head is not None and self._eval_head[0] == key:
            # The head is a plain tensor: after the module moves (Lightning's teardown puts it
            # back on the CPU) it follows lazily.
            self._eval_head = (key, self._eval_head[1].to(device))
            return self._eval_head[1]
        prompts = prompts if prompts is not None else self.prompts()
        owner = self._owner("text_input")
        text_input = owner.text_input(self.backbone, classnames, image_features) if owner else None
        if text_input is None:
            if prompts.text_deep is not None:
                raise PeftClipError(
                    "deep text prompts need an adapter that builds the text input (e.g. maple, "
                    "ivlp); this composition has deep text prompts but hand-crafted templates."
                )
            if self.text_tower_adapted:
                # Adapted text weights: recomputed (with gradients while training), never
                # served from the cache of frozen features.
                features = template_head(
                    self.backbone, classnames, self.templates, self.text_chunk_size
                )
            else:
                features = zero_shot_head(
                    self.backbone,
                    classnames,
                    self.templates,
                    self.text_chunk_size,
                    self.text_cache,
                )
        else:
            features = self._encode_text_input(text_input, prompts)
        if cacheable:
            self._eval_head = (key, features)
        return features

    def _encode_text_input(self, text_input: TextInput, prompts: Prompts) -> torch.Tensor:
        embeddings, pool_index = text_input.embeddings, text_input.pool_index
        if embeddings.dim() == 3:
            return self.backbone.encode_text(embeddings, pool_index, prompts.text_deep)
        # Image-conditioned prompts (batch, classes, L, width): one batched call over all
        # batch × classes sequences instead of the anchors' per-image loop (same math).
        batch, classes = embeddings.shape[:2]
        flat = self.backbone.encode_text(
            embeddings.flatten(0, 1), pool_index.repeat(batch), prompts.text_deep
        )
        return flat.view(batch, classes, -1)

    def forward(self, images: torch.Tensor, classnames: Sequence[str]) -> dict[str, torch.Tensor]:
        """Returns ``logits`` ``(batch, classes)`` and the image and text features."""
        prompts = self.prompts()
        image_features = self.backbone.encode_image(
            images, prompts.vision_input, prompts.vision_deep
        )
        text_features = self.text_features(classnames, prompts, image_features)
        logits = self.backbone.logits(image_features, text_features)
        return {"logits": logits, "image_features": image_features, "text_features": text_features}
