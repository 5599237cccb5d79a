"""Distillation strategies: LwF, VR-LwF (ZSCL's LwF-VR), and the KD terms ZSCL shares with them
(:mod:`peftclip.continual.zscl`; docs/continual.md#strategies).

All three add the same two KD terms on a batch of reference images, against a frozen teacher's
text embeddings ``T̂`` of a set of reference texts (s = exp(logit_scale), τ = 2)::

    z_cur = s · Î_student(ref) T̂ᵀ,   z_ref = s · Î_teacher(ref) T̂ᵀ          (B × V)
    loss  = KD(z_ref, z_cur) + KD(z_refᵀ, z_curᵀ)   # per image over texts; per text over images

with ``KD(t, u; τ) = τ² · mean over rows of −Σ softmax(t/τ) · log_softmax(u/τ)``. Both terms use
the teacher's text embeddings, so only the student's image tower is distilled. They differ in
the teacher, the reference texts and images:

* ``lwf``: teacher = the previous task's model; texts = the current task's class prompts;
* ``vr_lwf``: teacher = the previous task's model; texts = 1000 random-token sentences;
* ``zscl``: teacher = zero-shot CLIP for every task; texts = captions, images = a reference set;
  plus an L2 pull to the task-start weights and a weight ensemble (WE) every 100 iterations.

The teacher runs under inference mode and its text embeddings are computed once per task
(ZSCL: once per run), never per step (the anchors recompute them every iteration).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from peftclip.backbone import class_prompts
from peftclip.continual.model import ContinualModel
from peftclip.continual.strategies import Step, Strategy, TaskData, register_strategy
from peftclip.data.order import derived_seed
from peftclip.errors import PeftClipError


def random_vocabulary(
    tokenizer, size: int = 1000, words: int = 10, seed: int = 0, include_special_ids: bool = False
) -> torch.Tensor:
    """VR-LwF's replayed vocabulary: ``size`` pseudo-sentences of random token ids.

    Each row is ``[SOT] + words ids ~ Uniform + [EOT] + zeros`` (``tokenizer.context_length``
    tokens; for CLIP 1000 × 77 with SOT at 0 and EOT at 11). Drawn from a generator of its own
    seeded by ``seed``, so the vocabulary depends on the seed only. The ids exclude SOT and EOT
    unless ``include_special_ids`` (the anchor's draw over all ids, where an EOT among the words
    moves the argmax pooling position).
    """
    sot, eot = tokenizer.sot_token_id, tokenizer.eot_token_id
    length = tokenizer.context_length
    if words + 2 > length:
        raise PeftClipError(f"{words} words + SOT + EOT do not fit {length} tokens.")
    generator = torch.Generator().manual_seed(derived_seed(seed, "vocabulary"))
    high = tokenizer.vocab_size if include_special_ids else min(sot, eot)
    tokens = torch.zeros(size, length, dtype=torch.long)
    tokens[:, 0] = sot
    tokens[:, 1 : words + 1] = torch.randint(high, (size, words), generator=generator)
    tokens[:, words + 1] = eot
    return tokens


def distillation_loss(
    teacher: torch.Tensor, student: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``τ² · mean over rows of −Σ_j softmax(t/τ)_j · log_softmax(u/τ)_j``."""
    targets = F.softmax(teacher / temperature, dim=-1)
    log_probs = F.log_softmax(student / temperature, dim=-1)
    return temperature**2 * -(targets * log_probs).sum(dim=-1).mean()


class Distillation(Strategy):
    """The shared KD code path of LwF and VR-LwF: they differ only in the reference texts.

    Args:
        temperature: τ of both KD terms.
        image_weight: Weight of the per-image term (softmax over the texts).
        text_weight: Weight of the per-text term (softmax over the batch images).
        reference_texts: ``class_prompts`` (LwF: the task's class prompts, training template)
            or ``vocabulary`` (VR-LwF: random-token sentences).
        vocabulary_size: Sentences of the vocabulary.
        vocabulary_words: Random tokens per sentence.
        vocabulary_include_special_ids: Draw the words over all ids, SOT/EOT included (the
            anchor; faithful).
    """

    reference_images = "current_task"

    def __init__(
        self,
        temperature: float = 2.0,
        image_weight: float = 1.0,
        text_weight: float = 1.0,
        reference_texts: str = "vocabulary",
        vocabulary_size: int = 1000,
        vocabulary_words: int = 10,
        vocabulary_include_special_ids: bool = False,
    ) -> None:
        if reference_texts not in ("class_prompts", "vocabulary"):
            raise PeftClipError(
                f"reference_texts is class_prompts or vocabulary; got {reference_texts!r}."
            )
        self.temperature = temperature
        self.image_weight = image_weight
        self.text_weight = text_weight
        self.reference_texts = reference_texts
        self.vocabulary_size = vocabulary_size
        self.vocabulary_words = vocabulary_words
        self.vocabulary_include_special_ids = vocabulary_include_special_ids
        self.teacher: ContinualModel | None = None
        self.teacher_text: torch.Tensor | None = None

    def options(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "image_weight": self.image_weight,
            "text_weight": self.text_weight,
            "reference_texts": self.reference_texts,
            **(
                {
                    "vocabulary_size": self.vocabulary_size,
                    "vocabulary_words": self.vocabulary_words,
                    "vocabulary_include_special_ids": self.vocabulary_include_special_ids,
                }
                if self.reference_texts == "vocabulary"
                else {}
            ),
        }

    def reference_tokens(self, model: ContinualModel, task: TaskData) -> torch.Tensor:
        backbone = model.backbone
        if self.reference_texts == "class_prompts":
            return backbone.tokenize(class_prompts(task.classnames, task.template))
        tokens = random_vocabulary(
            backbone.tokenizer,
            self.vocabulary_size,
            self.vocabulary_words,
            task.seed,
            self.vocabulary_include_special_ids,
        )
        return tokens.to(backbone.model.token_embedding.weight.device)

    def begin_task(self, model: ContinualModel, task: TaskData) -> None:
        self.teacher = model.frozen_copy()  # the end of the previous task (task 1: zero-shot)
        self.teacher_text = teacher_embeddings(self.teacher, self.reference_tokens(model, task))

    def loss(self, step: Step) -> torch.Tensor:
        return kd_terms(
            step.model,
            self.teacher,
            self.teacher_text,
            step.reference,
            self.temperature,
            self.image_weight,
            self.text_weight,
        )


def kd_terms(
    model: ContinualModel,
    teacher: ContinualModel,
    texts: torch.Tensor,
    reference: torch.Tensor,
    temperature: float,
    image_weight: float = 1.0,
    text_weight: float = 1.0,
) -> torch.Tensor:
    """Both KD terms of a reference batch against the teacher's text embeddings ``texts``.

    The teacher's image features are computed under inference mode (it holds no activations);
    only the student's image tower receives gradients.
    """
    scale = model.backbone.logit_scale.detach().float()
    with torch.inference_mode():
        teacher_logits = scale * teacher.encode_images(reference) @ texts.t()
    teacher_logits = teacher_logits.clone()  # an ordinary tensor: usable in autograd
    student_logits = scale * model.encode_images(reference) @ texts.t()
    per_image = distillation_loss(teacher_logits, student_logits, temperature)
    per_text = distillation_loss(teacher_logits.t(), student_logits.t(), temperature)
    return image_weight * per_image + text_weight * per_text


def teacher_embeddings(teacher: ContinualModel, tokens: torch.Tensor) -> torch.Tensor:
    """The teacher's normalized text embeddings of ``tokens``, computed once under inference
    mode and returned as an ordinary tensor."""
    with torch.inference_mode():
        embeddings = teacher.encode_tokens(tokens)
    return embeddings.clone()


class LwF(Distillation):
    """LwF (ZSCL's baseline): distillation from the previous task's model on the current task's
    images, with the current task's class prompts as reference texts."""

    def __init__(
        self, temperature: float = 2.0, image_weight: float = 1.0, text_weight: float = 1.0
    ):
        super().__init__(temperature, image_weight, text_weight, reference_texts="class_prompts")


class VRLwF(Distillation):
    """VR-LwF as ZSCL's LwF-VR: LwF with a replayed vocabulary of random-token sentences."""

    def __init__(
        self,
        temperature: float = 2.0,
        image_weight: float = 1.0,
        text_weight: float = 1.0,
        vocabulary_size: int = 1000,
        vocabulary_words: int = 10,
        vocabulary_include_special_ids: bool = False,
    ) -> None:
        super().__init__(
            temperature,
            image_weight,
            text_weight,
            "vocabulary",
            vocabulary_size,
            vocabulary_words,
            vocabulary_include_special_ids,
        )


register_strategy("lwf", LwF)
register_strategy("vr_lwf", VRLwF)
