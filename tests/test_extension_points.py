"""The adapter extension points: step context, head, fit from data, run length, task hooks."""

import pytest
import torch
import torch.nn.functional as F

import peftclip.backbone.text as text_module
from peftclip.adapters import CoDyRA, CoOp
from peftclip.backbone import BackboneSpec, backbone_transforms, load_backbone, zero_shot_head
from peftclip.classifier import PeftClipClassifier
from peftclip.errors import PeftClipError
from peftclip.lightning import PeftClipDataModule, PeftClipModule
from peftclip.lightning.cli import PeftClipCLI
from tests.conftest import TINY
from tests.toy_adapters import ToyAnchorLoss, ToyClassBias, ToyPrototypes

CLASSES = ["red", "green", "blue"]
TINY_RUN = ["--config", "recipes/zeroshot/tiny_random.yaml", "--trainer.enable_progress_bar",
            "false", "--data.shots", "2"]  # fmt: skip


def _fit(tmp_path, *args):
    return PeftClipCLI(args=["fit", *TINY_RUN, "--trainer.default_root_dir", str(tmp_path), *args])


def test_the_frozen_head_of_a_step_is_computed_once_per_class_set(tmp_path, monkeypatch):
    calls = []
    original = text_module.template_head

    def counted(backbone, classnames, templates, *args):
        calls.append((tuple(classnames), tuple(templates)))
        return original(backbone, classnames, templates, *args)

    monkeypatch.setattr(text_module, "template_head", counted)
    cli = _fit(tmp_path, "--model.adapters+=tests.toy_adapters.ToyAnchorLoss",
               "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0")  # fmt: skip
    assert cli.trainer.global_step == 3
    assert len(calls) == 1  # three steps, one class set: one frozen head


def test_the_step_context_serves_the_frozen_zero_shot_head(tiny_backbone):
    adapter = ToyAnchorLoss()
    classifier = PeftClipClassifier(tiny_backbone, [adapter]).train()
    expected = zero_shot_head(tiny_backbone, CLASSES, ["a photo of a {}."])
    assert torch.allclose(classifier.frozen_head(CLASSES), expected)
    assert classifier.frozen_head(CLASSES, "{} texture.").shape == expected.shape
    assert not torch.allclose(classifier.frozen_head(CLASSES, "{} texture."), expected)


def test_a_head_owner_replaces_the_logits_and_extra_logits_add(tiny_backbone):
    images = torch.randn(4, 3, 32, 32)
    prototypes = ToyPrototypes()
    prototypes.prototypes = F.normalize(torch.randn(3, tiny_backbone.embed_dim), dim=-1)
    bias = ToyClassBias(classes=3)
    with torch.no_grad():
        bias.bias.copy_(torch.tensor([1.0, -2.0, 0.5]))
        plain = PeftClipClassifier(tiny_backbone).eval()(images, CLASSES)
        owned = PeftClipClassifier(tiny_backbone, [prototypes]).eval()(images, CLASSES)["logits"]
        both = PeftClipClassifier(tiny_backbone, [prototypes, bias]).eval()(images, CLASSES)
    image = F.normalize(plain["image_features"], dim=-1)
    assert torch.allclose(owned, tiny_backbone.logit_scale * image @ prototypes.prototypes.t())
    assert torch.allclose(both["logits"], owned + bias.bias, atol=1e-5)
    with pytest.raises(PeftClipError, match="all implement 'head'"):
        PeftClipClassifier(tiny_backbone, [ToyPrototypes(), ToyPrototypes()])


def test_a_fixed_logit_scale_replaces_the_checkpoint_temperature(tiny_backbone):
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        free = PeftClipClassifier(tiny_backbone).eval()(images, CLASSES)["logits"]
        fixed = PeftClipClassifier(tiny_backbone, logit_scale=100.0).eval()(images, CLASSES)
    assert torch.allclose(fixed["logits"], free / tiny_backbone.logit_scale * 100, atol=1e-4)


def test_a_fitted_method_trains_zero_steps_and_restores_its_fit(tmp_path):
    cli = _fit(tmp_path, "--model.adapters+=tests.toy_adapters.ToyPrototypes",
               "--trainer.max_epochs", "3", "--trainer.enable_checkpointing", "true")  # fmt: skip
    adapter = cli.model.adapters[0]
    assert cli.trainer.global_step == 0
    assert adapter.fitted_views == 2 and adapter.prototypes.shape[0] == 8  # 8 world colours
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    saved = torch.load(checkpoint, weights_only=False)["state_dict"]
    assert torch.equal(saved["classifier.adapters.0.prototypes"], adapter.prototypes)
    test = PeftClipCLI(args=[
        "test", *TINY_RUN, "--model.adapters+=tests.toy_adapters.ToyPrototypes",
        "--trainer.default_root_dir", str(tmp_path / "test"), "--ckpt_path", str(checkpoint),
    ])  # fmt: skip
    assert torch.equal(test.model.adapters[0].prototypes, adapter.prototypes)
    assert test.trainer.callback_metrics["test/top1"] >= 0


def test_fit_from_data_sees_every_training_image_once_per_view(tiny_backbone):
    datamodule = PeftClipDataModule("world_colors", shots=2, num_workers=0,
                                    backbone=BackboneSpec(TINY))  # fmt: skip
    datamodule.setup("fit")
    labels = torch.tensor([label for _, label in datamodule.data.splits["train"]])
    cli_free = PeftClipModule(BackboneSpec(TINY), adapters=[ToyPrototypes()])
    assert cli_free.fitted_only
    assert sorted(labels.tolist()) == sorted(list(range(8)) * 2)


def test_schedules_and_rank_schedules_take_the_trainers_run_length(tmp_path):
    dassl = _fit(tmp_path / "dassl", "--model.adapters+=coop", "--model.adapters.init_args.n_ctx",
                 "2", "--model.scheduler", "peftclip.schedules.DasslCosine",
                 "--model.scheduler_interval", "epoch", "--trainer.max_epochs", "3")  # fmt: skip
    assert dassl.trainer.lr_scheduler_configs[0].scheduler.max_epochs == 3
    codyra = _fit(tmp_path / "codyra", "--model.adapters+=codyra", "--model.adapters.init_args.r=2",
                  "--trainer.max_steps", "5")  # fmt: skip
    assert codyra.model.adapters[0].iterations == 5
    assert int(codyra.model.adapters[0].iteration) == 5


def test_task_hooks_reach_every_adapter(tiny_backbone):
    codyra = CoDyRA(r=2)
    classifier = PeftClipClassifier(load_backbone(TINY, init_seed=0), [CoOp(n_ctx=2), codyra])
    classifier.begin_task(0)
    classifier.end_task(0)
    assert int(codyra.task) == 1


def test_the_data_module_builds_the_backbones_own_transforms_without_a_model():
    import open_clip

    for model_name in (TINY, "peftclip-world-tiny", "ViT-B-32"):
        _, train, evaluation = open_clip.create_model_and_transforms(model_name)
        own = backbone_transforms(model_name, None)
        assert repr(own.train) == repr(train) and repr(own.eval) == repr(evaluation)
    datamodule = PeftClipDataModule("world_colors", num_workers=0, backbone=BackboneSpec(TINY))
    datamodule.setup("test")
    image, _ = datamodule.data.splits["test"][0]
    assert image.shape == (3, 32, 32)
    openai = backbone_transforms("ViT-B-16", "openai")  # a tag's settings, nothing downloaded
    assert openai.image_size == 224


def test_a_data_module_for_another_backbone_is_refused(tmp_path):
    import lightning as L

    module = PeftClipModule(BackboneSpec(TINY))
    world = BackboneSpec("peftclip-world-tiny", "world")
    datamodule = PeftClipDataModule("world_colors", num_workers=0, backbone=world)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(PeftClipError, match="transforms of backbone peftclip-world-tiny"):
        trainer.test(module, datamodule=datamodule)


def test_base_to_new_evaluates_zero_shot_on_the_trained_modules_backbone(tmp_path, monkeypatch):
    import lightning as L

    import peftclip.lightning.module as module_code
    from peftclip.protocols.base_to_new import run_base_to_new

    loads = []
    original = module_code.load_backbone
    monkeypatch.setattr(module_code, "load_backbone", lambda *a: loads.append(a) or original(*a))
    module = PeftClipModule(BackboneSpec(TINY), adapters=[CoOp(n_ctx=2)])
    datamodule = PeftClipDataModule("world_colors", shots=2, num_workers=0,
                                    backbone=BackboneSpec(TINY))  # fmt: skip
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path)  # fmt: skip
    run_base_to_new(module, datamodule, trainer)
    assert len(loads) == 1  # the trained module's; zero-shot CLIP shares it
