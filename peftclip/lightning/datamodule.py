"""``PeftClipDataModule``: a registered dataset → train/val/test dataloaders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Dataset

from peftclip.backbone import BackboneSpec, backbone_transforms
from peftclip.data import ClassificationData, build_dataset
from peftclip.data.fewshot import base_new_split, few_shot
from peftclip.data.order import EpochSampler, SampleIndices, SeededSamples
from peftclip.data.transforms import build_transform
from peftclip.errors import PeftClipError
from peftclip.image_cache import transform_id
from peftclip.lightning.resume import TrainingPosition

_STAGE_SPLITS = {"fit": ("train",), "validate": ("val",), "test": ("test",), "predict": ("test",)}


class PeftClipDataModule(L.LightningDataModule):
    """Serves one registered dataset (and, for ``test``, any extra evaluation datasets).

    The data module builds its transforms itself from ``backbone`` (open_clip's transforms of
    that model and input size, read from its configuration); the recipe picks them
    (``backbone``) or a named transform built at that size. On the command line
    ``data.backbone`` is linked to ``model.backbone``, so the two cannot differ.

    Args:
        dataset: Registry name (``image_folder``, ``csv``, ``world_objects``, ...).
        root: Data root of the dataset.
        options: Extra keyword arguments of the dataset's builder.
        shots: Training images per class (Dassl sampler; val gets ``min(shots, 4)``); ``None``
            uses the full splits.
        seed: Seed of the few-shot sample.
        cache_dir: Where few-shot manifests are kept (default ``<root>/.peftclip``; set it
            for a read-only data root).
        sampler: ``dassl`` (draw, or reuse the drawn manifest), ``dassl-pkl`` (a manifest
            imported from Dassl's pkl with ``peftclip data import-pkl``), or the Tip-Adapter
            lineage's ``tip_train_only`` / ``lpp`` (docs/datasets.md#few-shot-samples).
        subsample: ``all`` classes, or the ``base`` / ``new`` half
            (docs/protocols/base-to-new.md), taken after few-shot sampling.
        train_transform: ``backbone`` (open_clip's training transform of the model), ``eval``
            (the evaluation transform: no augmentation), or a named transform of
            docs/datasets.md#transforms (``dassl_train``, ``tip_train``, ``zscl_train``,
            ``openclip_train``).
        eval_transform: ``backbone`` or ``dassl_test`` / ``zscl_test``.
        eval_datasets: Further datasets (same root) whose test splits ``test`` evaluates too,
            each with a head of its own classes: ImageNet → variants (domain generalization),
            one source → ten targets (cross-dataset). An entry is a registry name or
            ``{dataset: NAME, options: {...}}`` (e.g. ImageNet-A with ``head: masked1000``);
            metrics are logged under the dataset's name.
        batch_size: Training batch size.
        drop_last: ``never`` keeps the last partial training batch; ``dassl`` drops it when
            the training split has at least ``batch_size`` images (Dassl's rule, which the
            CoOp-family code trains with: a smaller split is one partial batch per epoch).
        eval_batch_size: Validation/test batch size (default: ``batch_size``).
        num_workers: Dataloader worker processes.
        backbone: The CLIP whose transforms and input size the images get (default: the
            model's default backbone).
    """

    def __init__(
        self,
        dataset: str = "world_objects",
        root: str | None = None,
        options: dict[str, Any] | None = None,
        shots: int | None = None,
        seed: int = 1,
        cache_dir: str | None = None,
        sampler: Literal["dassl", "dassl-pkl", "tip_train_only", "lpp"] = "dassl",
        subsample: Literal["all", "base", "new"] = "all",
        train_transform: str = "backbone",
        eval_transform: str = "backbone",
        eval_datasets: list[str | dict[str, Any]] | None = None,
        batch_size: int = 32,
        drop_last: Literal["never", "dassl"] = "never",
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        backbone: BackboneSpec | dict | None = None,
    ) -> None:
        super().__init__()
        _check_counts(
            shots=(shots, 1, "training images per class, or null for the full splits"),
            batch_size=(batch_size, 1, "images per training batch"),
            eval_batch_size=(eval_batch_size, 1, "images per evaluation batch, or null"),
            num_workers=(num_workers, 0, "dataloader worker processes; 0 loads in the main one"),
        )
        self.save_hyperparameters()
        # The command line links a plain mapping here; it stays one in the saved hparams, so a
        # checkpoint holds no custom class and loads with weights_only.
        self.backbone = BackboneSpec(**backbone) if isinstance(backbone, dict) else backbone
        self.backbone = self.backbone or BackboneSpec()
        self.dataset_name = dataset
        self.root = root
        self.options = options or {}
        self.shots = shots
        self.seed = seed
        self.cache_dir = cache_dir
        self.sampler = sampler
        self.subsample = subsample
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.eval_datasets = list(eval_datasets or [])
        self._extra: list[ClassificationData] | None = None
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self._data: ClassificationData | None = None
        # The training order's seed (the run's seed when first asked for, see
        # train_dataloader) and where a restored checkpoint resumes: (epoch, batches done).
        self.order_seed: int | None = None
        self._resume_at: tuple[int, int] | None = None
        self._train_sampler: EpochSampler | None = None
        self._evaluation_transform: Callable | None = None

    @property
    def data(self) -> ClassificationData:
        if self._data is None:
            data = build_dataset(self.dataset_name, self.root, **self.options)
            if self.shots is not None:
                cache = self.cache_dir or (Path(self.root) / ".peftclip" if self.root else None)
                data = few_shot(data, self.shots, self.seed, cache, self.sampler)
            if self.subsample != "all":
                data = base_new_split(data, self.subsample)
            self._data = data
        return self._data

    @property
    def test_sets(self) -> list[tuple[str, ClassificationData]]:
        """The datasets ``test`` evaluates, in dataloader order: this one, then the extras."""
        if self._extra is None:
            self._extra = [_build_eval_dataset(entry, self.root) for entry in self.eval_datasets]
        return [(self.dataset_name, self.data)] + [(data.name, data) for data in self._extra]

    @property
    def classnames(self) -> list[str]:
        return self.data.classnames

    @property
    def templates(self) -> list[str]:
        return self.data.templates

    def setup(self, stage: str) -> None:
        own = backbone_transforms(self.backbone.model_name, self.backbone.pretrained)
        self.set_transforms(own.train, own.eval, own.image_size)
        datasets = self.test_sets if stage == "test" else [(self.dataset_name, self.data)]
        for name, data in datasets:
            for split in _STAGE_SPLITS.get(stage, ()):
                if split not in data.splits or len(data.splits[split]) == 0:
                    found = ", ".join(f"{s} ({len(d)})" for s, d in data.splits.items()) or "none"
                    raise PeftClipError(
                        f"`{getattr(stage, 'value', stage)}` needs the '{split}' split of "
                        f"dataset '{name}' (root "
                        f"{self.root}), which is missing or empty; splits found: {found}."
                    )

    def set_transforms(self, train: Callable, evaluation: Callable, image_size: int = 224) -> None:
        """Applies the transforms: ``train``/``evaluation`` are the backbone's own, used where
        the recipe says ``backbone``; named transforms are built at ``image_size``."""
        if self.eval_transform != "backbone":
            evaluation = build_transform(self.eval_transform, image_size)
        self._evaluation_transform = evaluation
        if self.train_transform == "eval":
            train = evaluation
        elif self.train_transform != "backbone":
            train = build_transform(self.train_transform, image_size)
        self._evaluation_transform = evaluation
        for split, dataset in self.data.splits.items():
            dataset.transform = train if split == "train" else evaluation
        for _, data in self.test_sets[1:]:
            for dataset in data.splits.values():
                dataset.transform = evaluation

    def _loader(self, split: str, data: ClassificationData | None = None) -> DataLoader:
        """An evaluation loader: the split in order. Its own generator: creating it draws
        nothing from the training process's random state."""
        dataset = (data or self.data).splits[split]
        return DataLoader(
            SampleIndices(dataset) if self._serves_indices() else dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(0),
        )

    def train_dataloader(self) -> DataLoader:
        """The training split, each epoch's order and augmentation a function of the run's seed
        and the epoch only (docs/resuming.md), so a resumed run sees the same batches.

        Under DDP, ``batch_size`` stays the global batch: each of the ``world_size`` processes
        loads its slice of every global batch (:class:`EpochSampler`), so a recipe trains the
        same on any number of devices (docs/multi_gpu.md)."""
        train = self.data.splits["train"]
        rank, world = self._data_parallel()
        drop_last = self.drop_last == "dassl" and len(train) >= self.batch_size  # Dassl's rule
        self._check_global_batch(len(train), world, drop_last)
        sampler = EpochSampler(
            len(train), self.run_seed, self._current_epoch, True, self.batch_size, rank, world
        )
        if self._resume_at is not None:
            sampler.resume_at(*self._resume_at)
            self._resume_at = None
        self._train_sampler = sampler
        return DataLoader(
            SampleIndices(train) if self._serves_indices() else SeededSamples(train),
            batch_size=self.batch_size // world,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.run_seed),
        )

    @property
    def run_seed(self) -> int:
        """The seed of the training order and augmentation (the run's seed when first asked
        for: seed_everything's, in a CLI run)."""
        if self.order_seed is None:
            self.order_seed = torch.initial_seed()
        return self.order_seed

    def view_loader(self, dataset: Dataset, view: int) -> DataLoader:
        """A split (``dataset``, one of :attr:`test_sets`' splits) in order, augmented as
        epoch ``view`` of training augments it: the images of a feature table
        (peftclip.image_cache). ``eval_batch_size`` images per batch."""
        sampler = EpochSampler(len(dataset), self.run_seed, lambda: view, False)
        return DataLoader(
            SeededSamples(dataset),
            batch_size=self.eval_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.run_seed),
        )

    def view_identity(self, dataset: Dataset, view: int) -> dict:
        """What decides the images of view ``view`` of ``dataset`` besides the files: the
        transform and, for a random one, ``(seed, view)``. The evaluation transform is
        deterministic: one view, whatever the seed."""
        random = dataset.transform is not self._evaluation_transform
        return {
            "transform": transform_id(dataset.transform),
            "view": {"seed": self.run_seed, "view": view} if random else None,
        }

    def _serves_indices(self) -> bool:
        """Whether batches carry sample indices instead of images: the model reads its image
        features from tables (``PeftClipModule.reads_feature_tables``)."""
        model = self.trainer.lightning_module if self.trainer is not None else None
        return bool(getattr(model, "reads_feature_tables", False))

    def _data_parallel(self) -> tuple[int, int]:
        """``(rank, world_size)`` of the trainer's data-parallel processes (``(0, 1)`` alone)."""
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _check_global_batch(self, size: int, world: int, drop_last: bool) -> None:
        """Every process must get an equal share of every global batch (else DDP's average is
        not the single-process gradient, or a process runs out of batches and the others hang).
        """
        last = size % self.batch_size
        if world == 1 or (self.batch_size % world == 0 and (drop_last or last % world == 0)):
            return
        raise PeftClipError(
            f"data.batch_size {self.batch_size} (the global batch) must split evenly over the "
            f"{world} training processes, and so must the last batch of an epoch ({last} of "
            f"{size} images; set data.drop_last: dassl to drop it). Choose a batch size that "
            f"is a multiple of {world} and divides the training set, or change trainer.devices."
        )

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def state_dict(self) -> dict[str, Any]:
        """Where the training order stands: saved in every checkpoint of a fit."""
        trainer = self.trainer
        if trainer is None or self.order_seed is None or trainer.state.fn != TrainerFn.FITTING:
            return {}
        return {"order_seed": self.order_seed, **asdict(TrainingPosition.of(trainer))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resumes the training order of a checkpoint (before the first training iterator)."""
        if state:
            position = {key: value for key, value in state.items() if key != "order_seed"}
            self.order_seed = state["order_seed"]
            self._resume_at = TrainingPosition(**position).next_batch()

    def check_training_order(self, epoch: int) -> None:
        """Refuses to train epoch ``epoch`` on another epoch's order (a trainer that created
        the iterator before restoring the checkpoint, or skipped ``set_epoch``)."""
        sampler = self._train_sampler
        if sampler is not None and sampler.serving != epoch:
            raise PeftClipError(
                f"the training data is in the order of epoch {sampler.serving} while the trainer "
                f"is in epoch {epoch}; this Lightning version restores checkpoints in an order "
                "peftclip does not support (docs/resuming.md)."
            )

    def selection_split(self, split: str) -> Dataset:
        """A split hyperparameters are selected on, with the evaluation transform
        (docs/methods/index.md#selection): ``fewshot_val`` (the sampled val split), ``full_val``
        (the dataset's whole val split, of the same class half) or ``test``.

        Raises:
            PeftClipError: The dataset has no such split.
        """
        if split == "fewshot_val":
            if self.shots is None:
                raise PeftClipError(
                    "selection on the few-shot val split needs data.shots (a few-shot sample); "
                    "with the full splits use selection_split: full_val (faithful)."
                )
            return self._selection_split(self.data, "val")
        if split == "test":
            return self._selection_split(self.data, "test")
        if split != "full_val":
            raise PeftClipError(f"unknown selection split '{split}' (fewshot_val, full_val, test).")
        full = build_dataset(self.dataset_name, self.root, **self.options)
        if self.subsample != "all":
            full = base_new_split(full, self.subsample)
        if "val" in full.splits:
            full.splits["val"].transform = self._evaluation_transform
        return self._selection_split(full, "val")

    def _selection_split(self, data: ClassificationData, split: str) -> Dataset:
        if split not in data.splits or len(data.splits[split]) == 0:
            raise PeftClipError(
                f"hyperparameter selection needs the '{split}' split of dataset "
                f"'{self.dataset_name}', which it does not have; choose another "
                "selection_split of the method."
            )
        return data.splits[split]

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val") if "val" in self.data.splits else []

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        loaders = [self._loader("test", data=data) for _, data in self.test_sets]
        return loaders if len(loaders) > 1 else loaders[0]


def _check_counts(**options: tuple[int | None, int, str]) -> None:
    """Refuses a count below its minimum, naming the option, the value and the allowed range.

    Args:
        options: ``name=(value, minimum, meaning)``; a ``None`` value is the option's default.

    Raises:
        PeftClipError: The first option whose value is below its minimum.
    """
    for name, (value, minimum, meaning) in options.items():
        if value is not None and value < minimum:
            raise PeftClipError(
                f"data.{name} must be an integer >= {minimum} ({meaning}); got {value}."
            )


def _build_eval_dataset(entry: str | dict[str, Any], root: str | None) -> ClassificationData:
    if isinstance(entry, str):
        return build_dataset(entry, root)
    unknown = set(entry) - {"dataset", "options"}
    if "dataset" not in entry or unknown:
        raise PeftClipError(
            f"data.eval_datasets entry {entry} must be a dataset name or "
            "{dataset: NAME, options: {...}}."
        )
    return build_dataset(entry["dataset"], root, **(entry.get("options") or {}))
