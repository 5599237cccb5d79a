"""The base-to-new runner: zero-shot and trained accuracies on both class halves."""

import lightning as L
import pytest

from peftclip.adapters import CoOp
from peftclip.backbone import BackboneSpec
from peftclip.cli import main
from peftclip.lightning import PeftClipDataModule, PeftClipModule
from peftclip.protocols.base_to_new import harmonic_mean, run_base_to_new
from tests.conftest import TINY


def test_harmonic_mean():
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_runner_trains_on_base_and_evaluates_both_halves(tmp_path):
    module = PeftClipModule(BackboneSpec(TINY), adapters=[CoOp(n_ctx=2)])
    datamodule = PeftClipDataModule(
        "world_colors", shots=4, batch_size=8, num_workers=0, backbone=BackboneSpec(TINY)
    )
    trainer = L.Trainer(
        max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    result = run_base_to_new(module, datamodule, trainer)
    assert module.classnames == ["purple", "orange", "pink", "cyan"]  # last evaluated: new half
    assert trainer.global_step == 2
    for value in (result.zero_shot_base, result.zero_shot_new, result.base, result.new):
        assert 0 <= value <= 100
    assert "zero-shot CLIP" in result.table("coop")


def test_base2new_command_prints_the_table(tmp_path, capsys):
    import tests.toy_adapters  # noqa: F401

    code = main([
        "base2new", "--config", "recipes/zeroshot/tiny_random.yaml",
        "--model.adapters+=coop", "--model.adapters.init_args.n_ctx", "2",
        "--data.shots", "2", "--trainer.max_steps", "1",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "base-to-new on world_colors" in out and "| coop" in out


def test_extra_evaluation_datasets_get_their_own_heads_and_metrics(tmp_path):
    from peftclip.backbone import load_backbone
    from peftclip.lightning.cli import PeftClipCLI
    from peftclip.world.evaluate import PHOTO_TEMPLATE, zero_shot_accuracy

    cli = PeftClipCLI(args=[
        "test", "--config", "recipes/quickstart.yaml", "--model.adapters", "[]",
        "--data.shots", "null", "--data.eval_datasets", "[world_objects_sketch, world_shapes]",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    metrics = cli.trainer.callback_metrics
    backbone = load_backbone("peftclip-world-tiny", pretrained="world")
    for key, dataset in [
        ("test/top1", "world_objects"),
        ("test/world_objects_sketch/top1", "world_objects_sketch"),
        ("test/world_shapes/top1", "world_shapes"),
    ]:
        expected = zero_shot_accuracy(backbone, dataset, PHOTO_TEMPLATE)
        assert metrics[key].item() == pytest.approx(expected, abs=0.06), key
