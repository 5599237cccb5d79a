"""One result record per evaluation, and the hashes that name records and cells.

A *cell* is one training job of a protocol grid: a JSON-able dict that holds everything that
identifies the run (the protocol, the methods and their configs, the backbone and its weights'
hash, the profile, the dataset, the shots, the seed, the command-line overrides, ...). Its
``cell_key`` is a hash of that dict, so the same cell always has the same key. A cell yields
one or more *evaluations* (the test split; the base and the new half; every domain-generalization
target), each a :class:`ResultRecord`. Accuracies are kept as per-class integer counts, so every
average can be recomputed from integers (docs/results.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import peftclip

#: The selection rules a record may state (docs/protocols/index.md): the model after the final
#: step, or the best one (checkpoint or hyperparameters) on the few-shot val split; and the
#: Tip-Adapter lineage's rules, allowed only under a method's ``faithful`` switch
#: (docs/methods/index.md#selection): best on the dataset's full val split, or on its test split.
SELECTION_RULES = ("last", "best_val", "best_full_val", "best_test")
#: What ``method`` says for a cell without adapters (zero-shot CLIP).
ZERO_SHOT = "zeroshot"
#: How far (percentage points) a given ``top1`` may differ from the one its counts give.
_TOP1_TOLERANCE = 1e-4


def canonical_json(value: Any) -> str:
    """``value`` as JSON with sorted keys and no spaces: equal values give equal text.

    Raises:
        ValueError: ``value`` is not JSON-able (a path, a tensor, NaN, ...).
    """
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"a result must be plain JSON (str, int, float, list, dict): {error}"
        ) from error


def _short_hash(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:16]


def cell_key(cell: dict) -> str:
    """The key of a cell: 16 hex digits of the SHA-256 of its canonical JSON.

    Key order does not matter; types do (``1`` and ``1.0`` are different cells, as JSON writes
    them differently).
    """
    return _short_hash(cell)


def record_id(run_id: str, evaluation: str, split: str) -> str:
    """The id of the record of one evaluation of one run (16 hex digits).

    Adding the same evaluation twice gives the same id, so the store keeps it once.
    """
    return _short_hash([run_id, evaluation, split])


def top1_from_counts(correct: list[int], total: list[int]) -> float:
    """Top-1 accuracy in % from per-class counts: ``100 · Σ correct / Σ total`` (micro accuracy).

    Raises:
        ValueError: The counts cover no image.
    """
    images = sum(total)
    if images == 0:
        raise ValueError("top-1 of an evaluation without images is undefined (Σ total = 0)")
    return 100 * sum(correct) / images


def harmonic_mean(base: float, new: float) -> float:
    """The base-to-new harmonic mean 2·B·N / (B + N) of two accuracies; 0 when both are 0."""
    return 2 * base * new / (base + new) if base + new else 0.0


def method_name(cell: dict) -> str:
    """The method column of a cell: its adapters' names joined by ``+`` (``zeroshot``: none)."""
    return "+".join(method["name"] for method in cell["methods"]) or ZERO_SHOT


def utc_now() -> str:
    """The current time in UTC as ISO 8601 to the second, e.g. ``2026-05-09T07:35:25+00:00``."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@cache
def current_git_commit() -> str | None:
    """The commit of the peftclip checkout this code runs from (``-dirty`` when it has
    uncommitted changes); ``None`` for an installed package or when git is unavailable."""
    checkout = Path(peftclip.__file__).resolve().parents[1]
    if not (checkout / ".git").exists():  # a folder for a clone, a file for a worktree
        return None
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=checkout,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return described.stdout.strip() or None


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def check_cell(cell: dict) -> None:
    """Raises ValueError unless ``cell`` has the keys the store indexes, with their types."""
    if not isinstance(cell, dict):
        raise ValueError(f"a cell is a dict; got {type(cell).__name__}")
    required = {"protocol": str, "dataset": str, "methods": list}
    for key, kind in required.items():
        if not isinstance(cell.get(key), kind):
            raise ValueError(
                f"a cell needs '{key}' ({kind.__name__}); got {cell.get(key)!r} "
                f"in a cell with keys {sorted(cell)}"
            )
    for key in ("shots", "seed"):
        if key not in cell or not (cell[key] is None or type(cell[key]) is int):
            raise ValueError(f"a cell needs '{key}' (an int, or None); got {cell.get(key)!r}")
    for method in cell["methods"]:
        if not (isinstance(method, dict) and isinstance(method.get("name"), str)):
            raise ValueError(
                "each of a cell's 'methods' is a dict with a 'name' (and its 'config'); "
                f"got {method!r}"
            )


def _checked_metrics(metrics: dict) -> dict:
    """``metrics`` with ``top1`` computed from the per-class counts (checked if given)."""
    if not isinstance(metrics, dict):
        raise ValueError(f"metrics are a dict; got {type(metrics).__name__}")
    correct, total = metrics.get("correct"), metrics.get("total")
    if not all(
        isinstance(counts, list) and all(type(n) is int and n >= 0 for n in counts)
        for counts in (correct, total)
    ):
        raise ValueError(
            "metrics need per-class counts 'correct' and 'total' (lists of non-negative ints); "
            f"got correct={correct!r}, total={total!r}"
        )
    if len(correct) != len(total) or any(c > t for c, t in zip(correct, total, strict=True)):
        raise ValueError(
            f"'correct' ({len(correct)} classes) must pair with 'total' ({len(total)} classes), "
            "with correct ≤ total in every class"
        )
    top1 = top1_from_counts(correct, total)
    given = metrics.get("top1")
    if given is not None and not math.isclose(given, top1, abs_tol=_TOP1_TOLERANCE):
        raise ValueError(f"top1 {given} disagrees with the counts, which give {top1}")
    return {**metrics, "top1": top1, "macro_f1": metrics.get("macro_f1")}


@dataclass(frozen=True, kw_only=True)
class ResultRecord:
    """One evaluation of one run: what was evaluated, the outcome and how it was produced.

    Made from keyword arguments. ``record_id``, ``protocol``, ``method``, ``dataset``,
    ``shots``, ``seed`` and ``cell_key`` are derived (from the run, the evaluation and the
    cell); the others are given.

    Attributes:
        record_id: A hash of (run_id, evaluation, split).
        run_id: The run (its run directory) that produced the record.
        protocol: ``cell["protocol"]``.
        method: The adapters' names joined by ``+`` (``zeroshot`` without adapters).
        dataset: ``cell["dataset"]``.
        shots: ``cell["shots"]``.
        seed: ``cell["seed"]``.
        evaluation: The evaluated dataset (the training one, or e.g. a domain-generalization
            target).
        split: What of it was evaluated: ``test``; ``base`` / ``new`` (the class halves of
            base-to-new, on their test images); ``val``.
        metrics: ``correct`` and ``total`` (per-class image counts, lists of ints, in label
            order), ``top1`` (in %, computed from the counts), ``macro_f1`` (in %, or None) and
            any further JSON-able values.
        selection_rule: How the evaluated model was chosen: ``last``, ``best_val`` (few-shot
            val), ``best_full_val`` or ``best_test`` (:data:`SELECTION_RULES`).
        trainable_params: Trainable parameters of the evaluated model.
        wall_time_s: Seconds the run took (training and evaluation).
        peak_memory_mb: Peak accelerator memory of the run in MiB (None: not measured, e.g. CPU).
        throughput: Training images per second (None: the run did not train, or not measured).
        peftclip_version: The peftclip that produced the record.
        git_commit: The peftclip checkout's commit (None: not a git checkout).
        created_at: When the record was made (UTC, ISO 8601).
        cell_key: A hash of ``cell`` (:func:`cell_key`).
        cell: The cell's identity, JSON-able: at least ``protocol`` (few_shot, base2new, dg, xd,
            single, continual, ...), ``dataset`` (the training dataset), ``methods`` (a list of
            ``{"name": ..., "config": {...}}`` in composition order; empty for zero-shot),
            ``shots`` and ``seed`` (ints, or None); typically also ``backbone`` (model name,
            pretrained tag, ``weights_sha256``: docs/checkpoints.md#backbone-identity),
            ``profile`` and ``overrides``.
        recipe: The resolved recipe (config text) of the run.

    Raises:
        ValueError: A field is missing, of the wrong type or not JSON-able, or ``top1``
            disagrees with the counts.
    """

    record_id: str = field(init=False)
    run_id: str
    protocol: str = field(init=False)
    method: str = field(init=False)
    dataset: str = field(init=False)
    shots: int | None = field(init=False)
    seed: int | None = field(init=False)
    evaluation: str
    split: str = "test"
    metrics: dict
    selection_rule: str = "last"
    trainable_params: int
    wall_time_s: float
    peak_memory_mb: float | None = None
    throughput: float | None = None
    peftclip_version: str = peftclip.__version__
    git_commit: str | None = field(default_factory=current_git_commit)
    created_at: str = field(default_factory=utc_now)
    cell_key: str = field(init=False)
    cell: dict
    recipe: str

    def __post_init__(self) -> None:
        for name in ("run_id", "evaluation", "split", "recipe", "peftclip_version", "created_at"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty str; got {getattr(self, name)!r}")
        if self.selection_rule not in SELECTION_RULES:
            raise ValueError(
                f"selection_rule is one of {SELECTION_RULES}; not {self.selection_rule!r}"
            )
        if type(self.trainable_params) is not int or self.trainable_params < 0:
            raise ValueError(f"trainable_params is an int ≥ 0; got {self.trainable_params!r}")
        for name in ("wall_time_s", "peak_memory_mb", "throughput"):
            value = getattr(self, name)
            optional = name != "wall_time_s"
            if not (_is_number(value) or (optional and value is None)):
                raise ValueError(f"{name} is a number{' or None' * optional}; got {value!r}")
        check_cell(self.cell)
        # Copies through JSON, so the record holds exactly what the store will give back
        # (tuples become lists) and a caller's later edits to its dicts do not reach it.
        cell = json.loads(canonical_json(self.cell))
        metrics = json.loads(canonical_json(_checked_metrics(self.metrics)))
        derived = {
            "cell": cell,
            "metrics": metrics,
            "record_id": record_id(self.run_id, self.evaluation, self.split),
            "cell_key": cell_key(cell),
            "protocol": cell["protocol"],
            "method": method_name(cell),
            "dataset": cell["dataset"],
            "shots": cell["shots"],
            "seed": cell["seed"],
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    # The dicts make the generated hash fail; equal records have equal ids.
    def __hash__(self) -> int:
        return hash(self.record_id)

    @property
    def top1(self) -> float:
        """Top-1 accuracy in %."""
        return self.metrics["top1"]

    def as_dict(self) -> dict[str, Any]:
        """Every field, JSON-able (the derived ones included)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ResultRecord:
        """The record :meth:`as_dict` gave.

        Raises:
            ValueError: A given field is missing or unknown, or a derived field disagrees with
                the record's content (the record was altered).
        """
        given = {f.name for f in fields(cls) if f.init}
        derived = {f.name for f in fields(cls) if not f.init}
        if missing := given - set(values):
            raise ValueError(f"a record needs {sorted(missing)}")
        if unknown := set(values) - given - derived:
            raise ValueError(f"a record has no fields {sorted(unknown)}")
        record = cls(**{name: values[name] for name in given})
        altered = [name for name in derived & set(values) if values[name] != getattr(record, name)]
        if altered:
            raise ValueError(
                f"record {values.get('record_id')}: {', '.join(sorted(altered))} disagree with "
                "the record's content"
            )
        return record
