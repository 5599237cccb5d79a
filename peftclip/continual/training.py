"""One task of a continual run: iteration-based training and the per-dataset evaluation.

A plain loop rather than a Lightning ``Trainer``: a continual run trains one model through many
tasks, and its checkpoint is the whole trainable state (CLIP's weights under full fine-tuning),
the strategy's and the task position, which ``PeftClipModule``'s adapter-only checkpoints do
not hold. Batches and augmentation are functions of (seed, task, iteration) only
(:mod:`peftclip.data.order`), so a task resumed from its checkpoint trains on the very batches of
the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from peftclip.adapters import StepContext
from peftclip.continual.model import ContinualModel
from peftclip.continual.strategies import Step, Strategy, TaskData
from peftclip.data.order import SeededSamples, derived_seed
from peftclip.errors import PeftClipError
from peftclip.schedules import RunLength


@dataclass(frozen=True)
class TrainingSettings:
    """Per-task training settings (defaults: ZSCL's MTIL recipe, docs/continual.md#training).

    Args:
        iterations: Optimizer steps per task.
        batch_size: Training images per step (and reference images, for the KD strategies).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup: Linear warmup steps of ZSCL's cosine schedule.
        label_smoothing: Of the cross-entropy.
        train_transform: ``zscl_train`` / any named transform, or ``eval`` (no augmentation).
        eval_transform: ``zscl_test`` / ``dassl_test``.
        eval_batch_size: Images per evaluation batch.
        num_workers: Dataloader worker processes.
        checkpoint_every: Steps between the checkpoints within a task (a killed task resumes
            from the latest); ``0``: only at task boundaries.
        precision: ``32-true`` (ZSCL, CoDyRA) or ``bf16-mixed`` (autocast, fp32 weights).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ...
    """

    iterations: int = 1000
    batch_size: int = 64
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 100
    label_smoothing: float = 0.2
    train_transform: str = "zscl_train"
    eval_transform: str = "zscl_test"
    eval_batch_size: int = 256
    num_workers: int = 0
    checkpoint_every: int = 100
    precision: Literal["32-true", "bf16-mixed"] = "32-true"
    device: str = "auto"

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "training") -> TrainingSettings:
        """Settings from a mapping, refusing unknown keys.

        Raises:
            PeftClipError: An unknown key, or a value outside its range.
        """
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise PeftClipError(
                f"{where} has no setting(s) {', '.join(sorted(unknown))}; known: "
                f"{', '.join(sorted(known))}."
            )
        values = dict(values)
        if "betas" in values:
            values["betas"] = tuple(float(beta) for beta in values["betas"])
        for name in ("lr", "weight_decay", "label_smoothing"):  # YAML reads 1e-5 as a string
            if isinstance(values.get(name), str):
                values[name] = _number(values[name], f"{where}.{name}")
        settings = cls(**values)
        if settings.iterations < 1 or settings.batch_size < 1 or settings.warmup < 0:
            raise PeftClipError(
                f"{where} needs iterations >= 1, batch_size >= 1 and warmup >= 0; got "
                f"{settings.iterations}, {settings.batch_size}, {settings.warmup}."
            )
        if settings.precision not in ("32-true", "bf16-mixed"):
            raise PeftClipError(
                f"{where}.precision is 32-true or bf16-mixed, not {settings.precision}."
            )
        return settings

    def for_task(self, overrides: dict[str, Any], where: str) -> TrainingSettings:
        """These settings with a task's overrides."""
        if not overrides:
            return self
        merged = {f.name: getattr(self, f.name) for f in fields(self)}
        return TrainingSettings.from_dict({**merged, **overrides}, where)

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def _number(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise PeftClipError(f"{where} is a number; got {text!r}.") from None


def zscl_lr_factor(step: int, iterations: int, warmup: int) -> float:
    """ZSCL's ``cosine_lr`` as a factor of lr₀ at step ``step`` (0-based) of ``iterations``:
    ``(s+1)/W`` during the W warmup steps, then ``0.5·(1 + cos(π·(s−W)/(S−W)))``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(iterations - warmup, 1)))


class IterationBatches(Sampler[list[tuple[int, int]]]):
    """Batches of ``(index, augmentation seed)`` for iterations ``start … iterations − 1``.

    Iteration ``i`` serves batch ``i mod n`` of epoch ``i div n`` (n = ⌊size / batch⌋, the
    partial last batch dropped; a split smaller than a batch is one batch), each epoch a
    permutation derived from ``(seed, epoch)``: the batches are the same in every process and
    after any restart.
    """

    def __init__(self, size: int, batch_size: int, seed: int, iterations: int, start: int = 0):
        self.size = size
        self.batch_size = min(batch_size, size)
        self.per_epoch = max(size // self.batch_size, 1)
        self.seed = seed
        self.iterations = iterations
        self.start = start

    def __len__(self) -> int:
        return self.iterations - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        cached_epoch, order, sample_seeds = None, None, None
        for iteration in range(self.start, self.iterations):
            epoch, position = divmod(iteration, self.per_epoch)
            if epoch != cached_epoch:
                generator = torch.Generator().manual_seed(derived_seed(self.seed, epoch))
                order = torch.randperm(self.size, generator=generator)
                sample_seeds = torch.randint(2**62, (self.size,), generator=generator)
                cached_epoch = epoch
            chosen = order[position * self.batch_size : (position + 1) * self.batch_size]
            yield [(index, int(sample_seeds[index])) for index in chosen.tolist()]


def iteration_loader(
    dataset: Dataset, settings: TrainingSettings, seed: int, start: int
) -> DataLoader:
    batches = IterationBatches(len(dataset), settings.batch_size, seed, settings.iterations, start)
    # Its own generator: creating the iterator draws nothing from the process's random state,
    # which a resumed run restores (CoDyRA's fresh adapters draw from it at task boundaries).
    return DataLoader(
        SeededSamples(dataset),
        batch_sampler=batches,
        num_workers=settings.num_workers,
        generator=torch.Generator().manual_seed(seed),
    )


def _autocast(settings: TrainingSettings, device: torch.device):
    if settings.precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class TaskProgress:
    """Where a task's training stands: what a checkpoint within the task holds."""

    iteration: int
    optimizer: dict | None = None
    scheduler: dict | None = None


def train_task(
    model: ContinualModel,
    strategy: Strategy,
    task: TaskData,
    train: Dataset,
    reference: Dataset | None,
    settings: TrainingSettings,
    progress: TaskProgress,
    checkpoint: Callable[[TaskProgress], None],
) -> None:
    """Trains ``model`` on one task from ``progress`` to ``settings.iterations`` steps.

    Args:
        model: The student (trained in place).
        strategy: Adds its loss and acts after every step.
        task: The task (class names, training template, index, seed).
        train: The training images (training transform).
        reference: Reference images (test transform) for the strategy's KD terms, or None.
        settings: The task's settings.
        progress: Where to start (a resumed task: its checkpoint's optimizer and scheduler).
        checkpoint: Called with the progress every ``settings.checkpoint_every`` steps.
    """
    device = settings.torch_device()
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise PeftClipError("nothing to train: the model has no trainable parameters.")
    for adapter in model.adapters:
        adapter.set_run_length(RunLength(total_steps=settings.iterations))
    optimizer = torch.optim.AdamW(
        parameters, lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: zscl_lr_factor(s, settings.iterations, settings.warmup)
    )
    if progress.optimizer is not None:
        optimizer.load_state_dict(progress.optimizer)
        scheduler.load_state_dict(progress.scheduler)
    classifier = model.classifier
    classifier.templates = [task.template]
    model.train()
    batches = iteration_loader(
        train, settings, derived_seed(task.seed, task.index), progress.iteration
    )
    references = (
        iteration_loader(
            reference,
            settings,
            derived_seed(task.seed, task.index, "reference"),
            progress.iteration,
        )
        if reference is not None
        else None
    )
    reference_batches = iter(references) if references is not None else None
    for iteration, (images, labels) in enumerate(batches, start=progress.iteration):
        images, labels = images.to(device), labels.to(device)
        reference_images = None
        if reference_batches is not None:
            reference_images = next(reference_batches)[0].to(device)
        with _autocast(settings, device):
            outputs = classifier(images, task.classnames)
            logits = outputs["logits"].float()
            loss = F.cross_entropy(logits, labels, label_smoothing=settings.label_smoothing)
            context = StepContext(
                images=images,
                labels=labels,
                logits=outputs["logits"],
                image_features=outputs["image_features"],
                text_features=outputs["text_features"],
                classnames=task.classnames,
                frozen_head=lambda templates=None: classifier.frozen_head(
                    task.classnames, templates
                ),
            )
            for adapter in model.adapters:
                extra = adapter.extra_loss(context)
                if extra is not None:
                    loss = loss + extra
            extra = strategy.loss(Step(model, images, labels, logits, reference_images))
            if extra is not None:
                loss = loss + extra
        if not torch.isfinite(loss):
            raise PeftClipError(
                f"training loss became {loss.item()} at iteration {iteration} of task "
                f"{task.index + 1}; lower the learning rate or use precision 32-true."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        for adapter in model.adapters:
            adapter.after_optimizer_step(iteration)
        strategy.after_step(model, iteration)
        done = iteration + 1
        every = settings.checkpoint_every
        if every and done % every == 0 and done < settings.iterations:
            checkpoint(TaskProgress(done, optimizer.state_dict(), scheduler.state_dict()))
    model.eval()


@torch.inference_mode()
def evaluate(
    model: ContinualModel,
    test: Dataset,
    classnames: list[str],
    templates: list[str],
    settings: TrainingSettings,
) -> dict[str, list[int]]:
    """Per-class ``correct`` and ``total`` counts on ``test``, with a head of ``classnames``
    under the ``templates`` ensemble (task identity known: one head per dataset)."""
    device = settings.torch_device()
    classifier = model.classifier
    classifier.templates = list(templates)
    model.eval()
    correct = torch.zeros(len(classnames), dtype=torch.long)
    total = torch.zeros(len(classnames), dtype=torch.long)
    loader = DataLoader(
        test,
        batch_size=settings.eval_batch_size,
        num_workers=settings.num_workers,
        generator=torch.Generator().manual_seed(0),
    )
    for images, labels in loader:
        with _autocast(settings, device):
            logits = classifier(images.to(device), classnames)["logits"]
        predictions = logits.argmax(dim=-1).cpu()
        total += torch.bincount(labels, minlength=len(classnames))
        correct += torch.bincount(labels[predictions == labels], minlength=len(classnames))
    return {"correct": correct.tolist(), "total": total.tolist()}
