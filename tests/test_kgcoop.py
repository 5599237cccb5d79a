"""KgCoOp (docs/methods/kgcoop.md): trainable tensors, the knowledge term, its two forms, the
hard-coded init, what the checkpoint holds, and Dassl's steps per epoch at batch 128."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from peftclip.adapters import CoOp, KgCoOp, LoRA, get_adapter_class
from peftclip.adapters.kgcoop import knowledge_loss
from peftclip.backbone import load_backbone
from peftclip.classifier import PeftClipClassifier
from peftclip.data import ClassificationData, dataset_definition
from peftclip.data.fewshot import base_new_split
from peftclip.data.images import LabeledImageFiles
from peftclip.data.templates import templates_of_dataset
from peftclip.errors import PeftClipError
from peftclip.lightning import PeftClipDataModule
from tests.helpers import step_context

CLASSES = ["sea_lion", "dog", "golden retriever", "tabby cat"]


def _kgcoop(backbone, template: str, **settings) -> tuple[KgCoOp, PeftClipClassifier]:
    adapter = KgCoOp(**settings)
    return adapter, PeftClipClassifier(backbone, [adapter], templates=template).train()


def test_only_the_context_trains_and_there_is_nothing_else(tiny_backbone):
    adapter, classifier = _kgcoop(tiny_backbone, "a photo of a {}.")
    trainable = {name: p for name, p in classifier.named_parameters() if p.requires_grad}
    assert list(trainable) == ["adapters.0.ctx"]
    assert trainable["adapters.0.ctx"].shape == (4, tiny_backbone.text_width)
    assert list(adapter.state_dict()) == ["ctx"]  # no meta_net, adapter, bias_vectors, w^clip
    assert get_adapter_class("kgcoop") is KgCoOp


@pytest.mark.slow
def test_parameter_count_on_vit_b_16():
    adapter = KgCoOp()
    adapter.attach(load_backbone("ViT-B-16", init_seed=0))
    assert sum(p.numel() for p in adapter.parameters()) == 2_048


def test_the_knowledge_term_vanishes_at_init_where_the_template_is_the_init_prompt(tiny_backbone):
    adapter, classifier = _kgcoop(tiny_backbone, "a photo of a {}.")
    context = step_context(classifier, CLASSES, torch.randn(2, 3, 32, 32), torch.tensor([0, 3]))
    loss = adapter.extra_loss(context)
    assert 0 <= loss.item() / adapter.kg_weight <= 1e-6
    loss.backward()
    assert adapter.ctx.grad.abs().max().item() <= 1e-6


@pytest.mark.parametrize(
    "template", ["a photo of a {}, a type of pet.", "a photo of a {}, a type of texture."]
)
def test_the_knowledge_term_is_positive_where_the_template_differs(tiny_backbone, template):
    adapter, classifier = _kgcoop(tiny_backbone, template)
    context = step_context(classifier, CLASSES, torch.randn(2, 3, 32, 32), torch.tensor([0, 3]))
    assert adapter.extra_loss(context).item() > 1e-3
    # The anchor template may also be given to the adapter instead of the run.
    own = KgCoOp(anchor_templates=template)
    plain = PeftClipClassifier(tiny_backbone, [own], templates="a photo of a {}.").train()
    own.load_state_dict(adapter.state_dict())
    same = own.extra_loss(step_context(plain, CLASSES, context.images, context.labels))
    assert torch.allclose(same, adapter.extra_loss(context), atol=1e-7)


def test_the_code_form_is_half_the_paper_form_at_equal_weight(tiny_backbone):
    torch.manual_seed(3)
    text, anchor = torch.randn(7, 16), F.normalize(torch.randn(7, 16), dim=-1)
    cosine, paper = knowledge_loss(text, anchor, "cosine"), knowledge_loss(text, anchor, "l2sq")
    normalized = F.normalize(text, dim=-1)
    assert torch.allclose(paper, (normalized - anchor).pow(2).sum(-1).mean(), atol=1e-6)
    assert torch.allclose(8 * cosine, 4 * paper, atol=1e-6)
    # Through the adapter: l2sq with W / 2 is the official term with W.
    official, classifier = _kgcoop(tiny_backbone, "a photo of a {}, a type of pet.")
    halved = KgCoOp(kg_weight=4.0, kg_loss="l2sq")
    halved.attach(tiny_backbone)
    context = step_context(classifier, CLASSES, torch.randn(2, 3, 32, 32), torch.tensor([1, 2]))
    assert torch.allclose(official.extra_loss(context), halved.extra_loss(context), atol=1e-6)


def test_the_configured_init_string_is_ignored(tiny_backbone):
    reference = KgCoOp()
    reference.attach(tiny_backbone)
    with pytest.warns(UserWarning, match="not from the configured 'a centered satellite photo'"):
        other = KgCoOp(ctx_init="a_centered_satellite_photo")
    other.attach(tiny_backbone)
    assert torch.equal(other.ctx, reference.ctx)
    coop = CoOp(ctx_init="a photo of a")
    coop.attach(tiny_backbone)
    assert torch.equal(reference.ctx, coop.ctx)
    random = KgCoOp(n_ctx=6, ctx_init="")
    random.attach(tiny_backbone)
    assert random.ctx.shape == (6, tiny_backbone.text_width)


def test_the_anchor_is_frozen_computed_once_and_not_saved(tiny_backbone):
    adapter, classifier = _kgcoop(tiny_backbone, "a photo of a {}, a type of pet.")
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    before = classifier.frozen_head(CLASSES).clone()
    assert not before.requires_grad
    context = step_context(classifier, CLASSES, images, labels)
    loss = F.cross_entropy(context.logits, labels) + adapter.extra_loss(context)
    loss.backward()
    torch.optim.SGD([adapter.ctx], lr=1.0).step()
    after = classifier.frozen_head(CLASSES)
    assert torch.equal(after, before)
    assert after is classifier.frozen_head(CLASSES)  # served from the cache, not recomputed
    assert list(classifier.adapters.state_dict()) == ["0.ctx"]


#: Base-to-new at 16 shots and batch 128 (KgCoOp's scripts): N = 16 · ⌈C/2⌉ base images, and
#: Dassl drops the last partial batch only when N ≥ 128 (docs/methods/kgcoop.md).
STEPS_PER_EPOCH = {
    "imagenet": (1000, 62),
    "caltech101": (100, 6),
    "oxford_pets": (37, 2),
    "stanford_cars": (196, 12),
    "oxford_flowers": (102, 6),
    "food101": (101, 6),
    "fgvc_aircraft": (100, 6),
    "sun397": (397, 24),
    "dtd": (47, 3),
    "eurosat": (10, 1),
    "ucf101": (101, 6),
}


@pytest.mark.parametrize("dataset", sorted(STEPS_PER_EPOCH))
def test_steps_per_epoch_follow_dassls_drop_last_rule(dataset):
    classes, steps = STEPS_PER_EPOCH[dataset]
    samples = [(Path(f"{c}/{i}.jpg"), c) for c in range(classes) for i in range(16)]
    names = [f"class {c}" for c in range(classes)]
    data = ClassificationData(dataset, names, {"train": LabeledImageFiles(samples)})
    module = PeftClipDataModule(dataset, batch_size=128, drop_last="dassl", num_workers=0)
    module._data = base_new_split(data, "base")
    size = len(module.data.splits["train"])
    assert size == 16 * math.ceil(classes / 2)
    assert len(module.train_dataloader()) == steps
    # A pass over the frozen features of the split sees every image, whatever the rule.
    assert sum(len(labels) for _, labels in _targets(module)) == size
    # The default keeps the last partial batch.
    module.drop_last = "never"
    assert len(module.train_dataloader()) == math.ceil(size / 128)


def _targets(module: PeftClipDataModule):
    dataset = module.data.splits["train"]
    for keys in module.view_loader(dataset, view=0).batch_sampler:  # (index, seed) pairs
        indices = [index for index, _ in keys]
        yield indices, [dataset.targets[i] for i in indices]


def test_composes_with_a_vision_lora_and_refuses_a_text_lora():
    for towers, works in (("vision", True), ("text", False)):
        backbone = load_backbone("peftclip-tiny-vit", init_seed=0)  # LoRA replaces its layers
        kgcoop = KgCoOp()
        classifier = PeftClipClassifier(backbone, [kgcoop, LoRA(towers=towers)]).train()
        context = step_context(classifier, CLASSES, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
        if works:
            assert torch.isfinite(kgcoop.extra_loss(context))
        else:  # the frozen hand-crafted features no longer exist in an adapted text tower
            with pytest.raises(PeftClipError, match="adapt the vision tower only"):
                kgcoop.extra_loss(context)


def test_the_default_anchor_is_kgcoops_table_for_the_trained_dataset():
    assert KgCoOp().anchor_templates == "kgcoop"
    assert templates_of_dataset("kgcoop", "dtd") == ("a photo of a {}, a type of texture.",)
    assert templates_of_dataset("coop", "dtd") == dataset_definition("dtd").templates
    for name in ("oxford_pets", "eurosat", "food101", "imagenet"):  # elsewhere CoOp's template
        assert templates_of_dataset("kgcoop", name) == dataset_definition(name).templates
    assert templates_of_dataset("kgcoop", "world_objects") is None  # not in the table: the run's
    for given in ("a photo of a {}.", "imagenet80", "coop:dtd", ["a {}."], None):
        assert templates_of_dataset(given, "dtd") == given
