"""The CLIP-SVD / LoRA / CoDyRA recipes run on a fake data root with a tiny model (smoke)."""

import pytest
import torch

from peftclip.cli import main
from peftclip.lightning.cli import PeftClipCLI
from tests.test_coop_datasets import _zhou_tree

TINY = ["--model.backbone.model_name", "peftclip-tiny-vit", "--model.backbone.pretrained", "null",
        "--trainer.precision", "32-true", "--data.num_workers", "0", "--data.shots", "1",
        "--trainer.enable_progress_bar", "false"]  # fmt: skip
METHODS = ["clip_svd", "lora", "codyra"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("DATA")
    _zhou_tree(root, "oxford_pets")
    return root


@pytest.mark.parametrize("method", METHODS)
def test_fewshot_recipe_fits_then_tests_the_checkpoint(data_root, tmp_path, method):
    recipe = f"recipes/{method}/fewshot.yaml"
    common = [*TINY, "--data.root", str(data_root), "--trainer.default_root_dir", str(tmp_path)]
    assert main(["fit", "--config", recipe, *common, "--trainer.max_steps", "2"]) == 0
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["peftclip"]["adapters"] == [method]
    cli = PeftClipCLI(args=["test", "--config", recipe, *common, "--ckpt_path", str(checkpoint)])
    assert "test/top1" in cli.trainer.callback_metrics


@pytest.mark.parametrize("method", METHODS)
def test_base2new_recipe_smoke_runs(data_root, tmp_path, method, capsys):
    code = main(["base2new", "--config", f"recipes/{method}/base2new.yaml", *TINY,
                 "--data.root", str(data_root), "--trainer.fast_dev_run", "true",
                 "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    assert code == 0
    assert "base-to-new on oxford_pets" in capsys.readouterr().out


def test_fp16_autocast_without_scaler_for_the_clip_svd_anchor(tmp_path):
    """Quirk §13.2: CLIP-SVD's reference trains under fp16 autocast with no gradient scaler."""
    cli = PeftClipCLI(args=[
        "fit", "--config", "recipes/zeroshot/tiny_random.yaml", "--model.adapters+=clip_svd",
        "--data.shots", "2", "--trainer.max_steps", "2", "--trainer.precision", "null",
        "--trainer.plugins",
        "[{class_path: peftclip.lightning.UnscaledMixedPrecision, init_args: {device: cpu}}]",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    plugin = cli.trainer.precision_plugin
    assert cli.trainer.global_step == 2 and not plugin.scaler.is_enabled()
    layer = next(iter(cli.model.adapters[0].sites.values()))
    with plugin.forward_context():
        assert layer(torch.randn(2, layer.in_features)).dtype == torch.float16
    assert layer.s.dtype == torch.float32  # parameters stay fp32 (autocast, not conversion)


def test_composed_recipe_trains_both_adapters_and_nothing_else(tmp_path):
    """[maple, clip_svd] from one command line: both adapters' tensors move, the CLIP does not."""
    from peftclip.backbone import load_backbone

    frozen = {k: v.clone() for k, v in load_backbone("peftclip-tiny-vit", init_seed=0)
              .model.state_dict().items()}  # fmt: skip
    cli = PeftClipCLI(args=[
        "fit", "--config", "recipes/zeroshot/tiny_random.yaml",
        "--model.adapters+=maple", "--model.adapters.init_args.prompt_depth=2",
        "--model.adapters+=clip_svd",
        "--model.optimizer", "AdamW", "--model.optimizer.lr", "0.01",
        "--data.shots", "2", "--trainer.max_steps", "3",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    maple, svd = cli.model.adapters
    assert (maple.name, svd.name) == ("maple", "clip_svd")
    fresh_maple = type(maple)(prompt_depth=2)  # word init "a photo of a": deterministic
    fresh_maple.attach(load_backbone("peftclip-tiny-vit", init_seed=0))
    assert not torch.allclose(maple.ctx, fresh_maple.ctx)
    for target in svd.targets:
        sigma = torch.linalg.svdvals(frozen[f"{target.path}.weight"])
        assert not torch.allclose(svd.sites[target.key].s.detach(), sigma, atol=1e-4)
    backbone_state = cli.model.backbone.model.state_dict()
    untouched = [k for k in frozen if k in backbone_state]
    assert len(untouched) > 10 and all(torch.equal(backbone_state[k], frozen[k]) for k in untouched)
