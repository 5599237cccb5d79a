"""Learning-rate schedules of the anchors with their exact semantics (docs/recipes.md).

A schedule whose length is the run's gets it from the trainer through one mechanism:
:class:`~peftclip.lightning.PeftClipModule` calls ``set_run_length`` on the scheduler (and on
every adapter) before the first step, so a recipe states its run length once, in ``trainer``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler


@dataclass(frozen=True)
class RunLength:
    """The length of a training run, as the trainer computes it.

    Attributes:
        total_steps: Optimizer steps of the whole run.
        max_epochs: Epochs of the run (``None`` when the run is limited by steps only).
        scheduler_interval: How often the learning-rate scheduler is stepped (``step`` or
            ``epoch``).
    """

    total_steps: int
    max_epochs: int | None = None
    scheduler_interval: str = "step"

    @property
    def scheduler_steps(self) -> int:
        """How many times the scheduler is stepped in the run."""
        if self.scheduler_interval == "step":
            return self.total_steps
        if self.max_epochs is None:
            raise ValueError(
                "an epoch-stepped schedule needs trainer.max_epochs (this run is limited by "
                "max_steps only); use scheduler_interval: step."
            )
        return self.max_epochs


class DasslCosine(LambdaLR):
    """Dassl's epoch schedule: one epoch at a constant ``warmup_lr``, then a per-epoch cosine.

    ``lr(0) = warmup_lr``; ``lr(e) = 0.5 · lr₀ · (1 + cos(π (e − 1) / E))`` for ``e ≥ 1``, so
    epoch 1 runs at the full ``lr₀`` and the last epoch never reaches 0 (Dassl's
    ``ConstantWarmupScheduler`` + ``CosineAnnealingLR(T_max=E)``). Step it once per epoch
    (``scheduler_interval: epoch``).

    Args:
        optimizer: The optimizer (its ``lr`` is ``lr₀``).
        max_epochs: E; ``None``: the run's ``trainer.max_epochs``.
        warmup_lr: The constant learning rate of epoch 0.
    """

    def __init__(
        self, optimizer: Optimizer, max_epochs: int | None = None, warmup_lr: float = 1e-5
    ) -> None:
        if max_epochs is not None and max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
        self.max_epochs = max_epochs
        base_lrs = [group["lr"] for group in optimizer.param_groups]

        def factor(group_index: int):
            def at(epoch: int) -> float:
                if epoch == 0:
                    return warmup_lr / base_lrs[group_index]
                if self.max_epochs is None:
                    raise ValueError("DasslCosine needs max_epochs (PeftClipModule sets it)")
                return 0.5 * (1 + math.cos(math.pi * (epoch - 1) / self.max_epochs))

            return at

        super().__init__(optimizer, [factor(i) for i in range(len(base_lrs))])

    def set_run_length(self, run: RunLength) -> None:
        if self.max_epochs is not None:
            return
        if run.max_epochs is None:
            raise ValueError(
                "DasslCosine is an epoch schedule: set trainer.max_epochs (the run is limited "
                "by max_steps only), or use peftclip.schedules.IterationCosine."
            )
        self.max_epochs = run.max_epochs


class IterationCosine(LRScheduler):
    """One cosine from ``lr₀`` to ``eta_min`` over the whole run.

    ``lr(t) = eta_min + (lr₀ − eta_min) · (1 + cos(π t / T)) / 2`` — the closed form of
    ``CosineAnnealingLR(T_max=T)`` (CLIP-SVD, CLIP-LoRA). With ``total_steps`` left empty, T
    is the number of times the run steps the scheduler: its optimizer steps (epochs × batches
    per epoch, or ``max_steps``) with ``scheduler_interval: step``, its epochs with
    ``scheduler_interval: epoch``.

    Args:
        optimizer: The optimizer (its ``lr`` is ``lr₀``).
        total_steps: T; ``None``: the length of the training run.
        eta_min: The final learning rate.
    """

    def __init__(
        self, optimizer: Optimizer, total_steps: int | None = None, eta_min: float = 0.0
    ) -> None:
        self.total_steps = total_steps
        self.eta_min = eta_min
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        t = self.last_epoch
        if t > 0 and self.total_steps is None:
            raise ValueError("IterationCosine needs total_steps (PeftClipModule sets it)")
        progress = min(t / self.total_steps, 1.0) if t > 0 else 0.0
        factor = 0.5 * (1 + math.cos(math.pi * progress))
        return [self.eta_min + (base - self.eta_min) * factor for base in self.base_lrs]

    def set_run_length(self, run: RunLength) -> None:
        if self.total_steps is None:
            self.total_steps = run.scheduler_steps
