"""``peftclip world pretrain|evaluate``: make and measure the embedded world CLIP."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from peftclip.world.model import SHIPPED_WEIGHTS as SHIPPED
from peftclip.world.pretrain import PretrainConfig, pretrain

#: A seconds-long run with tiny batches, for CI: proves the command works, not the model.
SMOKE = {"steps": 4, "batch_size": 16, "warmup": 2}


def world_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="peftclip world", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "pretrain", help="pretrain the world CLIP (defaults: the shipped one)"
    )
    for field in fields(PretrainConfig):
        run.add_argument(f"--{field.name}", type=type(field.default), default=field.default)
    run.add_argument("--output", type=Path, default=SHIPPED, help="safetensors file to write")
    run.add_argument("--device", default="cpu")
    run.add_argument("--smoke", action="store_true", help=f"tiny run for CI: {SMOKE}")
    run.add_argument("--no-resume", action="store_true", help="ignore a .resume.pt file")
    measure = commands.add_parser("evaluate", help="zero-shot numbers of the model card")
    measure.add_argument("--weights", default="world", help="'world' (shipped) or a file")
    measure.add_argument("--device", default="cpu")
    measure.add_argument(
        "--update-card", action="store_true", help="write the numbers into the weights' .json card"
    )
    measure.add_argument(
        "--forgetting",
        action="store_true",
        help="also fine-tune all weights on world_counts and measure held-out tasks (~4 min)",
    )
    args = parser.parse_args(argv)

    if args.command == "pretrain":
        values = {field.name: getattr(args, field.name) for field in fields(PretrainConfig)}
        if args.smoke:
            values.update(SMOKE)
        path = pretrain(
            PretrainConfig(**values), args.output, device=args.device, resume=not args.no_resume
        )
        print(path.with_suffix(".json").read_text())
        return 0

    from peftclip.backbone import load_backbone
    from peftclip.world.evaluate import full_fine_tuning_forgetting, model_card_numbers

    backbone = load_backbone("peftclip-world-tiny", pretrained=args.weights).to(args.device)
    numbers = {name: round(value, 2) for name, value in model_card_numbers(backbone).items()}
    if args.forgetting:
        probe = full_fine_tuning_forgetting(backbone)  # last: it trains the backbone in place
        numbers["full_fine_tuning_on_world_counts"] = {
            task: {"before": round(before, 2), "after": round(after, 2)}
            for task, (before, after) in probe.items()
        }
    print(json.dumps(numbers, indent=2))
    if args.update_card:
        card_path = Path(backbone.identity.pretrained).with_suffix(".json")
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        card["zero_shot_top1"] = numbers
        card_path.write_text(json.dumps(card, indent=2) + "\n")
    return 0
