"""A wrong argument is answered with one line ``peftclip: error: ...`` and exit status 2."""

from pathlib import Path

import pytest

from peftclip.cli import main

# Imported first so that Lightning's log handlers bind the real stderr, not a test's capture.
from peftclip.lightning.cli import PeftClipCLI  # noqa: F401

RECIPE = Path(__file__).parents[1] / "recipes" / "zeroshot" / "tiny_random.yaml"


def _one_error_line(capsys, argv: list[str]) -> str:
    """Runs ``peftclip ARGV``; asserts exit 2 and a single error line, and returns it."""
    code = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("peftclip: error:")]
    assert code == 2, err
    assert len(errors) == 1, err
    assert "Traceback" not in err
    assert "usage:" not in err
    return errors[0]


@pytest.mark.parametrize(
    ("option", "value", "allowed"),
    [
        ("shots", "-3", ">= 1"),
        ("shots", "0", ">= 1"),
        ("batch_size", "0", ">= 1"),
        ("eval_batch_size", "0", ">= 1"),
        ("num_workers", "-1", ">= 0"),
    ],
)
def test_a_count_out_of_range_names_the_option_the_value_and_the_range(
    capsys, option, value, allowed
):
    line = _one_error_line(capsys, ["test", "--config", str(RECIPE), f"--data.{option}", value])
    assert f"data.{option} must be an integer {allowed}" in line
    assert line.endswith(f"got {value}.")


@pytest.mark.parametrize("spelling", ["inline", "separate", "recipe", "class_path"])
def test_an_adapter_typo_names_the_closest_adapter(capsys, tmp_path, spelling):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("model:\n  adapters: [cop]\n")
    class_path = tmp_path / "class_path.yaml"
    class_path.write_text("model:\n  adapters:\n  - class_path: cop\n    init_args: {n_ctx: 4}\n")
    extra = {
        "inline": ["--model.adapters+=cop"],
        "separate": ["--model.adapters+", "cop"],
        "recipe": ["--config", str(recipe)],
        "class_path": ["--config", str(class_path)],
    }[spelling]
    line = _one_error_line(capsys, ["test", "--config", str(RECIPE), *extra])
    assert line.startswith("peftclip: error: unknown adapter 'cop'. Did you mean coop")
    assert "Registered adapters: clip_svd, cocoop" in line


def test_adapter_class_names_and_import_paths_still_parse(capsys):
    for spelling in ("CoOp", "peftclip.adapters.coop.CoOp", "coop"):
        with pytest.raises(SystemExit) as exit_info:
            main(
                ["test", "--config", str(RECIPE), f"--model.adapters+={spelling}", "--print_config"]
            )
        assert exit_info.value.code == 0
        assert "class_path: peftclip.adapters" in capsys.readouterr().out


def test_short_class_paths_outside_adapters_are_not_checked_as_adapters(capsys, tmp_path):
    recipe = tmp_path / "optimizer.yaml"
    recipe.write_text("model:\n  optimizer:\n    class_path: SGD\n    init_args: {lr: 0.5}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", str(RECIPE), "--config", str(recipe), "--print_config"])
    assert exit_info.value.code == 0
    assert "class_path: torch.optim.SGD" in capsys.readouterr().out


@pytest.mark.parametrize("spelling", ["--data.datset", "--data.datset=", "recipe"])
def test_a_misspelt_key_is_one_line_with_the_closest_key(capsys, tmp_path, spelling):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("data:\n  datset: world_colors\n")
    extra = {
        "--data.datset": ["--data.datset", "world_colors"],
        "--data.datset=": ["--data.datset=world_colors"],
        "recipe": ["--config", str(recipe)],
    }[spelling]
    line = _one_error_line(capsys, ["test", "--config", str(RECIPE), *extra])
    assert line == (
        "peftclip: error: unknown option 'data.datset'; did you mean 'data.dataset'? "
        "`peftclip test --help` lists every option."
    )


def test_a_misspelt_key_of_a_recipe_command_names_that_command(capsys):
    line = _one_error_line(capsys, ["base2new", "--config", str(RECIPE), "--data.sehd", "2"])
    assert (
        "unknown option 'data.sehd'; did you mean 'data.seed'? `peftclip base2new --help`" in line
    )


def test_other_parse_errors_keep_jsonargparse_report(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", str(RECIPE), "--data.shots", "many"])
    assert exit_info.value.code == 2
    assert 'Parser key "data.shots"' in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "typo", "expected"),
    [
        ("--model.templates", "imagenet8", "unknown template set 'imagenet8'; did you mean "),
        (
            "--model.templates",
            "coop:dt",
            "unknown template set 'coop:dt'; did you mean 'coop:dtd'?",
        ),
        (
            "--data.dataset",
            "world_colrs",
            "unknown dataset 'world_colrs'. Did you mean world_colors",
        ),
        (
            "--model.backbone.model_name",
            "peftclip-tiny-vt",
            "unknown model name 'peftclip-tiny-vt': open_clip has no config of that name. "
            "Close matches: peftclip-tiny-vit",
        ),
    ],
)
def test_a_misspelt_name_suggests_the_closest_one(capsys, option, typo, expected):
    line = _one_error_line(capsys, ["test", "--config", str(RECIPE), option, typo])
    assert line.startswith(f"peftclip: error: {expected}")


def test_a_template_without_a_placeholder_is_still_refused_as_a_template(capsys):
    line = _one_error_line(capsys, ["test", "--config", str(RECIPE), "--model.templates", "xyz"])
    assert "template 'xyz' must contain exactly one '{}' placeholder" in line
