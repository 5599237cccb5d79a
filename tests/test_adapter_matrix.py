"""Every registered adapter is tested because it is registered: forward/backward, state, CLI."""

import pytest
import torch

import peftclip.adapters  # noqa: F401  (registers the shipped adapters)
from peftclip.adapters import WeightSpaceAdapter, get_adapter_class, list_adapters
from peftclip.adapters.base import implements
from peftclip.backbone import load_backbone
from peftclip.classifier import PeftClipClassifier
from peftclip.lightning.cli import PeftClipCLI

SHIPPED = [n for n in list_adapters() if get_adapter_class(n).__module__.startswith("peftclip.")]
#: Methods whose tensors come from the training features (fit_from_data) take no gradient
#: before they are fitted; tests/test_feature_methods.py fits, counts and round-trips each.
GRADIENT_TRAINED = [n for n in SHIPPED if not implements(get_adapter_class(n)(), "fit_from_data")]
#: Of those, the ones with nothing to train at all: ``peftclip fit`` takes zero optimizer steps.
FITTED_ONLY = [
    n
    for n in SHIPPED
    if n not in GRADIENT_TRAINED
    and not any(p.requires_grad for p in get_adapter_class(n)().parameters())
]
CLASSES = ["red", "green", "blue"]
#: Settings that fit the 2-block tiny test model (defaults are the papers', e.g. 9 layers).
TINY_SETTINGS = {
    "maple": {"prompt_depth": 2},
    "ivlp": {"text_depth": 2, "vision_depth": 2},
    "vpt_deep": {"vision_depth": 2},
    "promptsrc": {"text_depth": 2, "vision_depth": 2},
    "linear_probe": {"max_iter": 30, "search_rounds": 1},  # a smoke run, not a converged fit
}


def _backbone_for(name, shared):
    """Weight-space adapters replace layers of the backbone they attach to: give them their own."""
    if issubclass(get_adapter_class(name), WeightSpaceAdapter):
        return load_backbone("peftclip-tiny-vit", init_seed=0)
    return shared


@pytest.mark.parametrize("name", GRADIENT_TRAINED)
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
def test_fit_checkpoint_and_restore_through_the_cli(tmp_path, name):
    """One optimizer step through ``peftclip fit``, then ``test`` from its checkpoint restores
    exactly the trained adapter tensors."""
    common = [
        "--config", "recipes/zeroshot/tiny_random.yaml", f"--model.adapters+={name}",
        *(f"--model.adapters.init_args.{k}={v}" for k, v in TINY_SETTINGS.get(name, {}).items()),
        "--data.shots", "2", "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    fit = PeftClipCLI(args=[
        "fit", *common, "--model.optimizer", "SGD", "--model.optimizer.lr", "0.002",
        "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
        "--trainer.enable_checkpointing", "true", "--trainer.default_root_dir", str(tmp_path),
    ])  # fmt: skip
    if fit.model.fitted_only:  # fitted from the training features: no optimizer step
        assert fit.trainer.global_step == 0 and fit.model.adapters[0].is_fitted
    else:
        assert fit.trainer.global_step == 1
        assert torch.isfinite(fit.trainer.callback_metrics["train/loss"])
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    test = PeftClipCLI(args=[
        "test", *common, "--trainer.limit_test_batches", "1", "--ckpt_path", str(checkpoint),
        "--trainer.default_root_dir", str(tmp_path / "test"),
    ])  # fmt: skip
    trained, restored = fit.model.adapter_state_dict(), test.model.adapter_state_dict()
    assert trained.keys() == restored.keys()
    # Tensors, and the extra state a fitted method keeps with them (its class names).
    same = [
        torch.equal(t, restored[k]) if torch.is_tensor(t) else t == restored[k]
        for k, t in trained.items()
    ]
    assert all(same)


MERGEABLE = [name for name in SHIPPED if hasattr(get_adapter_class(name), "merge")]


@pytest.mark.parametrize("name", MERGEABLE)
def test_merge_equals_unmerged_and_the_export_reloads_in_open_clip(tmp_path, name):
    import open_clip

    from peftclip.export import merge_weight_space_adapters, save_open_clip

    adapter = get_adapter_class(name)(**TINY_SETTINGS.get(name, {}))
    backbone = load_backbone("peftclip-tiny-vit", init_seed=0)
    classifier = PeftClipClassifier(backbone, [adapter]).eval()
    with torch.no_grad():
        for parameter in adapter.parameters():  # away from identity, as training would
            parameter.add_(0.05 * torch.randn_like(parameter))
        images = torch.randn(2, 3, 32, 32)
        adapted = classifier(images, CLASSES)["logits"]
        merge_weight_space_adapters([adapter])
        assert torch.allclose(classifier(images, CLASSES)["logits"], adapted, atol=1e-4)
        path = save_open_clip(backbone, tmp_path / "merged.safetensors")
        reloaded = open_clip.create_model("peftclip-tiny-vit", pretrained=str(path)).eval()
        assert torch.allclose(
            reloaded.encode_image(images), backbone.encode_image(images), atol=1e-5
        )
        adapter.unmerge()
        assert torch.allclose(classifier(images, CLASSES)["logits"], adapted, atol=1e-4)
