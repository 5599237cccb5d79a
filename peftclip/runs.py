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

import yaml

from peftclip.atomic_files import write_text_atomically
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
        write_text_atomically(root / f"{LATEST}.txt", name + "\n")


def fit_runs(root: str | Path) -> list[Path]:
    """The fit runs under ``root``, oldest first (run ids sort by start time)."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and "-fit-" in p.name and not p.is_symlink()]
    return sorted(runs, key=lambda p: p.name)


#: What ``--ckpt_path last`` matches between this run and a fit run of the same root: another
#: dataset's (or sample's) prompt must never be evaluated by mistake.
MATCHED_DATA_KEYS = ("dataset", "shots", "seed", "subsample")


def run_data(run_dir: Path) -> dict:
    """The ``data`` settings a run was started with (its ``config.yaml``); ``{}`` if unread."""
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return {key: config.get("data", {}).get(key) for key in MATCHED_DATA_KEYS}


def resolve_run_checkpoint(
    value: str, root: str | Path, data: dict | None = None
) -> tuple[Path, Path] | None:
    """The ``(run folder, checkpoint)`` that ``--ckpt_path value`` names by run, if it does.

    ``last`` is the newest fit run under ``root`` that has a checkpoint and was trained on the
    same ``data`` (dataset, shots, seed, class half: :data:`MATCHED_DATA_KEYS`); a run id (a
    folder under ``root``) or a run folder's path is that run. A checkpoint file's path is not a
    run: ``None``.

    Raises:
        PeftClipError: ``last`` with no such fit run under ``root``, or a run folder without
            ``checkpoints/last.ckpt``.
    """
    if value == "last":
        saved = [run for run in fit_runs(root) if (run / CHECKPOINTS / LAST_CHECKPOINT).is_file()]
        wanted = {key: (data or {}).get(key) for key in MATCHED_DATA_KEYS}
        runs = [run for run in saved if data is None or run_data(run) == wanted]
        if not runs:
            others = "; ".join(f"{run.name}: {run_data(run)}" for run in saved[-3:])
            raise PeftClipError(
                f"--ckpt_path last: there is no fit run with a checkpoint under {root}"
                + (f" trained on {wanted} (other fit runs there: {others})" if saved else "")
                + f" (a fit run keeps */{CHECKPOINTS}/{LAST_CHECKPOINT} when a ModelCheckpoint "
                "has save_last: true); give a checkpoint file or a run id, or leave "
                "--ckpt_path out to start from scratch."
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
