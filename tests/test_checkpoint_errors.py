"""Checkpoint arguments: one-line errors (exit 2) for every bad file, and no file runs code."""

import os
from pathlib import Path

import pytest
import torch

from peftclip.cli import main
from peftclip.errors import PeftClipError
from peftclip.lightning.cli import PeftClipCLI
from tests.helpers import one_line_error

RECIPE = ["--config", "recipes/zeroshot/tiny_random.yaml", "--model.adapters+=coop"]
QUIET = ["--trainer.enable_progress_bar", "false"]


def _run_dir(tmp_path, name="run"):
    return ["--trainer.default_root_dir", str(tmp_path / name), *QUIET]


@pytest.fixture(scope="module")
def coop_checkpoint(tmp_path_factory) -> Path:
    """A real ``peftclip fit`` checkpoint of CoOp with n_ctx 16 (the default)."""
    root = tmp_path_factory.mktemp("coop_fit")
    args = ["fit", *RECIPE, "--model.optimizer", "SGD", "--model.optimizer.lr", "0.01"]
    assert main([*args, "--trainer.max_steps", "1", *_run_dir(root)]) == 0
    (checkpoint,) = root.rglob("*.ckpt")
    return checkpoint


class RunsCommand:
    """Unpickling this calls ``os.system``: the crafted file of a hostile release."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _commands(tmp_path, ckpt: Path) -> dict[str, list[str]]:
    """Every subcommand that takes a checkpoint path, pointed at ``ckpt``."""
    out = str(tmp_path / "out.ckpt")
    ckpt_path, output = ["--ckpt_path", str(ckpt)], ["--output", out]
    return {
        "fit": ["fit", *RECIPE, *_run_dir(tmp_path, "fit"), *ckpt_path],
        "validate": ["validate", *RECIPE, *_run_dir(tmp_path, "val"), *ckpt_path],
        "test": ["test", *RECIPE, *_run_dir(tmp_path, "test"), *ckpt_path],
        "export": ["export", *RECIPE, *ckpt_path, *output, "--format", "official"],
        "import-checkpoint": ["import-checkpoint", *RECIPE, "--source", str(ckpt), *output],
    }


@pytest.mark.parametrize("command", ["fit", "validate", "test", "export", "import-checkpoint"])
def test_a_missing_checkpoint_is_one_line_with_the_same_wording(tmp_path, capsys, command):
    missing = tmp_path / "nowhere.ckpt"
    code = main(_commands(tmp_path, missing)[command])
    line = one_line_error(capsys, code, f"{missing} does not exist; check the path.")
    assert line.split(str(missing))[0] in {
        "peftclip: error: checkpoint ",
        "peftclip: error: official checkpoint ",  # --source names an official file
    }
    assert not (tmp_path / "out.ckpt").exists()


@pytest.mark.parametrize("command", ["fit", "validate", "test", "export"])
@pytest.mark.parametrize("damage", ["truncated", "text", "other_torch_file"])
def test_a_damaged_or_foreign_file_is_not_a_peftclip_checkpoint(
    tmp_path, capsys, coop_checkpoint, command, damage
):
    bad = tmp_path / "bad.ckpt"
    if damage == "truncated":
        data = coop_checkpoint.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
        reason = "truncated or not a torch file"
    elif damage == "text":
        bad.write_text("model: coop\n")
        reason = "truncated or not a torch file"
    else:
        torch.save({"weights": torch.zeros(2)}, bad)
        reason = "no 'peftclip' section"
    code = main(_commands(tmp_path, bad)[command])
    one_line_error(capsys, code, f"{bad} is not a peftclip checkpoint (", reason)
    assert not (tmp_path / "out.ckpt").exists()


@pytest.mark.parametrize("command", ["test", "export"])
def test_a_coop_checkpoint_of_another_n_ctx_names_adapter_tensor_shapes_and_setting(
    tmp_path, capsys, coop_checkpoint, command
):
    args = [*_commands(tmp_path, coop_checkpoint)[command], "--model.adapters.n_ctx", "4"]
    width = torch.load(coop_checkpoint, weights_only=True)["state_dict"][
        "classifier.adapters.0.ctx"
    ].shape[-1]
    one_line_error(
        capsys,
        main(args),
        "coop: checkpoint tensor 'ctx' has shape (16, ",
        f"adapter tensor 'ctx' is (4, {width})",
        "n_ctx (or the word count of ctx_init) is 4 in the recipe but 16 in the file",
    )


def test_resuming_last_without_a_checkpoint_is_an_error_not_a_fresh_start(tmp_path, capsys):
    args = ["fit", *RECIPE, *_run_dir(tmp_path), "--trainer.max_steps", "1"]
    code = main([*args, "--ckpt_path", "last"])
    one_line_error(capsys, code, "--ckpt_path last: there is no fit run with a checkpoint under")
    assert not list(tmp_path.rglob("*.ckpt"))  # it did not train from scratch


def test_a_checkpoint_that_runs_code_when_unpickled_is_refused_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    crafted = tmp_path / "released.ckpt"
    torch.save({"state_dict": {}, "peftclip": RunsCommand(marker)}, crafted)
    commands = _commands(tmp_path, crafted)
    for command in ("test", "export"):
        code = main(commands[command])
        one_line_error(
            capsys, code, "not a peftclip checkpoint (", "posix.system", "never runs code"
        )
        assert not marker.exists()
    assert list(tmp_path.rglob("*.ckpt")) == [crafted]  # nothing ran, nothing was written

    model = PeftClipCLI(args=RECIPE, run=False).model
    with pytest.raises(PeftClipError, match=r"not a peftclip checkpoint \(.*posix\.system"):
        model.load_adapter_checkpoint(str(crafted))
    assert not marker.exists()


def test_export_official_reads_its_checkpoint_without_unpickling_code(tmp_path, coop_checkpoint):
    """save_official reads the checkpoint a second time (for its epoch): also weights-only."""
    from peftclip.official_checkpoints import save_official

    model = PeftClipCLI(args=RECIPE, run=False).model
    model.load_adapter_checkpoint(str(coop_checkpoint))
    written = save_official(model, coop_checkpoint, tmp_path / "official.pth.tar-1")
    assert torch.load(written, weights_only=True)["epoch"] == 1
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "peftclip": RunsCommand(tmp_path / "MARKER")}, crafted)
    with pytest.raises(PeftClipError, match="never runs code"):
        save_official(model, crafted, tmp_path / "other.pth.tar-1")
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("command", ["validate", "test"])
def test_evaluating_a_method_without_its_checkpoint_needs_allow_untrained(
    tmp_path, command, capsys
):
    assert main([command, *RECIPE, *_run_dir(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()[-1:]
    assert line.startswith(f"peftclip: error: `peftclip {command}` without --ckpt_path")
    assert "coop" in line and "--allow_untrained true" in line
    limit = (
        "--trainer.limit_val_batches" if command == "validate" else "--trainer.limit_test_batches"
    )
    assert main([command, *RECIPE, "--allow_untrained", "true", limit, "1",
                 *_run_dir(tmp_path, "untrained")]) == 0  # fmt: skip
    # Zero-shot CLIP (nothing trainable) needs no checkpoint.
    zero_shot = ["--config", "recipes/zeroshot/tiny_random.yaml", limit, "1"]
    assert main([command, *zero_shot, *_run_dir(tmp_path, "zero_shot")]) == 0
