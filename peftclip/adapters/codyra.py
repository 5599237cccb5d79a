"""CoDyRA: continual dynamic-rank LoRA with ℓ1-gated ranks (Artificer-AI-Lab/CoDyRA).

Semantics: docs/methods/codyra.md. Each targeted Linear gets ``ΔW = B diag(g) A`` (rank 16,
scale 1, no dropout; A kaiming-uniform, B = 0, g ~ N(0, 1)). After a dense phase, a proximal
soft-threshold step on ``g`` follows every optimizer step with a growing threshold κ, so ranks
die (g = 0 exactly). At a task boundary the surviving ranks are merged into the frozen weight
and a fresh adapter starts (``end_task``), so inference cost never grows.

peft has no gated LoRA, hence an own ~50-line layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from peftclip.adapters.base import StepContext
from peftclip.adapters.registry import register_adapter
from peftclip.adapters.targets import LAYER_KINDS, LinearTarget, Tower
from peftclip.adapters.weight_space import WeightSpaceAdapter
from peftclip.errors import PeftClipError
from peftclip.schedules import RunLength


class GatedLowRank(nn.Module):
    """``x ↦ ((x Aᵀ) ⊙ g) Bᵀ``, i.e. the update ``ΔW = B diag(g) A``."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.empty(out_features, rank))
        self.g = nn.Parameter(torch.empty(rank))
        self.reset()

    def reset(self) -> None:
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
            self.B.zero_()
            self.g.normal_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.A) * self.g, self.B)

    def delta_weight(self) -> torch.Tensor:
        return (self.B * self.g) @ self.A

    def prune(self) -> None:
        """Drops the ranks whose gate is exactly zero (outputs unchanged)."""
        keep = self.g.detach() != 0
        self.A = nn.Parameter(self.A.detach()[keep].clone())
        self.B = nn.Parameter(self.B.detach()[:, keep].clone())
        self.g = nn.Parameter(self.g.detach()[keep].clone())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # A pruned checkpoint has fewer ranks than a freshly built layer: take its shapes.
        rank = state_dict.get(prefix + "g")
        if rank is not None and rank.shape != self.g.shape:
            for name in ("A", "B", "g"):
                saved = state_dict[prefix + name]
                setattr(self, name, nn.Parameter(torch.empty_like(saved, device=self.A.device)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class GatedLoRALinear(nn.Module):
    """A frozen Linear plus a :class:`GatedLowRank` update."""

    def __init__(self, base: nn.Linear, delta: GatedLowRank) -> None:
        super().__init__()
        self.base = base
        self.delta = delta

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.delta(x)


class MergedUpdates(nn.Module):
    """The updates of finished tasks, merged into a frozen Linear, kept as low-rank factors.

    ``end_task`` folds ``B diag(g) A`` of the live ranks into the frozen weight; the
    checkpoint keeps those factors (``B diag(g)`` and ``A``, only the live ranks), so loading it
    onto the pretrained CLIP re-applies every earlier task (the anchor's ``old_lora_*``).
    """

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self._base = (base,)  # a reference, not a submodule: the CLIP is never saved
        self.register_buffer("A", base.weight.new_zeros(0, base.in_features))
        self.register_buffer("B", base.weight.new_zeros(base.out_features, 0))
        self.applied = 0  # how many of the ranks are in the base weight already

    @torch.no_grad()
    def add(self, B: torch.Tensor, A: torch.Tensor) -> None:
        """Merges ``B @ A`` into the frozen weight and records it."""
        self.A = torch.cat([self.A, A.to(self.A)])
        self.B = torch.cat([self.B, B.to(self.B)], dim=1)
        self._apply_pending()

    @torch.no_grad()
    def _apply_pending(self) -> None:
        base = self._base[0]
        start = self.applied
        if self.A.shape[0] > start:
            update = self.B[:, start:] @ self.A[start:]
            base.weight += update.to(base.weight.dtype)
            self.applied = self.A.shape[0]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        saved_A, saved_B = state_dict.get(prefix + "A"), state_dict.get(prefix + "B")
        if saved_A is not None and saved_B is not None:
            if self.applied > saved_A.shape[0]:
                raise PeftClipError(
                    "this codyra checkpoint has fewer finished tasks than the model it is "
                    "loaded into; load it onto a freshly built model."
                )
            self.A = torch.empty_like(saved_A, device=self.A.device)
            self.B = torch.empty_like(saved_B, device=self.B.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._apply_pending()


def soft_threshold(g: torch.Tensor, kappa: float) -> torch.Tensor:
    """The proximal operator of ``κ‖g‖₁``: ``sign(g)·max(|g| − κ, 0)`` (the paper's step)."""
    return torch.sign(g) * torch.clamp(g.abs() - kappa, min=0)


def codyra_code_threshold(g: torch.Tensor, kappa: float) -> torch.Tensor:
    """The anchor code's three in-place steps: every ``|g| < 2κ`` ends at 0.

    The ``prox_mode: codyra_code`` reproduction switch of docs/methods/codyra.md.
    """
    g = g.clone()
    g[g > kappa] -= kappa
    g[g < -kappa] += kappa
    g[g.abs() < kappa] = 0
    return g


class CoDyRA(WeightSpaceAdapter):
    """Gated LoRA with an ℓ1 proximal rank schedule and merge-and-reset between tasks.

    Args:
        r: Rank of every update.
        iterations: Training iterations T of one task (the rank schedule is laid over them);
            ``None``: the length of the training run, from the trainer.
        kappa_max: Largest threshold κ.
        kappa_steps: Number of κ values (``linspace(0, kappa_max, kappa_steps)``).
        dense_fraction: Fraction of T trained without proximal steps.
        prox_mode: ``soft`` (the paper's proximal operator) or ``codyra_code`` (the anchor's 2κ
            dead zone; faithful).
        text_to_image_loss: Add the anchor's text→image cross-entropy when the vision tower
            is adapted.
        towers: ``vision``, ``text`` or ``both`` (anchor runs: both).
        layers: Layer kinds (anchor runs: all six).
        blocks: Block indices (``None``: all).
    """

    def __init__(
        self,
        r: int = 16,
        iterations: int | None = None,
        kappa_max: float = 0.005,
        kappa_steps: int = 50,
        dense_fraction: float = 0.5,
        prox_mode: Literal["soft", "codyra_code"] = "soft",
        text_to_image_loss: bool = True,
        towers: Tower = "both",
        layers: Sequence[str] = LAYER_KINDS,
        blocks: Sequence[int] | None = None,
    ) -> None:
        super().__init__(towers, layers, blocks)
        if (
            (iterations is not None and iterations < 1)
            or not 0 <= dense_fraction < 1
            or (kappa_steps < 2)
        ):
            raise PeftClipError(
                "codyra needs iterations >= 1, 0 <= dense_fraction < 1 and kappa_steps >= 2; got "
                f"{iterations}, {dense_fraction}, {kappa_steps}."
            )
        self.r = r
        self.iterations = iterations
        self.kappa_max = kappa_max
        self.kappa_steps = kappa_steps
        self.dense_fraction = dense_fraction
        self.prox_mode = prox_mode
        self.text_to_image_loss = text_to_image_loss
        # Optimizer steps taken in the current task (saved: a resumed run continues the schedule).
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self.register_buffer("task", torch.zeros((), dtype=torch.long))
        self.merged_updates = nn.ModuleDict()  # finished tasks, per layer (saved)

    def _adapt(self, targets: list[LinearTarget]) -> None:
        for target in targets:
            base = target.module
            delta = GatedLowRank(base.in_features, base.out_features, self.r)
            self.sites[target.key] = delta.to(base.weight.device)
            self.merged_updates[target.key] = MergedUpdates(base)
            target.replace(GatedLoRALinear(base, delta))

    # ---------------------------------------------------------------------- rank schedule
    def set_run_length(self, run: RunLength) -> None:
        if self.iterations is None:
            self.iterations = run.total_steps

    def kappa(self, t: int) -> float | None:
        """The threshold of the proximal step after iteration ``t`` (0-based); None: no step.

        Dense phase ``t ≤ dense_fraction·T`` has no step. The κ index starts at 0 and grows by
        one at every ``t ≥ T_dense`` with ``t mod ⌊(T − T_dense)/steps⌋ = 0`` (capped), as in
        the anchor: for T = 500, κ = κ_max·j/49 after the j-th increment (t = 250, 255, …).
        """
        if self.iterations is None:
            raise PeftClipError(
                "codyra's rank schedule needs the run length: train it through PeftClipModule "
                "(which passes the trainer's step count) or set iterations."
            )
        dense = self.dense_fraction * self.iterations
        if t <= dense:
            return None
        interval = max(1, int((self.iterations - dense) // self.kappa_steps))
        first = math.ceil(dense / interval) * interval
        index = min((t - first) // interval + 1, self.kappa_steps - 1) if t >= first else 0
        return self.kappa_max * index / (self.kappa_steps - 1)

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        kappa = self.kappa(int(self.iteration))
        if kappa is not None:
            threshold = soft_threshold if self.prox_mode == "soft" else codyra_code_threshold
            for delta in self.sites.values():
                delta.g.copy_(threshold(delta.g, kappa))
        self.iteration += 1

    def extra_loss(self, context: StepContext) -> torch.Tensor | None:
        """Text→image cross-entropy: each class row scores the batch's images (anchor loss)."""
        if not (self.training and self.text_to_image_loss and "vision" in self.adapted_towers):
            return None
        logits, labels = context.logits.float(), context.labels
        # Un-normalized multi-hot targets M[c, b] = 1[label_b = c]; rows of classes absent
        # from the batch contribute 0 but count in the mean (the anchor's reduction).
        targets = F.one_hot(labels, logits.shape[1]).t().to(logits.dtype)
        return F.cross_entropy(logits.t(), targets)

    # ------------------------------------------------------------------- ranks and tasks
    def live_ranks(self) -> dict[str, int]:
        return {key: int(delta.g.count_nonzero()) for key, delta in self.sites.items()}

    def summary(self) -> dict[str, float]:
        ranks = self.live_ranks()
        mean = sum(ranks.values()) / max(len(ranks), 1)
        return {"live_rank_mean": mean, **{f"live_rank/{k}": float(v) for k, v in ranks.items()}}

    def prune(self) -> None:
        """Removes the ranks whose gate is exactly zero, in every layer (outputs unchanged).

        Parameters are replaced: build a new optimizer afterwards.
        """
        for delta in self.sites.values():
            delta.prune()

    @torch.no_grad()
    def end_task(self, task: int) -> None:
        """Task boundary: merge the surviving ranks into the frozen weights, start afresh.

        Outputs are unchanged by the merge (the new adapter has B = 0). The merged factors stay
        in the adapter's state, so a checkpoint restores every finished task onto the
        pretrained CLIP. Parameters are re-created at full rank: build a new optimizer.
        """
        if self.merged:
            raise PeftClipError("unmerge the codyra adapter before starting a new task.")
        for target in self.targets:
            layer: GatedLoRALinear = target.module
            delta = layer.delta
            live = delta.g != 0  # pruned ranks add nothing: keep only the live ones
            self.merged_updates[target.key].add(delta.B[:, live] * delta.g[live], delta.A[live])
            fresh = GatedLowRank(layer.base.in_features, layer.base.out_features, self.r)
            fresh = fresh.to(layer.base.weight.device)
            layer.delta = fresh
            self.sites[target.key] = fresh
        self.iteration.zero_()
        self.task += 1

    # ------------------------------------------------------------------------------ merge
    def _merge(self, target: LinearTarget) -> nn.Linear:
        layer: GatedLoRALinear = target.module
        with torch.no_grad():
            layer.base.weight += layer.delta.delta_weight().to(layer.base.weight.dtype)
        return layer.base

    @torch.no_grad()
    def _unmerge(self, target: LinearTarget, adapted: nn.Module) -> None:
        adapted.base.weight -= adapted.delta.delta_weight().to(adapted.base.weight.dtype)


register_adapter("codyra", CoDyRA)
