"""GDA: a training-free Gaussian discriminant head added to zero-shot CLIP (docs/methods/gda.md).

Wang et al., "A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation" (ICLR 2024),
code mrflogs/ICLR24. Class means and a shared precision are estimated from the frozen,
L2-normalised features of every augmented view of the few-shot images; the head
``W_k = P μ_k``, ``b_k = log(1/K) − ½ μ_kᵀ P μ_k`` is added to the zero-shot logits with a
weight α searched on a selection split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from peftclip.adapters.base import Adapter, HeadInput, TrainingFeatures
from peftclip.adapters.registry import register_adapter
from peftclip.adapters.selection import (
    SELECTION_RULE,
    SelectionSplit,
    accuracy,
    check_selection_split,
    first_best,
    selection_set,
)
from peftclip.errors import PeftClipError

#: GDA's α grid (``main_few_shots.py``), searched in this order.
ALPHAS = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)


def shrunk_precision(features: torch.Tensor, labels: torch.Tensor, classes: int):
    """Class means and the few-shot estimator's shared precision ``d · (S + tr(S)/(N−1)·I)⁻¹``
    (S: scatter of the class-centred features), as ``main_few_shots.py`` computes it."""
    means = class_means(features, labels, classes)
    centred = features - means[labels]
    scatter = centred.T @ centred
    samples, dim = features.shape
    shrinkage = torch.trace(scatter) / (samples - 1)
    eye = torch.eye(dim, dtype=features.dtype, device=features.device)
    return means, dim * torch.linalg.pinv(scatter + shrinkage * eye, hermitian=True)


def pooled_class_precision(features: torch.Tensor, labels: torch.Tensor, classes: int):
    """Class means and the base-to-new estimator's precision ``pinv(mean_k Σ̂_k)`` (per-class
    unbiased covariances averaged, no shrinkage; ``main_base2new.py``)."""
    means = class_means(features, labels, classes)
    covariances = []
    for label in range(classes):
        own = features[labels == label]
        centred = own - means[label]
        covariances.append(centred.T @ centred / (len(own) - 1))
    return means, torch.linalg.pinv(torch.stack(covariances).mean(0), hermitian=True)


def class_means(features: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    sums = torch.zeros(classes, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=classes).to(features.dtype)
    return sums / counts[:, None]


def linear_head(means: torch.Tensor, precision: torch.Tensor):
    """``W_k = P μ_k`` and ``b_k = log(1/K) − ½ μ_kᵀ P μ_k`` (uniform priors)."""
    weight = means @ precision  # P is symmetric: (P μ_k)ᵀ = μ_kᵀ P
    bias = math.log(1 / len(means)) - 0.5 * (weight * means).sum(-1)
    return weight, bias


def synthesized_new_head(
    train_features: torch.Tensor, text: torch.Tensor, neighbours: int, text_copies: int
):
    """The base-to-new variant's head of unseen classes (``main_base2new.py``).

    For each new class c with zero-shot weight w_c: T_c = the ``neighbours`` training features
    (base classes, every view) with the largest w_c · x; mean (Σ T_c + copies · w_c) / (k +
    copies); a per-class shrunk precision centred at w_c, ``d · pinv((k−1)Σ_c + tr(Σ_c)·I)``;
    the precisions averaged over the new classes.
    """
    dim = text.shape[1]
    # The anchor always has ≥ 160 training features; a smaller set gives all it has.
    neighbours = min(neighbours, len(train_features))
    nearest = (text @ train_features.T).topk(neighbours, dim=-1).indices
    chosen = train_features[nearest]  # (classes, k, d)
    means = (chosen.sum(1) + text_copies * text) / (neighbours + text_copies)
    centred = chosen - text[:, None, :]  # U_c, so that (k−1)Σ_c = U_cᵀU_c
    traces = centred.square().sum((1, 2)) / (neighbours - 1)  # tr(Σ_c) = λ_c
    # (U_cᵀU_c + λ_c I)⁻¹ = (I − U_cᵀ (λ_c I + U_c U_cᵀ)⁻¹ U_c) / λ_c (Woodbury): a k × k solve
    # per class instead of a d × d inverse (equal to the anchor's pinv: the matrix is positive
    # definite).
    eye = torch.eye(neighbours, dtype=text.dtype, device=text.device)
    small = centred @ centred.transpose(1, 2) + traces[:, None, None] * eye
    solved = torch.linalg.solve(small, centred)  # (λ_c I + U_c U_cᵀ)⁻¹ U_c
    low_rank = torch.einsum("c,ckd,cke->de", 1 / traces, centred, solved)
    identity = torch.eye(dim, dtype=text.dtype, device=text.device)
    precision = dim * ((1 / traces).sum() * identity - low_rank) / len(text)
    return linear_head(means, precision)


class GDA(Adapter):
    """Gaussian discriminant analysis head on frozen image features, plus zero-shot CLIP.

    Logits ``logit_scale · cos(x, w_k) + α · (xᵀ W_k + b_k)`` with x the L2-normalised image
    feature. Nothing is trained: ``peftclip fit`` fits the head from the training features and
    searches α; the head (513·C numbers for d = 512) is saved in the checkpoint.

    Args:
        estimator: ``fewshot`` (few-shot and domain generalization: one shrunk precision over
            all centred views) or ``base2new`` (per-class covariances averaged; the head of
            classes absent from training is synthesised from the training features and their
            text, docs/methods/gda.md#base-to-new).
        views: Augmented passes over the training images; every view is a sample (GDA: 10).
        alphas: The α grid, searched in order; the first strictly best α wins.
        selection_split: Where α is searched: ``fewshot_val`` (default), or the anchor's
            ``full_val`` (the full val split) / ``test`` (its ImageNet rule), which need
            ``faithful``.
        faithful: Allows the anchor's selection splits.
        neighbours: base2new: training features nearest to a new class's text (GDA: 64).
        text_copies: base2new: times the text weight joins the new-class mean (GDA: 16).
    """

    clip_dtype_tensors = ()

    def __init__(
        self,
        estimator: Literal["fewshot", "base2new"] = "fewshot",
        views: int = 10,
        alphas: Sequence[float] = ALPHAS,
        selection_split: SelectionSplit = "fewshot_val",
        faithful: bool = False,
        neighbours: int = 64,
        text_copies: int = 16,
    ) -> None:
        super().__init__()
        check_selection_split("gda", selection_split, faithful)
        if estimator not in ("fewshot", "base2new"):
            raise PeftClipError(f"gda: estimator is fewshot or base2new; got '{estimator}'.")
        self.estimator = estimator
        self.fit_views = views
        self.alphas = tuple(alphas)
        self.selection_split = selection_split
        self.selection_rule = SELECTION_RULE[selection_split]
        self.neighbours = neighbours
        self.text_copies = text_copies
        self.classnames: list[str] = []
        self.register_fitted("weight")
        self.register_fitted("bias")
        self.register_fitted("alpha")
        if estimator == "base2new":
            # The new-class head is built from these when the head meets new class names.
            self.register_fitted("train_features")
        self._new_heads: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    # The fitted class names travel with the tensors (a head is only valid for its classes).
    def get_extra_state(self) -> dict:
        return {"classnames": list(self.classnames)}

    def set_extra_state(self, state: dict) -> None:
        self.classnames = list(state["classnames"])
        self._new_heads = {}

    def fit_from_data(self, data: TrainingFeatures) -> None:
        views, images, dim = data.features.shape
        features = F.normalize(data.features.float(), dim=-1).reshape(views * images, dim)
        labels = data.labels.repeat(views)
        classes = len(data.classnames)
        estimate = shrunk_precision if self.estimator == "fewshot" else pooled_class_precision
        means, precision = estimate(features, labels, classes)
        self.weight, self.bias = linear_head(means, precision)
        self.classnames = list(data.classnames)
        self._new_heads = {}
        if self.estimator == "base2new":
            self.train_features = features
        selection = selection_set(data, self.selection_split, "gda")
        zero_shot = selection.zero_shot_logits()
        image = F.normalize(selection.features.float(), dim=-1)
        gda = image @ self.weight.T + self.bias
        alpha, _ = first_best(
            self.alphas, lambda a: accuracy(zero_shot + a * gda, selection.labels), 0.1
        )
        self.alpha = torch.tensor([alpha], device=features.device)

    def head(self, inputs: HeadInput) -> torch.Tensor:
        weight, bias = self._head_for(inputs)
        image = F.normalize(inputs.image_features.float(), dim=-1)
        text = F.normalize(inputs.text_features.float(), dim=-1)
        zero_shot = inputs.logit_scale * (image @ text.T)  # as FrozenClip.logits
        return zero_shot + self.alpha * (image @ weight.T + bias)

    def _head_for(self, inputs: HeadInput) -> tuple[torch.Tensor, torch.Tensor]:
        """The fitted head, its columns of a subset of the classes (a 200-class variant of the
        1000-class source), or for base2new a synthesised head of unseen classes."""
        names = list(inputs.classnames)
        if names == self.classnames:
            return self.weight, self.bias
        index = {name: i for i, name in enumerate(self.classnames)}
        if all(name in index for name in names):
            columns = torch.tensor([index[n] for n in names], device=self.weight.device)
            return self.weight[columns], self.bias[columns]
        if self.estimator != "base2new":
            unknown = [name for name in names if name not in index][:3]
            raise PeftClipError(
                f"gda was fitted on {len(self.classnames)} classes and cannot score classes it "
                f"has not seen ({', '.join(unknown)}, ...); fit it on them, or use estimator: "
                "base2new, which synthesises the head of unseen classes from their text."
            )
        key = tuple(names)
        if key not in self._new_heads:
            text = F.normalize(inputs.text_features.float().detach(), dim=-1)
            self._new_heads[key] = synthesized_new_head(
                self.train_features, text, self.neighbours, self.text_copies
            )
        return self._new_heads[key]


register_adapter("gda", GDA)
