"""Pretraining the tiny world CLIP (an ``open_clip.CLIP``) on rendered scenes and true captions.

Loss: a multi-positive contrastive loss. A caption is true of every image in the batch whose
scene agrees with every attribute the caption mentions; the target distribution of an image is
uniform over the captions true of it (and vice versa), so no true pair is pushed apart.

Every step's batch is generated from ``seed`` and the step index alone, so an interrupted run
resumed from its ``.resume.pt`` file continues exactly where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from peftclip.atomic_files import atomic_path, write_text_atomically
from peftclip.backbone.loading import get_tokenizer
from peftclip.world.captions import (
    caption_attributes,
    caption_matches,
    caption_text,
    scene_attributes,
)
from peftclip.world.render import render
from peftclip.world.scenes import sample_scenes

CLIP_MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN)
CLIP_STD = torch.tensor(open_clip.OPENAI_DATASET_STD)
MAX_LOGIT_SCALE = math.log(100)


@dataclass
class PretrainConfig:
    """Settings of a world pretraining run (defaults produce the shipped checkpoint).

    Args:
        model_name: open_clip config registered by peftclip.
        steps: Optimizer steps.
        batch_size: Scenes (and captions) per step.
        lr: Peak AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to gains, biases, embeddings, scale).
        warmup: Linear warm-up steps before the cosine decay.
        seed: Seed of the initialisation and of every batch.
    """

    model_name: str = "peftclip-world-tiny"
    steps: int = 650
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 50
    seed: int = 0


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """``uint8 (n, H, W, 3)`` → normalized ``float (n, 3, H, W)`` (open_clip's eval transform
    on a native-size image: ToTensor + Normalize)."""
    x = images.float().div(255).permute(0, 3, 1, 2)
    return (x - CLIP_MEAN[:, None, None]) / CLIP_STD[:, None, None]


def world_batch(step: int, config: PretrainConfig, image_size: int, tokenizer):
    """The batch of step ``step``: images, caption tokens and the caption↔image truth matrix."""
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    scenes = sample_scenes(config.batch_size, generator, held_out="exclude")
    images, _ = render(scenes, image_size, generator)
    captions = caption_attributes(scenes, generator)
    tokens = tokenizer(caption_text(captions, generator))
    truth = caption_matches(captions, scene_attributes(scenes))  # (captions, images)
    return to_model_input(images), tokens, truth


def multi_positive_loss(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy against uniform targets over all true pairs.

    Args:
        logits: ``(images, captions)`` scaled similarities.
        truth: ``(captions, images)`` bool, caption true of image.
    """
    image_targets = truth.t().float()
    text_targets = truth.float()
    image_loss = F.cross_entropy(logits, image_targets / image_targets.sum(1, keepdim=True))
    text_loss = F.cross_entropy(logits.t(), text_targets / text_targets.sum(1, keepdim=True))
    return (image_loss + text_loss) / 2


def _learning_rate(step: int, config: PretrainConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.5 * config.lr * (1 + math.cos(math.pi * progress))


def _optimizer(model: torch.nn.Module, config: PretrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        is_gain_or_bias = parameter.ndim < 2 or "embedding" in name or "logit_scale" in name
        (no_decay if is_gain_or_bias else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


def _save_resume_state(path: Path, config, model, optimizer, step: int, losses) -> None:
    state = {
        "config": asdict(config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "losses": losses,
    }
    with atomic_path(path) as partial:  # a crash never leaves a torn resume file
        torch.save(state, partial)


def pretrain(
    config: PretrainConfig,
    output: str | Path,
    device: str = "cpu",
    resume: bool = True,
    checkpoint_every: int = 50,
    progress: bool = True,
) -> Path:
    """Runs pretraining and writes ``output`` (safetensors, open_clip format) + ``.json`` card.

    A ``<output>.resume.pt`` file is written every ``checkpoint_every`` steps and removed at the
    end; with ``resume`` an interrupted run continues from it.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    resume_path = output.with_suffix(".resume.pt")
    torch.manual_seed(config.seed)
    model = open_clip.create_model(config.model_name).to(device).train()
    tokenizer = get_tokenizer(config.model_name)
    image_size = model.visual.image_size
    image_size = image_size if isinstance(image_size, int) else image_size[0]
    optimizer = _optimizer(model, config)
    start, losses, started = 0, [], time.time()
    if resume and resume_path.is_file():
        state = torch.load(resume_path, map_location=device, weights_only=True)
        if state["config"] != asdict(config):
            raise ValueError(
                f"{resume_path} belongs to another configuration; delete it to restart"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, losses = state["step"], state["losses"]

    columns = (
        TextColumn("pretrain"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.3f}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("pretrain", total=config.steps, completed=start, loss=float("nan"))
        for step in range(start, config.steps):
            images, tokens, truth = world_batch(step, config, image_size, tokenizer)
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(step, config)
            image_features = F.normalize(model.encode_image(images.to(device)), dim=-1)
            text_features = F.normalize(model.encode_text(tokens.to(device)), dim=-1)
            logits = model.logit_scale.exp() * image_features @ text_features.t()
            loss = multi_positive_loss(logits, truth.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            losses.append(loss.item())
            bar.update(task, advance=1, loss=losses[-1])
            if (step + 1) % checkpoint_every == 0 and step + 1 < config.steps:
                _save_resume_state(resume_path, config, model, optimizer, step + 1, losses)

    weights = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    with atomic_path(output) as partial:
        save_file(weights, str(partial))
    card = {
        "config": asdict(config),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "logit_scale": math.exp(model.logit_scale.item()),
        "seconds": round(time.time() - started, 1),
        "device": device,
        "torch": torch.__version__,
    }
    write_text_atomically(output.with_suffix(".json"), json.dumps(card, indent=2) + "\n")
    resume_path.unlink(missing_ok=True)
    return output
