"""``peftclip export``: a trained weight-space adapter as plain CLIP weights or a peft adapter.

* ``--format open_clip`` (default): merge every weight-space adapter into the Linear layers and
  write the backbone in open_clip's own layout (attention fused back into ``in_proj`` /
  ``out_proj``), loadable with ``open_clip.create_model(MODEL_NAME, pretrained=FILE)``.
* ``--format peft``: write the LoRA tensors in peft's adapter format (``adapter_config.json`` +
  ``adapter_model.safetensors``). Its module names are those of peftclip's split-attention
  model (``transformer.resblocks.0.attn.q``), so it loads onto a peftclip backbone.
* ``--format release``: any adapter composition as a release folder that loads without pickle
  (``adapters.safetensors`` + the JSON sidecar ``adapters.json``); ``peftclip test --ckpt_path
  FOLDER`` loads it like the checkpoint (docs/checkpoints.md).
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import yaml
from lightning.pytorch.cli import LightningArgumentParser
from safetensors.torch import save_file
from torch import nn

import peftclip
from peftclip.adapters import Adapter, LoRA, WeightSpaceAdapter
from peftclip.atomic_files import atomic_path, write_text_atomically
from peftclip.backbone import FrozenClip
from peftclip.backbone.attention import SplitAttention
from peftclip.checkpoint_files import (
    RELEASE_FORMAT,
    RELEASE_SIDECAR,
    RELEASE_TENSORS,
    file_sha256,
    read_checkpoint,
)
from peftclip.errors import PeftClipError
from peftclip.lightning.cli import PeftClipCLI


def merge_weight_space_adapters(adapters: Sequence[Adapter]) -> list[WeightSpaceAdapter]:
    """Merges every weight-space adapter of a composition; refuses prompt adapters."""
    prompt_adapters = [a.name for a in adapters if not isinstance(a, WeightSpaceAdapter)]
    if prompt_adapters:
        raise PeftClipError(
            f"adapters {', '.join(prompt_adapters)} add prompts, which a plain CLIP checkpoint "
            "cannot hold; only weight-space adapters (clip_svd, lora, codyra) export to "
            "open_clip weights. Keep the peftclip adapter checkpoint for this composition."
        )
    merged = [a for a in adapters if isinstance(a, WeightSpaceAdapter)]
    if not merged:
        raise PeftClipError("nothing to export: the recipe has no weight-space adapter.")
    for adapter in merged:
        adapter.merge()
    return merged


def open_clip_state_dict(backbone: FrozenClip) -> dict[str, torch.Tensor]:
    """The backbone's weights under open_clip's own names (fused attention projections).

    Every adapted layer must be merged first (plain ``nn.Linear`` everywhere).
    """
    model = backbone.model
    for name, module in model.named_modules():
        if isinstance(module, SplitAttention):
            parts = [module.q, module.k, module.v, module.o]
        elif name.endswith(".mlp"):
            parts = [module.c_fc, module.c_proj]
        else:
            continue
        if any(type(part) is not nn.Linear for part in parts):
            raise PeftClipError(f"layer {name} is still adapted: merge the adapters first.")
    state = dict(model.state_dict())
    for name, module in model.named_modules():
        if not isinstance(module, SplitAttention):
            continue
        for kind in ("q", "k", "v", "o"):
            for tensor in ("weight", "bias"):
                del state[f"{name}.{kind}.{tensor}"]
        state[f"{name}.in_proj_weight"] = torch.cat(
            [module.q.weight, module.k.weight, module.v.weight]
        )
        state[f"{name}.in_proj_bias"] = torch.cat([module.q.bias, module.k.bias, module.v.bias])
        state[f"{name}.out_proj.weight"] = module.o.weight
        state[f"{name}.out_proj.bias"] = module.o.bias
    # One copy, on the CPU, contiguous (safetensors needs it; the model may live on a GPU).
    return {key: value.detach().cpu().contiguous().clone() for key, value in state.items()}


def save_open_clip(backbone: FrozenClip, output: str | Path) -> Path:
    """Writes the (merged) backbone as ``.safetensors`` (or a torch file for other suffixes)."""
    output = Path(output)
    state = open_clip_state_dict(backbone)
    with atomic_path(output) as partial:  # never a torn checkpoint
        if output.suffix == ".safetensors":
            save_file(state, str(partial))
        else:
            torch.save(state, partial)
    return output


def save_peft(adapters: Sequence[Adapter], output: str | Path) -> Path:
    """Writes the composition's LoRA adapter in peft's format into the folder ``output``."""
    loras = [a for a in adapters if isinstance(a, LoRA)]
    if len(loras) != 1:
        raise PeftClipError(
            "--format peft exports a lora adapter; this recipe has "
            f"{', '.join(a.name for a in adapters) or 'no adapters'}. Use --format open_clip."
        )
    (lora,) = loras
    if lora.merged:
        raise PeftClipError("unmerge the lora adapter before exporting it in peft's format.")
    output = Path(output)
    state = {k: v.detach().cpu().contiguous() for k, v in lora.peft_state_dict().items()}
    with atomic_path(output / "adapter_model.safetensors") as partial:
        save_file(state, str(partial))
    # peft writes its config in place; it is staged in a folder of its own and renamed in.
    with (
        atomic_path(output / "adapter_config.json") as partial,
        tempfile.TemporaryDirectory(dir=output) as staging,
    ):
        lora.peft_config.save_pretrained(staging)
        os.replace(Path(staging) / "adapter_config.json", partial)
    return output


def save_release(checkpoint: dict, output: str | Path, recipe: dict | None = None) -> Path:
    """Writes a peftclip checkpoint as a release folder that loads without pickle.

    ``output/adapters.safetensors`` holds the checkpoint's adapter tensors exactly (contiguous,
    on the CPU); ``output/adapters.json`` its ``peftclip`` section (backbone identity, adapters,
    precision profile, summaries), hyper-parameters, epoch and step, the SHA-256 of the tensors
    file, and ``recipe``. Each file is written atomically, the tensors first: an interrupted
    export leaves the previous files, or new tensors that the old sidecar's SHA-256 refuses.

    Args:
        checkpoint: What :func:`peftclip.checkpoint_files.read_checkpoint` returned.
        output: The release folder (created if needed).
        recipe: What to pair the release with, e.g. ``{"config": [...], "model": {...}}``.

    Raises:
        PeftClipError: The state dict holds something besides tensors.
    """
    output = Path(output)
    tensors = {}
    for key, value in checkpoint["state_dict"].items():
        if not isinstance(value, torch.Tensor):
            raise PeftClipError(
                f"checkpoint entry {key} is a {type(value).__name__}, not a tensor; a release "
                "holds adapter tensors only."
            )
        # A copy: safetensors refuses tensors that share memory, and wants them contiguous.
        tensors[key] = value.detach().cpu().clone(memory_format=torch.contiguous_format)
    tensors_path = output / RELEASE_TENSORS
    with atomic_path(tensors_path) as partial:
        save_file(tensors, str(partial))
    sidecar = {
        "format": RELEASE_FORMAT,
        "peftclip_version": peftclip.__version__,
        "tensors": {"file": RELEASE_TENSORS, "sha256": file_sha256(tensors_path)},
        "peftclip": checkpoint["peftclip"],
        "hyper_parameters": checkpoint.get("hyper_parameters") or {},
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
        "recipe": recipe or {},
    }
    write_text_atomically(output / RELEASE_SIDECAR, json.dumps(sidecar, indent=2) + "\n")
    return output


def _recipe_of(cli: PeftClipCLI) -> dict:
    """The recipe files and the resolved ``model`` section a release is to be paired with."""
    resolved = yaml.safe_load(cli.parser.dump(cli.config))
    configs = [str(path) for path in cli.config.get("config") or []]
    return {"config": configs, "model": resolved["model"]}


class ExportCLI(PeftClipCLI):
    """Exports a trained adapter as open_clip weights, a peft adapter or the official format.

    The recipe options (--config RECIPE.yaml, --model.backbone.pretrained ...) describe the model
    exactly as at training; --ckpt_path, --output and --format say what to export and where
    (they can sit in the config file too).
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument(
            "--ckpt_path",
            required=True,
            help="adapter checkpoint of peftclip fit (a file, a run id, or last: the newest fit "
            "run of the same data under trainer.default_root_dir), or a release folder",
        )
        parser.add_argument(
            "--output",
            required=True,
            help="file (open_clip: .safetensors or .pt; official) or folder (peft, release)",
        )
        parser.add_argument(
            "--format",
            type=Literal["open_clip", "peft", "official", "release"],
            default="open_clip",
            help="merged open_clip weights, the LoRA tensors in peft's adapter format, the "
            "adapter under the official code's names and layout (CoOp, CoCoOp, MaPLe, CLIP-SVD), "
            "or a release: any adapters as safetensors + a JSON sidecar, loaded without pickle",
        )


def export_command(args: list[str]) -> int:
    """Exports a trained adapter as open_clip weights, a peft adapter or the official format."""
    cli = ExportCLI(
        args=args, run=False, prog="peftclip export", description=inspect.getdoc(ExportCLI)
    )
    model, output, export_format = cli.model, cli.config.output, cli.config.format
    cli.use_run_checkpoint(cli.config)  # `last` or a run id (peftclip.runs)
    model.load_adapter_checkpoint(cli.config.ckpt_path)
    if export_format == "peft":
        written = save_peft(model.adapters, output)
    elif export_format == "official":
        from peftclip.official_checkpoints import save_official

        written = save_official(model, cli.config.ckpt_path, output)
    elif export_format == "release":
        written = save_release(read_checkpoint(cli.config.ckpt_path), output, _recipe_of(cli))
    else:
        merge_weight_space_adapters(model.adapters)
        written = save_open_clip(model.backbone, output)
    print(f"wrote {written}")
    if export_format == "open_clip":
        print(
            f"load it with open_clip.create_model({model.backbone.identity.model_name!r}, "
            f"pretrained={str(written)!r})"
        )
    elif export_format == "release":
        recipes = " ".join(f"--config {path}" for path in cli.config.get("config") or [])
        recipes = recipes or "--config RECIPE.yaml"
        print(f"load it with peftclip test {recipes} --ckpt_path {written}")
    return 0
