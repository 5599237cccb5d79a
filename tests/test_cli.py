"""The ``peftclip`` command end to end on the tiny random-init config (no downloads)."""

from pathlib import Path

import pytest
import torch
import yaml

from peftclip.cli import main
from peftclip.data import build_dataset
from peftclip.lightning.cli import PeftClipCLI, resolve_adapter_names

RECIPE = Path(__file__).parents[1] / "recipes" / "zeroshot" / "tiny_random.yaml"


def _trainer_args(tmp_path, *extra):
    return [
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def test_zero_shot_recipe_runs_and_reports_micro_top1(tmp_path):
    cli = PeftClipCLI(args=["test", "--config", str(RECIPE), *_trainer_args(tmp_path)])
    metrics = cli.trainer.callback_metrics
    # Recompute top-1 by hand on the same images: the table must report micro accuracy in %.
    module, data = cli.model.eval(), build_dataset("world_colors")
    test = data.splits["test"]
    test.transform = module.backbone.preprocess_eval
    images = torch.stack([test[i][0] for i in range(len(test))])
    with torch.no_grad():
        predictions = module(images)["logits"].argmax(-1)
    expected = 100 * (predictions == test.labels).float().mean()
    assert metrics["test/top1"].item() == pytest.approx(expected.item(), abs=1e-4)
    assert "test/macro_f1" in metrics


def test_main_prints_the_table_and_exit_code(tmp_path, capsys):
    assert main(["test", "--config", str(RECIPE), *_trainer_args(tmp_path)]) == 0
    assert "test/top1" in capsys.readouterr().out


def test_print_config_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", str(RECIPE), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["backbone"]["model_name"] == "peftclip-tiny-vit"
    assert main(["--help"]) == 0
    assert "peftclip fit" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert "--model.adapters" in capsys.readouterr().out


def test_user_errors_are_one_paragraph_not_tracebacks(tmp_path, capsys):
    code = main(["test", "--config", str(RECIPE), "--model.backbone.model_name", "ViT-B-61"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("peftclip: error: unknown model name 'ViT-B-61'")
    assert "Traceback" not in err
    assert (
        main(["fit", "--config", str(RECIPE), *_trainer_args(tmp_path, "--trainer.max_steps", "1")])
        == 2
    )
    assert "nothing to train" in capsys.readouterr().err


def test_adapter_short_names_resolve_to_class_paths():
    import tests.toy_adapters  # noqa: F401  (registers the toy adapters)

    path = "tests.toy_adapters.ToyShift"
    assert resolve_adapter_names({"model": {"adapters": ["toy_shift"]}}) == {
        "model": {"adapters": [{"class_path": path}]}
    }
    assert resolve_adapter_names(
        [{"class_path": "toy_shift", "init_args": {"template": "{}"}}]
    ) == [{"class_path": path, "init_args": {"template": "{}"}}]
    assert resolve_adapter_names("toy_shift") == {"class_path": path}
    assert resolve_adapter_names({"dataset": "toy"}) == {"dataset": "toy"}


def _fit(tmp_path, *extra):
    import tests.toy_adapters  # noqa: F401

    return PeftClipCLI(
        args=[
            "fit",
            "--config",
            str(RECIPE),
            *_trainer_args(tmp_path),
            "--model.adapters+=toy_shift",
            "--model.adapters+=toy_vision_prompt",
            "--model.optimizer",
            "SGD",
            "--model.optimizer.lr",
            "0.1",
            "--trainer.max_steps",
            "2",
            *extra,
        ]
    )


def test_bf16_mixed_training_step_on_cpu_keeps_fp32_parameters(tmp_path):
    cli = _fit(tmp_path, "--trainer.precision", "bf16-mixed")
    trainable = [p for p in cli.model.parameters() if p.requires_grad]
    assert len(trainable) == 2 and all(p.dtype == torch.float32 for p in trainable)
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert cli.model.adapters[0].shift.abs().sum() > 0  # it trained


def test_checkpoint_holds_adapters_only_and_refuses_another_backbone(tmp_path, capsys):
    cli = _fit(tmp_path)
    checkpoint_path = next(Path(tmp_path).rglob("*.ckpt"))
    checkpoint = torch.load(checkpoint_path, weights_only=False)
    assert set(checkpoint["state_dict"]) == {
        "classifier.adapters.0.shift",
        "classifier.adapters.1.tokens",
    }
    assert checkpoint["peftclip"]["backbone"] == cli.model.backbone.identity.to_dict()
    assert checkpoint_path.stat().st_size < 100_000  # KB, never the whole CLIP

    common = [
        "test",
        "--config",
        str(RECIPE),
        *_trainer_args(tmp_path),
        "--model.adapters+=toy_shift",
        "--model.adapters+=toy_vision_prompt",
        "--ckpt_path",
        str(checkpoint_path),
    ]
    tested = PeftClipCLI(args=common)
    assert torch.equal(tested.model.adapters[0].shift, cli.model.adapters[0].shift)
    assert main([*common, "--model.backbone.init_seed", "1"]) == 2
    assert "trained on backbone peftclip-tiny-vit" in capsys.readouterr().err


@pytest.mark.parametrize(
    "recipe", sorted((RECIPE.parents[1]).rglob("*.yaml")), ids=lambda p: p.name
)
def test_every_recipe_parses_and_states_its_command(recipe, capsys):
    header = recipe.read_text().split("\nmodel:")[0]
    assert "# Command:" in header and "# Expected:" in header and "# Paper:" in header
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", str(recipe), "--print_config"])
    assert exit_info.value.code == 0
    assert "model_name:" in capsys.readouterr().out


def test_ci_runs_the_readme_commands_verbatim():
    root = Path(__file__).parents[1]
    readme = (root / "README.md").read_text()
    blocks = [block.split("```")[0].strip() for block in readme.split("```bash\n")[1:3]]
    ci = (root / ".ci" / "run").read_text()
    assert len(blocks) == 2 and all(block in ci for block in blocks)
    # `set -e` does not stop on a failure inside `a && b && c`: each must end in `|| exit 1`.
    assert all(f"{block} || exit 1" in ci for block in blocks)
    assert "peftclip base2new --config recipes/quickstart.yaml" in blocks[0]
    assert "pytest" in blocks[1]


def test_an_integer_batch_limit_stays_an_integer_whatever_the_import_order(tmp_path):
    """`--trainer.limit_test_batches 1` is one batch. Importing peftclip's adapters (peft, ...)
    before the CLI once made typing's Union cache hand the Trainer a float-first annotation, and
    jsonargparse then read "1" as 1.0: the whole test set."""
    import subprocess
    import sys

    script = (
        "import peftclip.classifier\n"  # peft and friends first: the order that broke it
        "from peftclip.lightning.cli import PeftClipCLI\n"
        "cli = PeftClipCLI(args=['test', '--config', 'recipes/zeroshot/tiny_random.yaml',"
        f" '--trainer.limit_test_batches', '1', '--trainer.default_root_dir', {str(tmp_path)!r},"
        " '--trainer.enable_progress_bar', 'false'])\n"
        "print('LIMIT', repr(cli.trainer.limit_test_batches))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    assert "LIMIT 1\n" in result.stdout
