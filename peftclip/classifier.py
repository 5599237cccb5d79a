"""Frozen backbone + adapter set → logits over the prompts of a class set (no Lightning)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from peftclip.adapters import Adapter, Prompts, TextInput, check_composition
from peftclip.adapters.base import HeadInput, implements
from peftclip.adapters.weight_space import one_weight_per_step
from peftclip.backbone import (
    DeepPrompts,
    FrozenClip,
    TextFeatureCache,
    template_head,
    zero_shot_head,
)
from peftclip.backbone.shared_prefix import encode_text_shared_prefix, shareable_prefix
from peftclip.data.templates import resolve_templates
from peftclip.errors import PeftClipError


class PeftClipClassifier(nn.Module):
    """Classifies images against class-name prompts with a frozen CLIP and its adapters.

    Without adapters this is zero-shot CLIP with a template ensemble (docs/methods/index.md).

    Args:
        backbone: The frozen CLIP.
        adapters: Methods to compose; at most one may own each exclusive extension point.
        templates: Templates for classes whose text is not built by an adapter.
        text_chunk_size: Prompts encoded per text-encoder call when building a frozen head.
        text_cache: Cache of frozen text features (in memory and optionally on disk).
        logit_scale: A fixed temperature of the cosine head instead of the checkpoint's
            ``exp(logit_scale)`` (the official CLIP-SVD code multiplies by 100).
        share_text_prefix: Encode the prompt start that all classes share once
            (:mod:`peftclip.backbone.shared_prefix`; exact). ``False`` forces the plain path,
            for debugging.
        text_grad_chunk_size: While gradients flow, encode adapter-built class prompts this
            many classes at a time (of every image, for image-conditioned prompts), each chunk
            under activation checkpointing: the text tower then holds the activations of one
            chunk instead of all classes, for one extra text forward per step; loss and
            gradients are the same (docs/performance.md#many-classes). ``None``: all classes
            in one call (fastest).
    """

    def __init__(
        self,
        backbone: FrozenClip,
        adapters: Sequence[Adapter] = (),
        templates: str | Sequence[str] = "a photo of a {}.",
        text_chunk_size: int = 256,
        text_cache: TextFeatureCache | None = None,
        logit_scale: float | None = None,
        share_text_prefix: bool = True,
        text_grad_chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        check_composition(adapters)
        self.backbone = backbone
        self.adapters = nn.ModuleList(adapters)
        self.templates = resolve_templates(templates)
        self.text_chunk_size = text_chunk_size
        self.text_cache = text_cache if text_cache is not None else TextFeatureCache()
        self.fixed_logit_scale = logit_scale
        self.share_text_prefix = share_text_prefix
        if text_grad_chunk_size is not None and text_grad_chunk_size < 1:
            raise PeftClipError(
                f"text_grad_chunk_size must be a positive number of classes or null (no "
                f"chunking); got {text_grad_chunk_size}."
            )
        self.text_grad_chunk_size = text_grad_chunk_size
        self._eval_head: tuple[tuple, torch.Tensor] | None = None
        for adapter in self.adapters:
            adapter.attach(backbone)

    def _owner(self, point: str) -> Adapter | None:
        for adapter in self.adapters:
            if implements(adapter, point):
                return adapter
        return None

    @property
    def text_tower_adapted(self) -> bool:
        """Whether a weight-space adapter changes the text encoder (no frozen-feature cache)."""
        return any("text" in getattr(a, "adapted_towers", ()) for a in self.adapters)

    @property
    def image_tower_frozen(self) -> bool:
        """Whether image features depend on the images and the frozen weights only: no adapter
        prompts the image tower or changes its weights (their features can be cached)."""
        if any("vision" in getattr(a, "adapted_towers", ()) for a in self.adapters):
            return False
        prompts = self.prompts()
        return prompts.vision_input is None and prompts.vision_deep is None

    @property
    def image_conditioned(self) -> bool:
        owner = self._owner("text_input")
        return owner is not None and owner.image_conditioned

    @property
    def logit_scale(self) -> torch.Tensor:
        scale = self.backbone.logit_scale
        if self.fixed_logit_scale is None:
            return scale
        return torch.full_like(scale, self.fixed_logit_scale)

    def prompts(self) -> Prompts:
        owner = self._owner("prompts")
        prompts = owner.prompts(self.backbone) if owner is not None else None
        return prompts if prompts is not None else Prompts()

    def _state_version(self) -> tuple:
        """Changes whenever a tensor that shapes the text features may have changed.

        In-place updates (optimizer steps, ``load_state_dict``, merging into the backbone's
        weights) bump a tensor's version counter; replaced tensors change identity. So a cached
        head can never be served after any of them.
        """
        return tuple((id(t), t._version) for t in (*self.parameters(), *self.buffers()))

    def text_features(
        self,
        classnames: Sequence[str],
        prompts: Prompts | None = None,
        image_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Class text features: ``(classes, d)``, or ``(batch, classes, d)`` if image-conditioned.

        Outside training, features that do not depend on the images are computed once per
        class set and reused while no parameter or buffer changes (anchors recompute them for
        every test batch; the values are identical).
        """
        cacheable = not self.training and not self.image_conditioned
        key = (tuple(classnames), tuple(self.templates), self._state_version()) if cacheable else ()
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
                    self.backbone,
                    classnames,
                    self.templates,
                    self.text_chunk_size,
                    self.share_text_prefix,
                )
            else:
                features = self.frozen_head(classnames)
        else:
            features = self._encode_text_input(text_input, prompts)
        if cacheable:
            self._eval_head = (key, features)
        return features

    def frozen_head(
        self, classnames: Sequence[str], templates: str | Sequence[str] | None = None
    ) -> torch.Tensor:
        """Normalized zero-shot text features of the frozen CLIP, cached per (class set,
        templates); ``templates`` defaults to the classifier's."""
        if self.text_tower_adapted:
            raise PeftClipError(
                "the frozen CLIP's text features are not available while a weight-space adapter "
                "changes the text tower; adapt the vision tower only (towers: vision)."
            )
        templates = self.templates if templates is None else resolve_templates(templates)
        return zero_shot_head(
            self.backbone,
            classnames,
            templates,
            self.text_chunk_size,
            self.text_cache,
            self.share_text_prefix,
        )

    def _encode_text_input(self, text_input: TextInput, prompts: Prompts) -> torch.Tensor:
        embeddings, pool_index = text_input.embeddings, text_input.pool_index
        shared = self.share_text_prefix and shareable_prefix(
            self.backbone, text_input.shared_prefix, pool_index, prompts.text_deep
        )
        # One group of classes, or one per image for image-conditioned prompts.
        groups = embeddings if embeddings.dim() == 4 else embeddings.unsqueeze(0)
        chunk, classes = self.text_grad_chunk_size, groups.shape[1]
        if chunk is None or chunk >= classes or not torch.is_grad_enabled():
            features = self._encode_groups(groups, pool_index, shared, prompts.text_deep)
        else:
            # Autograd keeps each chunk's inputs and features only and recomputes its blocks in
            # the backward pass, so peak activation memory follows the chunk, not the classes.
            features = torch.cat(
                [
                    checkpoint(
                        self._encode_groups,
                        groups[:, start : start + chunk],
                        pool_index[start : start + chunk],
                        shared,
                        prompts.text_deep,
                        use_reentrant=False,
                    )
                    for start in range(0, classes, chunk)
                ],
                dim=1,
            )
        return features if embeddings.dim() == 4 else features[0]

    def _encode_groups(
        self,
        groups: torch.Tensor,
        pool_index: torch.Tensor,
        shared: int,
        deep_prompts: DeepPrompts | None,
    ) -> torch.Tensor:
        """Features ``(groups, classes, d)`` of prompt groups ``(groups, classes, L, width)``."""
        if shared:
            return encode_text_shared_prefix(
                self.backbone, groups, pool_index, shared, deep_prompts
            )
        # Image-conditioned prompts: one batched call over all batch × classes sequences instead
        # of the anchors' per-image loop (same math).
        count, classes = groups.shape[:2]
        flat = self.backbone.encode_text(
            groups.flatten(0, 1), pool_index.repeat(count), deep_prompts
        )
        return flat.view(count, classes, -1)

    def head(self, inputs: HeadInput) -> torch.Tensor:
        """The head's logits: CLIP's scaled cosine (or an adapter's own head), plus any
        adapter's extra logits."""
        owner = self._owner("head")
        if owner is not None:
            logits = owner.head(inputs)
        else:
            logits = self.backbone.logits(
                inputs.image_features, inputs.text_features, inputs.logit_scale
            )
        for adapter in self.adapters:
            extra = adapter.extra_logits(inputs)
            if extra is not None:
                logits = logits + extra
        return logits

    def forward(
        self,
        images: torch.Tensor | None,
        classnames: Sequence[str],
        image_features: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Returns ``logits`` ``(batch, classes)`` and the image and text features.

        ``image_features`` (raw, of a frozen and unprompted tower: the image-feature cache)
        replace the image tower's forward; ``images`` is then ``None``. Each adapted weight is
        materialized once for the whole forward (:func:`one_weight_per_step`).
        """
        with one_weight_per_step(self):
            return self._forward(images, classnames, image_features)

    def _forward(
        self,
        images: torch.Tensor | None,
        classnames: Sequence[str],
        image_features: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        prompts = self.prompts()
        if image_features is None:
            image_features = self.backbone.encode_image(
                images, prompts.vision_input, prompts.vision_deep
            )
        elif prompts.vision_input is not None or prompts.vision_deep is not None:
            raise PeftClipError(
                "precomputed image features were given to a composition that prompts the image "
                "tower; its features must come from the prompted tower (pass the images)."
            )
        text_features = self.text_features(classnames, prompts, image_features)
        inputs = HeadInput(image_features, text_features, self.logit_scale, classnames)
        logits = self.head(inputs)
        return {"logits": logits, "image_features": image_features, "text_features": text_features}

    def begin_task(self, task: int) -> None:
        """Tells every adapter that task ``task`` of a continual stream starts."""
        for adapter in self.adapters:
            adapter.begin_task(task)

    def end_task(self, task: int) -> None:
        """Tells every adapter that task ``task`` of a continual stream is trained."""
        for adapter in self.adapters:
            adapter.end_task(task)
