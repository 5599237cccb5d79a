"""``peftclip run``: a protocol's whole grid — datasets × shots × seeds — from one recipe.

Every cell is a run of ``peftclip fit`` (+ ``test``) or ``peftclip base2new`` in its own process,
with its own run folder (peftclip.runs), writing its evaluations into the results database
(peftclip.results) under the cell's identity. A cell recorded as done is skipped, a failed one is
recorded with its error and retried by the next invocation, and a failure never stops the sweep.
See docs/protocols/runner.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import yaml

from peftclip.errors import PeftClipError
from peftclip.results import ResultsStore, cell_key

PROTOCOLS = ("few_shot", "base2new", "dg", "xd")
#: The 11 datasets of CoOp's benchmark, in the papers' table order.
COOP11 = (
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
    "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101",
)  # fmt: skip
#: The embedded world's tasks (docs/world.md): every protocol runs offline in minutes.
WORLD = (
    "world_objects", "world_shapes", "world_colors", "world_backgrounds", "world_counts",
    "world_sizes",
)  # fmt: skip
WORLD_SHIFTS = ("sketch", "noise", "blur", "low_contrast", "texture")
SUITES = {"coop11": COOP11, "world": WORLD}
#: Domain generalization and cross-dataset train once on the source, then test every target.
TARGETS = {
    ("dg", "coop11"): ("imagenet", ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")),
    ("xd", "coop11"): ("imagenet", COOP11[1:]),
    ("dg", "world"): ("world_objects", tuple(f"world_objects_{s}" for s in WORLD_SHIFTS)),
    ("xd", "world"): ("world_objects", WORLD[1:]),
}
DEFAULT_SHOTS = {"few_shot": (1, 2, 4, 8, 16), "base2new": (16,), "dg": (16,), "xd": (16,)}
#: Few-shot run lengths by method and K (docs/protocols/few-shot.md): CoOp-family epochs
#: (ImageNet 50 for every K), CLIP-SVD 200·K and CLIP-LoRA 500·K iterations. Other methods
#: train as their recipe says.
FEW_SHOT_EPOCHS = {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}
FEW_SHOT_LENGTH = {
    "coop": "epochs",
    "clip_svd": 200,
    "lora": 500,
}


@dataclass(frozen=True)
class Cell:
    """One job of the grid: a dataset, a number of shots and a seed of a protocol's recipe."""

    protocol: str
    recipe: str
    dataset: str
    shots: int | None
    seed: int
    overrides: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    #: methods, backbone and profile, resolved from the recipe and the overrides
    resolved: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def methods(self) -> list[dict]:
        return self.resolved.get("methods", [])

    def identity(self) -> dict:
        """The cell as the results database keys it (peftclip.results.cell_key)."""
        return {
            "protocol": self.protocol,
            "dataset": self.dataset,
            "methods": list(self.methods),
            "backbone": self.resolved.get("backbone"),
            "profile": self.resolved.get("profile"),
            "shots": self.shots,
            "seed": self.seed,
            "recipe": self.recipe,
            "recipe_sha256": self.resolved.get("recipe_sha256"),
            "overrides": list(self.overrides),
        }

    @cached_property
    def key(self) -> str:
        return cell_key(self.identity())

    @property
    def name(self) -> str:
        shots = "full" if self.shots is None else f"{self.shots}shot"
        return f"{self.dataset}/{shots}-seed{self.seed}"

    def commands(self, root: Path, db: Path) -> list[list[str]]:
        """The ``peftclip`` invocations of this cell, in order."""
        common = [
            "--config", self.recipe, *self.overrides, *self._run_length(),
            "--data.dataset", self.dataset, "--data.seed", str(self.seed),
            "--seed_everything", str(self.seed),
            "--trainer.default_root_dir", str(root / self.protocol / self.name),
            "--results_db", str(db), "--results_cell", json.dumps(self.identity()),
        ]  # fmt: skip
        if self.shots is not None:
            common += ["--data.shots", str(self.shots)]
        if self.protocol == "base2new":
            return [["base2new", *common]]
        test = ["test", *common, "--ckpt_path", "last"]
        if self.targets:
            test += ["--data.eval_datasets", json.dumps(list(self.targets))]
        return [["fit", *common], test]

    def _run_length(self) -> list[str]:
        if self.protocol != "few_shot" or self.shots is None or not self.methods:
            return []
        if any(
            arg.startswith(("--trainer.max_epochs", "--trainer.max_steps"))
            for arg in self.overrides
        ):
            return []  # the user's length wins (and is part of the identity)
        length = FEW_SHOT_LENGTH.get(self.methods[0]["name"])
        if length == "epochs":
            epochs = 50 if self.dataset == "imagenet" else FEW_SHOT_EPOCHS.get(self.shots)
            return [] if epochs is None else ["--trainer.max_epochs", str(epochs)]
        if isinstance(length, int):
            return ["--trainer.max_steps", str(length * self.shots)]
        return []


def resolved_identity(recipe: str, overrides: list[str]) -> dict:
    """What the recipe with ``overrides`` trains, resolved by ``peftclip fit --print_config``:
    ``methods`` (the adapters as ``{"name", "config"}`` with every setting), ``backbone``
    (model name and weights), ``profile`` and the recipe file's ``recipe_sha256`` — the results
    cell's part of the identity, resolved once for the whole grid.

    Raises:
        PeftClipError: The recipe is missing, or it does not parse with the overrides (its
            first error line).
    """
    if not Path(recipe).is_file():
        raise PeftClipError(f"recipe {recipe} does not exist; give --config RECIPE.yaml.")
    printed = subprocess.run(
        [sys.executable, "-m", "peftclip", "fit", "--config", recipe, *overrides, "--print_config"],
        capture_output=True,
        text=True,
    )
    if printed.returncode != 0:
        lines = [line for line in printed.stderr.splitlines() if line.strip()]
        reason = next(
            (line for line in lines if "error" in line.lower()), lines[-1] if lines else ""
        )
        raise PeftClipError(
            f"recipe {recipe} with {' '.join(overrides) or 'no overrides'} does "
            f"not parse: {reason.removeprefix('peftclip: error: ')}"
        )
    from peftclip.adapters import adapter_class_path, list_adapters

    names = {adapter_class_path(name): name for name in list_adapters()}
    model = yaml.safe_load(printed.stdout).get("model") or {}
    backbone = model.get("backbone") or {}
    return {
        "methods": [
            {"name": names.get(entry["class_path"], entry["class_path"]),
             "config": entry.get("init_args") or {}}
            for entry in model.get("adapters") or []
        ],
        "backbone": {key: backbone.get(key) for key in ("model_name", "pretrained")},
        "profile": model.get("precision_profile"),
        "recipe_sha256": hashlib.sha256(Path(recipe).read_bytes()).hexdigest(),
    }  # fmt: skip


def expand(
    protocol: str,
    recipe: str,
    datasets: list[str] | None,
    suite: str | None,
    shots: list[int] | None,
    seeds: list[int],
    overrides: list[str],
) -> list[Cell]:
    """The cells of a protocol grid, in the order they run.

    Raises:
        PeftClipError: An unknown protocol / suite / dataset, or a grid without cells.
    """
    if protocol not in PROTOCOLS:
        raise PeftClipError(f"unknown protocol '{protocol}'; known: {', '.join(PROTOCOLS)}.")
    if suite is not None and suite not in SUITES:
        raise PeftClipError(f"unknown suite '{suite}'; known: {', '.join(SUITES)}.")
    from peftclip.data import list_datasets

    known = set(list_datasets())
    unknown = [name for name in datasets or [] if name not in known]
    if unknown:
        raise PeftClipError(
            f"unknown dataset(s) {', '.join(unknown)}; `peftclip list datasets` lists them."
        )
    resolved = resolved_identity(recipe, overrides)
    targets: tuple[str, ...] = ()
    if protocol in ("dg", "xd"):
        if datasets:
            raise PeftClipError(
                f"{protocol} trains on one source and tests its fixed targets: give --suite "
                f"({', '.join(SUITES)}), not --datasets."
            )
        source, targets = TARGETS[(protocol, suite or "coop11")]
        names = [source]
    else:
        names = list(datasets or SUITES[suite or "coop11"])
    cells = [
        Cell(protocol, recipe, name, k, seed, tuple(overrides), targets, resolved)
        for name in names
        for k in (shots if shots is not None else DEFAULT_SHOTS[protocol])
        for seed in seeds
    ]
    if not cells:
        raise PeftClipError("the grid has no cells: give at least one dataset, shot and seed.")
    return cells


def cell_environment(jobs: int) -> dict[str, str]:
    """The environment of a cell's processes: ``jobs`` of them share the machine's cores, so each
    gets its share of compute threads (unless ``OMP_NUM_THREADS`` is set): several processes
    that each use every core run slower than one at a time."""
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // jobs))
    return {**os.environ, "OMP_NUM_THREADS": threads}


def _run_cell(cell: Cell, root: Path, db: Path, log_dir: Path, jobs: int = 1) -> str | None:
    """Runs a cell's commands in child processes; ``None`` on success, else the error line."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{cell.key}.log"
    with open(log, "w") as output:
        for command in cell.commands(root, db):
            status = subprocess.run(
                [sys.executable, "-m", "peftclip", *command],
                stdout=output,
                stderr=subprocess.STDOUT,
                env=cell_environment(jobs),
            ).returncode
            if status != 0:
                lines = [line for line in log.read_text().splitlines() if line.strip()]
                errors = [line for line in lines if "error" in line.lower()]
                last = (errors or lines or [""])[-1]
                return f"`peftclip {command[0]}` exited {status}: {last} (log {log})"
    return None


@dataclass
class Progress:
    """Cells done / running / failed / total, and an ETA from the cells finished so far."""

    total: int
    done: int = 0
    failed: int = 0
    running: int = 0
    skipped: int = 0
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        finished = self.done + self.failed
        ran = finished - self.skipped
        eta = ""
        if ran > 0:
            per_cell = (time.monotonic() - self.started) / ran  # wall time, jobs included
            eta = f", ETA {per_cell * (self.total - finished) / 60:.1f} min"
        return (
            f"{self.done} done, {self.running} running, {self.failed} failed, {self.total} "
            f"cells{eta}"
        )


def run_grid(cells: list[Cell], db: Path, root: Path, jobs: int = 1, dry_run: bool = False) -> int:
    """Runs the cells not yet done, ``jobs`` at a time; returns the number that failed."""
    with ResultsStore(db) as store:
        status = {cell.key: store.cell_status(cell.key) for cell in cells}
    pending = [
        cell for cell in cells if status[cell.key] is None or status[cell.key].status != "ok"
    ]
    if dry_run:
        for cell in cells:
            state = status[cell.key].status if status[cell.key] else "new"
            print(f"{cell.protocol:<9} {cell.name:<40} {state}")
        print(f"{len(cells) - len(pending)} of {len(cells)} cells done; {len(pending)} to run.")
        return 0
    skipped = len(cells) - len(pending)
    progress = Progress(total=len(cells), done=skipped, skipped=skipped)
    print(
        f"{progress.done} of {len(cells)} cells already done; running {len(pending)}.", flush=True
    )
    futures: dict[Future, Cell] = {}
    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool, ResultsStore(db) as store:
        queue = list(pending)
        while queue or futures:
            while queue and len(futures) < max(jobs, 1):
                cell = queue.pop(0)
                store.mark_cell(cell.identity(), "running")
                futures[pool.submit(_run_cell, cell, root, db, root / "logs", jobs)] = cell
                progress.running = len(futures)
            finished, _ = wait(futures, return_when=FIRST_COMPLETED)
            for future in finished:
                cell = futures.pop(future)
                error = future.result()
                if error is None:
                    store.mark_cell(cell.identity(), "ok")
                    progress.done += 1
                else:
                    store.mark_cell(cell.identity(), "failed", error)
                    progress.failed += 1
                    print(f"failed: {cell.name}: {error}", flush=True)
                progress.running = len(futures)
                print(progress.line(), flush=True)
    return progress.failed


def run_command(args: list[str]) -> int:
    """Runs a protocol's grid of cells (datasets × shots × seeds) and records every result.

    Any further ``--key value`` is a recipe override, as with ``peftclip fit``, and part of each
    cell's identity. Cells already recorded are skipped; failed ones run again.
    ``peftclip run continual`` trains a task stream instead (docs/continual.md).
    """
    if args[:1] == ["continual"]:
        from peftclip.continual.command import continual_command

        return continual_command(args[1:])
    parser = argparse.ArgumentParser(prog="peftclip run", description=run_command.__doc__)
    parser.add_argument("protocol", help=f"one of {', '.join(PROTOCOLS)} or continual")
    parser.add_argument("--config", required=True, help="the recipe (YAML) of every cell")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--datasets", nargs="+", help="registry names")
    group.add_argument("--suite", help=f"one of {', '.join(SUITES)} (default coop11)")
    parser.add_argument("--shots", nargs="+", type=int, help="default: the protocol's")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument(
        "--db", help="results database (default $PEFTCLIP_RESULTS_DB or runs/results.sqlite)"
    )
    parser.add_argument("--root", default="runs/grid", help="where the cells' run folders go")
    parser.add_argument("--jobs", type=int, default=1, help="cells at once on this machine")
    parser.add_argument("--dry-run", action="store_true", help="list the cells and which are done")
    options, overrides = parser.parse_known_args(args)
    bad = [arg for arg in overrides if arg.startswith("--") and "." not in arg.split("=")[0]]
    if bad:
        raise PeftClipError(
            f"unknown option {bad[0]}; `peftclip run --help` lists the runner's options, and "
            "recipe overrides are dotted keys (--trainer.max_epochs 2)."
        )
    cells = expand(
        options.protocol, options.config, options.datasets, options.suite, options.shots,
        options.seeds, overrides,
    )  # fmt: skip
    from peftclip.results.store import default_db_path

    db = Path(options.db) if options.db else default_db_path()
    failed = run_grid(cells, db, Path(options.root), options.jobs, options.dry_run)
    return 1 if failed else 0
