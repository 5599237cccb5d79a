"""Class-name prompts, template ensembles and the cache of frozen text features."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from peftclip.backbone.frozen_clip import FrozenClip
from peftclip.backbone.templates import TEMPLATE_SETS
from peftclip.errors import PeftClipError


def resolve_templates(templates: str | Sequence[str]) -> list[str]:
    """Turns a template spec into a list of ``{}`` templates.

    Args:
        templates: A named set (``imagenet80``, ``imagenet_select``, ``coop:<dataset>``), one
            template string, or a list of template strings.
    """
    if isinstance(templates, str):
        templates = TEMPLATE_SETS.get(templates, (templates,))
    resolved = list(templates)
    if not resolved:
        raise PeftClipError(
            "the template list is empty; give at least one template like 'a photo of a {}.'"
        )
    for template in resolved:
        if template.count("{}") != 1:
            raise PeftClipError(
                f"template {template!r} must contain exactly one '{{}}' placeholder for the class "
                f"name, or be one of the named sets: {', '.join(sorted(TEMPLATE_SETS))}."
            )
    return resolved


def class_prompts(classnames: Sequence[str], template: str) -> list[str]:
    """One prompt per class; underscores in class names become spaces (spec §1.2)."""
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
            self.directory.mkdir(parents=True, exist_ok=True)
            partial = self.directory / f"{key}.pt.partial"
            torch.save(features.cpu(), partial)
            partial.replace(self.directory / f"{key}.pt")  # atomic: no torn file after a crash


def template_head(
    backbone: FrozenClip,
    classnames: Sequence[str],
    templates: str | Sequence[str],
    chunk_size: int = 256,
) -> torch.Tensor:
    """Normalized class text features ``(classes, embed_dim)`` from a template ensemble.

    Per class: mean of the L2-normalized features over templates, re-normalized (spec §2).
    Prompts are encoded ``chunk_size`` at a time so 1000 classes × 80 templates fit in memory.
    Differentiable: weight-space adapters on the text tower train through it.
    """
    templates = resolve_templates(templates)
    total = None
    for template in templates:
        prompts = class_prompts(classnames, template)
        features = torch.cat(
            [
                F.normalize(
                    backbone.encode_text_tokens(backbone.tokenize(prompts[i : i + chunk_size])),
                    dim=-1,
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
    templates: str | Sequence[str],
    chunk_size: int = 256,
    cache: TextFeatureCache | None = None,
) -> torch.Tensor:
    """:func:`template_head` of the frozen CLIP, cached by (backbone, templates, class names)."""
    templates = resolve_templates(templates)
    key = TextFeatureCache.key(backbone, templates, classnames) if cache is not None else None
    if cache is not None and (hit := cache.get(key)) is not None:
        return hit.to(backbone.model.logit_scale.device)
    head = template_head(backbone, classnames, templates, chunk_size)
    if cache is not None:
        cache.put(key, head)
    return head
