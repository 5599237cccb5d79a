"""The ``peftclip`` command end to end on the tiny random-init config (no downloads)."""

import inspect
import logging
import subprocess
import sys
import typing
import warnings
from pathlib import Path
from typing import Literal

import pytest
import torch
import yaml

from peftclip.backbone import backbone_transforms
from peftclip.cli import (
    COMMANDS,
    Lazy,
    RecipeCommand,
    build_parser,
    leaf_commands,
    main,
    quiet_third_party_messages,
)
from peftclip.data import build_dataset
from peftclip.errors import PeftClipError
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
    test.transform = backbone_transforms("peftclip-tiny-vit", None).eval
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
    "recipe",
    # Continual recipes are `peftclip run continual` recipes: tests/test_continual.py.
    [p for p in sorted(RECIPE.parents[1].rglob("*.yaml")) if p.parent.name != "continual"],
    ids=lambda p: p.name,
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


def test_help_lists_every_command_once_with_one_line(capsys):
    assert main(["--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = [line for line in lines if line.startswith("  ") and not line.startswith("   ")]
    for words in leaf_commands():
        rows = [line for line in listed if line.split("  ")[1].strip() == " ".join(words)]
        assert len(rows) == 1, words
        assert len(rows[0].split()) > len(words) + 2  # the name, then its one-line summary
    # The jsonargparse parser knows exactly the table's commands, groups included.
    (subcommands,) = [a for a in build_parser()._actions if a.dest == "command"]
    assert list(subcommands.choices) == list(COMMANDS)
    assert {"data", "world"} <= set(COMMANDS) and len(leaf_commands()) >= 11


def test_help_answers_without_importing_torch():
    """`peftclip --help` reads the summaries from the source: no command module is imported."""
    code = "import sys; from peftclip.cli import main; main(['--help']); print(sorted(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    modules = result.stdout.splitlines()[-1]
    assert result.returncode == 0 and "fit" in result.stdout
    assert "'torch'" not in modules and "'lightning'" not in modules


def _options(command) -> list[str]:
    """What `--help` must mention for a command: its positionals and dashed options."""
    command = command.load() if isinstance(command, Lazy) else command
    if command == COMMANDS["run"]:  # the runner: its own options, then recipe overrides
        return ["--config", "--datasets", "--suite", "--shots", "--seeds", "--jobs", "--dry-run"]
    if isinstance(command, RecipeCommand):
        return ["--config", "--print_config", "--model.adapters", "--trainer.max_steps"]
    names, hints = [], typing.get_type_hints(command)
    for name, parameter in inspect.signature(command).parameters.items():
        positional = parameter.kind is parameter.POSITIONAL_OR_KEYWORD
        if positional and parameter.default is parameter.empty and not inspect.isclass(command):
            literal = typing.get_origin(hints[name]) is Literal
            names += typing.get_args(hints[name]) if literal else [name]  # choices, if any
        elif hints[name] is bool:
            names += [f"--{name.replace('_', '-')}", f"--no-{name.replace('_', '-')}"]
        else:
            names.append(f"--{name.replace('_', '-')}")
    return [*names, "--config", "--print_config"]


@pytest.mark.parametrize("words", list(leaf_commands()), ids=lambda words: "-".join(words))
def test_every_command_has_help_naming_its_options(words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*words, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    options = _options(leaf_commands()[words])
    assert options and all(option in out for option in options), (options, out)
    if words == ("export",):
        assert all(option in out for option in ("--ckpt_path", "--output", "--format"))


def test_every_group_has_help_listing_its_commands(capsys):
    for group, commands in COMMANDS.items():
        if isinstance(commands, dict):
            with pytest.raises(SystemExit) as exit_info:
                main([group, "--help"])
            assert exit_info.value.code == 0
            out = capsys.readouterr().out
            assert all(name in out for name in commands)


def test_unknown_commands_are_one_line_with_the_closest_names(capsys, monkeypatch):
    assert main(["fitt", "--config", str(RECIPE)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("peftclip: error: 'peftclip' has no command 'fitt'; did you mean 'fit'")
    assert main(["data", "chek", "--root", "."]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "'peftclip data' has no command 'chek'; did you mean 'check'?" in line
    assert "`peftclip data --help`" in line
    assert main(["frobnicate"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "did you mean" not in line and "`peftclip --help` lists them all" in line
    monkeypatch.setenv("PEFTCLIP_TRACEBACK", "1")
    with pytest.raises(PeftClipError, match="no command 'fitt'"):
        main(["fitt"])


def test_options_come_from_the_signature_and_round_trip_through_a_config_file(tmp_path, capsys):
    """Dashed options, the underscore spelling, flag pairs, and --config of --print_config."""
    args = ["world", "pretrain", "--batch-size", "3", "--weight_decay", "0.5", "--smoke"]
    with pytest.raises(SystemExit):
        main([*args, "--no-resume", "--output", str(tmp_path / "w.safetensors"), "--print_config"])
    printed = capsys.readouterr().out
    config = yaml.safe_load(printed)
    assert config["batch_size"] == 3 and config["weight_decay"] == 0.5
    assert config["smoke"] is True and config["resume"] is False and config["steps"] == 650
    (tmp_path / "pretrain.yaml").write_text(printed)
    with pytest.raises(SystemExit):
        main(["world", "pretrain", "--config", str(tmp_path / "pretrain.yaml"), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out) == config
    with pytest.raises(SystemExit) as exit_info:
        main(["world", "pretrain", "--smoke", "yes"])  # a flag takes no value
    assert exit_info.value.code == 2


def test_a_command_returns_its_exit_status_and_reads_positionals(capsys):
    assert main(["list", "datasets"]) == 0
    assert "world_colors" in capsys.readouterr().out.split()
    with pytest.raises(SystemExit) as exit_info:
        main(["list", "recipes"])
    assert exit_info.value.code == 2


def test_third_party_noise_is_filtered_and_other_warnings_stay():
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    noise = [
        ("The 'train_dataloader' does not have many workers which may be a bottleneck.",
         PossibleUserWarning, "lightning.pytorch.trainer.connectors.data_connector"),
        ("Precision 16-mixed is not supported by the model summary.  Estimated model size in MB "
         "will not be accurate. Using 32 bits instead.", UserWarning,
         "lightning.pytorch.utilities.model_summary.model_summary"),
        ("`torch.jit.load` is deprecated. Please switch to `torch.export`.", FutureWarning,
         "torch.jit._serialization"),
        ("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) "
         "and treespec.is_leaf()` instead.", FutureWarning, "lightning.pytorch.utilities._pytree"),
    ]  # fmt: skip
    kept = [
        ("peftclip: the schedule is longer than the run", UserWarning, "peftclip.schedules"),
        # The same message from another module (here peftclip's) shows: filters match modules.
        (noise[-1][0], FutureWarning, "peftclip.adapters.base"),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party_messages()
        for message, category, module in noise + kept:
            warnings.warn_explicit(message, category, f"{module}.py", 1, module=module)
    assert [(str(w.message), w.category, w.filename[:-3]) for w in caught] == kept

    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    logger, records = logging.getLogger("lightning.pytorch.utilities.rank_zero"), []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing [litlogger](...)")
        rank_zero_info("Loading `train_dataloader` to estimate number of stepping batches.")
        rank_zero_info("GPU available: False, used: False")
    finally:
        logger.removeHandler(handler)
    assert [record.getMessage() for record in records] == ["GPU available: False, used: False"]


def test_a_tiny_run_prints_no_third_party_tips_or_deprecations(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "peftclip", "test", "--config", str(RECIPE),
         *_trainer_args(tmp_path)],
        capture_output=True, text=True, timeout=300, check=True,
        cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert "test/top1" in result.stdout
    for noise in ("Tip:", "litlogger", "litmodels", "LeafSpec", "Warning", "deprecated"):
        assert noise not in result.stderr, result.stderr
    # What a user must know still shows: this recipe's backbone is random-init by design.
    assert "Model initialized randomly" in result.stderr
