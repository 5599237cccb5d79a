"""Every registered adapter is tested because it is registered: forward/backward, state, CLI."""

import pytest
import torch

import peftclip.adapters  # noqa: F401  (registers the shipped adapters)
from peftclip.adapters import WeightSpaceAdapter, get_adapter_class, list_adapters
from peftclip.backbone import load_backbone
from peftclip.classifier import PeftClipClassifier
from peftclip.lightning.cli import PeftClipCLI

SHIPPED = [n for n in list_adapters() if get_adapter_class(n).__module__.startswith("peftclip.")]
CLASSES = ["red", "green", "blue"]
#: Settings that fit the 2-block tiny test model (defaults are the papers', e.g. 9 layers).
TINY_SETTINGS = {
    "maple": {"prompt_depth": 2},
    "ivlp": {"text_depth": 2, "vision_depth": 2},
    "vpt_deep": {"vision_depth": 2},
}


def _backbone_for(name, shared):
    """Weight-space adapters replace layers of the backbone they attach to: give them their own."""
    if issubclass(get_adapter_class(name), WeightSpaceAdapter):
        return load_backbone("peftclip-tiny-vit", init_seed=0)
    return shared


@pytest.mark.parametrize("name", SHIPPED)
def test_forward_backward_and_state_round_trip(tiny_backbone, name):
    torch.manual_seed(0)
    settings = TINY_SETTINGS.get(name, {})
    backbone = _backbone_for(name, tiny_backbone)
    first = PeftClipClassifier(backbone, [get_adapter_class(name)(**settings)]).train()
    images = torch.randn(2, 3, 32, 32)
    logits = first(images, CLASSES)["logits"]
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    trainable = [p for p in first.adapters.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    adapter_tensors = {id(p) for p in trainable}
    assert not any(p.requires_grad for p in backbone.parameters() if id(p) not in adapter_tensors)

    torch.manual_seed(1)  # a different init, then the saved state must restore the outputs
    second_backbone = _backbone_for(name, tiny_backbone)
    second = PeftClipClassifier(second_backbone, [get_adapter_class(name)(**settings)])
    second.adapters.load_state_dict(first.adapters.state_dict())
    with torch.no_grad():
        expected = first.eval()(images, CLASSES)["logits"]
        assert torch.allclose(second.eval()(images, CLASSES)["logits"], expected, atol=1e-6)


@pytest.mark.parametrize("name", SHIPPED)
def test_fast_dev_run_through_the_cli(tmp_path, name):
    cli = PeftClipCLI(args=[
        "fit", "--config", "recipes/zeroshot/tiny_random.yaml", f"--model.adapters+={name}",
        "--model.optimizer", "SGD", "--model.optimizer.lr", "0.002",
        "--data.shots", "2", "--trainer.fast_dev_run", "true",
        "--trainer.default_root_dir", str(tmp_path),
        *(f"--model.adapters.init_args.{k}={v}" for k, v in TINY_SETTINGS.get(name, {}).items()),
    ])  # fmt: skip
    assert cli.trainer.state.finished and torch.isfinite(cli.trainer.callback_metrics["train/loss"])


@pytest.mark.parametrize("method", ["coop", "cocoop", "maple", "ivlp", "vpt_deep"])
def test_method_recipes_smoke_run_on_a_fake_data_root(tmp_path, method, capsys):
    from peftclip.cli import main
    from tests.test_coop_datasets import _zhou_tree

    _zhou_tree(tmp_path, "oxford_pets")
    settings = [
        f"--model.adapters.init_args.{k}={v}" for k, v in TINY_SETTINGS.get(method, {}).items()
    ]
    code = main([
        "base2new", "--config", f"recipes/{method}/base2new.yaml", *settings,
        "--data.root", str(tmp_path), "--data.shots", "1",
        "--model.backbone.model_name", "peftclip-tiny-vit", "--model.backbone.pretrained", "null",
        "--trainer.precision", "32-true", "--trainer.fast_dev_run", "true",
        "--data.num_workers", "0", "--trainer.default_root_dir", str(tmp_path),
    ])  # fmt: skip
    assert code == 0
    assert "base-to-new on oxford_pets" in capsys.readouterr().out
