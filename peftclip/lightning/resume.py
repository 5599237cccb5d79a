"""What makes a resumed fit equal the uninterrupted one, and a killed fit lose nothing.

* :func:`random_states` / :func:`restore_random_states`: the training process's generators
  (torch CPU and CUDA, Python, NumPy), kept in every checkpoint and put back before the first
  resumed step — dropout, random prompts and the like continue where they were.
* :class:`AtomicCheckpointIO`: a checkpoint is written beside its final name and renamed over it,
  so ``kill -9`` during a write leaves the previous checkpoint intact (Lightning writes in place).
* :class:`CheckpointOnSigterm`: on ``SIGTERM`` (a scheduler's pre-emption notice) the fit writes
  ``last.ckpt`` after the current step and exits with status 143, instead of finishing the epoch
  and saving nothing.

The data order is the data module's part (:mod:`peftclip.data.order`). See docs/resuming.md.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from peftclip.atomic_files import atomic_path

#: The exit status of a fit stopped by SIGTERM (128 + 15, as a shell reports it).
SIGTERM_EXIT_STATUS = 143


@dataclass(frozen=True)
class TrainingPosition:
    """Where a fit stands when a checkpoint is written: the epoch, the batches of it trained, and
    whether that was all of them (the epoch's end hooks may not have run yet)."""

    epoch: int
    batches_done: int
    epoch_done: bool

    @classmethod
    def of(cls, trainer: L.Trainer) -> TrainingPosition:
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return cls(trainer.current_epoch, done, done >= trainer.num_training_batches)

    def next_batch(self) -> tuple[int, int]:
        """``(epoch, batch)`` that training resumes at."""
        return (self.epoch + 1, 0) if self.epoch_done else (self.epoch, self.batches_done)


def random_states() -> dict[str, Any]:
    """The process's random generators, as tensors and plain values (``weights_only`` loads)."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.copy()), position, has_gauss, cached_gaussian],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: dict[str, Any]) -> None:
    """Puts back what :func:`random_states` returned."""
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((name, keys.numpy(), position, has_gauss, cached_gaussian))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, with the file written through
    :func:`peftclip.atomic_files.atomic_path`: beside its final name, flushed to disk, renamed.

    Lightning's own writer stages the file in the system's temporary folder and moves it into
    place; across filesystems (a tmpfs ``/tmp``, a network ``runs/``) that move is a copy into
    the final name, which a kill tears.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if "://" in str(path) or storage_options is not None:  # fsspec's own semantics
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path) as partial:
            torch.save(checkpoint, partial)


def use_atomic_checkpoints(trainer: L.Trainer) -> None:
    """Makes ``trainer`` write checkpoints atomically, unless it was given its own writer."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()


class CheckpointOnSigterm(L.Callback):
    """After the step during which ``SIGTERM`` arrived: ``last.ckpt`` in every checkpoint
    folder, then exit status 143. Lightning itself only stops at the end of the epoch.

    ``peftclip fit`` adds this callback; resume with ``--ckpt_path last``.
    """

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if not getattr(trainer, "received_sigterm", False):
            return
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is not None:
                name = f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
                trainer.save_checkpoint(Path(callback.dirpath) / name)
        raise SystemExit(SIGTERM_EXIT_STATUS)
