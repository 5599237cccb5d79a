"""Learning-rate schedules of the anchors with their exact semantics (specs/methods.md §1.8)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler


class DasslCosine(LambdaLR):
    """Dassl's epoch schedule: one epoch at a constant ``warmup_lr``, then a per-epoch cosine.

    ``lr(0) = warmup_lr``; ``lr(e) = 0.5 · lr₀ · (1 + cos(π (e − 1) / E))`` for ``e ≥ 1``, so
    epoch 1 runs at the full ``lr₀`` and the last epoch never reaches 0 (Dassl's
    ``ConstantWarmupScheduler`` + ``CosineAnnealingLR(T_max=E)``). Step it once per epoch
    (``scheduler_interval: epoch``).

    Args:
        optimizer: The optimizer (its ``lr`` is ``lr₀``).
        max_epochs: E, the number of training epochs.
        warmup_lr: The constant learning rate of epoch 0.
    """

    def __init__(self, optimizer: Optimizer, max_epochs: int, warmup_lr: float = 1e-5) -> None:
        if max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
        base_lrs = [group["lr"] for group in optimizer.param_groups]

        def factor(group_index: int):
            def at(epoch: int) -> float:
                if epoch == 0:
                    return warmup_lr / base_lrs[group_index]
                return 0.5 * (1 + math.cos(math.pi * (epoch - 1) / max_epochs))

            return at

        super().__init__(optimizer, [factor(i) for i in range(len(base_lrs))])


class IterationCosine(LRScheduler):
    """One cosine from ``lr₀`` to ``eta_min`` over the whole run, stepped every optimizer step.

    ``lr(t) = eta_min + (lr₀ − eta_min) · (1 + cos(π t / T)) / 2`` — the closed form of
    ``CosineAnnealingLR(T_max=T)`` (CLIP-SVD, CLIP-LoRA; specs/methods.md §1.8). With
    ``total_steps`` left empty, T is the trainer's number of optimizer steps (epochs × batches
    per epoch, or ``max_steps``), filled in by :class:`~peftclip.lightning.PeftClipModule`.
    Use ``scheduler_interval: step``.

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
