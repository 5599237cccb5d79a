"""Continual strategies: what a run does at task boundaries and which loss terms it adds.

A strategy wraps any trainable parameterization (:class:`~peftclip.continual.model.
ContinualModel`: full fine-tuning by default, or adapters). The driver calls, per task::

    begin_task(model, task, data)   # the model as the task starts (teacher, snapshot)
    loss(step)                      # every iteration: an extra term, or None
    after_step(model, iteration)    # after every optimizer step
    end_task(model, task)           # after the last step, before the evaluation

Semantics: docs/continual.md#strategies. Registered here: ``finetune``, ``wise_ft``, ``codyra``;
``lwf`` and ``vr_lwf`` in :mod:`peftclip.continual.distillation`, ``zscl`` in
:mod:`peftclip.continual.zscl`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset

from peftclip.continual.model import ContinualModel
from peftclip.errors import PeftClipError


@dataclass
class TaskData:
    """What a strategy may use of the task being learned.

    Attributes:
        index: The task's position in the stream (0-based).
        classnames: The task's class names.
        template: The training template (the first of the task's set).
        seed: The run's seed.
    """

    index: int
    classnames: list[str]
    template: str
    seed: int


@dataclass
class Step:
    """One training iteration, as a strategy's loss sees it.

    Attributes:
        model: The student.
        images: The task batch (training transform).
        labels: Its labels.
        logits: The student's logits over the task's classes.
        reference: A batch of reference images (test transform), when the strategy asks for
            one (:attr:`Strategy.reference_images`).
    """

    model: ContinualModel
    images: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor
    reference: torch.Tensor | None = None


class Strategy:
    """Base class: every hook does nothing (which is Continual-FT)."""

    #: Registry name, set by :func:`register_strategy`.
    name: ClassVar[str] = ""
    #: ``current_task``: a batch of the current task's training images under the test
    #: transform each step (LwF, VR-LwF); ``stream``: a batch of the set :meth:`load_reference`
    #: returns, one set for the whole run (ZSCL).
    reference_images: ClassVar[str | None] = None

    def options(self) -> dict[str, Any]:
        """The strategy's settings (part of the results cell's identity)."""
        return {}

    def load_reference(self, data_root: str | None) -> Dataset | None:
        """Reads the strategy's reference data once per run, before :meth:`begin_stream`, and
        returns the reference images when :attr:`reference_images` is ``stream``."""
        return None

    def begin_stream(self, model: ContinualModel) -> None:
        """Called once with the zero-shot model, before any task (also on a resumed run)."""

    def begin_task(self, model: ContinualModel, task: TaskData) -> None:
        """The model as task ``task.index`` starts (the end of the previous one)."""

    def loss(self, step: Step) -> torch.Tensor | None:
        return None

    def after_step(self, model: ContinualModel, iteration: int) -> None:
        """After the optimizer step of ``iteration`` (0-based within the task)."""

    def end_task(self, model: ContinualModel, task: TaskData) -> None:
        """After the task's last step; the model is then evaluated and continued from."""

    def state_dict(self) -> dict[str, Any]:
        """What changes within a task besides the model (a resumed task continues it)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict` (after :meth:`begin_task` on the task-start model)."""


_STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(name: str, cls: type[Strategy]) -> type[Strategy]:
    """Registers ``cls`` under ``name`` (stable: it appears in recipes and results)."""
    if name in _STRATEGIES and _STRATEGIES[name] is not cls:
        raise ValueError(f"strategy name '{name}' is already registered to {_STRATEGIES[name]}")
    cls.name = name
    _STRATEGIES[name] = cls
    return cls


class FineTune(Strategy):
    """Continual-FT: cross-entropy on each task in turn, nothing else."""


class WiseFT(Strategy):
    """WiSE-FT, ZSCL's continual variant: at the end of each task
    ``θ ← α·θ + (1 − α)·θ_anchor`` over the trainable weights; the interpolated model is
    evaluated and continued from.

    Args:
        alpha: Weight of the fine-tuned model (ZSCL 0.8). 1: no-op; 0: the anchor.
        anchor: ``task_start`` (ZSCL: the weights at the start of the task; for task 1 the
            zero-shot model) or ``zero_shot`` (the original WiSE-FT).
    """

    def __init__(self, alpha: float = 0.8, anchor: str = "task_start") -> None:
        if not 0 <= alpha <= 1 or anchor not in ("task_start", "zero_shot"):
            raise PeftClipError(
                f"wise_ft needs 0 <= alpha <= 1 and anchor task_start or zero_shot; got alpha "
                f"{alpha}, anchor {anchor!r}."
            )
        self.alpha = alpha
        self.anchor = anchor
        self._anchor: dict[str, torch.Tensor] = {}

    def options(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "anchor": self.anchor}

    def begin_stream(self, model: ContinualModel) -> None:
        if self.anchor == "zero_shot":
            self._anchor = snapshot(model)

    def begin_task(self, model: ContinualModel, task: TaskData) -> None:
        if self.anchor == "task_start":
            self._anchor = snapshot(model)

    @torch.no_grad()
    def end_task(self, model: ContinualModel, task: TaskData) -> None:
        for name, parameter in model.trainable().items():
            parameter.lerp_(self._anchor[name], 1 - self.alpha)  # θ + (1−α)(θ_anchor − θ)


def snapshot(model: ContinualModel) -> dict[str, torch.Tensor]:
    """Detached copies of the trainable weights."""
    return {name: p.detach().clone() for name, p in model.trainable().items()}


class CoDyRAMergeAndReset(Strategy):
    """CoDyRA's continual protocol: the ``codyra`` adapter merges its surviving ranks into the
    weights and starts a fresh rank-r adapter at every task boundary (its ``end_task``, which
    the driver calls on every adapter), so the deployed parameter count never grows.

    Needs ``adapters: [codyra]`` in the recipe.
    """

    def begin_stream(self, model: ContinualModel) -> None:
        if not any(adapter.name == "codyra" for adapter in model.adapters):
            raise PeftClipError(
                "strategy codyra needs the codyra adapter as the parameterization: add "
                "`adapters: [{name: codyra}]` to the recipe."
            )


register_strategy("finetune", FineTune)
register_strategy("wise_ft", WiseFT)
register_strategy("codyra", CoDyRAMergeAndReset)
