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
        evaluations = {
            key: metrics for key, metrics in module.evaluations.items() if key[1] == split
        }
        records = evaluation_records(
            evaluations,
            run_id=self.run_id,
            cell=self.cell,
            recipe=self.recipe,
            trainable_params=trainable_parameters(module),
            selection_rule=module.selection_rule,
            wall_time_s=time.perf_counter() - self._started,
            peak_memory_mb=peak,
        )
        store_records(self.db, records)


def evaluation_records(evaluations: dict[tuple[str, str], dict], **fields) -> list[ResultRecord]:
    """One record per ``(dataset, split): metrics`` entry (as
    :attr:`PeftClipModule.evaluations` keeps them); ``fields`` are the run's, shared by all."""
    return [
        ResultRecord(evaluation=dataset, split=split, metrics=metrics, **fields)
        for (dataset, split), metrics in evaluations.items()
    ]


def store_records(db: str | Path | None, records: list[ResultRecord]) -> None:
    """Adds ``records`` to the results database (nothing to open when there are none)."""
    if records:
        with ResultsStore(db) as store:
            store.add_all(records)
