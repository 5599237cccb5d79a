"""Tip-Adapter and Tip-Adapter-F: a key-value cache of the few-shot images added to zero-shot
CLIP (docs/methods/tip_adapter.md).

Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification" (ECCV
2022), code gaopengcuhk/Tip-Adapter. Keys are the normalised means of the raw image features of
every training image over the augmented views, values their one-hot labels; the cache adds
``α · exp(−β (1 − f Kᵀ)) L`` to the zero-shot logits. (α, β) are searched on a selection split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from peftclip.adapters.base import Adapter, HeadInput, SelectionSet, TrainingFeatures
from peftclip.adapters.registry import register_adapter
from peftclip.adapters.selection import (
    SELECTION_RULE,
    SelectionSplit,
    accuracy,
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
    """``α · exp(−β (1 − A)) L`` (α applied after the product: images × classes numbers, not
    images × keys)."""
    return alpha * (torch.exp(-beta * (1 - affinity)) @ values)


def class_slots(key_labels: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys of each class side by side: ``slots[j, c]`` is the j-th key of class c, and
    ``mask[j, c]`` is 0 where class c has fewer than ``slots.shape[0]`` keys (a padded slot)."""
    counts = torch.bincount(key_labels, minlength=classes)
    order = torch.argsort(key_labels, stable=True)
    sorted_labels = key_labels[order]
    first = torch.cumsum(counts, 0) - counts  # where each class starts in ``order``
    position = torch.arange(len(order), device=order.device) - first[sorted_labels]
    depth = int(counts.max()) if len(order) else 0
    slots = torch.zeros(depth, classes, dtype=torch.long, device=order.device)
    mask = torch.zeros(depth, classes, device=order.device)
    slots[position, sorted_labels] = order
    mask[position, sorted_labels] = 1.0
    return slots, mask


def search_counts(
    selection: SelectionSet,
    keys: torch.Tensor,
    key_labels: torch.Tensor,
    betas: Sequence[float],
    alphas: Sequence[float],
    exact_every: int = 8,
    chunk_elements: int = 1 << 22,
) -> torch.Tensor:
    """Correct predictions of ``zero-shot + α · exp(−β (1 − A)) L`` on the selection set for
    every (β, α) of the grid, ``(len(betas), len(alphas))``.

    Exact to float rounding, and fast: the affinity and the zero-shot logits are computed once;
    along the arithmetic β grid ``exp(−β_{i+1} u) = exp(−β_i u) · exp(−Δβ u)`` (a product
    instead of an exponential; every ``exact_every``-th β is a fresh exponential, so rounding
    stays within a few float32 ulps, as the exponential's own); and an image's prediction is
    right exactly for the α inside an interval, ``max over rivals with a smaller cache score of
    −Δz/Δc < α < min over the others``, so each β costs O(images · classes), not
    O(alphas · images · classes). Images are processed in chunks of ``chunk_elements``
    affinities (memory stays bounded on a full val or test split).
    """
    classes = selection.text_features.shape[0]
    slots, mask = class_slots(key_labels, classes)
    mask = mask[:, None, :]  # (slots, 1, classes)
    grid = torch.tensor(list(alphas), device=keys.device)[:, None, None]
    step = betas[1] - betas[0] if len(betas) > 1 else 0.0
    counts = torch.zeros(len(betas), len(alphas), dtype=torch.long, device=keys.device)
    zero_shot_all = selection.zero_shot_logits()
    rows = max(1, chunk_elements // max(1, slots.numel()))
    for start in range(0, len(selection.labels), rows):
        image = F.normalize(selection.features[start : start + rows].float(), dim=-1)
        # (slots, images, classes): slot j of class c; contiguous over (images, classes).
        distance = (1 - image @ keys.T)[:, slots].permute(1, 0, 2).contiguous()
        labels = selection.labels[start : start + rows, None]
        zero_shot = zero_shot_all[start : start + rows]
        rival = torch.arange(classes, device=keys.device)
        margin = zero_shot.gather(1, labels) - zero_shot  # Δz: true class minus each rival
        # argmax takes the first maximum: a tie with a rival of larger index (and the true
        # class itself) is a win, counted as the smallest lead; a tie with a smaller one, a loss.
        tied_win = (margin == 0) & (rival >= labels)
        margin = torch.where(tied_win, torch.finfo(margin.dtype).tiny, margin)
        ratio = torch.exp(distance * -step)
        for first in range(0, len(betas), exact_every):
            block = range(first, min(first + exact_every, len(betas)))
            caches = torch.empty(len(block), *zero_shot.shape, device=keys.device)
            phi = torch.exp(distance * -betas[first]) * mask
            for offset in range(len(block)):
                if offset:
                    phi.mul_(ratio)
                torch.sum(phi, 0, out=caches[offset])
            # Right iff Δz + α Δc > 0 for every rival. Δc = 0 (caches are sums of exponentials,
            # so an exact tie is +0): −Δz/+0 is −inf (no bound) for a lead, +inf or NaN (never
            # right) for a loss.
            gain = caches.gather(2, labels.expand(len(block), -1, 1)) - caches  # Δc
            bound = -margin / gain
            lower = torch.where(gain >= 0, bound, -torch.inf).amax(-1)
            upper = torch.where(gain < 0, bound, torch.inf).amin(-1)
            right = (grid > lower) & (grid < upper)  # (alphas, block, images)
            counts[first : first + len(block)] += right.sum(-1).T
    return counts


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
        betas = search_grid(self.search_scale[0], self.search_steps[0])
        alphas = search_grid(self.search_scale[1], self.search_steps[1])
        with torch.no_grad():
            counts = search_counts(selection, self.keys, self.values.argmax(dim=1), betas, alphas)
        best = int(counts.argmax())  # the first maximum in (β, α) row-major order
        if counts.view(-1)[best] == 0:  # the anchor's loop starts from 0 correct
            return torch.tensor(self.initial, device=self.keys.device)
        beta, alpha = divmod(best, len(alphas))
        return torch.tensor((alphas[alpha], betas[beta]), device=self.keys.device)

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
    split with the last keys (docs/methods/tip_adapter.md). The other arguments are
    :class:`TipAdapter`'s (the anchor's ImageNet init is α = 1.17, β = 1).

    Args:
        tip_f_select: ``last`` (default): the last epoch's keys. ``max_test`` (needs
            ``faithful``): the anchor's reporting — after every epoch the test accuracy at the
            initial (α, β) is measured and the best epoch's keys are kept; after the search the
            model is whichever of (best keys, initial α, β) and (best keys, searched α, β)
            scores higher on test, i.e. the anchor's max(best epoch, searched) test accuracy.
            The record's ``selection_rule`` is then ``best_test``.
    """

    trained_keys = True

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
        tip_f_select: Literal["last", "max_test"] = "last",
    ) -> None:
        super().__init__(
            views, alpha, beta, search_scale, search_steps, search, selection_split, faithful
        )
        if tip_f_select not in ("last", "max_test"):
            raise PeftClipError(
                f"tip_adapter_f: tip_f_select is last or max_test; got '{tip_f_select}'."
            )
        if tip_f_select == "max_test" and not faithful:
            raise PeftClipError(
                "tip_adapter_f: tip_f_select: max_test picks the epoch and (α, β) on the test "
                "split, the anchor's reporting rule, not a clean protocol; set faithful: true to "
                "reproduce it (the record's selection_rule says best_test), or keep "
                "tip_f_select: last."
            )
        self.tip_f_select = tip_f_select
        if tip_f_select == "max_test":
            self.selection_rule = "best_test"
        #: max_test: (test accuracy, keys) of the best epoch so far (a fit's state, not saved).
        self._best_epoch: tuple[float, torch.Tensor] | None = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        saved = state_dict.get(prefix + "keys")
        if saved is not None and saved.shape != self.keys.shape:
            self.keys.data = torch.empty_like(saved, device=self.keys.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def after_epoch(self, selection: Callable[[str], SelectionSet]) -> None:
        if self.tip_f_select != "max_test":
            return
        score = self._accuracy(selection("test"), self.alpha_beta)
        if self._best_epoch is None or score > self._best_epoch[0]:  # the anchor's strict >
            self._best_epoch = (score, self.keys.detach().clone())

    def after_training(self, selection: Callable[[str], SelectionSet]) -> None:
        if self.tip_f_select == "max_test" and self._best_epoch is not None:
            best_score, keys = self._best_epoch
            self.keys.data = keys
            if self.search:
                searched = self._searched(selection(self.selection_split))
                if self._accuracy(selection("test"), searched) >= best_score:
                    self.alpha_beta = searched
            self._best_epoch = None
        elif self.search:
            self.alpha_beta = self._searched(selection(self.selection_split))

    @torch.no_grad()
    def _accuracy(self, selection: SelectionSet, alpha_beta: torch.Tensor) -> float:
        affinity = cache_affinity(selection.features, self.keys)
        cache = cache_logits(affinity, self.values, alpha_beta[0], alpha_beta[1])
        return accuracy(selection.zero_shot_logits() + cache, selection.labels)


register_adapter("tip_adapter", TipAdapter)
register_adapter("tip_adapter_f", TipAdapterF)
