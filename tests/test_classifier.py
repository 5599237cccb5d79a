"""Zero-shot classification and adapter routing, checked against open_clip's own model."""

import open_clip
import pytest
import torch
import torch.nn.functional as F

from peftclip.backbone import class_prompts
from peftclip.classifier import PeftClipClassifier
from peftclip.errors import PeftClipError
from tests.conftest import TINY
from tests.toy_adapters import ToyShift, ToyShiftTwin, ToyVisionPrompt

CLASSES = ["red", "green", "blue", "sea_lion"]


def test_zero_shot_logits_equal_open_clip(tiny_backbone):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        reference = open_clip.create_model(TINY).eval()
    images = torch.randn(3, 3, 32, 32)
    tokens = open_clip.get_tokenizer(TINY)(class_prompts(CLASSES, "a photo of a {}."))
    with torch.no_grad():
        image = F.normalize(reference.encode_image(images), dim=-1)
        text = F.normalize(reference.encode_text(tokens), dim=-1)
        expected = reference.logit_scale.exp() * image @ text.T
        logits = PeftClipClassifier(tiny_backbone).eval()(images, CLASSES)["logits"]
    assert torch.allclose(logits, expected, atol=1e-4)


def test_text_input_adapter_at_identity_reproduces_zero_shot(tiny_backbone):
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        zero_shot = PeftClipClassifier(tiny_backbone).eval()(images, CLASSES)["logits"]
        adapted = PeftClipClassifier(tiny_backbone, [ToyShift()]).eval()(images, CLASSES)["logits"]
    assert torch.allclose(adapted, zero_shot, atol=1e-5)


def test_two_text_input_owners_fail_at_build_time(tiny_backbone):
    with pytest.raises(PeftClipError, match="all implement 'text_input'"):
        PeftClipClassifier(tiny_backbone, [ToyShift(), ToyShiftTwin()])


def test_composed_adapters_train_their_parameters_and_nothing_else(tiny_backbone):
    classifier = PeftClipClassifier(tiny_backbone, [ToyShift(), ToyVisionPrompt()]).train()
    trainable = {name for name, p in classifier.named_parameters() if p.requires_grad}
    assert trainable == {"adapters.0.shift", "adapters.1.tokens"}
    frozen_before = {k: v.clone() for k, v in tiny_backbone.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in classifier.parameters() if p.requires_grad], lr=0.1)
    logits = classifier(torch.randn(4, 3, 32, 32), CLASSES)["logits"]
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in classifier.adapters.parameters()
    )
    assert all(torch.equal(v, frozen_before[k]) for k, v in tiny_backbone.state_dict().items())


def test_eval_head_is_cached_per_class_set_and_follows_adapter_edits(tiny_backbone):
    adapter = ToyShift()
    classifier = PeftClipClassifier(tiny_backbone, [adapter]).eval()
    images = torch.randn(2, 3, 32, 32)
    first = classifier.text_features(CLASSES)
    logits = classifier(images, CLASSES)["logits"]
    assert classifier.text_features(CLASSES) is first  # cached while nothing changes
    with torch.no_grad():
        adapter.shift.add_(1.0)  # an in-place edit in eval mode
    edited = classifier.text_features(CLASSES)
    assert not torch.allclose(edited, first)
    assert not torch.allclose(classifier(images, CLASSES)["logits"], logits)
    adapter.load_state_dict({"shift": torch.zeros_like(adapter.shift)})
    assert torch.allclose(classifier.text_features(CLASSES), first)
    adapter.shift = torch.nn.Parameter(torch.ones_like(adapter.shift))  # a replaced tensor
    assert torch.allclose(classifier.text_features(CLASSES), edited)
    assert classifier.text_features(CLASSES[:2]).shape[0] == 2
