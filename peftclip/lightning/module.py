"""``PeftClipModule``: the one LightningModule every method trains and evaluates through."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, replace
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from rich.progress import track
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassStatScores,
)

from peftclip.adapters import Adapter, SelectionSet, StepContext, TrainingFeatures
from peftclip.adapters.base import implements
from peftclip.adapters.official_names import shape_mismatch
from peftclip.backbone import BackboneSpec, FrozenClip, TextFeatureCache, load_backbone
from peftclip.checkpoint_files import check_peftclip_section, read_checkpoint
from peftclip.classifier import PeftClipClassifier
from peftclip.data.templates import resolve_templates, templates_of_dataset
from peftclip.errors import PeftClipError
from peftclip.image_cache import (
    AUTO,
    DEFAULT_MAX_GB,
    ImageFeatureCache,
    StorageDtype,
    computation_identity,
    identifiable,
    image_list_hash,
)
from peftclip.lightning.resume import (
    TrainingPosition,
    random_states,
    restore_random_states,
    use_atomic_checkpoints,
)
from peftclip.precision import (
    PrecisionProfile,
    apply_precision_profile,
    check_trainer_precision,
)
from peftclip.schedules import RunLength

CHECKPOINT_FORMAT = "peftclip-adapters/1"


@dataclass(frozen=True)
class EvalSet:
    """A dataset ``test`` evaluates: its head (class names, templates) and optional mask."""

    name: str
    classnames: list[str]
    templates: list[str]
    class_mask: list[int] | None = None


def _mask_tensor(class_mask: list[int] | None, num_classes: int) -> torch.Tensor | None:
    if class_mask is None:
        return None
    mask = torch.zeros(num_classes, dtype=torch.bool)
    mask[torch.as_tensor(class_mask, dtype=torch.long)] = True
    return mask


def _partial_passes(trainer: L.Trainer) -> bool:
    """Whether the trainer runs only some batches of a split (``fast_dev_run``, a
    ``limit_*_batches`` other than all or none): a smoke run, which whole-split feature tables
    would only slow down."""
    limits = (trainer.limit_train_batches, trainer.limit_val_batches, trainer.limit_test_batches)
    # Lightning's 1 is one batch, 1.0 all of them.
    partial = [limit != 0 and not (isinstance(limit, float) and limit == 1.0) for limit in limits]
    return bool(trainer.fast_dev_run) or any(partial)


def _metrics(num_classes: int, counts: bool = True) -> MetricCollection:
    """Top-1 and macro-F1; with ``counts`` also the per-class counts an evaluation's results
    record keeps (training needs none of them, and updates its metrics every step)."""
    # Papers report micro (per-sample) top-1; torchmetrics defaults to macro. torchmetrics
    # refuses a 1-class head (e.g. the new half of a 3-class dataset): top-1 is unaffected by
    # a phantom second class, which is never predicted (metrics are fed the argmax).
    num_classes = max(num_classes, 2)
    # Separate states (no compute groups) that a checkpoint keeps: a fit resumed mid-epoch
    # reports the epoch's training metrics over all of its batches.
    members = {
        "top1": MulticlassAccuracy(num_classes, average="micro"),
        "macro_f1": MulticlassF1Score(num_classes, average="macro"),
    }
    if counts:  # per class (tp, fp, tn, fn, support): integer counts (docs/results.md)
        members["counts"] = MulticlassStatScores(num_classes, average=None)
    metrics = MetricCollection(members, compute_groups=False)
    metrics.persistent(True)
    return metrics


class PeftClipModule(L.LightningModule):
    """A frozen CLIP with a set of adapters, trained and evaluated on one class set.

    With no adapters it is zero-shot CLIP (use ``peftclip test``).

    Args:
        backbone: Which frozen CLIP to load (model name, weights, ...).
        adapters: Methods to compose, by registered name (``coop``) or ``class_path``.
        templates: Prompt templates for hand-crafted class prompts: a named set
            (``imagenet80``, ``imagenet_select``, ``coop:<dataset>``), one template or a list.
            Default: the dataset's own template(s).
        optimizer: Optimizer over the trainable (adapter) parameters.
        scheduler: Learning-rate scheduler; stepped per ``scheduler_interval``.
        scheduler_interval: ``step`` (after every optimizer step) or ``epoch``.
        label_smoothing: Label smoothing of the cross-entropy loss.
        text_chunk_size: Prompts per text-encoder call when building frozen class features.
        text_cache_dir: Directory for cached frozen text features (none: memory only).
        image_cache_dir: Directory of the image-feature cache, used when no adapter prompts
            the image tower or changes its weights (docs/performance.md#image-feature-cache):
            ``auto`` is ``$XDG_CACHE_HOME/peftclip/features``; ``null`` keeps the tables in
            memory for this process only.
        image_cache_max_gb: Cap of ``image_cache_dir`` (GB); least recently used tables go.
        image_cache_dtype: How tables are stored: ``float32`` (exact) or ``float16`` (half the
            size; the run then uses the rounded features, cold or warm alike).
        precision_profile: ``modern`` (fp32 weights; mixed precision comes from the trainer) or
            ``anchor_fp16`` (the CoOp family's fp16 layout; needs ``--trainer.precision
            32-true``), see :mod:`peftclip.precision`.
        logit_scale: A fixed temperature of the cosine head instead of the checkpoint's
            ``exp(logit_scale)`` (the official CLIP-SVD code uses 100); ``None``: the
            checkpoint's.
        share_text_prefix: Encode the prompt start all classes share once (exact, see
            docs/performance.md); ``false`` forces the plain text path, for debugging.
        text_grad_chunk_size: Classes per activation-checkpointed text-encoder call while
            training adapter-built prompts (docs/performance.md#many-classes): bounded memory
            for large class sets, one extra text forward per step, same gradients; ``null``:
            all classes in one call.
        frozen_backbone: An already loaded frozen CLIP to build on instead of loading
            ``backbone`` again (Python only; e.g. a protocol's zero-shot baseline shares the
            trained module's backbone). ``backbone`` then only names it.
    """

    def __init__(
        self,
        backbone: BackboneSpec | None = None,
        adapters: list[Adapter] | None = None,
        templates: str | list[str] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
        label_smoothing: float = 0.0,
        text_chunk_size: int = 256,
        text_cache_dir: str | None = None,
        image_cache_dir: str | None = AUTO,
        image_cache_max_gb: float = DEFAULT_MAX_GB,
        image_cache_dtype: StorageDtype = "float32",
        precision_profile: PrecisionProfile = "modern",
        logit_scale: float | None = None,
        share_text_prefix: bool = True,
        text_grad_chunk_size: int | None = None,
        *,
        frozen_backbone: FrozenClip | None = None,
    ) -> None:
        super().__init__()
        # The frozen CLIP stays in eval mode on purpose (docs/methods/index.md); Lightning warns
        # about any module in eval mode at the start of fit.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        # A method fitted from data has no optimizer on purpose (zero optimizer steps).
        warnings.filterwarnings("ignore", message=r"`LightningModule.configure_optimizers` return")
        # Every run has a folder of its own (peftclip.runs): a test's checkpoint folder is
        # never the fit's, and Lightning's warning about that says nothing to act on.
        warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
        # The data module resumes its order mid-epoch itself (docs/resuming.md).
        warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended")
        # The backbone is recorded by identity (weights hash) in every checkpoint instead: as an
        # hparam, LightningCLI would force the training machine's weights path on `--ckpt_path`.
        self.save_hyperparameters(
            ignore=[
                "backbone",
                "adapters",
                "optimizer",
                "scheduler",
                "text_cache_dir",
                "image_cache_dir",
                "image_cache_max_gb",
                "frozen_backbone",
            ]
        )
        spec = backbone or BackboneSpec()
        self.backbone_spec = spec
        if frozen_backbone is None:
            frozen_backbone = load_backbone(
                spec.model_name, spec.pretrained, spec.force_quick_gelu, spec.init_seed
            )
        self.classifier = PeftClipClassifier(
            frozen_backbone,
            adapters or [],
            templates=templates or "a photo of a {}.",
            text_chunk_size=text_chunk_size,
            text_cache=TextFeatureCache(text_cache_dir),
            logit_scale=logit_scale,
            share_text_prefix=share_text_prefix,
            text_grad_chunk_size=text_grad_chunk_size,
        )
        apply_precision_profile(
            self.classifier.backbone, self.classifier.adapters, precision_profile
        )
        self.precision_profile = precision_profile
        self.image_cache = ImageFeatureCache(image_cache_dir, image_cache_max_gb, image_cache_dtype)
        #: Whether image features come from feature tables (set up per stage): the data module
        #: then serves sample indices, never images.
        self.reads_feature_tables = False
        self._tables: dict[tuple, torch.Tensor] = {}
        self._image_lists: dict[int, str] = {}
        self.user_templates = templates
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.label_smoothing = label_smoothing
        self.classnames: list[str] = []
        self.class_mask: torch.Tensor | None = None
        self._current_test_set: EvalSet | None = None
        self.test_sets: list[EvalSet] = []
        self.metrics = torch.nn.ModuleDict()
        self._resumed_random_states: dict | None = None
        #: Per-class counts of the latest evaluation of each (dataset, split): ``correct``,
        #: ``total`` and ``macro_f1`` (%), for results records.
        self.evaluations: dict[tuple[str, str], dict] = {}

    @property
    def backbone(self):
        return self.classifier.backbone

    @property
    def adapters(self) -> torch.nn.ModuleList:
        return self.classifier.adapters

    # ----------------------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if datamodule is None:
            raise PeftClipError("PeftClipModule needs a PeftClipDataModule (data: in the recipe).")
        check_trainer_precision(self.precision_profile, self.trainer.precision)
        use_atomic_checkpoints(self.trainer)
        served = getattr(datamodule, "backbone", None)
        if served is not None and (served.model_name, served.pretrained) != (
            self.backbone_spec.model_name,
            self.backbone_spec.pretrained,
        ):
            raise PeftClipError(
                f"the data module builds the transforms of backbone {served.model_name} "
                f"({served.pretrained}) but the model is {self.backbone_spec.model_name} "
                f"({self.backbone_spec.pretrained}); give both the same BackboneSpec (the "
                "command line links data.backbone to model.backbone)."
            )
        main = datamodule.data
        self._tables, self._image_lists = {}, {}
        self.reads_feature_tables = (
            self.classifier.image_tower_frozen
            and not _partial_passes(self.trainer)
            and all(
                identifiable(split)
                for _, data in datamodule.test_sets
                for split in data.splits.values()
            )
        )
        self.use_class_set(main.classnames, self.user_templates or main.templates, main.class_mask)
        # Extra evaluation datasets (domain generalization, cross-dataset): own heads, own metrics.
        self.test_sets = [
            EvalSet(
                name,
                list(data.classnames),
                resolve_templates(self.user_templates or data.templates),
                data.class_mask,
            )
            for name, data in datamodule.test_sets
        ]
        for index, test_set in enumerate(self.test_sets):
            metrics = _metrics(len(test_set.classnames)).to(self.device)
            self.metrics[f"test{index}_metrics"] = metrics

    def use_class_set(
        self,
        classnames: list[str],
        templates: str | list[str],
        class_mask: list[int] | None = None,
    ) -> None:
        """Points the classification head at ``classnames`` (metrics are rebuilt to match).

        ``class_mask``: the only labels the head may predict (ZSCL's masked 1000-way scoring of
        ImageNet-A/-R); the other columns get −∞.
        """
        self.classnames = list(classnames)
        self.class_mask = _mask_tensor(class_mask, len(self.classnames))
        self._current_test_set = None
        self.classifier.templates = resolve_templates(templates)
        self.test_sets = []
        # ModuleDict keys cannot be "train" (nn.Module.train), hence the suffix.
        self.metrics = torch.nn.ModuleDict(
            {
                "train_metrics": _metrics(len(self.classnames), counts=False),
                "val_metrics": _metrics(len(self.classnames)),
            }
        ).to(self.device)

    # ------------------------------------------------------------------------------- steps
    def forward(
        self, images: torch.Tensor | None, image_features: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        outputs = self.classifier(images, self.classnames, image_features)
        if self.class_mask is not None:
            mask = self.class_mask.to(outputs["logits"].device)
            outputs["logits"] = outputs["logits"].masked_fill(~mask, float("-inf"))
        return outputs

    def _shared_step(self, batch, stage: str) -> torch.Tensor:
        """``stage`` is ``train``, ``val`` or ``test<i>`` (the i-th evaluation dataset).

        Reading feature tables, a batch holds sample indices instead of images."""
        images, labels = batch
        image_features = None
        if self.reads_feature_tables:
            images, image_features = None, self._stage_table(stage)[images]
        outputs = self(images, image_features)
        logits = outputs["logits"].float()
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        if stage == "train":
            context = StepContext(
                images=images,
                labels=labels,
                logits=outputs["logits"],
                image_features=outputs["image_features"],
                text_features=outputs["text_features"],
                classnames=self.classnames,
                frozen_head=self._frozen_head,
            )
            for adapter in self.adapters:
                extra = adapter.extra_loss(context)
                if extra is not None:
                    loss = loss + extra
        self.metrics[f"{stage}_metrics"].update(logits.argmax(dim=-1), labels)
        name = "test" if stage.startswith("test") else stage
        self.log(f"{name}/loss", loss, prog_bar=stage == "train", batch_size=len(labels))
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._shared_step(batch, "train")
        if not torch.isfinite(loss):
            raise PeftClipError(
                f"training loss became {loss.item()} at step {self.global_step} (epoch "
                f"{self.current_epoch}). Lower the learning rate or use --trainer.precision "
                "32-true / bf16-mixed; no checkpoint is written from a non-finite state."
            )
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._point_at(self.test_sets[dataloader_idx])
        self._shared_step(batch, f"test{dataloader_idx}")

    def _point_at(self, test_set: EvalSet) -> None:
        """Switches the head to ``test_set`` (a no-op while it is the current one: every
        test batch calls this, and the mask is built and moved to the device once)."""
        if self._current_test_set is test_set:
            return
        self._current_test_set = test_set
        self.classnames, self.classifier.templates = test_set.classnames, test_set.templates
        mask = _mask_tensor(test_set.class_mask, len(test_set.classnames))
        self.class_mask = mask.to(self.device) if mask is not None else None

    def _log_epoch_metrics(
        self, stage: str, prefix: str, evaluation: tuple[str, str] | None = None
    ) -> None:
        """Logs a stage's epoch metrics; an ``evaluation`` (dataset, split) also keeps its
        per-class counts in :attr:`evaluations` (what a results record stores)."""
        values = self.metrics[f"{stage}_metrics"].compute()
        counts = values.pop("counts", None)
        # Percentages, as in the papers' tables.
        self.log_dict({f"{prefix}/{name}": 100 * value for name, value in values.items()})
        self.metrics[f"{stage}_metrics"].reset()
        if evaluation is not None and counts is not None:
            classes = len(self.classnames)  # the head's classes (the metric may add a phantom)
            self.evaluations[evaluation] = {
                "correct": counts[:classes, 0].tolist(),
                "total": counts[:classes, 4].tolist(),
                "macro_f1": float(100 * values["macro_f1"]),
            }

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train", "train")
        for adapter in self.adapters:
            if implements(adapter, "after_epoch"):
                adapter.after_epoch(self.selection_set)
        for adapter in self.adapters:
            summary = adapter.summary()
            if summary:
                self.log_dict({f"{adapter.name}/{key}": value for key, value in summary.items()})

    def on_validation_epoch_end(self) -> None:
        # The sanity check's few batches are not an evaluation to record.
        checking = self.trainer.sanity_checking
        evaluation = None if checking else (self.trainer.datamodule.dataset_name, "val")
        self._log_epoch_metrics("val", "val", evaluation)

    def on_test_epoch_end(self) -> None:
        # The recipe's own dataset logs test/top1; extra datasets log test/<name>/top1.
        for index, test_set in enumerate(self.test_sets):
            prefix = "test" if index == 0 else f"test/{test_set.name}"
            self._point_at(test_set)
            self._log_epoch_metrics(f"test{index}", prefix, (test_set.name, "test"))
        self._point_at(self.test_sets[0])

    # ------------------------------------------------------------------- fitting from data
    def _frozen_head(self, templates: str | list[str] | None = None) -> torch.Tensor:
        # A family name (``kgcoop``) means its templates for the trained dataset.
        templates = templates_of_dataset(templates, self.trainer.datamodule.dataset_name)
        return self.classifier.frozen_head(self.classnames, templates)

    @property
    def fitted_only(self) -> bool:
        """Whether the composition is fitted from data and has nothing to train by gradient."""
        trainable = any(p.requires_grad for p in self.parameters())
        return not trainable and any(implements(a, "fit_from_data") for a in self.adapters)

    def on_fit_start(self) -> None:
        # A resumed run restores what was fitted with the rest of the checkpoint.
        if self.trainer.ckpt_path is not None:
            return
        for adapter in self.adapters:
            if implements(adapter, "fit_from_data"):
                features = self.training_features(adapter.fit_views)
                adapter.fit_from_data(replace(features, selection=self.selection_set))

    def on_train_start(self) -> None:
        if self.fitted_only:  # nothing to step: the fit ends before its first epoch
            self.trainer.should_stop = True
        if self._resumed_random_states is not None:
            # Here, after everything a restart adds (sanity check, loaders), before the first
            # resumed step: the generators continue as in the uninterrupted run.
            restore_random_states(self._resumed_random_states)
            self._resumed_random_states = None

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self.trainer.datamodule.check_training_order(self.current_epoch)

    def on_train_end(self) -> None:
        selecting = [a for a in self.adapters if implements(a, "after_training")]
        for adapter in selecting:
            adapter.after_training(self.selection_set)
        if selecting and not self.fitted_only:
            # The checkpoint callbacks wrote the final state before this hook: write it again
            # with what was selected after the last step (last.ckpt, and the newest checkpoint
            # of an unmonitored callback; a monitored best one holds an earlier state).
            for callback in self.trainer.checkpoint_callbacks:
                final = {getattr(callback, "last_model_path", "")}
                if getattr(callback, "monitor", "") is None:
                    final.add(callback.best_model_path)
                for path in sorted(final - {""}):
                    self.trainer.save_checkpoint(path)
        if not self.fitted_only:
            return
        # No epoch ran, so no epoch-end checkpoint was written: write the fitted state once
        # (a `save_last` callback adds last.ckpt itself).
        for callback in self.trainer.checkpoint_callbacks:
            self.trainer.save_checkpoint(callback.format_checkpoint_name({"epoch": 0, "step": 0}))

    def training_features(self, views: int = 1) -> TrainingFeatures:
        """Raw frozen image features of the training split, ``views`` passes in a fixed order
        (view ``v`` augmented as epoch ``v`` of training), from the image-feature cache."""
        train = self.trainer.datamodule.data.splits["train"]
        features = [self._feature_table(train, "train", view) for view in range(views)]
        return TrainingFeatures(
            features=torch.stack(features).float(),
            labels=torch.as_tensor(train.targets, dtype=torch.long, device=self.device),
            classnames=list(self.classnames),
            frozen_head=self._frozen_head,
        )

    # ----------------------------------------------------------- hyperparameter selection
    @torch.no_grad()
    def selection_set(self, split: str) -> SelectionSet:
        """Raw frozen image features of a split that hyperparameters are selected on
        (``fewshot_val``, ``full_val``, ``test``: docs/methods/index.md#selection), evaluation
        transform, with the head's temperature and the frozen zero-shot head; from the
        image-feature cache."""
        dataset = self.trainer.datamodule.selection_split(split)
        name = "test" if split == "test" else "val"
        return SelectionSet(
            split=split,
            features=self._feature_table(dataset, name).float(),
            labels=torch.as_tensor(dataset.targets, dtype=torch.long, device=self.device),
            logit_scale=self.classifier.logit_scale.detach().float(),
            text_features=self._frozen_head(),
        )

    @property
    def selection_rule(self) -> str:
        """How the evaluated model was chosen, for results records: the rule of an adapter that
        selects hyperparameters (``best_val``, ``best_full_val``, ``best_test``), else ``last``."""
        rules = [getattr(a, "selection_rule", "last") for a in self.adapters]
        return next((rule for rule in rules if rule != "last"), "last")

    # ----------------------------------------------------------------------- feature tables
    def _stage_table(self, stage: str) -> torch.Tensor:
        """The feature table a stage's batches index: this epoch's view of the training
        split, the val split, or the test split of the i-th evaluation dataset."""
        datamodule = self.trainer.datamodule
        if stage == "train":
            return self._feature_table(datamodule.data.splits["train"], "train", self.current_epoch)
        if stage == "val":
            return self._feature_table(datamodule.data.splits["val"], "val")
        name, data = datamodule.test_sets[int(stage.removeprefix("test"))]
        return self._feature_table(data.splits["test"], "test", name=name)

    def _feature_table(
        self, dataset, split: str, view: int = 0, name: str | None = None
    ) -> torch.Tensor:
        """Raw image features ``(images, d)`` of every image of ``dataset`` (a split of the
        data module's dataset ``name``, default the main one) in order, view ``view``, on the
        module's device: from the image-feature cache when the tower is frozen and unprompted.
        """
        datamodule = self.trainer.datamodule
        identity = datamodule.view_identity(dataset, view)
        memo = (id(dataset), json.dumps(identity["view"]))
        if memo in self._tables:
            return self._tables[memo]

        def compute() -> torch.Tensor:
            return self._encode_images(datamodule.view_loader(dataset, view), f"{split} {view}")

        if not (self.classifier.image_tower_frozen and identifiable(dataset)):
            return compute()  # the features depend on the adapters: never cached
        if id(dataset) not in self._image_lists:
            self._image_lists[id(dataset)] = image_list_hash(dataset)
        description = {
            "backbone": self._backbone_key(),
            "computation": computation_identity(
                self.device, self.trainer.precision, datamodule.eval_batch_size
            ),
            "dataset": name or datamodule.dataset_name,
            "split": split,
            "images": len(dataset),
            "image_list": self._image_lists[id(dataset)],
            **identity,
        }
        table = self.image_cache.features(description, compute).to(self.device)
        if split == "train":  # one training view at a time in the module
            self._tables = {key: value for key, value in self._tables.items() if key[0] != memo[0]}
        self._tables[memo] = table
        return table

    def _backbone_key(self) -> dict:
        """What of the backbone changes its image features: weights, dtype, activation."""
        visual = self.backbone.model.visual
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        activation = type(blocks[0].mlp.gelu).__name__ if blocks else None
        return {
            "model_name": self.backbone.identity.model_name,
            "weights_sha256": self.backbone.identity.weights_sha256,
            "dtype": str(self.backbone.dtype),
            "activation": activation,
        }

    def _encode_images(self, loader, description: str) -> torch.Tensor:
        """The frozen tower over a loader's images (no gradient; ordinary tensors even under
        Lightning's inference mode, so a table read in evaluation serves training later)."""
        features = []
        context = self.trainer.precision_plugin.forward_context()
        with torch.inference_mode(False), torch.no_grad(), context:
            for images, _ in track(
                loader,
                description=f"image features, {description}",
                disable=not self.trainer.progress_bar_callback,
                transient=True,
            ):
                features.append(self.backbone.encode_image(images.to(self.device)))
        return torch.cat(features)

    # -------------------------------------------------------------------------- optimizers
    def configure_optimizers(self):
        parameters = [p for p in self.parameters() if p.requires_grad]
        if not parameters:
            if self.fitted_only:
                return None  # fitted from data at fit start; no optimizer step is taken
            raise PeftClipError(
                "nothing to train: the backbone is frozen and no adapter has trainable "
                "parameters. Add adapters to the recipe, or evaluate zero-shot with"
                " `peftclip test`."
            )
        run = self.run_length()
        for adapter in self.adapters:
            adapter.set_run_length(run)
        optimizer = self.optimizer_factory(parameters)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if hasattr(scheduler, "set_run_length"):
            scheduler.set_run_length(run)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }

    def run_length(self) -> RunLength:
        """The trainer's length of this run (the one place a recipe states it)."""
        max_epochs = self.trainer.max_epochs
        return RunLength(
            total_steps=int(self.trainer.estimated_stepping_batches),
            max_epochs=max_epochs if max_epochs is not None and max_epochs > 0 else None,
            scheduler_interval=self.scheduler_interval,
        )

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        for adapter in self.adapters:
            adapter.after_optimizer_step(self.global_step)

    # ------------------------------------------------------------------------- checkpoints
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Adapter parameters and persistent buffers only (never the frozen CLIP)."""
        return {
            key: value
            for key, value in self.state_dict().items()
            if key.startswith("classifier.adapters.")
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = self.adapter_state_dict()
        checkpoint["peftclip"] = {
            "format": CHECKPOINT_FORMAT,
            "backbone": self.backbone.identity.to_dict(),
            "adapters": [adapter.name or type(adapter).__name__ for adapter in self.adapters],
            "precision_profile": self.precision_profile,
            # Human-readable adapter state (e.g. CoDyRA's live ranks per layer).
            "summaries": {adapter.name: adapter.summary() for adapter in self.adapters},
        }
        # What a resumed fit needs besides Lightning's loop, optimizer and scheduler states:
        # the generators, and the training metrics of an epoch that is not over.
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            checkpoint["resume"] = {"random_states": random_states()}
            if not TrainingPosition.of(self.trainer).epoch_done:
                checkpoint["resume"]["train_metrics"] = self.metrics["train_metrics"].state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        resume = checkpoint.get("resume")
        if resume is not None and self._trainer is not None:
            self._resumed_random_states = resume["random_states"]
            if "train_metrics" in resume:
                self.metrics["train_metrics"].load_state_dict(resume["train_metrics"])
        saved = check_peftclip_section(checkpoint)["peftclip"]["backbone"]
        current = self.backbone.identity.to_dict()
        if (
            saved["model_name"] != current["model_name"]
            or saved["weights_sha256"] != current["weights_sha256"]
        ):
            raise PeftClipError(
                f"checkpoint adapters were trained on backbone {saved['model_name']} "
                f"(weights {saved['pretrained']}, sha256 {saved['weights_sha256'][:12]}…) but this "
                f"run loads {current['model_name']} (weights {current['pretrained']}, sha256 "
                f"{current['weights_sha256'][:12]}…). Set model.backbone to the checkpoint's"
                " backbone."
            )

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Loads adapter tensors; the frozen CLIP comes from ``backbone``, never from the file."""
        expected = self.adapter_state_dict()
        unexpected = [key for key in state_dict if key not in expected]
        missing = [key for key in expected if key not in state_dict]
        if strict and (unexpected or missing):
            raise PeftClipError(
                f"checkpoint does not match this recipe's adapters: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}. Use the same adapters (and settings) as at training."
            )
        adapter_state = {key: value for key, value in state_dict.items() if key in expected}
        try:
            return super().load_state_dict(adapter_state, strict=False, assign=assign)
        except RuntimeError:
            # torch's "size mismatch" comes after each adapter took the shapes it can (fitted
            # tensors, pruned ranks); what still differs is the recipe's setting, not the file's.
            current = self.adapter_state_dict()
            differing = [k for k, v in adapter_state.items() if v.shape != current[k].shape]
            if not differing:
                raise
            key = differing[0]
            found, wanted = adapter_state[key].shape, current[key].shape
            raise PeftClipError(self._shape_mismatch(key, found, wanted)) from None

    def _shape_mismatch(self, key: str, found: torch.Size, expected: torch.Size) -> str:
        """The error for an adapter tensor of another shape: adapter, tensor, setting."""
        index, _, tensor = key.removeprefix("classifier.adapters.").partition(".")
        adapter = self.adapters[int(index)]
        return shape_mismatch(adapter, f"checkpoint tensor '{tensor}'", found, tensor, expected)

    def load_adapter_checkpoint(self, path: str) -> None:
        """Loads the adapters of a ``peftclip fit`` checkpoint or an adapter release folder
        (``peftclip export --format release``); the backbone identity is checked.

        Raises:
            PeftClipError: The file is absent, not a peftclip checkpoint, would run code when
                unpickled, or holds other adapters or shapes than this recipe's.
        """
        checkpoint = read_checkpoint(path)
        self.on_load_checkpoint(checkpoint)
        self.load_state_dict(checkpoint["state_dict"])
