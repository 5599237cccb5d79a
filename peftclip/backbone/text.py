"""Class-name prompts, template ensembles and the cache of frozen text features."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from peftclip.atomic_files import atomic_path
from peftclip.backbone import shared_prefix
from peftclip.backbone.frozen_clip import FrozenClip
from peftclip.distributed import rank_zero_first
from peftclip.errors import PeftClipError


def _checked_templates(templates: Sequence[str]) -> list[str]:
    """``templates`` as a list, after checking that each has exactly one ``{}`` placeholder.

    The backbone takes templates already resolved; named sets (``imagenet80``,
    ``coop:<dataset>``) are resolved by :func:`peftclip.data.templates.resolve_templates`.
    """
    if isinstance(templates, str):
        raise PeftClipError(
            f"expected a list of templates, got the string {templates!r}; pass [{templates!r}], "
            "or resolve a named set first with peftclip.data.resolve_templates."
        )
    resolved = list(templates)
    bad = [template for template in resolved if template.count("{}") != 1]
    if not resolved or bad:
        raise PeftClipError(
            f"templates must be one or more strings with exactly one '{{}}' placeholder for the "
            f"class name; got {resolved}."
        )
    return resolved


def class_prompts(classnames: Sequence[str], template: str) -> list[str]:
    """One prompt per class; underscores in class names become spaces.

    See docs/datasets.md#class-names.
    """
    return [template.format(name.replace("_", " ")) for name in classnames]


class TextFeatureCache:
    """Frozen text features keyed by (backbone identity, templates, class names).

    Held in memory; with ``directory`` also written to disk so later runs skip the text encoder.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory else None
        self._memory: dict[str, torch.Tensor] = {}

    @staticmethod
    def key(backbone: FrozenClip, templates: Sequence[str], classnames: Sequence[str]) -> str:
        identity = backbone.identity.to_dict()
        if backbone.dtype != torch.float32:  # fp16 weights (anchor_fp16) give other features
            identity["dtype"] = str(backbone.dtype)
        payload = json.dumps([identity, list(templates), list(classnames)])
        return hashlib.sha256(payload.encode()).hexdigest()

    def get(self, key: str) -> torch.Tensor | None:
        if key in self._memory:
            return self._memory[key]
        path = self.directory / f"{key}.pt" if self.directory else None
        if path is not None and path.is_file():
            self._memory[key] = torch.load(path, map_location="cpu", weights_only=True)
            return self._memory[key]
        return None

    def put(self, key: str, features: torch.Tensor) -> None:
        self._memory[key] = features
        if self.directory is not None:
            with atomic_path(self.directory / f"{key}.pt") as partial:
                torch.save(features.cpu(), partial)

    def features(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The features of ``key``: from memory, from disk, or ``compute()``d and stored.

        Under DDP with a cache folder, rank 0 is the one writer: on a memory miss the other
        ranks wait for it, then read its file. The ranks ask for the same heads in the same
        order (DDP runs the same program), so their memory misses coincide.
        """
        if key in self._memory:
            return self._memory[key]
        with rank_zero_first(self.directory is not None):
            features = self.get(key)
            if features is None:
                features = compute()
                self.put(key, features)
        return features


def template_head(
    backbone: FrozenClip,
    classnames: Sequence[str],
    templates: Sequence[str],
    chunk_size: int = 256,
    share_prefix: bool = True,
) -> torch.Tensor:
    """Normalized class text features ``(classes, embed_dim)`` from a template ensemble.

    Per class: mean of the L2-normalized features over templates, re-normalized
    (docs/methods/index.md#notation-and-the-shared-forward).
    Prompts are encoded ``chunk_size`` at a time so 1000 classes × 80 templates fit in memory.
    Differentiable: weight-space adapters on the text tower train through it. With
    ``share_prefix`` the template words before the class name are encoded once per chunk
    (:mod:`peftclip.backbone.shared_prefix`, exact).
    """
    templates = _checked_templates(templates)
    encode = shared_prefix.encode_text_tokens if share_prefix else FrozenClip.encode_text_tokens
    total = None
    for template in templates:
        prompts = class_prompts(classnames, template)
        features = torch.cat(
            [
                F.normalize(
                    encode(backbone, backbone.tokenize(prompts[i : i + chunk_size])), dim=-1
                )
                for i in range(0, len(prompts), chunk_size)
            ]
        ).float()
        total = features if total is None else total + features
    return F.normalize(total / len(templates), dim=-1)


@torch.no_grad()
def zero_shot_head(
    backbone: FrozenClip,
    classnames: Sequence[str],
    templates: Sequence[str],
    chunk_size: int = 256,
    cache: TextFeatureCache | None = None,
    share_prefix: bool = True,
) -> torch.Tensor:
    """:func:`template_head` of the frozen CLIP, cached by (backbone, templates, class names)."""
    templates = _checked_templates(templates)

    def compute() -> torch.Tensor:
        return template_head(backbone, classnames, templates, chunk_size, share_prefix)

    if cache is None:
        return compute()
    key = TextFeatureCache.key(backbone, templates, classnames)
    return cache.features(key, compute).to(backbone.model.logit_scale.device)
