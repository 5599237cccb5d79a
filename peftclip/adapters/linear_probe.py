"""Linear probes on frozen image features: CoOp's logistic regression and LP++
(docs/methods/linear_probe.md, docs/methods/lpp.md).

* ``linear_probe``: CoOp's ``lpclip`` — multinomial L2-regularised logistic regression on the
  un-normalised features (scikit-learn's ``LogisticRegression(solver="lbfgs")`` objective,
  solved here by L-BFGS in float64), its C found by the CLIP paper's coarse-then-bracket search.
* ``lpp``: LP++ (Huang et al., CVPR 2024, FereshteShakeri/FewShot-CLIP-Strong-Baseline) — a
  linear head plus class-wise multipliers of the zero-shot logits, full-batch with step sizes
  computed from the data, the iteration kept by its selection-split accuracy.
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
    selection_set,
)
from peftclip.errors import PeftClipError

#: The CLIP paper's coarse C grid (appendix A.3), in ``lpclip``'s order.
COARSE_C = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)


def logistic_regression(
    features: torch.Tensor,
    labels: torch.Tensor,
    classes: int,
    c: float,
    max_iter: int = 1000,
    tolerance: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The minimiser of ``C · Σ_i CE_i + ½ ‖W‖²`` (intercept not penalised): scikit-learn's
    multinomial ``LogisticRegression(C=c, tol=tolerance)``, by L-BFGS in float64; it stops when
    the largest gradient entry of ``mean CE + ‖W‖² / (2 C N)`` (scikit-learn's scaling) is below
    ``tolerance``. Returns ``(W, b)`` as float32.
    """
    x = features.double()
    samples = len(x)
    weight = torch.zeros(classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1,
        max_iter=max_iter,
        tolerance_grad=tolerance,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        # Divided by C·N: the same minimiser, on a scale the line search handles for any C.
        loss = F.cross_entropy(x @ weight.T + bias, labels) + (weight**2).sum() / (2 * c * samples)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    return weight.detach().float(), bias.detach().float()


def search_c(score, coarse: Sequence[float] = COARSE_C, rounds: int = 8) -> float:
    """``lpclip``'s C search: the first best C of the coarse grid, then ``rounds`` bracket
    halvings in log10 space from [C*/10, 10·C*]; the end chosen in the last round.

    Args:
        score: ``score(C)`` → selection accuracy of the model fitted with C.
    """
    scores = [score(c) for c in coarse]
    best = coarse[scores.index(max(scores))]
    left, right = math.log10(best) - 1, math.log10(best) + 1
    chosen = left
    for _ in range(rounds):
        middle = (left + right) / 2
        if score(10**left) < score(10**right):
            chosen, left = right, middle
        else:  # ties keep the left (stronger regularisation) end
            chosen, right = left, middle
    return 10**chosen


class LinearProbe(Adapter):
    """CoOp's linear probe: logistic regression on un-normalised frozen features.

    Its recipe extracts the training features with the evaluation transform
    (``data.train_transform: eval``). Fitted, not trained by gradient steps; the head ((d + 1)·C
    numbers) is saved in the checkpoint.

    Args:
        coarse_c: The coarse grid of the inverse regularisation strength C.
        search_rounds: Bracket rounds after the coarse grid (``lpclip``: 8; 0 keeps the coarse C).
        max_iter: L-BFGS iterations per fit (scikit-learn's ``max_iter``: 1000).
        selection_split: Where C is searched: ``fewshot_val`` (default; ``lpclip`` draws K val
            images per class, at most 4), or ``full_val`` / ``test``, which need ``faithful``.
        faithful: Allows the other selection splits.
    """

    clip_dtype_tensors = ()

    def __init__(
        self,
        coarse_c: Sequence[float] = COARSE_C,
        search_rounds: int = 8,
        max_iter: int = 1000,
        selection_split: SelectionSplit = "fewshot_val",
        faithful: bool = False,
    ) -> None:
        super().__init__()
        check_selection_split("linear_probe", selection_split, faithful)
        self.coarse_c = tuple(coarse_c)
        self.search_rounds = search_rounds
        self.max_iter = max_iter
        self.selection_split = selection_split
        self.selection_rule = SELECTION_RULE[selection_split]
        self.register_fitted("weight")
        self.register_fitted("bias")
        self.register_fitted("c")

    def fit_from_data(self, data: TrainingFeatures) -> None:
        features = data.features.float().flatten(0, 1).cpu()
        labels = data.labels.repeat(data.features.shape[0]).cpu()
        classes = len(data.classnames)
        selection = selection_set(data, self.selection_split, "linear_probe")
        val_features, val_labels = selection.features.float().cpu(), selection.labels.cpu()
        fits: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}

        def score(c: float) -> float:
            weight, bias = logistic_regression(features, labels, classes, c, self.max_iter)
            fits[c] = weight, bias
            return accuracy(val_features @ weight.T + bias, val_labels)

        c = search_c(score, self.coarse_c, self.search_rounds)
        device = data.features.device
        self.weight, self.bias = (tensor.to(device) for tensor in fits[c])
        self.c = torch.tensor([c], device=device)

    def head(self, inputs: HeadInput) -> torch.Tensor:
        _check_classes(self.weight, inputs, "linear_probe")
        return inputs.image_features.float() @ self.weight.T + self.bias


class LPPlusPlus(Adapter):
    """LP++: ``W f + b + α ⊙ (f · t)`` on L2-normalised features f and the zero-shot head t.

    Fitted from one augmented view (``fit_views = 1``) by 300 full-batch iterations inside
    ``peftclip fit`` (no Lightning optimizer steps); the iteration with the best selection
    accuracy (ties: the later) is kept. Saved: W, b and α, (d + 2)·C numbers.

    Args:
        iterations: Full-batch iterations (LP++: 300).
        alpha_every: α is updated every this many iterations (LP++: 10).
        alpha_grad: ``accumulated`` (the anchor: α's gradient is never zeroed, so each update
            uses the sum since iteration 1) or ``per_window`` (the gradient of the last
            ``alpha_every`` iterations).
        alpha_init_scale: α starts at this times the mean class-wise cosine of the training
            features to their own class text (LP++: 250).
        selection_split: ``fewshot_val`` (default; the ``lpp`` sampler draws K val images per
            class), or ``full_val`` / ``test``, which need ``faithful``.
        faithful: Allows the other selection splits.
    """

    clip_dtype_tensors = ()

    def __init__(
        self,
        iterations: int = 300,
        alpha_every: int = 10,
        alpha_grad: Literal["accumulated", "per_window"] = "accumulated",
        alpha_init_scale: float = 250.0,
        selection_split: SelectionSplit = "fewshot_val",
        faithful: bool = False,
    ) -> None:
        super().__init__()
        check_selection_split("lpp", selection_split, faithful)
        if alpha_grad not in ("accumulated", "per_window"):
            raise PeftClipError(f"lpp: alpha_grad is accumulated or per_window; got {alpha_grad}.")
        self.iterations = iterations
        self.alpha_every = alpha_every
        self.alpha_grad = alpha_grad
        self.alpha_init_scale = alpha_init_scale
        self.selection_split = selection_split
        self.selection_rule = SELECTION_RULE[selection_split]
        self.register_fitted("weight")
        self.register_fitted("bias")
        self.register_fitted("alpha")
        #: α after each update, for tests of the update rule (not saved).
        self.alpha_trace: list[torch.Tensor] = []

    def initial_state(self, features, labels, text):
        """W = class sums, b ~ U(−1/√d, 1/√d), α = scale · mean class cosine, and the two step
        sizes ``lr_W = 4N / λ_max(FᵀF)`` and ``lr_α = N / (4 · max_c Σ_i (f_i · t_c)²)``."""
        samples, dim = features.shape
        classes = len(text)
        weight = torch.zeros(classes, dim, dtype=features.dtype).index_add_(0, labels, features)
        bound = 1 / math.sqrt(dim)
        bias = torch.empty(classes, dtype=features.dtype).uniform_(-bound, bound)
        cosine = features @ text.T  # (N, C)
        own = torch.zeros(classes, dtype=features.dtype).index_add_(
            0, labels, cosine[torch.arange(samples), labels]
        ) / torch.bincount(labels, minlength=classes).clamp(min=1)
        alpha = torch.full((classes,), self.alpha_init_scale * own.mean().item())
        largest = torch.linalg.eigvalsh(features.double().T @ features.double())[-1].item()
        lr_weight = 4 * samples / largest
        lr_alpha = samples / (4 * (cosine**2).sum(0).max().item())
        return weight, bias, alpha.to(features.dtype), lr_weight, lr_alpha

    def fit_from_data(self, data: TrainingFeatures) -> None:
        device = data.features.device
        features = F.normalize(data.features.float().flatten(0, 1), dim=-1).cpu()
        labels = data.labels.repeat(data.features.shape[0]).cpu()
        text = F.normalize(data.frozen_head().float(), dim=-1).cpu()
        selection = selection_set(data, self.selection_split, "lpp")
        val = F.normalize(selection.features.float(), dim=-1).cpu()
        val_labels = selection.labels.cpu()
        weight, bias, alpha, lr_weight, lr_alpha = self.initial_state(features, labels, text)
        weight.requires_grad_(True)
        bias.requires_grad_(True)
        alpha.requires_grad_(True)
        optimizer = torch.optim.SGD([weight, bias], lr=lr_weight, momentum=0.9)
        cosine, val_cosine = features @ text.T, val @ text.T
        best, kept = -1.0, None
        self.alpha_trace = []
        with torch.enable_grad():
            for iteration in range(1, self.iterations + 1):
                optimizer.zero_grad()
                logits = features @ weight.T + bias + alpha * cosine
                F.cross_entropy(logits, labels).backward()
                optimizer.step()
                if iteration % self.alpha_every == 0:
                    with torch.no_grad():
                        alpha -= lr_alpha * alpha.grad
                    self.alpha_trace.append(alpha.detach().clone())
                    if self.alpha_grad == "per_window":
                        alpha.grad = None
                with torch.no_grad():
                    score = accuracy(val @ weight.T + bias + alpha * val_cosine, val_labels)
                if score >= best:
                    best = score
                    kept = (weight.detach().clone(), bias.detach().clone(), alpha.detach().clone())
        self.weight, self.bias, self.alpha = (tensor.to(device) for tensor in kept)

    def head(self, inputs: HeadInput) -> torch.Tensor:
        _check_classes(self.weight, inputs, "lpp")
        image = F.normalize(inputs.image_features.float(), dim=-1)
        text = F.normalize(inputs.text_features.float(), dim=-1)
        return image @ self.weight.T + self.bias + self.alpha * (image @ text.T)


def _check_classes(weight: torch.Tensor, inputs: HeadInput, method: str) -> None:
    if len(weight) != len(inputs.classnames):
        raise PeftClipError(
            f"{method} was fitted on {len(weight)} classes but is asked to score "
            f"{len(inputs.classnames)}; a linear probe scores only its training classes."
        )


register_adapter("linear_probe", LinearProbe)
register_adapter("lpp", LPPlusPlus)
