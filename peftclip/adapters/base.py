"""The adapter interface: the extension points a method may implement (DESIGN.md, Adapters).

An adapter is a small ``nn.Module`` that attaches to a :class:`~peftclip.backbone.FrozenClip`
through a few explicit extension points; each adapter overrides only those it needs. Points
marked *exclusive* may be implemented by at most one adapter of a composition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from peftclip.backbone import DeepPrompts, FrozenClip
from peftclip.errors import PeftClipError


@dataclass
class TextInput:
    """Token embeddings of the class prompts, ready for ``FrozenClip.encode_text``.

    Attributes:
        embeddings: ``(classes, L, width)``, or ``(batch, classes, L, width)`` for
            image-conditioned prompts.
        pool_index: ``(classes,)`` position of the pooled (EOT) token of each prompt.
    """

    embeddings: torch.Tensor
    pool_index: torch.Tensor


@dataclass
class Prompts:
    """Prompt tensors injected into the encoders (spec methods.md §1.6)."""

    text_deep: DeepPrompts | None = None
    vision_input: torch.Tensor | None = None
    vision_deep: DeepPrompts | None = None


class Adapter(nn.Module):
    """Base class of every method. Subclasses override the extension points they use.

    Extension points (exclusive ones marked ◆):

    * ``attach(backbone)`` — called once; weight-space methods replace Linear layers here.
    * ◆ ``text_input(backbone, classnames, image_features)`` — builds the class-prompt token
      embeddings (CoOp-style). ``None`` means "use the hand-crafted templates".
    * ◆ ``prompts(backbone)`` — deep text prompts, vision input prompts, deep vision prompts.
    * ``extra_loss(outputs)`` — a term added to the training loss.
    * ``after_optimizer_step(step)`` — e.g. a proximal step.
    * ``summary()`` — scalars logged at the end of every training epoch and saved with the
      checkpoint.
    """

    #: Registry name, set by :func:`peftclip.adapters.register_adapter`.
    name: ClassVar[str] = ""
    #: Whether ``text_input`` depends on the images (then text features are per image).
    image_conditioned: ClassVar[bool] = False
    #: Attributes (parameters or modules) that the anchor implementation creates in CLIP's
    #: own dtype: fp16 under ``precision_profile: anchor_fp16``, the rest stays fp32 (spec
    #: methods.md §1.7). ``None``: the method has no anchor fp16 layout and refuses that profile.
    clip_dtype_tensors: ClassVar[tuple[str, ...] | None] = None

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

    def extra_loss(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return None

    def after_optimizer_step(self, step: int) -> None:
        """Runs after every optimizer step (``step`` counts from 0)."""

    def summary(self) -> dict[str, float]:
        """Scalars worth logging and keeping in the checkpoint (e.g. live ranks per layer)."""
        return {}


EXCLUSIVE_POINTS = ("text_input", "prompts")


def check_composition(adapters: Sequence[Adapter]) -> None:
    """Fails when two adapters claim the same exclusive extension point."""
    for point in EXCLUSIVE_POINTS:
        claimants = [
            adapter
            for adapter in adapters
            if getattr(type(adapter), point) is not getattr(Adapter, point)
        ]
        if len(claimants) > 1:
            names = ", ".join(adapter.name or type(adapter).__name__ for adapter in claimants)
            raise PeftClipError(
                f"adapters {names} all implement '{point}', which only one adapter of a "
                "composition may own. Keep one of them, or combine a prompt method with a "
                "weight-space method instead (e.g. [coop, lora])."
            )
