"""CoOp (specs/methods.md §3): token layouts, init from words, counts, class-set rebuilds."""

import pytest
import torch

from peftclip.adapters import CoOp, get_adapter_class
from peftclip.backbone import class_prompts, load_backbone
from peftclip.classifier import PeftClipClassifier
from peftclip.errors import PeftClipError

CLASSES = ["sea_lion", "dog", "golden retriever"]


def _embeddings(backbone, texts):
    tokens = backbone.tokenize(texts)
    return backbone.token_embeddings(tokens), backbone.pool_index(tokens)


def test_word_init_reproduces_the_hand_crafted_template(tiny_backbone):
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        zero_shot = PeftClipClassifier(tiny_backbone, templates="a photo of a {}.").eval()
        coop = PeftClipClassifier(tiny_backbone, [CoOp(ctx_init="a photo of a")]).eval()
        expected, logits = zero_shot(images, CLASSES)["logits"], coop(images, CLASSES)["logits"]
    assert torch.allclose(logits, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("position", "template"),
    [("end", "a photo of a {}."), ("middle", "a photo {} of a."), ("front", "{} a photo of a.")],
)
def test_class_token_positions_build_the_exact_token_layout(tiny_backbone, position, template):
    coop = CoOp(ctx_init="a photo of a", class_token_position=position)
    coop.attach(tiny_backbone)
    assert coop.n_ctx == 4  # overridden by the number of init tokens
    with torch.no_grad():
        built = coop.text_input(tiny_backbone, CLASSES)
    expected, pool_index = _embeddings(tiny_backbone, class_prompts(CLASSES, template))
    assert torch.equal(built.embeddings, expected)
    assert torch.equal(built.pool_index, pool_index)


def test_random_init_and_trainable_parameters(tiny_backbone):
    coop = CoOp(n_ctx=16)
    classifier = PeftClipClassifier(tiny_backbone, [coop])
    trainable = {name: p for name, p in classifier.named_parameters() if p.requires_grad}
    assert list(trainable) == ["adapters.0.ctx"]
    assert trainable["adapters.0.ctx"].shape == (16, tiny_backbone.text_width)
    assert 0.015 < coop.ctx.std().item() < 0.025  # N(0, 0.02²)
    assert get_adapter_class("coop") is CoOp


def test_buffers_are_rebuilt_for_a_new_class_set_and_never_saved(tiny_backbone):
    coop = CoOp(n_ctx=4)
    classifier = PeftClipClassifier(tiny_backbone, [coop]).eval()
    base = classifier.text_features(CLASSES[:2])
    new = classifier.text_features(["cat", "sea_lion", "tabby cat"])
    assert base.shape[0] == 2 and new.shape[0] == 3
    assert list(coop.state_dict()) == ["ctx"]


def test_gradients_reach_the_context_only(tiny_backbone):
    coop = CoOp(n_ctx=4)
    classifier = PeftClipClassifier(tiny_backbone, [coop]).train()
    logits = classifier(torch.randn(2, 3, 32, 32), CLASSES)["logits"]
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    assert coop.ctx.grad is not None and coop.ctx.grad.abs().sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize(("n_ctx", "expected"), [(4, 2048), (16, 8192)])
def test_parameter_count_on_vit_b_16(n_ctx, expected):
    backbone = _vit_b_16()
    coop = CoOp(n_ctx=n_ctx)
    coop.attach(backbone)
    assert sum(p.numel() for p in coop.parameters()) == expected


_CACHE = {}


def _vit_b_16():
    if "backbone" not in _CACHE:
        _CACHE["backbone"] = load_backbone("ViT-B-16", init_seed=0)
    return _CACHE["backbone"]


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_class_specific_context_gives_each_class_its_own_vectors(tiny_backbone, position):
    coop = CoOp(n_ctx=4, csc=True, n_classes=3, class_token_position=position)
    coop.attach(tiny_backbone)
    assert coop.ctx.shape == (3, 4, tiny_backbone.text_width)
    with torch.no_grad():
        built = coop.text_input(tiny_backbone, CLASSES).embeddings
    start = {"end": 1, "middle": 1, "front": None}[position]
    if start is not None:  # the first context vector sits right after SOT
        assert torch.equal(built[:, start], coop.ctx[:, 0])
    with pytest.raises(PeftClipError, match="made for 3 classes and cannot classify 2"):
        coop.text_input(tiny_backbone, CLASSES[:2])


def test_class_specific_context_needs_the_class_count_and_yields_to_word_init(tiny_backbone):
    with pytest.raises(PeftClipError, match="needs n_classes"):
        CoOp(csc=True)
    coop = CoOp(ctx_init="a photo of a", csc=True, n_classes=3)  # the anchor ignores CSC here
    coop.attach(tiny_backbone)
    assert coop.ctx.shape == (4, tiny_backbone.text_width)


@pytest.mark.slow
def test_class_specific_count_on_vit_b_16():
    coop = CoOp(n_ctx=16, csc=True, n_classes=37)
    coop.attach(_vit_b_16())
    assert coop.ctx.numel() == 8_192 * 37
