"""The ``peftclip`` command: Lightning subcommands plus peftclip's own."""

from __future__ import annotations

import os
import sys
import warnings

from peftclip.errors import PeftClipError

OVERVIEW = """\
peftclip — parameter-efficient fine-tuning of a frozen CLIP.

usage:
  peftclip fit      --config RECIPE.yaml [--key value ...]   train adapters
  peftclip validate --config RECIPE.yaml [--ckpt_path CKPT]  evaluate on the val split
  peftclip test     --config RECIPE.yaml [--ckpt_path CKPT]  evaluate on the test split
  peftclip list     adapters|datasets|models                 what can be named in a recipe
  peftclip base2new --config RECIPE.yaml                     base-to-new protocol (one seed)
  peftclip data     check --root DATA [NAMES ...]            validate a CoOp-style data root
  peftclip data     import-pkl --root DATA --dataset NAME PKL  Dassl few-shot pkl → manifest
  peftclip data     mtil-manifest --root DATA --dataset NAME  MTIL 80/20 split → manifest
  peftclip world    pretrain|evaluate [--help]               the embedded world CLIP
  peftclip export   --config RECIPE.yaml --ckpt_path CKPT --output FILE [--format peft]
                                                             merged open_clip weights / peft
  peftclip SUBCOMMAND --help                                 every option of a subcommand
  peftclip fit --config RECIPE.yaml --print_config           the resolved recipe

examples:
  peftclip test --config recipes/zeroshot/tiny_random.yaml
  peftclip test --config recipes/zeroshot/imagenet.yaml --data.root /data/imagenet_folder \\
      --model.backbone.pretrained /weights/ViT-B-16.pt

Recipes are YAML files (see recipes/); any key can be overridden on the command line.
"""


def _list(kind: str | None) -> int:
    if kind == "adapters":
        from peftclip.adapters import list_adapters

        print("\n".join(list_adapters()) or "(no adapters registered yet)")
    elif kind == "datasets":
        from peftclip.data import list_datasets

        print("\n".join(list_datasets()))
    elif kind == "models":
        from peftclip.backbone import list_models

        print("\n".join(list_models()))
    else:
        print("usage: peftclip list adapters|datasets|models", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    # peftclip hands LightningCLI its arguments itself, which Lightning warns about.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    from_command_line = argv is None
    argv = list(sys.argv[1:] if from_command_line else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(OVERVIEW)
        return 0
    try:
        if argv[0] == "list":
            return _list(argv[1] if len(argv) > 1 else None)
        if argv[:2] == ["data", "check"]:
            from peftclip.data.check import data_check_command

            return data_check_command(argv[2:])
        if argv[:2] == ["data", "import-pkl"]:
            from peftclip.data.dassl_pkl import import_pkl_command

            return import_pkl_command(argv[2:])
        if argv[:2] == ["data", "mtil-manifest"]:
            from peftclip.data.mtil_splits import mtil_manifest_command

            return mtil_manifest_command(argv[2:])
        if argv[0] == "export":
            from peftclip.export import export_command

            return export_command(argv[1:])
        if argv[0] == "world":
            from peftclip.world.command import world_command

            return world_command(argv[1:])
        from peftclip.lightning.cli import PeftClipCLI

        if argv[0] == "base2new":
            from peftclip.protocols.base_to_new import run_base_to_new

            cli = PeftClipCLI(args=argv[1:], run=False)
            result = run_base_to_new(cli.model, cli.datamodule, cli.trainer)
            method = "+".join(a.name for a in cli.model.adapters) or "no adapter"
            print(
                f"\nbase-to-new on {cli.datamodule.dataset_name}, seed {cli.datamodule.seed} "
                f"(top-1 %)\n{result.table(method)}"
            )
            return 0
        PeftClipCLI(args=None if from_command_line else argv)
    except PeftClipError as error:
        if os.environ.get("PEFTCLIP_TRACEBACK"):
            raise
        print(f"peftclip: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
