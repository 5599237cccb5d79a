"""Results records of plain ``peftclip fit`` / ``validate`` / ``test`` runs (docs/results.md).

Every evaluation a run makes — the test split of each evaluated dataset, the val split of a
``validate`` or at the end of a ``fit`` — becomes a :class:`peftclip.results.ResultRecord` in
the results database, with its per-class counts, the run's cell (protocol ``single``) and its
resolved recipe. The protocol runner writes the records of its cells the same way.
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from peftclip.results import ResultRecord, ResultsStore


def trainable_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class RecordResults(L.Callback):
    """Writes the run's evaluations into the results database when they end.

    Args:
        db: The results database (None: ``$PEFTCLIP_RESULTS_DB`` or ``runs/results.sqlite``).
        run_id: The run folder's name (peftclip.runs).
        cell: What identifies the run (protocol, dataset, methods and configs, backbone, ...).
        recipe: The resolved config text.
    """

    def __init__(self, db: str | Path | None, run_id: str, cell: dict, recipe: str) -> None:
        self.db = db
        self.run_id = run_id
        self.cell = cell
        self.recipe = recipe
        self._started = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, module) -> None:
        self._write(module, "val")

    def on_validation_end(self, trainer: L.Trainer, module) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._write(module, "val")

    def on_test_end(self, trainer: L.Trainer, module) -> None:
        self._write(module, "test")

    def _write(self, module, split: str) -> None:
        peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_initialized() else None
        records = [
            ResultRecord(
                run_id=self.run_id,
                evaluation=dataset,
                split=split,
                metrics=metrics,
                trainable_params=trainable_parameters(module),
                wall_time_s=time.perf_counter() - self._started,
                peak_memory_mb=peak,
                cell=self.cell,
                recipe=self.recipe,
            )
            for (dataset, evaluated), metrics in module.evaluations.items()
            if evaluated == split
        ]
        if records:
            with ResultsStore(self.db) as store:
                store.add_all(records)
