"""A protocol cell — one dataset, shots and seed of a recipe — and how it runs: its ``peftclip``
commands in child processes, each cell in run folders of its own, its evaluations written into
the results database under the cell's identity (docs/protocols/runner.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from peftclip.results import cell_key

#: Few-shot run lengths by method and K (docs/protocols/few-shot.md): CoOp-family epochs
#: (ImageNet 50 for every K), CLIP-SVD 200·K and CLIP-LoRA 500·K iterations. Other methods, and
#: every method on the embedded world, train as their recipe says.
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

    def folder(self, root: Path) -> Path:
        """The cell's run folders: ``<root>/<protocol>/<dataset>/<K>shot-seed<S>-<key>``. The key
        keeps cells of different recipes or overrides apart under one root, so a cell's
        ``test --ckpt_path last`` can only find its own fit."""
        return root / self.protocol / f"{self.name}-{self.key[:8]}"

    def commands(self, root: Path, db: Path) -> list[list[str]]:
        """The ``peftclip`` invocations of this cell, in order."""
        common = [
            "--config", self.recipe, *self.overrides, *self._run_length(),
            "--data.dataset", self.dataset, "--data.seed", str(self.seed),
            "--seed_everything", str(self.seed),
            "--trainer.default_root_dir", str(self.folder(root)),
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
        if self.dataset.startswith("world_"):
            return []  # the papers' lengths are for their datasets; world recipes set their own
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


def cell_environment(jobs: int) -> dict[str, str]:
    """The environment of a cell's processes: ``jobs`` of them share the cores (a SLURM task's
    own CPUs, else the machine's), so each gets its share of compute threads (unless
    ``OMP_NUM_THREADS`` is set): several processes that each use every core run slower than one
    at a time."""
    cores = int(os.environ.get("SLURM_CPUS_PER_TASK") or os.cpu_count() or 1)
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, cores // jobs))
    return {**os.environ, "OMP_NUM_THREADS": threads}


def run_cell(cell: Cell, root: Path, db: Path, log_dir: Path, jobs: int = 1) -> str | None:
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
