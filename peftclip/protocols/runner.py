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
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from peftclip.errors import PeftClipError
from peftclip.protocols.cells import Cell, run_cell
from peftclip.protocols.slurm import SlurmOptions
from peftclip.results import ResultsStore

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
#: Base-to-new halves each task's classes; a world task with one class in a half (counts: 2 + 1,
#: sizes: 1 + 1) scores 100 % there by construction, so base2new's world suite keeps the tasks
#: with at least two classes in each half.
WORLD_BASE2NEW = ("world_objects", "world_shapes", "world_colors", "world_backgrounds")
#: Domain generalization and cross-dataset train once on the source, then test every target.
TARGETS = {
    ("dg", "coop11"): ("imagenet", ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")),
    ("xd", "coop11"): ("imagenet", COOP11[1:]),
    ("dg", "world"): ("world_objects", tuple(f"world_objects_{s}" for s in WORLD_SHIFTS)),
    ("xd", "world"): ("world_objects", WORLD[1:]),
}
DEFAULT_SHOTS = {"few_shot": (1, 2, 4, 8, 16), "base2new": (16,), "dg": (16,), "xd": (16,)}


def suite_datasets(protocol: str, suite: str) -> tuple[str, ...]:
    """The datasets a suite stands for under ``protocol``."""
    if (protocol, suite) == ("base2new", "world"):
        return WORLD_BASE2NEW
    return SUITES[suite]


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
        names = list(datasets or suite_datasets(protocol, suite or "coop11"))
    cells = [
        Cell(protocol, recipe, name, k, seed, tuple(overrides), targets, resolved)
        for name in names
        for k in (shots if shots is not None else DEFAULT_SHOTS[protocol])
        for seed in seeds
    ]
    if not cells:
        raise PeftClipError("the grid has no cells: give at least one dataset, shot and seed.")
    return cells


@dataclass
class Progress:
    """Cells done / running / failed / total, and an ETA from the cells finished so far."""

    total: int
    done: int = 0
    failed: int = 0
    running: int = 0
    queued: int = 0
    skipped: int = 0
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        finished = self.done + self.failed
        ran = finished - self.skipped
        eta = ""
        if ran > 0:
            per_cell = (time.monotonic() - self.started) / ran  # wall time, jobs included
            eta = f", ETA {per_cell * (self.total - finished) / 60:.1f} min"
        queued = f", {self.queued} queued" if self.queued else ""
        return (
            f"{self.done} done, {self.running} running{queued}, {self.failed} failed, "
            f"{self.total} cells{eta}"
        )


#: What a launcher yields for every finished cell: the cell, its error line (None on success)
#: and its records when the launcher brings them back (None: the cell stored them itself).
Outcome = tuple[Cell, str | None, list | None]


def _local_outcomes(
    pending: list[Cell], db: Path, root: Path, jobs: int, store: ResultsStore, progress: Progress
) -> Iterator[Outcome]:
    """Runs the cells on this machine, ``jobs`` at a time; each writes its records into ``db``."""
    futures: dict[Future, Cell] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        queue = list(pending)
        while queue or futures:
            while queue and len(futures) < jobs:
                cell = queue.pop(0)
                store.mark_cell(cell.identity(), "running")
                futures[pool.submit(run_cell, cell, root, db, root / "logs", jobs)] = cell
            progress.running = len(futures)
            finished, _ = wait(futures, return_when=FIRST_COMPLETED)
            for future in finished:
                cell = futures.pop(future)
                progress.running = min(jobs, len(futures) + len(queue))  # the next one starts
                yield cell, future.result(), None


def _slurm_outcomes(
    pending: list[Cell],
    root: Path,
    options: SlurmOptions,
    cluster: str,
    store: ResultsStore,
    progress: Progress,
    poll_s: float,
) -> Iterator[Outcome]:
    """Submits the cells as one job array and yields each as its task finishes.

    The runner waits for the array; interrupting it (Ctrl-C) cancels the tasks not yet finished
    and records their cells as failed, so that the next invocation runs them again.
    """
    from peftclip.protocols import slurm

    slurm.check_available(cluster)
    executor = slurm.executor(root / "slurm", options, cluster)
    jobs = executor.map_array(slurm.run_cell_task, pending, [root] * len(pending))
    for cell in pending:
        store.mark_cell(cell.identity(), "running")
    print(f"submitted {len(jobs)} cells as job array {jobs[0].job_id.split('_')[0]}", flush=True)
    waiting = dict(zip(jobs, pending, strict=True))
    try:
        while waiting:
            finished = [job for job in waiting if job.done()]
            states = [job.state for job in waiting if job not in finished]
            running = sum(state == "RUNNING" for state in states)
            moved = (running, len(states) - running) != (progress.running, progress.queued)
            progress.running, progress.queued = running, len(states) - running
            for job in finished:
                cell = waiting.pop(job)
                if job.exception() is None:
                    outcome = job.result()
                    yield cell, outcome.error, outcome.records
                else:
                    yield cell, slurm.job_error(job), None
            if moved and not finished:  # the runner prints a line for every finished cell
                print(progress.line(), flush=True)
            if waiting:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        for job, cell in waiting.items():
            job.cancel(check=False)
            store.mark_cell(cell.identity(), "failed", "cancelled: the runner was interrupted")
        print(
            f"interrupted: cancelled {len(waiting)} unfinished cells; rerun the same command "
            "to run them.",
            flush=True,
        )
        raise


def run_grid(
    cells: list[Cell],
    db: Path,
    root: Path,
    jobs: int = 1,
    dry_run: bool = False,
    slurm: SlurmOptions | None = None,
    cluster: str = "slurm",
    poll_s: float = 10.0,
) -> int:
    """Runs the cells not yet done — ``jobs`` at a time on this machine, or as a SLURM job array
    when ``slurm`` is given (``cluster="local"``: submitit's local executor) — and returns the
    number that failed."""
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
    if not pending:
        return 0
    with ResultsStore(db) as store:
        if slurm is None:
            outcomes = _local_outcomes(pending, db, root, max(jobs, 1), store, progress)
        else:
            outcomes = _slurm_outcomes(pending, root, slurm, cluster, store, progress, poll_s)
        for cell, error, records in outcomes:
            if error is None and records:
                store.finish_cell(cell.identity(), records)
            elif error is None:
                store.mark_cell(cell.identity(), "ok")
            else:
                store.mark_cell(cell.identity(), "failed", error)
            if error is None:
                progress.done += 1
            else:
                progress.failed += 1
                print(f"failed: {cell.name}: {error}", flush=True)
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
    parser.add_argument(
        "--jobs", type=int, default=1, help="cells at once (on this machine, or SLURM tasks)"
    )
    parser.add_argument("--dry-run", action="store_true", help="list the cells and which are done")
    parser.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="run the cells here, or submit them as a SLURM job array (submitit) and wait",
    )
    slurm = parser.add_argument_group("SLURM (with --launcher slurm; per task of the array)")
    slurm.add_argument("--slurm_partition", help="partition (default: the cluster's)")
    slurm.add_argument("--slurm_account", help="account to charge")
    slurm.add_argument("--slurm_gpus", type=int, default=1, help="GPUs per task (default 1)")
    slurm.add_argument("--slurm_cpus", type=int, default=8, help="CPU cores per task (default 8)")
    slurm.add_argument("--slurm_mem_gb", type=float, help="memory per task in GB")
    slurm.add_argument(
        "--slurm_time", type=int, default=240, help="time limit per task, minutes (default 240)"
    )
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
    slurm = None
    if options.launcher == "slurm":
        slurm = SlurmOptions(
            partition=options.slurm_partition,
            account=options.slurm_account,
            gpus=options.slurm_gpus,
            cpus=options.slurm_cpus,
            mem_gb=options.slurm_mem_gb,
            time_min=options.slurm_time,
            parallelism=options.jobs,
        )
    failed = run_grid(cells, db, Path(options.root), options.jobs, options.dry_run, slurm)
    return 1 if failed else 0
