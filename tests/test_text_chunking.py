"""Class-chunked, activation-checkpointed text encoding (docs/performance.md#many-classes): the
same loss and gradients as one call over all classes, with the shared prefix or without, and
less memory held for the backward pass."""

import copy

import pytest
import torch
import torch.nn.functional as F

from peftclip import classifier as classifier_module
from peftclip.adapters import get_adapter_class
from peftclip.backbone.shared_prefix import encode_text_shared_prefix
from peftclip.classifier import PeftClipClassifier
from peftclip.errors import PeftClipError
from tests.helpers import step_context

# 37 names of 1 … 4 tokens: chunks of 5 leave a short last one and differ in their last EOT.
CLASSES = [f"class {'x ' * (i % 4)}{i}" for i in range(37)]
CHUNK = 5

METHODS = {
    "coop": {},  # 16 random context vectors
    "cocoop": {},  # per image: 3 groups of 37 prompts
    "maple": {"prompt_depth": 2},  # deep prompts and the prompted image tower
    "kgcoop": {},  # its knowledge loss reads the text features
}


def _step(classifier: PeftClipClassifier, chunk: int | None, share: bool):
    """The training loss of one batch (cross-entropy plus any extra loss) and its gradients."""
    classifier.text_grad_chunk_size, classifier.share_text_prefix = chunk, share
    classifier.zero_grad()
    generator = torch.Generator().manual_seed(3)
    size = classifier.backbone.image_size
    images = torch.randn(3, 3, size, size, generator=generator).to(classifier.backbone.dtype)
    labels = torch.tensor([0, 17, 36])
    context = step_context(classifier, CLASSES, images, labels)
    loss = F.cross_entropy(context.logits, labels)
    extra = classifier.adapters[0].extra_loss(context)  # KgCoOp's knowledge loss
    loss = loss if extra is None else loss + extra
    loss.backward()
    grads = {n: p.grad.clone() for n, p in classifier.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture
def chunk_calls(monkeypatch):
    """Records how many classes each call of the shared-prefix encoder got."""
    calls = []

    def spy(backbone, groups, *args, **kwargs):
        calls.append(groups.shape[1])
        return encode_text_shared_prefix(backbone, groups, *args, **kwargs)

    monkeypatch.setattr(classifier_module, "encode_text_shared_prefix", spy)
    return calls


@pytest.mark.parametrize("share", [True, False], ids=["shared-prefix", "plain"])
@pytest.mark.parametrize("method", list(METHODS))
def test_chunked_training_step_equals_the_unchunked_one(tiny_backbone, method, share):
    torch.manual_seed(0)
    adapter = get_adapter_class(method)(**METHODS[method])
    classifier = PeftClipClassifier(tiny_backbone, [adapter]).train()
    whole_loss, whole_grads = _step(classifier, None, share)
    chunked_loss, chunked_grads = _step(classifier, CHUNK, share)
    assert _relative(chunked_loss, whole_loss) <= 1e-6
    assert chunked_grads.keys() == whole_grads.keys()
    assert "adapters.0.ctx" in whole_grads
    for name, grad in whole_grads.items():
        assert grad.abs().sum() > 0, name
        # fp32 sums of 37 classes' contributions in another order (and packed tail rows in
        # other matmul shapes): CoCoOp's Meta-Net, which collects them from every class of every
        # image, reaches 2.2e-6; float64 below shows it is rounding.
        assert _relative(chunked_grads[name], grad) <= 3e-6, name


@pytest.mark.parametrize("method", ["cocoop", "maple"])
def test_in_float64_chunked_and_unchunked_agree_to_rounding(tiny_backbone, method):
    torch.manual_seed(0)
    backbone = copy.deepcopy(tiny_backbone).double()
    adapter = get_adapter_class(method)(**METHODS[method])
    classifier = PeftClipClassifier(backbone, [adapter]).train().double()
    whole_loss, whole_grads = _step(classifier, None, share=True)
    chunked_loss, chunked_grads = _step(classifier, CHUNK, share=True)
    assert _relative(chunked_loss, whole_loss) <= 1e-12
    for name, grad in whole_grads.items():
        assert _relative(chunked_grads[name], grad) <= 1e-12, name


def test_the_classes_are_encoded_chunk_by_chunk_and_recomputed_for_backward(
    tiny_backbone, chunk_calls
):
    classifier = PeftClipClassifier(tiny_backbone, [get_adapter_class("coop")()]).train()
    _step(classifier, None, share=True)
    assert chunk_calls == [37]
    chunk_calls.clear()
    _step(classifier, CHUNK, share=True)
    # 8 chunks forward (7 × 5 + 2), then each chunk's blocks once more for its backward.
    assert chunk_calls[:8] == [5] * 7 + [2]
    assert sorted(chunk_calls[8:]) == [2] + [5] * 7


def _bytes_saved_for_backward(classifier: PeftClipClassifier, chunk: int | None) -> int:
    """Bytes of the tensors autograd keeps from the text features' forward for the backward."""
    classifier.text_grad_chunk_size = chunk
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        features = classifier.text_features(CLASSES)
    features.sum().backward()
    return sum(saved)


def test_chunking_keeps_a_fraction_of_the_activations_for_the_backward_pass(tiny_backbone):
    classifier = PeftClipClassifier(tiny_backbone, [get_adapter_class("coop")()]).train()
    whole = _bytes_saved_for_backward(classifier, None)
    chunked = _bytes_saved_for_backward(classifier, CHUNK)
    # Only the chunks' inputs (views of the prompt embeddings) and outputs stay; the tiny
    # tower's activations of all 37 classes are many times that.
    assert chunked * 4 < whole


def test_no_gradient_means_no_chunking(tiny_backbone, chunk_calls):
    classifier = PeftClipClassifier(tiny_backbone, [get_adapter_class("coop")()])
    classifier.text_grad_chunk_size = CHUNK
    with torch.no_grad():
        classifier.train().text_features(CLASSES)
    assert chunk_calls == [37]


def test_a_chunk_size_below_one_is_refused(tiny_backbone):
    with pytest.raises(PeftClipError, match="text_grad_chunk_size must be a positive"):
        PeftClipClassifier(tiny_backbone, text_grad_chunk_size=0)
