"""Callbacks that stop a fit the hard way, for tests/test_resume.py (``--trainer.callbacks+=``).

Each acts at the start of the step after ``step`` optimizer steps, i.e. after the checkpoint of
step ``step`` was written, unless said otherwise.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import lightning as L
import torch


class CrashAt(L.Callback):
    """Raises (an in-process stand-in for a crash) before the step after ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"injected crash after step {self.step}")


class KillAt(L.Callback):
    """Sends ``signal`` (SIGKILL: nothing runs after it) to the fit before the step after
    ``step``."""

    def __init__(self, step: int, signal_name: str = "SIGKILL") -> None:
        self.step = step
        self.signal = getattr(signal, signal_name)

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signal)


class KillDuringSave(L.Callback):
    """SIGKILL in the middle of writing the checkpoint of step ``step``: ``torch.save`` writes
    half of the file it was given, then the process dies."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step != self.step:
            return
        original = torch.save

        def torn_save(obj, f, *args, **kwargs):
            original(obj, f, *args, **kwargs)
            path = Path(f)
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = torn_save


class RecordMetrics(L.Callback):
    """Writes the trainer's logged metrics at the end of the fit to a JSON file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer, *args) -> None:
        values = {k: float(v) for k, v in sorted(trainer.callback_metrics.items())}
        Path(self.path).write_text(json.dumps({"step": trainer.global_step, **values}))


class PoisonAt(L.Callback):
    """Makes the adapters' parameters NaN before the step after ``step`` (a diverged run)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, module, *args) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                for parameter in module.adapters.parameters():
                    parameter.fill_(float("nan"))
