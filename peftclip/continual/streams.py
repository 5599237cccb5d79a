"""Task streams: the ordered datasets a continual run learns, and the ones it only evaluates.

A stream is data (docs/continual.md#streams): a list of tasks, each a registered dataset with
its shots (``None``: the full training split), its templates and per-task overrides of the
training settings (e.g. ZSCL's lr 5e-5 for Aircraft and MNIST), plus ``held_out`` datasets that
are evaluated after every task but never trained on — they measure what is left of the
zero-shot ability. A stream is evaluated with task identity (each dataset against its own
classes) or task-agnostically (``evaluation: union``: every image against the classes of all the
stream's datasets, X-TAIL's rule). Built in: MTIL Order I and II (full and 5-shot), X-TAIL, and
``world`` / ``world_union`` streams over the embedded world's tasks, which run offline in minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from peftclip.errors import PeftClipError


@dataclass(frozen=True)
class Task:
    """One dataset of a stream.

    Attributes:
        dataset: Registry name (``peftclip list datasets``).
        shots: Training images per class (the first ``shots`` of each class in a seed-shuffled
            order, docs/continual.md#streams); ``None``: the whole training split.
        templates: Template set of the dataset's head (a named set such as ``mtil:aircraft``,
            one template or a list); training uses the first, evaluation the whole ensemble.
            ``None``: the dataset's registered templates.
        options: Keyword options of the dataset's reader.
        overrides: Training settings of this task only (``lr``, ``iterations``, ...).
    """

    dataset: str
    shots: int | None = None
    templates: str | tuple[str, ...] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        templates = list(self.templates) if isinstance(self.templates, tuple) else self.templates
        return {
            "dataset": self.dataset,
            "shots": self.shots,
            "templates": templates,
            "options": dict(self.options),
            "overrides": dict(self.overrides),
        }


@dataclass(frozen=True)
class Stream:
    """An ordered list of tasks and the held-out datasets evaluated alongside them.

    Attributes:
        name: The stream's name (the results cell's ``dataset``).
        tasks: Learned in this order; the accuracy matrix's columns follow it.
        held_out: Evaluated after every task, never trained on.
        evaluation: ``task``: each dataset is classified against its own classes with its
            template ensemble (task identity known, MTIL). ``union``: every image is classified
            against the classes of all evaluated datasets, each with its first template, its
            label offset by the class count of the datasets before it (task-agnostic, X-TAIL;
            docs/continual.md#x-tail).
        sampling: How a task with ``shots`` picks its images: ``first`` (the first ``shots``
            per class of a seed-shuffled order, MoE-Adapters' rule) or ``dassl`` (Dassl's
            ``generate_fewshot_dataset``, the CoOp few-shot sampling X-TAIL uses).
    """

    name: str
    tasks: tuple[Task, ...]
    held_out: tuple[Task, ...] = ()
    evaluation: Literal["task", "union"] = "task"
    sampling: Literal["first", "dassl"] = "first"

    def __post_init__(self) -> None:
        for name, allowed in (("evaluation", EVALUATIONS), ("sampling", SAMPLINGS)):
            if getattr(self, name) not in allowed:
                raise PeftClipError(
                    f"stream '{self.name}': {name} is one of {', '.join(allowed)}; got "
                    f"{getattr(self, name)!r}."
                )

    @property
    def evaluated(self) -> tuple[Task, ...]:
        """Every dataset evaluated after each task: the learned ones, then the held-out ones."""
        return self.tasks + self.held_out

    @property
    def shots(self) -> int | None:
        """The stream's shots when all tasks share them (the results cell's ``shots``)."""
        shots = {task.shots for task in self.tasks}
        return shots.pop() if len(shots) == 1 else None

    def to_dict(self) -> dict[str, Any]:
        value = {
            "name": self.name,
            "tasks": [task.to_dict() for task in self.tasks],
            "held_out": [task.to_dict() for task in self.held_out],
        }
        # Only where they differ from the default: the cells (and run folders) of the streams
        # that existed before these settings keep their keys.
        if self.evaluation != "task":
            value["evaluation"] = self.evaluation
        if self.sampling != "first":
            value["sampling"] = self.sampling
        return value


#: The evaluation modes and few-shot samplers of a stream.
EVALUATIONS = ("task", "union")
SAMPLINGS = ("first", "dassl")


# ZSCL's MTIL datasets as peftclip registry names with ZSCL's template ensembles. Aircraft, DTD,
# Flowers, Food, Pets and Cars are read with the CoOp readers (docs/continual.md#mtil).
_MTIL = {
    "aircraft": ("fgvc_aircraft", "mtil:aircraft"),
    "caltech101": ("mtil_caltech101", "mtil:caltech101"),
    "cifar100": ("cifar100", "mtil:cifar100"),
    "dtd": ("dtd", "mtil:dtd"),
    "eurosat": ("mtil_eurosat", "mtil:eurosat"),
    "flowers": ("oxford_flowers", "mtil:flowers"),
    "food": ("food101", "mtil:food"),
    "mnist": ("mnist", "mtil:mnist"),
    "oxford_pet": ("oxford_pets", "mtil:oxford_pet"),
    "stanford_cars": ("stanford_cars", "mtil:stanford_cars"),
    "sun397": ("mtil_sun397", "mtil:sun397"),
}
MTIL_ORDER_1 = (
    "aircraft", "caltech101", "cifar100", "dtd", "eurosat", "flowers", "food", "mnist",
    "oxford_pet", "stanford_cars", "sun397",
)  # fmt: skip
#: ZSCL's results notebook: ``order = [9, 6, 7, 8, 5, 10, 0, 1, 3, 4, 2]`` over Order I.
MTIL_ORDER_2 = tuple(MTIL_ORDER_1[i] for i in (9, 6, 7, 8, 5, 10, 0, 1, 3, 4, 2))
#: ZSCL trains these two with lr 5e-5 instead of 1e-5, in either order.
_MTIL_LR = {"aircraft": 5e-5, "mnist": 5e-5}


def _mtil(name: str, order: tuple[str, ...], shots: int | None) -> Stream:
    tasks = []
    for key in order:
        dataset, templates = _MTIL[key]
        overrides = {"lr": _MTIL_LR[key]} if key in _MTIL_LR else {}
        tasks.append(Task(dataset, shots, templates, overrides=overrides))
    return Stream(name, tuple(tasks))


def _world() -> Stream:
    # Caption-style templates: how pretraining text reads (docs/world.md#zero-shot-accuracy).
    from peftclip.world.evaluate import TASK_TEMPLATES

    def task(name: str) -> Task:
        return Task(name, templates=TASK_TEMPLATES[name])

    # Learned: the tasks with headroom over zero-shot; held out: the 80-way colour × shape task
    # (its 20 pairs unseen in pretraining included) and backgrounds, never trained on.
    learned = ("world_shapes", "world_counts", "world_sizes", "world_colors")
    held_out = ("world_objects", "world_backgrounds")
    return Stream("world", tuple(map(task, learned)), tuple(map(task, held_out)))


#: X-TAIL's 10 domains in CoDyRA's order, as the CoOp datasets (CoOp splits and class names)
#: and MNIST; each head is the dataset's first registered template.
XTAIL_ORDER = (
    "fgvc_aircraft", "caltech101", "dtd", "eurosat", "oxford_flowers", "food101", "mnist",
    "oxford_pets", "stanford_cars", "sun397",
)  # fmt: skip


def _xtail() -> Stream:
    tasks = tuple(Task(dataset, 16) for dataset in XTAIL_ORDER)
    return Stream("xtail", tasks, evaluation="union", sampling="dassl")


def _world_union() -> Stream:
    world = _world()
    return Stream("world_union", world.tasks, world.held_out, evaluation="union")


BUILTIN_STREAMS = {
    "mtil_order1": lambda: _mtil("mtil_order1", MTIL_ORDER_1, None),
    "mtil_order2": lambda: _mtil("mtil_order2", MTIL_ORDER_2, None),
    "mtil_5shot": lambda: _mtil("mtil_5shot", MTIL_ORDER_1, 5),
    "xtail": _xtail,
    "world": _world,
    "world_union": _world_union,
}


def list_streams() -> list[str]:
    return sorted(BUILTIN_STREAMS)


def _task(entry: Any, where: str) -> Task:
    if isinstance(entry, str):
        return Task(entry)
    known = {f.name for f in fields(Task)}
    if not isinstance(entry, dict) or "dataset" not in entry or set(entry) - known:
        raise PeftClipError(
            f"{where}: a task is a dataset name or a mapping with 'dataset' and any of "
            f"{', '.join(sorted(known - {'dataset'}))}; got {entry!r}."
        )
    templates = entry.get("templates")
    return Task(
        dataset=entry["dataset"],
        shots=entry.get("shots"),
        templates=tuple(templates) if isinstance(templates, list) else templates,
        options=dict(entry.get("options") or {}),
        overrides=dict(entry.get("overrides") or {}),
    )


def stream_from_dict(value: dict[str, Any], where: str = "stream") -> Stream:
    """A stream from its mapping form: ``name``, ``tasks`` and optional ``held_out``,
    ``shots`` (the default of every task), ``evaluation`` and ``sampling``.

    Raises:
        PeftClipError: A key is unknown, or a task is malformed or the stream has none.
    """
    optional = ("name", "held_out", "shots", "evaluation", "sampling")
    unknown = set(value) - {"tasks", *optional}
    if unknown or not value.get("tasks"):
        raise PeftClipError(
            f"{where} needs 'tasks' (a list) and may have {', '.join(map(repr, optional))}; got "
            f"keys {sorted(value)}."
        )
    shots = value.get("shots")
    tasks = []
    for index, entry in enumerate(value["tasks"]):
        task = _task(entry, f"{where}.tasks[{index}]")
        if shots is not None and task.shots is None and "shots" not in (entry or {}):
            task = Task(task.dataset, shots, task.templates, task.options, task.overrides)
        tasks.append(task)
    held_out = [
        _task(entry, f"{where}.held_out[{i}]") for i, entry in enumerate(value.get("held_out", []))
    ]
    return Stream(
        value.get("name", "custom"),
        tuple(tasks),
        tuple(held_out),
        evaluation=value.get("evaluation", "task"),
        sampling=value.get("sampling", "first"),
    )


def resolve_stream(value: str | dict[str, Any]) -> Stream:
    """A built-in stream by name, a YAML file of one, or its mapping form.

    Raises:
        PeftClipError: An unknown name (with the built-in ones) or a malformed stream.
    """
    if isinstance(value, dict):
        return stream_from_dict(value)
    if value in BUILTIN_STREAMS:
        return BUILTIN_STREAMS[value]()
    path = Path(value)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        loaded = yaml.safe_load(path.read_text()) or {}
        return stream_from_dict({"name": path.stem, **loaded}, where=str(path))
    raise PeftClipError(
        f"unknown stream '{value}'; give one of {', '.join(list_streams())}, a stream YAML file "
        "or a mapping with 'tasks'."
    )
