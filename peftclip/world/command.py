"""``peftclip world pretrain|evaluate``: make and measure the embedded world CLIP."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

from peftclip.atomic_files import write_text_atomically
from peftclip.world.model import SHIPPED_WEIGHTS as SHIPPED
from peftclip.world.pretrain import PretrainConfig, pretrain

#: A seconds-long run with tiny batches, for CI: proves the command works, not the model.
SMOKE = {"steps": 4, "batch_size": 16, "warmup": 2}


@dataclass
class WorldPretrainCommand(PretrainConfig):
    """Pretrains the world CLIP (defaults: the shipped checkpoint).

    Every setting of the run is an option; prints the model card written next to the weights.

    Args:
        output: The safetensors file to write (default: the shipped weights).
        device: Torch device to train on.
        smoke: A seconds-long run with tiny batches, for CI: proves the command works.
        resume: Continue from the .resume.pt file a killed run left next to the output.
    """

    output: Path = SHIPPED
    device: str = "cpu"
    smoke: bool = False
    resume: bool = True

    def __call__(self) -> int:
        settings = PretrainConfig(**{f.name: getattr(self, f.name) for f in fields(PretrainConfig)})
        if self.smoke:
            settings = replace(settings, **SMOKE)
        path = pretrain(settings, self.output, device=self.device, resume=self.resume)
        print(path.with_suffix(".json").read_text())
        return 0


def world_evaluate_command(
    *, weights: str = "world", device: str = "cpu", update_card: bool = False,
    forgetting: bool = False,
) -> int:  # fmt: skip
    """Measures the zero-shot numbers of the world CLIP's model card.

    Prints them as JSON.

    Args:
        weights: world (the shipped weights) or a safetensors file.
        device: Torch device to evaluate on.
        update_card: Write the numbers into the weights' .json card.
        forgetting: Also fine-tune all weights on world_counts and measure the held-out tasks
            before and after (~4 min on 2 CPU cores).
    """
    from peftclip.backbone import load_backbone
    from peftclip.world.evaluate import full_fine_tuning_forgetting, model_card_numbers

    backbone = load_backbone("peftclip-world-tiny", pretrained=weights).to(device)
    numbers = {name: round(value, 2) for name, value in model_card_numbers(backbone).items()}
    if forgetting:
        probe = full_fine_tuning_forgetting(backbone)  # last: it trains the backbone in place
        numbers["full_fine_tuning_on_world_counts"] = {
            task: {"before": round(before, 2), "after": round(after, 2)}
            for task, (before, after) in probe.items()
        }
    print(json.dumps(numbers, indent=2))
    if update_card:
        card_path = Path(backbone.identity.pretrained).with_suffix(".json")
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        card["zero_shot_top1"] = numbers
        write_text_atomically(card_path, json.dumps(card, indent=2) + "\n")
    return 0
