"""ZSCL (Zheng et al., ICCV 2023): continual learning that keeps zero-shot CLIP's ability
(docs/continual.md#zscl).

Per task, on top of the cross-entropy::

    loss += KD(z_ref, z_cur) + KD(z_refᵀ, z_curᵀ)        # the LwF-VR terms, teacher = zero-shot
          + l2_weight · Σ ‖θ − θ_task-start‖²          # weight consolidation

with ``z = s · Î(reference images) T̂ᵀ`` against the zero-shot teacher's text embeddings ``T̂`` of
the reference captions (:func:`peftclip.continual.distillation.kd_terms`). After the optimizer
step of every iteration ``t`` with ``t mod average_every = 0`` the weight ensemble (WE) folds the
weights into a running mean seeded with the task-start weights; the mean, not the last
iterate, ends the task (it is evaluated and continued from, and anchors the next task's L2 term).

Reference data, read once per run: images of a registered dataset's training split (ZSCL:
``imagenet``) or ``world`` (:mod:`peftclip.world.reference`), and captions from a Conceptual
Captions CSV (ZSCL: the validation CSV of open_clip's ``gather_cc.py``) or ``world``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from peftclip.continual.distillation import kd_terms, teacher_embeddings
from peftclip.continual.model import ContinualModel
from peftclip.continual.strategies import Step, Strategy, TaskData, register_strategy, snapshot
from peftclip.data import build_dataset
from peftclip.errors import PeftClipError

#: Where ZSCL's caption file sits under the data root (open_clip's ``gather_cc.py`` output:
#: tab-separated, columns ``title`` and ``filepath``).
DEFAULT_CAPTIONS = "conceptual_captions/Validation_GCC-1.1.0-Validation_output.csv"
WORLD = "world"


def read_captions(path: Path, column: str = "title", delimiter: str = "\t") -> list[str]:
    """The non-empty captions of column ``column`` of a delimited file with a header row, in file
    order.

    Raises:
        PeftClipError: The file is missing, has no such column or no caption.
    """
    if not path.is_file():
        raise PeftClipError(
            f"caption file '{path}' does not exist; ZSCL reads Conceptual Captions' validation "
            "CSV (open_clip's gather_cc.py output) there, or give strategy_options."
            "reference_captions (a file path, or 'world')."
        )
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        if column not in (reader.fieldnames or []):
            raise PeftClipError(
                f"caption file '{path}' has no column '{column}' (columns: "
                f"{reader.fieldnames}); set strategy_options.caption_column."
            )
        captions = [row[column].strip() for row in reader if (row[column] or "").strip()]
    if not captions:
        raise PeftClipError(f"caption file '{path}' has no caption in column '{column}'.")
    return captions


def caption_tokens(tokenizer, captions: list[str], truncate: str = "keep_eot") -> torch.Tensor:
    """Tokenized captions, ``context_length`` tokens each.

    Args:
        tokenizer: The backbone's tokenizer (open_clip's interface, with ``encode``).
        captions: The sentences.
        truncate: ``keep_eot``: the tokenizer's own truncation (EOT kept at the last position);
            ``anchor``: ZSCL's, which cuts a long caption to the context length without its EOT
            (argmax pooling then reads the largest remaining id).
    """
    if truncate == "keep_eot":
        return tokenizer(captions)
    length = tokenizer.context_length
    tokens = torch.zeros(len(captions), length, dtype=torch.long)
    for row, caption in enumerate(captions):
        ids = [tokenizer.sot_token_id, *tokenizer.encode(caption), tokenizer.eot_token_id]
        tokens[row, : min(len(ids), length)] = torch.tensor(ids[:length])
    return tokens


def l2_to_anchor(model: ContinualModel, anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    """``Σ ‖θ − θ_anchor‖²`` over the trainable weights (gradient ``2(θ − θ_anchor)``)."""
    return sum(
        (parameter - anchor[name]).pow(2).sum() for name, parameter in model.trainable().items()
    )


class WeightEnsemble:
    """ZSCL's WE: a running mean of the weights, seeded with the task-start weights.

    ``fold`` after snapshot n (1-based): ``θ̄ ← (n·θ̄ + θ)/(n + 1)``, so after n folds θ̄ is the
    equal-weight mean of the start and the n snapshots.
    """

    def __init__(self, start: dict[str, torch.Tensor]) -> None:
        self.mean = {name: value.detach().clone() for name, value in start.items()}
        self.count = 0

    @torch.no_grad()
    def fold(self, weights: dict[str, torch.Tensor]) -> None:
        self.count += 1
        for name, mean in self.mean.items():
            mean.mul_(self.count).add_(weights[name]).div_(self.count + 1)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, mean in self.mean.items():
            mean.copy_(state["mean"][name])
        self.count = int(state["count"])


class ZSCL(Strategy):
    """ZSCL: distillation from zero-shot CLIP on reference images and captions, an L2 pull to
    the task-start weights and a weight ensemble (docs/continual.md#zscl).

    Args:
        temperature: τ of both KD terms.
        image_weight: Weight of the per-image KD term (softmax over the captions).
        text_weight: Weight of the per-caption KD term (softmax over the batch images).
        l2_weight: Weight of ``Σ ‖θ − θ_task-start‖²`` (0: none).
        average_every: WE period in iterations (0: no ensemble, the last iterate ends the task).
        reference_dataset: Registered dataset whose ``train`` split gives the reference images
            (``imagenet``), or ``world``.
        reference_captions: Caption file (relative paths are under the run's ``data_root``), or
            ``world``.
        caption_column: The file's caption column.
        caption_truncate: ``keep_eot`` or ``anchor`` (:func:`caption_tokens`).
    """

    reference_images = "stream"

    def __init__(
        self,
        temperature: float = 2.0,
        image_weight: float = 1.0,
        text_weight: float = 1.0,
        l2_weight: float = 1.0,
        average_every: int = 100,
        reference_dataset: str = "imagenet",
        reference_captions: str = DEFAULT_CAPTIONS,
        caption_column: str = "title",
        caption_truncate: str = "keep_eot",
    ) -> None:
        if average_every < 0 or l2_weight < 0 or caption_truncate not in ("keep_eot", "anchor"):
            raise PeftClipError(
                "zscl needs average_every >= 0, l2_weight >= 0 and caption_truncate keep_eot or "
                f"anchor; got {average_every}, {l2_weight}, {caption_truncate!r}."
            )
        self.temperature = temperature
        self.image_weight = image_weight
        self.text_weight = text_weight
        self.l2_weight = l2_weight
        self.average_every = average_every
        self.reference_dataset = reference_dataset
        self.reference_captions = reference_captions
        self.caption_column = caption_column
        self.caption_truncate = caption_truncate
        self.captions: list[str] | None = None
        self.teacher: ContinualModel | None = None
        self.teacher_text: torch.Tensor | None = None
        self.anchor: dict[str, torch.Tensor] = {}
        self.ensemble: WeightEnsemble | None = None
        self.last_iteration = -1

    def options(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "image_weight": self.image_weight,
            "text_weight": self.text_weight,
            "l2_weight": self.l2_weight,
            "average_every": self.average_every,
            "reference_dataset": self.reference_dataset,
            "reference_captions": self.reference_captions,
            "caption_column": self.caption_column,
            "caption_truncate": self.caption_truncate,
        }

    def load_reference(self, data_root: str | None) -> Dataset:
        if self.reference_captions == WORLD:
            from peftclip.world.reference import reference_captions

            self.captions = reference_captions()
        else:
            path = Path(self.reference_captions)
            if not path.is_absolute() and data_root is not None:
                path = Path(data_root) / path
            self.captions = read_captions(path, self.caption_column)
        if self.reference_dataset == WORLD:
            from peftclip.world.reference import reference_images

            return reference_images()
        data = build_dataset(self.reference_dataset, data_root)
        if "train" not in data.splits:
            raise PeftClipError(
                f"zscl's reference images are a training split; '{self.reference_dataset}' has "
                f"only {sorted(data.splits)}."
            )
        return data.splits["train"]

    def begin_stream(self, model: ContinualModel) -> None:
        if self.captions is None:
            raise PeftClipError("zscl's reference captions are not loaded: call load_reference.")
        self.teacher = model.frozen_copy()  # zero-shot CLIP, the teacher of every task
        tokens = caption_tokens(model.backbone.tokenizer, self.captions, self.caption_truncate)
        device = model.backbone.model.token_embedding.weight.device
        self.teacher_text = teacher_embeddings(self.teacher, tokens.to(device))

    def begin_task(self, model: ContinualModel, task: TaskData) -> None:
        self.anchor = snapshot(model)
        self.ensemble = WeightEnsemble(self.anchor) if self.average_every else None
        self.last_iteration = -1

    def loss(self, step: Step) -> torch.Tensor:
        loss = kd_terms(
            step.model,
            self.teacher,
            self.teacher_text,
            step.reference,
            self.temperature,
            self.image_weight,
            self.text_weight,
        )
        if self.l2_weight:
            loss = loss + self.l2_weight * l2_to_anchor(step.model, self.anchor)
        return loss

    def after_step(self, model: ContinualModel, iteration: int) -> None:
        self.last_iteration = iteration
        if self.ensemble is not None and iteration % self.average_every == 0:
            self.ensemble.fold(model.trainable())

    @torch.no_grad()
    def end_task(self, model: ContinualModel, task: TaskData) -> None:
        if self.ensemble is None:
            return
        # ZSCL runs one more step at lr 0 (iteration N of range(N + 1)); when N is a multiple of
        # the period it folds once more the unchanged final weights.
        if (self.last_iteration + 1) % self.average_every == 0:
            self.ensemble.fold(model.trainable())
        for name, parameter in model.trainable().items():
            parameter.copy_(self.ensemble.mean[name])

    def state_dict(self) -> dict[str, Any]:
        if self.ensemble is None:
            return {"last_iteration": self.last_iteration}
        return {"last_iteration": self.last_iteration, "ensemble": self.ensemble.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_iteration = state["last_iteration"]
        if self.ensemble is not None:
            self.ensemble.load_state_dict(state["ensemble"])


register_strategy("zscl", ZSCL)
