"""The order and the augmentation of training samples as a function of (seed, epoch) alone.

A resumed run must see the very batches, and the very random crops, that the uninterrupted run
saw. PyTorch's shuffling draws from a generator whose state lives in the process, and random
augmentation draws from each worker's generator, whose state depends on how many samples that
worker happened to process; neither survives a restart. Here instead:

* :class:`EpochSampler` derives the permutation of epoch ``e`` from ``(seed, e)`` and can start
  an epoch at any batch (a run resumed mid-epoch skips what was trained, without loading it);
* every index comes with its own augmentation seed, and :class:`SeededSamples` applies the
  transform under that seed, so a sample's crop depends on ``(seed, epoch, index)`` only — not
  on the worker that loads it, nor on ``num_workers``, nor on whether the epoch is shuffled:
  view ``e`` of image ``i`` in a pass over the split in order (frozen image features, the
  image-feature cache) is the very crop epoch ``e`` of training gives it.

See docs/resuming.md.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

#: The stream of augmentation seeds, apart from the stream of the shuffle (``derived_seed``'s
#: last part), so the seeds are the same whether or not an epoch is shuffled.
_AUGMENTATION_STREAM = "augmentation"


def derived_seed(*parts: int | str) -> int:
    """A 63-bit seed that depends on ``parts`` only (the same in every process and run)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def augmentation_seeds(seed: int, epoch: int, size: int) -> list[int]:
    """The augmentation seed of every sample ``0 … size-1`` in epoch ``epoch`` of run ``seed``."""
    generator = torch.Generator().manual_seed(derived_seed(seed, epoch, _AUGMENTATION_STREAM))
    return torch.randint(2**62, (size,), generator=generator).tolist()


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, augmentation seed)`` for every sample, in the order of the epoch.

    It has no ``set_epoch``: Lightning's count is off by one after a restart at an epoch's end.
    The epoch is read when an iterator starts, from ``epoch`` (the trainer's current epoch);
    :meth:`resume_at` overrides it once, for the first iterator of a restored run — created
    before the trainer's own counters are restored.

    Args:
        size: Number of samples.
        seed: Seed of the run; the order of epoch ``e`` is a function of ``(seed, e)``.
        epoch: The epoch an iterator serves (called as it starts).
        shuffle: A random permutation per epoch, or the samples in order (still with
            per-epoch augmentation seeds: the views of a feature extraction).
        batch_size: Samples per global batch (what :meth:`resume_at` counts in).
        rank: This process's rank among ``world_size`` data-parallel processes.
        world_size: Data-parallel processes (DDP). Each global batch ``j`` of the epoch's order
            (samples ``j·B … (j+1)·B − 1``) is cut into ``world_size`` consecutive slices and
            rank ``r`` yields slice ``r``; its loader batches ``B / world_size`` samples. So the
            ranks' batches of step ``j`` together are exactly the single-process batch ``j``,
            and DDP's gradient average equals the single-process gradient (docs/multi_gpu.md).
    """

    def __init__(
        self,
        size: int,
        seed: int,
        epoch: Callable[[], int],
        shuffle: bool = True,
        batch_size: int = 1,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.size = size
        self.seed = seed
        self.epoch = epoch
        self.shuffle = shuffle
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        #: The epoch of the latest iterator (a trainer can check it against its own).
        self.serving: int | None = None
        self._resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """The next iterator serves ``epoch`` from its batch ``batches_done`` on (once)."""
        self._resume = (epoch, batches_done)

    def __len__(self) -> int:
        # The full epoch, also when resuming: the trainer counts the skipped batches as done.
        return len(self._slice(torch.arange(self.size)))

    def _slice(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's part of ``order``: slice ``rank`` of every global batch."""
        if self.world_size == 1:
            return order
        batches = order.split(self.batch_size)
        return torch.cat([batch.tensor_split(self.world_size)[self.rank] for batch in batches])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = self._resume or (self.epoch(), 0)
        self._resume, self.serving = None, epoch
        if self.shuffle:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, epoch))
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        sample_seeds = augmentation_seeds(self.seed, epoch, self.size)
        for index in self._slice(order[skip * self.batch_size :]).tolist():
            yield index, sample_seeds[index]


class SeededSamples(Dataset):
    """``dataset[index]`` computed under the sample's own seed: ``samples[(index, seed)]``.

    The global generators of torch (CPU), Python and NumPy are seeded for the call and put back
    afterwards, so the caller's random state (the training process when ``num_workers`` is 0)
    is untouched.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        torch_state, python_state = torch.default_generator.get_state(), random.getstate()
        numpy_state = np.random.get_state()
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            return self.dataset[index]
        finally:
            torch.default_generator.set_state(torch_state)
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class SampleIndices(Dataset):
    """``(index, label)`` for a sample key — an index, or ``(index, seed)`` as
    :class:`EpochSampler` yields — without loading the image: the batches of a model that reads
    its image features from a table (peftclip.image_cache)."""

    def __init__(self, dataset: Dataset) -> None:
        self.labels = list(dataset.targets)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[int, int]:
        index = key[0] if isinstance(key, tuple) else key
        return index, self.labels[index]
