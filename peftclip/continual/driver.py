"""A continual run: the zero-shot row, then per task train → boundary hooks → evaluate all.

State lives in the run folder (docs/continual.md#resuming): ``boundary.pt`` after the zero-shot
evaluation and after every task (the model, the accuracy rows so far, the random state), and
``task.pt`` every ``checkpoint_every`` steps within a task (the model, optimizer, scheduler and
strategy state). A killed run started again resumes at the last of them and produces the same
matrix as an uninterrupted run.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from peftclip.adapters import get_adapter_class
from peftclip.atomic_files import atomic_path
from peftclip.backbone import BackboneSpec, backbone_transforms, load_backbone
from peftclip.continual.metrics import ContinualMetrics, continual_metrics
from peftclip.continual.model import ContinualModel
from peftclip.continual.registry import build_strategy
from peftclip.continual.strategies import Strategy, TaskData
from peftclip.continual.streams import Stream, Task
from peftclip.continual.training import TaskProgress, TrainingSettings, evaluate, train_task
from peftclip.continual.union import UnionTest, evaluate_union
from peftclip.data import build_dataset
from peftclip.data.fewshot import sample_per_class
from peftclip.data.templates import resolve_templates
from peftclip.data.transforms import build_transform
from peftclip.errors import PeftClipError
from peftclip.lightning.resume import random_states, restore_random_states

BOUNDARY = "boundary.pt"
IN_TASK = "task.pt"
#: One evaluation: per-class ``correct`` and ``total`` counts.
Counts = dict[str, list[int]]


@dataclass
class ContinualRecipe:
    """What a continual run trains, on what, and how (docs/continual.md#recipes).

    Attributes:
        backbone: The CLIP.
        strategy: Registered strategy name (``finetune``, ``lwf``, ``vr_lwf``, ``wise_ft``,
            ``zscl``, ``codyra``).
        strategy_options: The strategy's keyword options.
        adapters: The trainable parameterization: ``[]`` is full fine-tuning of both towers;
            otherwise ``{name: ADAPTER, init_args: {...}}`` entries (or bare names).
        training: Per-task settings; a task's ``overrides`` replace some of them.
        data_root: Root of the datasets (unused by the world).
        seed: The run's seed (data order, few-shot samples, vocabulary, initialisation).
    """

    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    strategy: str = "finetune"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    adapters: list[Any] = field(default_factory=list)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    data_root: str | None = None
    seed: int = 42


@dataclass
class ContinualResult:
    """The evaluations of a run: row 0 is zero-shot, row t the model after task t.

    Attributes:
        stream: The stream.
        rows: ``rows[t][dataset]`` = per-class counts.
    """

    stream: Stream
    rows: list[dict[str, Counts]]

    def top1(self, row: int, dataset: str) -> float:
        counts = self.rows[row][dataset]
        return 100 * sum(counts["correct"]) / max(sum(counts["total"]), 1)

    @property
    def complete(self) -> bool:
        return len(self.rows) == len(self.stream.tasks) + 1

    def matrix(self) -> list[list[float]]:
        """T×T top-1: row t after task t, columns the learned datasets in learning order."""
        names = [task.dataset for task in self.stream.tasks]
        return [[self.top1(row, name) for name in names] for row in range(1, len(self.rows))]

    def zero_shot(self) -> list[float]:
        return [self.top1(0, task.dataset) for task in self.stream.tasks]

    def metrics(self) -> ContinualMetrics:
        return continual_metrics(self.matrix())

    def held_out(self, row: int) -> float | None:
        """Mean top-1 over the held-out datasets after task ``row`` (0: zero-shot)."""
        names = [task.dataset for task in self.stream.held_out]
        if not names:
            return None
        return sum(self.top1(row, name) for name in names) / len(names)


def build_adapters(entries: list[Any]) -> list:
    """Adapters from ``{name, init_args}`` mappings or bare registered names."""
    adapters = []
    for entry in entries:
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or "name" not in entry or set(entry) - {"name", "init_args"}:
            raise PeftClipError(
                f"an adapters entry is a registered name or {{name: NAME, init_args: {{...}}}}; "
                f"got {entry!r}."
            )
        adapters.append(get_adapter_class(entry["name"])(**(entry.get("init_args") or {})))
    return adapters


@dataclass
class _TaskSplits:
    data: TaskData
    train: Any
    reference: Any


class ContinualRun:
    """Runs (or resumes) ``recipe`` on ``stream`` with its state in ``run_dir``.

    Args:
        recipe: The run's settings.
        stream: The tasks and held-out datasets.
        run_dir: Where the run's checkpoints live (the same folder resumes).
        on_row: Called with ``(row, result)`` after each new evaluation row (results store).
    """

    def __init__(
        self,
        recipe: ContinualRecipe,
        stream: Stream,
        run_dir: Path,
        on_row: Callable[[int, ContinualResult], None] | None = None,
    ) -> None:
        names = [task.dataset for task in stream.evaluated]
        if len(set(names)) != len(names):
            raise PeftClipError(
                f"stream '{stream.name}' names a dataset twice ({names}); each dataset is one "
                "column of the accuracy matrix."
            )
        self.recipe = recipe
        self.stream = stream
        self.run_dir = Path(run_dir)
        self.on_row = on_row
        self.settings = recipe.training
        self.device = self.settings.torch_device()
        spec = recipe.backbone
        torch.manual_seed(recipe.seed)  # adapter initialisation (CoDyRA's gates) is seeded
        backbone = load_backbone(
            spec.model_name, spec.pretrained, spec.force_quick_gelu, spec.init_seed
        )
        self.model = ContinualModel(backbone, build_adapters(recipe.adapters)).to(self.device)
        self.strategy: Strategy = build_strategy(recipe.strategy, recipe.strategy_options)
        transforms = backbone_transforms(spec.model_name, spec.pretrained)
        self.image_size = transforms.image_size
        self._backbone_train_transform = transforms.train
        self._eval_transform = self._transform(self.settings.eval_transform, transforms.eval)
        self._tests: dict[str, tuple[Any, list[str], list[str]]] = {}
        self._stream_reference: Any = None

    def _transform(self, name: str, default):
        if name == "backbone":
            return default
        if name == "eval":
            return self._eval_transform
        return build_transform(name, self.image_size)

    # -------------------------------------------------------------------------------- data
    def _templates(self, task: Task, data) -> list[str]:
        return resolve_templates(task.templates if task.templates is not None else data.templates)

    def _test_set(self, task: Task) -> tuple[Any, list[str], list[str]]:
        if task.dataset not in self._tests:
            data = build_dataset(task.dataset, self.recipe.data_root, **task.options)
            if "test" not in data.splits:
                raise PeftClipError(f"dataset '{task.dataset}' has no test split to evaluate.")
            test = data.splits["test"]
            test.transform = self._eval_transform
            self._tests[task.dataset] = (test, list(data.classnames), self._templates(task, data))
        return self._tests[task.dataset]

    def _task_splits(self, index: int) -> _TaskSplits:
        task = self.stream.tasks[index]
        settings = self.settings.for_task(task.overrides, f"stream task {task.dataset}")
        data = build_dataset(task.dataset, self.recipe.data_root, **task.options)
        split = data.splits.get("train")
        if split is None or not hasattr(split, "subset"):
            raise PeftClipError(
                f"dataset '{task.dataset}' has no training split a continual task can sample; "
                "a learned task needs one (shifted world sets are test-only: put them under "
                "held_out)."
            )
        chosen = sample_shots(split.targets, task.shots, self.recipe.seed, self.stream.sampling)
        identity = {label: label for label in range(len(data.classnames))}
        train, reference = split.subset(chosen, identity), split.subset(chosen, identity)
        train.transform = self._transform(settings.train_transform, self._backbone_train_transform)
        reference.transform = self._eval_transform
        templates = self._templates(task, data)
        task_data = TaskData(index, list(data.classnames), templates[0], self.recipe.seed)
        references = {"current_task": reference, "stream": self._stream_reference}
        return _TaskSplits(task_data, train, references.get(self.strategy.reference_images))

    def evaluate_all(self) -> dict[str, Counts]:
        if self.stream.evaluation == "union":
            # Task-agnostic: one head over every dataset's classes, each with its first template.
            tests = []
            for task in self.stream.evaluated:
                test, classnames, templates = self._test_set(task)
                tests.append(UnionTest(task.dataset, test, classnames, templates[0]))
            return evaluate_union(self.model, tests, self.settings)
        row = {}
        for task in self.stream.evaluated:
            test, classnames, templates = self._test_set(task)
            row[task.dataset] = evaluate(self.model, test, classnames, templates, self.settings)
        return row

    # -------------------------------------------------------------------------- checkpoints
    def _save(self, name: str, state: dict) -> None:
        with atomic_path(self.run_dir / name) as partial:
            torch.save({**state, "random": random_states()}, partial)

    def _load(self, name: str) -> dict | None:
        path = self.run_dir / name
        if not path.is_file():
            return None
        return torch.load(path, map_location=self.device, weights_only=False)

    # ---------------------------------------------------------------------------------- run
    def run(self) -> ContinualResult:
        """Trains the tasks not yet done and returns every evaluation row."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._stream_reference = self.strategy.load_reference(self.recipe.data_root)
        if self._stream_reference is not None:
            self._stream_reference.transform = self._eval_transform
        self.strategy.begin_stream(self.model)
        boundary = self._load(BOUNDARY)
        if boundary is None:
            result = ContinualResult(self.stream, [self.evaluate_all()])
            self._save(BOUNDARY, {"completed": 0, "model": self.model.state(), "rows": result.rows})
            self._row_done(0, result)
        else:
            self.model.load_state(boundary["model"])
            result = ContinualResult(self.stream, boundary["rows"])
            restore_random_states(boundary["random"])
            for row in range(len(result.rows)):  # a kill may have come before they were recorded
                self._row_done(row, result)
        for index in range(len(result.rows) - 1, len(self.stream.tasks)):
            self._learn(index)
            result.rows.append(self.evaluate_all())
            self._save(
                BOUNDARY, {"completed": index + 1, "model": self.model.state(), "rows": result.rows}
            )
            (self.run_dir / IN_TASK).unlink(missing_ok=True)
            self._row_done(index + 1, result)
        return result

    def _row_done(self, row: int, result: ContinualResult) -> None:
        if self.on_row is not None:
            self.on_row(row, result)

    def _learn(self, index: int) -> None:
        splits = self._task_splits(index)
        task = self.stream.tasks[index]
        settings = self.settings.for_task(task.overrides, f"stream task {task.dataset}")
        self.model.classifier.begin_task(index)
        self.strategy.begin_task(self.model, splits.data)
        progress = TaskProgress(0)
        saved = self._load(IN_TASK)
        if saved is not None and saved["task"] == index:
            self.model.load_state(saved["model"])
            self.strategy.load_state_dict(saved["strategy"])
            progress = TaskProgress(saved["iteration"], saved["optimizer"], saved["scheduler"])
            restore_random_states(saved["random"])

        def checkpoint(position: TaskProgress) -> None:
            self._save(
                IN_TASK,
                {
                    "task": index,
                    "iteration": position.iteration,
                    "model": self.model.state(),
                    "optimizer": position.optimizer,
                    "scheduler": position.scheduler,
                    "strategy": self.strategy.state_dict(),
                },
            )

        train_task(
            self.model,
            self.strategy,
            splits.data,
            splits.train,
            splits.reference,
            settings,
            progress,
            checkpoint,
        )
        self.model.classifier.end_task(index)
        self.strategy.end_task(self.model, splits.data)


def sample_shots(targets: list[int], shots: int | None, seed: int, sampling: str) -> list[int]:
    """The training indices of a task: all (``shots`` None), or ``shots`` per class by the
    stream's ``sampling`` — ``first`` (:func:`first_shots`) or ``dassl`` (Dassl's
    ``generate_fewshot_dataset`` seeded with ``seed``, as CoOp and X-TAIL sample), in dataset
    order."""
    if shots is None or sampling == "first":
        return first_shots(targets, shots, seed)
    return sorted(sample_per_class(targets, shots, random.Random(seed)))


def first_shots(targets: list[int], shots: int | None, seed: int) -> list[int]:
    """The first ``shots`` indices of each class in a seed-shuffled order (all: ``None``).

    MTIL 5-shot's rule (docs/continual.md#streams): keep the first 5 file indices per class of
    a seed-shuffled index list; returned in dataset order.
    """
    if shots is None:
        return list(range(len(targets)))
    generator = torch.Generator().manual_seed(seed)
    kept: dict[int, int] = {}
    chosen = []
    for index in torch.randperm(len(targets), generator=generator).tolist():
        label = targets[index]
        if kept.get(label, 0) < shots:
            kept[label] = kept.get(label, 0) + 1
            chosen.append(index)
    return sorted(chosen)
