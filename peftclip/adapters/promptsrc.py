"""PromptSRC: self-regulating deep prompts (Khattak et al., ICCV 2023).

Semantics: docs/methods/promptsrc.md. The prompts are IVLP's (independent deep prompts on both
towers). Training adds three agreement terms with the frozen CLIP, and the prompts of every
epoch are averaged with Gaussian weights at the end of the run (GPA), following the official
code (muzairkhattak/PromptSRC ``trainers/promptsrc.py``):

* ``λ_t · L1(t, ẑ)``: learned class features against a 60-template text teacher, the
  normalised mean of the *un-normalised* template features;
* ``λ_i · L1(i, ẑ_img)``: prompted image features against the unprompted frozen tower's;
* ``KL(p0 ‖ p)`` summed and divided by the number of logits (batch × classes), as the code does.

The teachers are the frozen backbone itself (no second CLIP): the text teacher is encoded once
per class set in fp32 and cached, the image teacher is the backbone run without prompts.
Neither is a parameter or a buffer, so neither is in the checkpoint.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from peftclip.adapters.base import StepContext
from peftclip.adapters.ivlp import IVLP
from peftclip.adapters.registry import register_adapter
from peftclip.backbone import FrozenClip, class_prompts
from peftclip.errors import PeftClipError
from peftclip.schedules import RunLength

#: The official ``trainers/imagenet_templates.py IMAGENET_TEMPLATES``: 60 of CLIP's ImageNet
#: templates, in the code's order (a different list and order from the 80 of ``imagenet80``).
PROMPTSRC_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
)


def gpa_weights(epochs: int, mean: float, std: float) -> torch.Tensor:
    """Gaussian prompt-aggregation weights of epochs 1 … ``epochs``, summing to 1 (float64).

    The official code normalises the Gaussian pdf at those epochs; the pdf's constant cancels,
    so this is a softmax of ``−½((e − μ)/σ)²`` (no underflow for epochs far from ``μ``).
    """
    if std <= 0:
        raise PeftClipError(f"gpa_std must be > 0 (the Gaussian's width in epochs); got {std}.")
    epoch = torch.arange(1, epochs + 1, dtype=torch.float64)
    return torch.softmax(-0.5 * ((epoch - mean) / std) ** 2, dim=0)


def text_teacher(
    backbone: FrozenClip, classnames: Sequence[str], templates: Sequence[str]
) -> torch.Tensor:
    """``normalize(mean_t f(template_t(c)))``: the mean of the *un-normalised* features.

    The official code averages before normalising (the standard ensemble normalises each
    template first, docs/methods/index.md); computed in fp32, without gradients.
    """
    device = backbone.model.token_embedding.weight.device
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        total = sum(
            backbone.encode_text_tokens(backbone.tokenize(class_prompts(classnames, t))).float()
            for t in templates
        )
    return F.normalize(total / len(templates), dim=-1)


def logit_agreement(
    logits: torch.Tensor, teacher_logits: torch.Tensor, reduction: str = "per_logit"
) -> torch.Tensor:
    """``KL(softmax(teacher) ‖ softmax(logits))`` summed over the batch and the classes, divided
    by the number of logits (``per_logit``, the official code) or by the batch (``batchmean``)."""
    total = F.kl_div(
        F.log_softmax(logits.float(), dim=-1),
        F.log_softmax(teacher_logits.float(), dim=-1),
        reduction="sum",
        log_target=True,
    )
    return total / (logits.numel() if reduction == "per_logit" else len(logits))


class PromptSRC(IVLP):
    """Self-regulating prompts: IVLP plus agreement with frozen CLIP and GPA.

    Args:
        n_text: Text prompt tokens per layer.
        n_vision: Vision prompt tokens per layer.
        text_depth: Text blocks that receive prompts (9; 3 for DG and cross-dataset).
        vision_depth: Vision blocks that receive prompts (9; 3 for DG and cross-dataset).
        ctx_init: Words whose first ``n_text`` token embeddings initialise the text context.
        text_loss_weight: λ_t of the text L1 term (official: 25).
        image_loss_weight: λ_i of the image L1 term (official: 10).
        kl_reduction: ``per_logit``: the KL sum divided by batch × classes (the official code);
            ``batchmean``: divided by the batch only (C times stronger).
        teacher_templates: Templates of the text teacher; default the official 60.
        gpa_mean: μ of the Gaussian over epochs 1 … E (base-to-new 15, DG/XD 6, few-shot 30
            or 45).
        gpa_std: σ of the Gaussian (base-to-new 1, DG/XD 10, few-shot 30 or 5).
        gpa_scope: ``trainable``: average the prompts in fp32; ``full_state``: like the official
            code, every tensor of the adapter *and* of the frozen CLIP in its own dtype (the
            frozen weights then move by their dtype's rounding; kept in memory only).
    """

    def __init__(
        self,
        n_text: int = 4,
        n_vision: int = 4,
        text_depth: int = 9,
        vision_depth: int = 9,
        ctx_init: str = "a photo of a",
        text_loss_weight: float = 25.0,
        image_loss_weight: float = 10.0,
        kl_reduction: Literal["per_logit", "batchmean"] = "per_logit",
        teacher_templates: list[str] | None = None,
        gpa_mean: float = 15.0,
        gpa_std: float = 1.0,
        gpa_scope: Literal["trainable", "full_state"] = "trainable",
    ) -> None:
        super().__init__(n_text, n_vision, text_depth, vision_depth, ctx_init)
        self.text_loss_weight, self.image_loss_weight = text_loss_weight, image_loss_weight
        self.kl_reduction = kl_reduction
        self.teacher_templates = list(teacher_templates or PROMPTSRC_TEMPLATES)
        self.gpa_mean, self.gpa_std, self.gpa_scope = gpa_mean, gpa_std, gpa_scope
        self._teacher_text: tuple[tuple, torch.Tensor] | None = None
        self._steps_per_epoch: int | None = None
        self._weights: torch.Tensor | None = None
        self._full_state_sum: dict[str, torch.Tensor] = {}

    def attach(self, backbone: FrozenClip) -> None:
        super().attach(backbone)
        # A plain attribute, not a submodule: the frozen CLIP must stay out of the state dict.
        object.__setattr__(self, "_backbone", backbone)
        size = sum(p.numel() for p in self.parameters())
        # The running GPA sum and the optimizer steps seen: saved, so a resumed run continues it.
        self.register_buffer("gpa_sum", torch.zeros(size))
        self.register_buffer("gpa_step", torch.zeros((), dtype=torch.long))

    # ----------------------------------------------------------------------------- losses
    def teacher_text_features(self, classnames: Sequence[str]) -> torch.Tensor:
        """The text teacher of ``classnames`` (cached per class set, never saved)."""
        backbone = self._backbone
        key = (tuple(classnames), backbone.model.token_embedding.weight.device)
        if self._teacher_text is None or self._teacher_text[0] != key:
            self._teacher_text = (key, text_teacher(backbone, classnames, self.teacher_templates))
        return self._teacher_text[1]

    def extra_loss(self, context: StepContext) -> torch.Tensor:
        backbone = self._backbone
        teacher_text = self.teacher_text_features(context.classnames)
        with torch.no_grad():
            teacher_image = F.normalize(backbone.encode_image(context.images).float(), dim=-1)
            teacher_logits = backbone.logit_scale * teacher_image @ teacher_text.t()
        text = F.normalize(context.text_features.float(), dim=-1)
        image = F.normalize(context.image_features.float(), dim=-1)
        return (
            self.text_loss_weight * F.l1_loss(text, teacher_text)
            + self.image_loss_weight * F.l1_loss(image, teacher_image)
            + logit_agreement(context.logits, teacher_logits, self.kl_reduction)
        )

    # -------------------------------------------------------------------- prompt averaging
    def set_run_length(self, run: RunLength) -> None:
        if run.max_epochs is None:
            warnings.warn(
                "PromptSRC averages its prompts over epochs (GPA), but this run is limited by "
                "trainer.max_steps only: no averaging, the last prompts are kept. Set "
                "trainer.max_epochs for GPA.",
                stacklevel=2,
            )
            self._weights = None
            return
        self._steps_per_epoch = max(run.total_steps // run.max_epochs, 1)
        self._weights = gpa_weights(run.max_epochs, self.gpa_mean, self.gpa_std)

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        if self._weights is None:
            return
        self.gpa_step += 1
        done, rest = divmod(int(self.gpa_step), self._steps_per_epoch)
        if rest or not 1 <= done <= len(self._weights):
            return
        self.add_epoch(float(self._weights[done - 1]))
        if done == len(self._weights):
            self.load_average()

    def add_epoch(self, weight: float) -> None:
        """Adds ``weight`` × the current tensors to the running GPA sum (end of an epoch)."""
        if self.gpa_scope == "trainable":
            flat = torch.cat([p.detach().float().flatten() for p in self.parameters()])
            self.gpa_sum += weight * flat
            return
        for name, tensor in self._full_state().items():  # in each tensor's own dtype
            weighted = tensor * weight
            previous = self._full_state_sum.get(name)
            self._full_state_sum[name] = weighted if previous is None else previous + weighted

    def load_average(self) -> None:
        """Replaces the tensors by the GPA sum: what is evaluated and saved after training."""
        if self.gpa_scope == "trainable":
            offset = 0
            for parameter in self.parameters():
                chunk = self.gpa_sum[offset : offset + parameter.numel()]
                parameter.copy_(chunk.view_as(parameter))
                offset += parameter.numel()
            return
        for name, tensor in self._full_state().items():
            tensor.copy_(self._full_state_sum.pop(name))

    def _full_state(self) -> dict[str, torch.Tensor]:
        """The adapter's parameters and the frozen CLIP's floating tensors (the anchor's
        ``state_dict``), live: copying into them changes the model."""
        state = {f"adapter.{n}": p.data for n, p in self.named_parameters()}
        backbone = self._backbone.model.state_dict(keep_vars=True)
        state.update({f"clip.{n}": t.data for n, t in backbone.items() if t.is_floating_point()})
        return state


register_adapter("promptsrc", PromptSRC)
