"""Tip-Adapter and Tip-Adapter-F: a key-value cache of the few-shot images added to zero-shot
CLIP (docs/methods/tip_adapter.md).

Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification" (ECCV
2022), code gaopengcuhk/Tip-Adapter. Keys are the normalised means of the raw image features of
every training image over the augmented views, values their one-hot labels; the cache adds
``α · exp(−β (1 − f Kᵀ)) L`` to the zero-shot logits. (α, β) are searched on a selection split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from peftclip.adapters.base import Adapter, HeadInput, SelectionSet, TrainingFeatures
from peftclip.adapters.registry import register_adapter
from peftclip.adapters.selection import (
    SELECTION_RULE,
    SelectionSplit,
    check_selection_split,
    selection_set,
)
from peftclip.errors import PeftClipError


def search_grid(scale: float, steps: int) -> list[float]:
    """``0.1 + i · (scale − 0.1) / steps`` for i = 0 … steps − 1 (``search_hp``: endpoint out)."""
    return [0.1 + i * (scale - 0.1) / steps for i in range(steps)]


def cache_affinity(features: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Cosine affinity of normalised features to the keys, ``(n, keys)``."""
    return F.normalize(features.float(), dim=-1) @ keys.T


def cache_logits(affinity: torch.Tensor, values: torch.Tensor, alpha, beta) -> torch.Tensor:
    """``α · exp(−β (1 − A)) L``."""
    return alpha * torch.exp(-beta * (1 - affinity)) @ values


class TipAdapter(Adapter):
    """Training-free Tip-Adapter: a cache model of the few-shot training set.

    Args:
        views: Augmented passes whose raw features are averaged into each key (Tip: 10).
        alpha: The residual ratio α used without search (and by Tip-Adapter-F's training).
        beta: The sharpness β used without search (and by Tip-Adapter-F's training).
        search_scale: ``[s_β, s_α]``, the ends of the search grid (per dataset in the anchor's
            configs/*.yaml; the default is ImageNet's).
        search_steps: ``[n_β, n_α]``, grid points of β (outer loop) and α (inner loop).
        search: Search (α, β) on the selection split (false: keep ``alpha`` and ``beta``).
        selection_split: ``fewshot_val`` (default), or the anchor's ``full_val`` / ``test``
            (its ImageNet rule), which need ``faithful``.
        faithful: Allows the anchor's selection splits.
    """

    clip_dtype_tensors = ()
    #: Whether the keys are trained (Tip-Adapter-F).
    trained_keys = False

    def __init__(
        self,
        views: int = 10,
        alpha: float = 1.0,
        beta: float = 1.0,
        search_scale: Sequence[float] = (7.0, 3.0),
        search_steps: Sequence[int] = (200, 20),
        search: bool = True,
        selection_split: SelectionSplit = "fewshot_val",
        faithful: bool = False,
    ) -> None:
        super().__init__()
        check_selection_split(self.name or "tip_adapter", selection_split, faithful)
        self.fit_views = views
        self.initial = (float(alpha), float(beta))
        self.search_scale = tuple(search_scale)
        self.search_steps = tuple(search_steps)
        self.search = search
        self.selection_split = selection_split
        self.selection_rule = SELECTION_RULE[selection_split] if search else "last"
        self.classnames: list[str] = []
        if self.trained_keys:
            self.keys = nn.Parameter(torch.empty(0))
        else:
            self.register_fitted("keys")
        self.register_fitted("values")
        self.register_fitted("alpha_beta")

    def get_extra_state(self) -> dict:
        return {"classnames": list(self.classnames)}

    def set_extra_state(self, state: dict) -> None:
        self.classnames = list(state["classnames"])

    def fit_from_data(self, data: TrainingFeatures) -> None:
        # Mean of the raw features over the views, then normalised (build_cache_model).
        keys = F.normalize(data.features.float().mean(0), dim=-1)
        if self.trained_keys:
            # The same Parameter object (the optimizer already holds it), now at the data's shape.
            self.keys.data = keys
        else:
            self.keys = keys
        self.values = F.one_hot(data.labels, len(data.classnames)).float()
        self.classnames = list(data.classnames)
        self.alpha_beta = torch.tensor(self.initial, device=keys.device)
        if self.search and not self.trained_keys:
            self.alpha_beta = self._searched(selection_set(data, self.selection_split, self.name))

    def _searched(self, selection: SelectionSet) -> torch.Tensor:
        """The first strictly best (α, β) of the grid, β outer, α inner (``search_hp``)."""
        zero_shot = selection.zero_shot_logits()
        with torch.no_grad():
            affinity = cache_affinity(selection.features, self.keys)
            best, best_correct = self.initial, 0
            betas = search_grid(self.search_scale[0], self.search_steps[0])
            alphas = search_grid(self.search_scale[1], self.search_steps[1])
            alpha_column = torch.tensor(alphas, device=affinity.device)[:, None, None]
            key_labels = self.values.argmax(dim=1)
            empty = torch.zeros(len(affinity), self.values.shape[1], device=affinity.device)
            for beta in betas:
                # φ(A) L with one-hot L: a sum of φ's columns per class (no NK × C product).
                cache = empty.index_add(1, key_labels, torch.exp(-beta * (1 - affinity)))
                # Every α of the inner loop at once: (alphas, images, classes).
                predicted = (zero_shot + alpha_column * cache).argmax(dim=-1)
                correct = (predicted == selection.labels).sum(dim=-1)
                top = int(correct.max())
                if top > best_correct:  # strictly better; the first α of the row's maximum
                    best, best_correct = (alphas[int(correct.argmax())], beta), top
        return torch.tensor(best, device=self.keys.device)

    def extra_logits(self, inputs: HeadInput) -> torch.Tensor:
        alpha, beta = self.alpha_beta[0], self.alpha_beta[1]
        affinity = cache_affinity(inputs.image_features, self.keys)
        return cache_logits(affinity, self._values_for(inputs.classnames), alpha, beta)

    def _values_for(self, classnames: Sequence[str]) -> torch.Tensor:
        """The one-hot values, or their columns of a subset of the fitted classes."""
        names = list(classnames)
        if names == self.classnames:
            return self.values
        index = {name: i for i, name in enumerate(self.classnames)}
        unknown = [name for name in names if name not in index]
        if unknown:
            raise PeftClipError(
                f"{self.name}'s cache holds {len(self.classnames)} classes, not "
                f"{', '.join(unknown[:3])}, ...; a cache model scores only the classes of its "
                "training images (fit it on these classes)."
            )
        return self.values[:, [index[name] for name in names]]


class TipAdapterF(TipAdapter):
    """Tip-Adapter-F: the cache keys are fine-tuned (NK·d trainable numbers), starting from the
    training-free cache; trained with the initial (α, β), then (α, β) searched on the selection
    split with the last keys (the anchor picks its epoch on test: docs/methods/tip_adapter.md).

    Args: as :class:`TipAdapter` (the anchor's ImageNet init α = 1.17, β = 1).
    """

    trained_keys = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        saved = state_dict.get(prefix + "keys")
        if saved is not None and saved.shape != self.keys.shape:
            self.keys.data = torch.empty_like(saved, device=self.keys.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def after_training(self, selection: Callable[[str], SelectionSet]) -> None:
        if self.search:
            self.alpha_beta = self._searched(selection(self.selection_split))


register_adapter("tip_adapter", TipAdapter)
register_adapter("tip_adapter_f", TipAdapterF)
