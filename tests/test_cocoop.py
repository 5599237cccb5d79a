"""CoCoOp (docs/methods/cocoop.md): conditioning, batching, counts."""

import pytest
import torch

from peftclip.adapters import CoCoOp, CoOp
from peftclip.classifier import PeftClipClassifier
from tests.test_coop import _vit_b_16

CLASSES = ["sea_lion", "dog", "golden retriever"]


def _classifier(backbone, adapter):
    return PeftClipClassifier(backbone, [adapter]).eval()


@pytest.mark.parametrize("ctx_init", ["a photo of a", "an X-ray photo of a"])
def test_with_a_silent_meta_net_cocoop_equals_coop(tiny_backbone, ctx_init):
    cocoop = CoCoOp(ctx_init=ctx_init)
    classifier = _classifier(tiny_backbone, cocoop)
    assert cocoop.ctx.shape == (len(ctx_init.split()), tiny_backbone.text_width)  # M = words
    with torch.no_grad():
        cocoop.meta_net[2].weight.zero_()
        cocoop.meta_net[2].bias.zero_()
        images = torch.randn(3, 3, 32, 32)
        expected = _classifier(tiny_backbone, CoOp(ctx_init=ctx_init))(images, CLASSES)
        assert torch.allclose(classifier(images, CLASSES)["logits"], expected["logits"], atol=1e-5)


def test_batch_of_four_equals_four_single_image_passes(tiny_backbone):
    classifier = _classifier(tiny_backbone, CoCoOp())
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        batched = classifier(images, CLASSES)["logits"]
        single = torch.cat([classifier(images[i : i + 1], CLASSES)["logits"] for i in range(4)])
    assert torch.allclose(batched, single, atol=1e-5)
    assert not torch.allclose(batched[0], batched[1])  # prompts differ per image


def test_every_context_token_gets_the_same_shift(tiny_backbone):
    cocoop = CoCoOp()
    cocoop.attach(tiny_backbone)
    features = torch.randn(2, tiny_backbone.embed_dim)
    with torch.no_grad():
        built = cocoop.text_input(tiny_backbone, CLASSES, features).embeddings
    shifted = built[:, 0, 1 : 1 + cocoop.n_ctx] - cocoop.ctx  # (batch, M, width)
    assert built.shape[:2] == (2, len(CLASSES))
    assert torch.allclose(shifted, shifted[:, :1].expand_as(shifted), atol=1e-6)


def test_only_context_and_meta_net_train(tiny_backbone):
    cocoop = CoCoOp()
    classifier = PeftClipClassifier(tiny_backbone, [cocoop]).train()
    trainable = sorted(name for name, p in classifier.named_parameters() if p.requires_grad)
    assert trainable == [
        "adapters.0.ctx",
        "adapters.0.meta_net.0.bias",
        "adapters.0.meta_net.0.weight",
        "adapters.0.meta_net.2.bias",
        "adapters.0.meta_net.2.weight",
    ]
    logits = classifier(torch.randn(2, 3, 32, 32), CLASSES)["logits"]
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cocoop.parameters())


@pytest.mark.slow
def test_parameter_count_on_vit_b_16():
    cocoop = CoCoOp()
    cocoop.attach(_vit_b_16())
    assert sum(p.numel() for p in cocoop.parameters()) == 35_360
