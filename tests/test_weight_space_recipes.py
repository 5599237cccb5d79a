"""Weight-space recipe settings: CLIP-SVD's unscaled fp16 autocast, a composed recipe.

(Every recipe is smoke-run by tests/test_recipe_matrix.py and tests/test_protocol_recipes.py.)
"""

import torch

from peftclip.lightning.cli import PeftClipCLI

TINY = ["--model.backbone.model_name", "peftclip-tiny-vit", "--model.backbone.pretrained", "null",
        "--trainer.precision", "32-true", "--data.num_workers", "0", "--data.shots", "1",
        "--trainer.enable_progress_bar", "false"]  # fmt: skip
METHODS = ["clip_svd", "lora", "codyra"]


def test_fp16_autocast_without_scaler_for_the_clip_svd_anchor(tmp_path):
    """CLIP-SVD's reference trains under fp16 autocast with no gradient scaler.

    A reproduction switch of docs/methods/clip_svd.md.
    """
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
