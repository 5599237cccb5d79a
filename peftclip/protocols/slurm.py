"""``peftclip run --launcher slurm``: a grid's cells as one SLURM job array, through submitit.

submitit writes the sbatch file, submits the array and brings each task's return value back
through the shared job folder. A task runs its cell's ``peftclip`` commands exactly as the local
runner does, with the cell's records written into a database on the node's local disk (SQLite's
write-ahead log does not work across the hosts of a network file system), and returns them; the
runner, which waits for the array, stores them in the results database on its own host. See
docs/protocols/runner.md#slurm.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from peftclip.errors import PeftClipError
from peftclip.protocols.cells import Cell, run_cell
from peftclip.results import ResultRecord, ResultsStore


@dataclass(frozen=True)
class SlurmOptions:
    """What every task of the array asks SLURM for (``peftclip run --slurm_*``).

    Attributes:
        partition: The partition (None: the cluster's default).
        account: The account to charge (None: the user's default).
        gpus: GPUs per task.
        cpus: CPU cores per task (data loading and the cell's compute threads).
        mem_gb: Memory per task in GB (None: the partition's default).
        time_min: Wall-time limit of each task, in minutes.
        parallelism: How many tasks of the array run at once (``--jobs``).
    """

    partition: str | None = None
    account: str | None = None
    gpus: int = 1
    cpus: int = 8
    mem_gb: float | None = None
    time_min: int = 240
    parallelism: int = 1


def executor(folder: Path, options: SlurmOptions, cluster: str = "slurm"):
    """A submitit executor for the cells' tasks.

    Args:
        folder: Where submitit keeps the sbatch files, the pickled tasks and their logs.
        options: The resources of each task.
        cluster: ``slurm``; ``local`` runs the same tasks as local processes (what the tests
            use: the same code path without a cluster).
    """
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(
        name="peftclip-cell",
        timeout_min=options.time_min,
        cpus_per_task=options.cpus,
        gpus_per_node=options.gpus,
        mem_gb=options.mem_gb,
        slurm_partition=options.partition,
        slurm_account=options.account,
        slurm_array_parallelism=options.parallelism,
    )
    return executor


@dataclass(frozen=True)
class CellOutcome:
    """What a task returns: its error line (None on success) and the cell's records."""

    error: str | None
    records: list[ResultRecord]


def run_cell_task(cell: Cell, root: Path) -> CellOutcome:
    """One task of the array: runs ``cell`` on the node and returns its records. The cell's
    compute threads are the task's CPUs (``SLURM_CPUS_PER_TASK``, see
    :func:`peftclip.protocols.cells.cell_environment`)."""
    with tempfile.TemporaryDirectory(prefix="peftclip-cell-") as local:
        db = Path(local) / "records.sqlite"
        error = run_cell(cell, root, db, root / "logs")
        records = []
        if db.exists():
            with ResultsStore(db, readonly=True) as store:
                records = store.records()  # the cell's, and zero-shot CLIP's of base2new
    if error is None and not records:
        error = "the cell finished without recording an evaluation"
    return CellOutcome(error, records)


def job_error(job) -> str:
    """One line for a task that did not return (SLURM's time limit, a node failure, ...)."""
    problem = job.exception()
    lines = [line for line in str(problem).splitlines() if line.strip()] if problem else []
    last = lines[-1] if lines else f"state {job.state}"
    return f"SLURM job {job.job_id} did not finish: {last} (submitit logs {job.paths.folder})"


def check_available(cluster: str) -> None:
    """Fails with what to do when SLURM's commands are not on this machine."""
    import shutil

    missing = [command for command in ("sbatch", "srun") if shutil.which(command) is None]
    if cluster == "slurm" and missing:
        raise PeftClipError(
            f"--launcher slurm needs SLURM's {' and '.join(missing)} on this machine (a "
            "cluster's login node); not on PATH. Run with --launcher local here."
        )
