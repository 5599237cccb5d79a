"""Base-to-new generalization (docs/protocols/base-to-new.md) for one dataset and one seed.

Trains on the base half of the classes (few-shot sample first, then the class split) and
evaluates the same weights on the base test images (base head) and on the new test images (a
head of the new class names only), next to zero-shot CLIP with the dataset's template.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import lightning as L

from peftclip.lightning.datamodule import PeftClipDataModule
from peftclip.lightning.module import PeftClipModule
from peftclip.results import harmonic_mean


@dataclass
class BaseToNewResult:
    """Top-1 accuracies in %, of zero-shot CLIP and of the trained method, and the per-class
    counts of each evaluation (``{"zero_shot": {"base": ..., "new": ...}, "method": ...}``, as
    :attr:`PeftClipModule.evaluations` keeps them) for the results database."""

    zero_shot_base: float
    zero_shot_new: float
    base: float
    new: float
    counts: dict[str, dict[str, dict]] = field(default_factory=dict)

    @property
    def zero_shot_hm(self) -> float:
        return harmonic_mean(self.zero_shot_base, self.zero_shot_new)

    @property
    def hm(self) -> float:
        return harmonic_mean(self.base, self.new)

    def table(self, method: str) -> str:
        rows = [("zero-shot CLIP", self.zero_shot_base, self.zero_shot_new, self.zero_shot_hm)]
        rows.append((method, self.base, self.new, self.hm))
        lines = [
            f"| {'':<16} | {'base':>6} | {'new':>6} | {'HM':>6} |",
            f"|{'-' * 18}|{'-' * 8}|{'-' * 8}|{'-' * 8}|",
        ]
        lines += [f"| {name:<16} | {b:6.2f} | {n:6.2f} | {h:6.2f} |" for name, b, n, h in rows]
        return "\n".join(lines)


def _half(datamodule: PeftClipDataModule, half: str) -> PeftClipDataModule:
    """A data module of the same configuration that serves one half of the classes."""
    settings = inspect.signature(PeftClipDataModule).parameters
    config = {key: value for key, value in datamodule.hparams.items() if key in settings}
    return PeftClipDataModule(**{**config, "subsample": half})


def _evaluate(trainer: L.Trainer, module: PeftClipModule, datamodule) -> tuple[float, dict]:
    """Top-1 (%) of ``module`` on the test split of ``datamodule``, and its per-class counts."""
    (metrics,) = trainer.test(module, datamodule=datamodule, verbose=False)
    return metrics["test/top1"], module.evaluations[(datamodule.dataset_name, "test")]


def run_base_to_new(
    module: PeftClipModule, datamodule: PeftClipDataModule, trainer: L.Trainer
) -> BaseToNewResult:
    """Zero-shot on both halves, fit on base, test the trained module on base and on new.

    Zero-shot CLIP shares the trained module's frozen backbone (one copy in memory). It is
    evaluated before training; weight-space adapters are attached then but at their identity
    initialisation, so it is zero-shot CLIP up to float rounding.
    """
    base, new = _half(datamodule, "base"), _half(datamodule, "new")
    evaluator = L.Trainer(
        accelerator=trainer.strategy.root_device.type,
        devices=1,
        precision=trainer.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    zero_shot = PeftClipModule(
        backbone=module.backbone_spec,
        templates=module.user_templates,
        precision_profile=module.precision_profile,  # zero-shot CLIP in the same weight layout
        logit_scale=module.classifier.fixed_logit_scale,
        image_cache_dir=module.image_cache.directory,  # zero-shot CLIP's tables serve both
        image_cache_max_gb=module.image_cache.max_bytes / 1e9,
        image_cache_dtype=module.image_cache.dtype,
        frozen_backbone=module.backbone,
    )
    zero_shot_base, zero_shot_base_counts = _evaluate(evaluator, zero_shot, base)
    zero_shot_new, zero_shot_new_counts = _evaluate(evaluator, zero_shot, new)
    trainer.fit(module, datamodule=base)
    trained_base, base_counts = _evaluate(evaluator, module, base)
    trained_new, new_counts = _evaluate(evaluator, module, new)
    return BaseToNewResult(
        zero_shot_base=zero_shot_base,
        zero_shot_new=zero_shot_new,
        base=trained_base,
        new=trained_new,
        counts={
            "zero_shot": {"base": zero_shot_base_counts, "new": zero_shot_new_counts},
            "method": {"base": base_counts, "new": new_counts},
        },
    )
