"""The adapter interface: the extension points a method may implement (docs/contributing.md).

An adapter is a small ``nn.Module`` that attaches to a :class:`~peftclip.backbone.FrozenClip`
through a few explicit extension points; each adapter overrides only those it needs. Points
marked *exclusive* may be implemented by at most one adapter of a composition.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from peftclip.backbone import DeepPrompts, FrozenClip
from peftclip.errors import PeftClipError
from peftclip.schedules import RunLength

#: ``frozen_head(templates)``: normalized zero-shot text features ``(classes, d)`` of the
#: frozen CLIP for the current class set, computed once per (class set, templates) and cached.
FrozenHead = Callable[..., torch.Tensor]


@dataclass
class TextInput:
    """Token embeddings of the class prompts, ready for ``FrozenClip.encode_text``.

    Attributes:
        embeddings: ``(classes, L, width)``, or ``(batch, classes, L, width)`` for
            image-conditioned prompts.
        pool_index: ``(classes,)`` position of the pooled (EOT) token of each prompt.
        shared_prefix: How many leading rows are the same function of the adapter's tensors in
            every class prompt (of each image, for image-conditioned prompts), e.g.
            ``[SOS][ctx…]`` of one shared context. The classifier then encodes them once
            (:mod:`peftclip.backbone.shared_prefix`); equal values are not enough (CSC contexts
            that happen to be equal still get one gradient each). 0: nothing is shared.
    """

    embeddings: torch.Tensor
    pool_index: torch.Tensor
    shared_prefix: int = 0


@dataclass
class Prompts:
    """Prompt tensors injected into the encoders (docs/methods/maple.md)."""

    text_deep: DeepPrompts | None = None
    vision_input: torch.Tensor | None = None
    vision_deep: DeepPrompts | None = None


@dataclass
class HeadInput:
    """What the classification head sees: features of a batch and of the class set.

    Attributes:
        image_features: ``(batch, d)``, not normalized.
        text_features: ``(classes, d)`` or per image ``(batch, classes, d)``, not normalized.
        logit_scale: The temperature the cosine head multiplies by.
        classnames: The current class set, in label order.
    """

    image_features: torch.Tensor
    text_features: torch.Tensor
    logit_scale: torch.Tensor
    classnames: Sequence[str]


@dataclass
class StepContext:
    """Everything an extra loss may use in one training step.

    Attributes:
        images: The batch, as fed to the image tower; ``None`` when the step read its image
            features from the image-feature cache (no adapter prompts the image tower or
            changes its weights, docs/performance.md#image-feature-cache).
        labels: ``(batch,)`` labels.
        logits: ``(batch, classes)`` logits of the composition.
        image_features: ``(batch, d)`` image features (not normalized).
        text_features: Class text features, ``(classes, d)`` or ``(batch, classes, d)``.
        classnames: The current class set.
        frozen_head: ``frozen_head(templates=None)`` — the frozen CLIP's normalized text
            features of ``classnames`` for a template set (default: the module's templates),
            computed once per (class set, templates), never per step (KgCoOp, PromptSRC).
    """

    images: torch.Tensor | None
    labels: torch.Tensor
    logits: torch.Tensor
    image_features: torch.Tensor
    text_features: torch.Tensor
    classnames: Sequence[str]
    frozen_head: FrozenHead


@dataclass
class TrainingFeatures:
    """Frozen image features of the training split, for methods fitted from data.

    Attributes:
        features: ``(views, images, d)`` raw (un-normalized) image features, one slice per
            pass over the training split (``Adapter.fit_views`` passes, augmented by the
            recipe's train transform).
        labels: ``(images,)`` labels, the same order in every view.
        classnames: The training class set.
        frozen_head: As in :class:`StepContext`.
        selection: ``selection(split)`` — the :class:`SelectionSet` of a split that
            hyperparameters are selected on (:data:`SELECTION_SPLITS`); ``None`` where the run
            has none (a Python caller's features).
    """

    features: torch.Tensor
    labels: torch.Tensor
    classnames: Sequence[str]
    frozen_head: FrozenHead
    selection: Callable[[str], SelectionSet] | None = None


#: The splits a method may select its hyperparameters on (docs/methods/index.md#selection):
#: the few-shot val sample (the default), the dataset's full val split and the test split (the
#: Tip-Adapter lineage's rules, allowed only with a method's ``faithful`` switch).
SELECTION_SPLITS = ("fewshot_val", "full_val", "test")


@dataclass
class SelectionSet:
    """Frozen image features of a labelled split that hyperparameters are selected on.

    Attributes:
        split: Which split (one of :data:`SELECTION_SPLITS`).
        features: ``(images, d)`` raw (un-normalized) features, evaluation transform.
        labels: ``(images,)`` labels of the training class set.
        logit_scale: The temperature the run's cosine head multiplies by.
        text_features: ``(classes, d)`` the frozen CLIP's normalized zero-shot head of the class
            set (what a method adds its own logits to).
    """

    split: str
    features: torch.Tensor
    labels: torch.Tensor
    logit_scale: torch.Tensor
    text_features: torch.Tensor

    def zero_shot_logits(self) -> torch.Tensor:
        """``(images, classes)`` logits of zero-shot CLIP on the split."""
        image = torch.nn.functional.normalize(self.features.float(), dim=-1)
        return self.logit_scale * image @ self.text_features.float().T


class Adapter(nn.Module):
    """Base class of every method. Subclasses override the extension points they use.

    Extension points (exclusive ones marked ◆):

    * ``attach(backbone)`` — called once; weight-space methods replace Linear layers here.
    * ◆ ``text_input(backbone, classnames, image_features)`` — builds the class-prompt token
      embeddings (CoOp-style). ``None`` means "use the hand-crafted templates".
    * ◆ ``prompts(backbone)`` — deep text prompts, vision input prompts, deep vision prompts.
    * ◆ ``head(inputs)`` — replaces CLIP's cosine head (a linear probe, GDA).
    * ``extra_logits(inputs)`` — added to the head's logits (Tip-Adapter's cache logits).
    * ``extra_loss(context)`` — a term added to the training loss (:class:`StepContext`).
    * ``fit_from_data(data)`` — fits or initialises the method from frozen image features of
      the training split before any gradient step (:class:`TrainingFeatures`). A method with
      no trainable parameters is fitted only: ``peftclip fit`` takes zero optimizer steps.
    * ``after_training(selection)`` — runs once when a fit's last optimizer step is done, with
      ``selection(split)`` as in :class:`TrainingFeatures` (Tip-Adapter-F's (α, β) search);
      the run's last checkpoint is written again afterwards.
    * ``after_epoch(selection)`` — runs at the end of every training epoch, with
      ``selection(split)`` (Tip-Adapter-F's faithful best-test-epoch rule).
    * ``set_run_length(run)`` — receives the run's length from the trainer (rank schedules).
    * ``after_optimizer_step(step)`` — e.g. a proximal step.
    * ``begin_task(task)`` / ``end_task(task)`` — task boundaries of a continual stream.
    * ``summary()`` — scalars logged at the end of every training epoch and saved with the
      checkpoint.

    Tensors a method fits from data (whose shapes depend on the data) are registered with
    :meth:`register_fitted`: they are saved in the adapter checkpoint and restored at the
    saved shape.
    """

    #: Registry name, set by :func:`peftclip.adapters.register_adapter`.
    name: ClassVar[str] = ""
    #: Whether ``text_input`` depends on the images (then text features are per image).
    image_conditioned: ClassVar[bool] = False
    #: Attributes (parameters or modules) that the anchor implementation creates in CLIP's
    #: own dtype: fp16 under ``precision_profile: anchor_fp16``, the rest stays fp32
    #: (docs/checkpoints.md). ``None``: the method has no anchor fp16 layout and refuses it.
    clip_dtype_tensors: ClassVar[tuple[str, ...] | None] = None
    #: Passes over the training split whose features ``fit_from_data`` receives.
    fit_views: ClassVar[int] = 1

    def __init__(self) -> None:
        super().__init__()
        self._fitted_names: list[str] = []

    def attach(self, backbone: FrozenClip) -> None:
        """Called once when the adapter is put on ``backbone``."""

    def text_input(
        self,
        backbone: FrozenClip,
        classnames: Sequence[str],
        image_features: torch.Tensor | None = None,
    ) -> TextInput | None:
        return None

    def prompts(self, backbone: FrozenClip) -> Prompts | None:
        return None

    def head(self, inputs: HeadInput) -> torch.Tensor:
        """``(batch, classes)`` logits that replace CLIP's cosine head."""
        raise NotImplementedError

    def extra_logits(self, inputs: HeadInput) -> torch.Tensor | None:
        """``(batch, classes)`` logits added to the head's."""
        return None

    def extra_loss(self, context: StepContext) -> torch.Tensor | None:
        return None

    def fit_from_data(self, data: TrainingFeatures) -> None:
        """Fits the method's tensors from the training split's frozen image features."""

    def after_training(self, selection: Callable[[str], SelectionSet]) -> None:
        """Runs after the last optimizer step of a fit (hyperparameters chosen on trained
        tensors)."""

    def after_epoch(self, selection: Callable[[str], SelectionSet]) -> None:
        """Runs at the end of every training epoch (a per-epoch model selection)."""

    def set_run_length(self, run: RunLength) -> None:
        """Receives the training run's length before the first step."""

    def after_optimizer_step(self, step: int) -> None:
        """Runs after every optimizer step (``step`` counts from 0)."""

    def begin_task(self, task: int) -> None:
        """A continual stream starts task ``task`` (0-based)."""

    def end_task(self, task: int) -> None:
        """A continual stream finished training task ``task``."""

    def summary(self) -> dict[str, float]:
        """Scalars worth logging and keeping in the checkpoint (e.g. live ranks per layer)."""
        return {}

    # ------------------------------------------------------------------- fitted tensors
    def register_fitted(self, name: str, tensor: torch.Tensor | None = None) -> None:
        """Registers a fitted tensor (a persistent buffer whose shape comes from the data).

        Before fitting it is empty; a checkpoint restores it at the saved shape.
        """
        self.register_buffer(name, torch.empty(0) if tensor is None else tensor)
        self._fitted_names.append(name)

    @property
    def is_fitted(self) -> bool:
        return all(getattr(self, name).numel() > 0 for name in self._fitted_names)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for name in self._fitted_names:
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                current = getattr(self, name)
                setattr(self, name, torch.empty_like(saved, device=current.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def implements(adapter: Adapter, point: str) -> bool:
    """Whether ``adapter`` overrides the extension point ``point`` of :class:`Adapter`."""
    return getattr(type(adapter), point) is not getattr(Adapter, point)


EXCLUSIVE_POINTS = ("text_input", "prompts", "head")


def check_composition(adapters: Sequence[Adapter]) -> None:
    """Fails when two adapters claim the same exclusive extension point."""
    for point in EXCLUSIVE_POINTS:
        claimants = [adapter for adapter in adapters if implements(adapter, point)]
        if len(claimants) > 1:
            names = ", ".join(adapter.name or type(adapter).__name__ for adapter in claimants)
            raise PeftClipError(
                f"adapters {names} all implement '{point}', which only one adapter of a "
                "composition may own. Keep one of them, or combine a prompt method with a "
                "weight-space method instead (e.g. [coop, lora])."
            )
