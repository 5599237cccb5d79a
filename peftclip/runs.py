"""Run directories: every ``fit`` / ``test`` / protocol run writes into a folder of its own.

``<root>/<run id>/`` holds the resolved config, the checkpoints, the metrics and the log of one
run, where ``<root>`` is the recipe's ``trainer.default_root_dir`` and the run id is the UTC
start time, the command and a short hash of the resolved configuration, e.g.
``20261201-113000-fit-3f2a9c1e``. Nothing is ever written into another run's folder: a second
``fit`` of the same recipe gets a new one, and ``<root>/latest`` points at the newest run.
``--ckpt_path last`` and ``--ckpt_path RUN_ID`` name the checkpoint of a fit run
(docs/resuming.md).
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

from peftclip.errors import PeftClipError

#: The pointer at the newest run of a root.
LATEST = "latest"
#: Where a run keeps its checkpoints, and the one a resume or an evaluation takes.
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"


def config_hash(config_text: str) -> str:
    """The short hash of a resolved configuration that names its runs."""
    return hashlib.sha256(config_text.encode()).hexdigest()[:8]


def new_run_dir(root: str | Path, command: str, config_text: str) -> Path:
    """Creates the folder of a new run under ``root`` and points ``root/latest`` at it.

    Two runs started in the same second with the same configuration get ``-2``, ``-3`` ...:
    the folder is claimed with an exclusive ``mkdir``, so concurrent runs never share one.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{command}-{config_hash(config_text)}"
    for attempt in range(1, 1000):
        run_dir = root / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        _point_latest(root, run_dir.name)
        return run_dir
    raise PeftClipError(f"cannot create a run folder {base} under {root}: too many exist.")


def _point_latest(root: Path, name: str) -> None:
    """``root/latest`` → ``name``, replaced atomically (never missing, never half-made)."""
    partial = root / f".{LATEST}.{os.getpid()}.partial"
    partial.unlink(missing_ok=True)
    try:
        partial.symlink_to(name, target_is_directory=True)
        os.replace(partial, root / LATEST)
    except OSError:  # a filesystem without symlinks: a text file naming the run instead
        partial.unlink(missing_ok=True)
        (root / LATEST).unlink(missing_ok=True)
        (root / f"{LATEST}.txt").write_text(name + "\n")


def fit_runs(root: str | Path) -> list[Path]:
    """The fit runs under ``root``, oldest first (run ids sort by start time)."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and "-fit-" in p.name and not p.is_symlink()]
    return sorted(runs, key=lambda p: p.name)


def resolve_run_checkpoint(value: str, root: str | Path) -> tuple[Path, Path] | None:
    """The ``(run folder, checkpoint)`` that ``--ckpt_path value`` names by run, if it does.

    ``last`` is the newest fit run under ``root`` that has a checkpoint; a run id (a folder
    under ``root``) or a run folder's path is that run. A checkpoint file's path is not a run:
    ``None``.

    Raises:
        PeftClipError: ``last`` with no fit run holding a checkpoint under ``root``, or a run
            folder without ``checkpoints/last.ckpt``.
    """
    if value == "last":
        runs = [run for run in fit_runs(root) if (run / CHECKPOINTS / LAST_CHECKPOINT).is_file()]
        if not runs:
            raise PeftClipError(
                f"--ckpt_path last: there is no fit run with a checkpoint under {root} (no "
                f"*-fit-*/{CHECKPOINTS}/{LAST_CHECKPOINT}; a ModelCheckpoint with save_last: true "
                "writes one); give a checkpoint file or a run id, or leave --ckpt_path out to "
                "start from scratch."
            )
        return runs[-1], runs[-1] / CHECKPOINTS / LAST_CHECKPOINT
    for run_dir in (Path(root) / value, Path(value)):
        if run_dir.is_dir() and (run_dir / CHECKPOINTS).is_dir():
            checkpoint = run_dir / CHECKPOINTS / LAST_CHECKPOINT
            if not checkpoint.is_file():
                raise PeftClipError(
                    f"--ckpt_path {value}: run {run_dir} has no {CHECKPOINTS}/{LAST_CHECKPOINT} "
                    "(it was stopped before its first checkpoint, or saves no last.ckpt); give "
                    "one of its checkpoint files instead."
                )
            return run_dir.resolve(), checkpoint.resolve()
    return None
