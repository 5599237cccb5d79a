"""``peftclip run continual``: one recipe, one stream, the accuracy matrix and its metrics.

The run folder is named by the run's identity (``<root>/<stream>-<strategy>-<cell key>``), so the
same command started again after a kill resumes there. Every evaluation row is written to the
results database as it is measured (docs/continual.md#results).
"""

from __future__ import annotations

import argparse
import hashlib
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from peftclip.backbone import BackboneSpec
from peftclip.continual.driver import ContinualRecipe, ContinualResult, ContinualRun
from peftclip.continual.streams import Stream, list_streams, resolve_stream
from peftclip.continual.training import TrainingSettings
from peftclip.errors import PeftClipError
from peftclip.results import ResultRecord, ResultsStore, cell_key

RECIPE_KEYS = (
    "backbone", "strategy", "strategy_options", "adapters", "training", "stream", "data_root",
    "seed",
)  # fmt: skip


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``config`` with ``--a.b VALUE`` pairs set (values parsed as YAML).

    Raises:
        PeftClipError: An argument that is not a ``--dotted.key VALUE`` pair.
    """
    config = yaml.safe_load(yaml.safe_dump(config))  # a deep copy
    pairs = list(overrides)
    while pairs:
        key = pairs.pop(0)
        value = None
        if key.startswith("--") and "=" in key:
            key, value = key.split("=", 1)
        elif pairs:
            value = pairs.pop(0)
        if not key.startswith("--") or value is None:
            raise PeftClipError(
                f"cannot read the override {key!r}: give recipe overrides as --key.sub VALUE "
                "(e.g. --training.iterations 5)."
            )
        *parents, leaf = key[2:].split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return config


def load_recipe(config: dict[str, Any], where: str) -> tuple[ContinualRecipe, Any]:
    """The recipe and its ``stream`` entry from a parsed YAML mapping.

    Raises:
        PeftClipError: An unknown top-level key or setting.
    """
    unknown = set(config) - set(RECIPE_KEYS)
    if unknown:
        raise PeftClipError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; a continual recipe has "
            f"{', '.join(RECIPE_KEYS)}."
        )
    recipe = ContinualRecipe(
        backbone=BackboneSpec(**(config.get("backbone") or {})),
        strategy=config.get("strategy", "finetune"),
        strategy_options=dict(config.get("strategy_options") or {}),
        adapters=list(config.get("adapters") or []),
        training=TrainingSettings.from_dict(config.get("training") or {}, f"{where}: training"),
        data_root=config.get("data_root"),
        seed=int(config.get("seed", 42)),
    )
    return recipe, config.get("stream", "world")


def run_cell(
    recipe: ContinualRecipe, stream: Stream, recipe_path: str, overrides: list[str]
) -> dict[str, Any]:
    """The results cell of a continual run (its identity in the results database)."""
    from peftclip.continual.registry import build_strategy

    options = build_strategy(recipe.strategy, recipe.strategy_options).options()
    return {
        "protocol": "continual",
        "dataset": stream.name,
        "methods": [{"name": recipe.strategy, "config": {**options, "adapters": recipe.adapters}}],
        "backbone": {
            "model_name": recipe.backbone.model_name,
            "pretrained": recipe.backbone.pretrained,
        },
        "profile": recipe.training.precision,
        "shots": stream.shots,
        "seed": recipe.seed,
        "recipe": recipe_path,
        "recipe_sha256": hashlib.sha256(Path(recipe_path).read_bytes()).hexdigest(),
        "overrides": list(overrides),
        "stream": stream.to_dict(),
        "training": {**asdict(recipe.training), "betas": list(recipe.training.betas)},
    }


def row_records(
    row: int, result: ContinualResult, run_id: str, cell: dict, recipe_text: str, **fields
) -> list[ResultRecord]:
    """One record per dataset of evaluation row ``row`` (0: zero-shot), split
    ``after_task_<row>``; ``metrics`` also say the row, the column in learning order (None for a
    held-out dataset) and whether the dataset is held out."""
    learned = [task.dataset for task in result.stream.tasks]
    return [
        ResultRecord(
            run_id=run_id,
            evaluation=dataset,
            split=f"after_task_{row}",
            metrics={
                **counts,
                "row": row,
                "column": learned.index(dataset) if dataset in learned else None,
                "held_out": dataset not in learned,
            },
            cell=cell,
            recipe=recipe_text,
            **fields,
        )
        for dataset, counts in result.rows[row].items()
    ]


def report(result: ContinualResult) -> str:
    """The accuracy matrix (1 decimal) and Transfer / Avg / Last / BWT as text."""
    names = [task.dataset for task in result.stream.tasks]
    width = max(12, *(len(name) for name in names))
    lines = [" " * 14 + "".join(f"{name[:width]:>{width + 1}}" for name in names)]
    rows = [("zero-shot", result.zero_shot())]
    rows += [(f"after {i + 1}", row) for i, row in enumerate(result.matrix())]
    for label, values in rows:
        lines.append(f"{label:<14}" + "".join(f"{v:>{width + 1}.1f}" for v in values))
    if result.complete:
        metrics = result.metrics()
        transfer = "–" if metrics.transfer is None else f"{metrics.transfer:.1f}"
        bwt = "–" if metrics.bwt is None else f"{metrics.bwt:.1f}"
        lines.append(
            f"Transfer {transfer}  Avg {metrics.avg:.1f}  Last {metrics.last:.1f}  BWT {bwt}"
        )
    if result.stream.held_out:
        zero, last = result.held_out(0), result.held_out(len(result.rows) - 1)
        held = ", ".join(task.dataset for task in result.stream.held_out)
        lines.append(f"held-out ({held}): zero-shot {zero:.1f} → {last:.1f} ({last - zero:+.1f})")
    return "\n".join(lines)


def continual_command(args: list[str]) -> int:
    """Trains a recipe's strategy on a task stream, evaluating every dataset after every task.

    Any further ``--key.sub VALUE`` is a recipe override (e.g. ``--training.iterations 5``).
    Started again with the same arguments, a killed run resumes where it stopped.
    """
    parser = argparse.ArgumentParser(prog="peftclip run continual", description=__doc__)
    parser.add_argument("--config", required=True, help="the continual recipe (YAML)")
    parser.add_argument("--stream", help=f"{', '.join(list_streams())} or a stream YAML file")
    parser.add_argument(
        "--db", help="results database (default $PEFTCLIP_RESULTS_DB or runs/results.sqlite)"
    )
    parser.add_argument("--root", default="runs/continual", help="where run folders go")
    options, overrides = parser.parse_known_args(args)
    path = Path(options.config)
    if not path.is_file():
        raise PeftClipError(f"recipe {path} does not exist; give --config RECIPE.yaml.")
    recipe_text = path.read_text()
    config = apply_overrides(yaml.safe_load(recipe_text) or {}, overrides)
    recipe, stream_entry = load_recipe(config, str(path))
    stream = resolve_stream(options.stream or stream_entry)
    cell = run_cell(recipe, stream, str(path), overrides)
    key = cell_key(cell)
    run_dir = Path(options.root) / f"{stream.name}-{recipe.strategy}-{key}"
    started = time.perf_counter()
    with ResultsStore(options.db) as store:
        store.mark_cell(cell, "running")
        run = ContinualRun(recipe, stream, run_dir)

        def record(row: int, result: ContinualResult) -> None:
            store.add_all(
                row_records(
                    row,
                    result,
                    run_dir.name,
                    cell,
                    recipe_text,
                    trainable_params=run.model.trainable_count(),
                    wall_time_s=time.perf_counter() - started,
                )
            )
            print(f"evaluated after task {row}/{len(stream.tasks)}", flush=True)

        run.on_row = record
        try:
            result = run.run()
        except BaseException as error:
            store.mark_cell(cell, "failed", f"{type(error).__name__}: {error}")
            raise
        store.mark_cell(cell, "ok")
    print(f"{stream.name} · {recipe.strategy} · run folder {run_dir}")
    print(report(result))
    return 0
