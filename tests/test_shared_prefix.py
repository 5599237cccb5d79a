"""Shared-prefix text encoding (docs/performance.md): equal to the plain path, forward and
gradients, for every method that takes it; the methods whose prefix differs per class do not."""

import copy

import pytest
import torch

from peftclip import classifier as classifier_module
from peftclip.adapters import get_adapter_class
from peftclip.backbone import shared_prefix, template_head
from peftclip.backbone.shared_prefix import encode_text_shared_prefix, shareable_prefix
from peftclip.classifier import PeftClipClassifier

# Names of 1 … 5 tokens: the tails differ in length, so the cut after the last EOT matters.
CLASSES = ["sea_lion", "dog", "golden retriever", "a rather long class name"]
DEEP = {"text_depth": 2, "vision_depth": 2}  # the tiny towers have two blocks

SHARING = {
    "coop": {},  # 16 random context vectors
    "coop_words": {"ctx_init": "a photo of a"},
    "cocoop": {},
    "maple": {"prompt_depth": 2},  # deep prompts replace 2 of the 5 shared positions
    "ivlp": {"n_text": 4, "ctx_init": "", **DEEP},  # … all 4 context positions
    "kgcoop": {},
    "promptsrc": DEEP,
}


def _adapter(case: str, **overrides):
    name = case.removesuffix("_words")
    return get_adapter_class(name)(**{**SHARING.get(case, {}), **overrides})


def _encode(classifier, classnames, share: bool, weights: torch.Tensor | None = None):
    """Text features and the gradients of ``(features · weights).sum()`` per parameter."""
    classifier.share_text_prefix = share
    classifier.zero_grad()
    generator = torch.Generator().manual_seed(1)
    image_features = torch.randn(3, classifier.backbone.embed_dim, generator=generator)
    image_features = image_features.to(classifier.backbone.dtype)
    features = classifier.text_features(classnames, image_features=image_features)
    weights = torch.randn(features.shape, generator=generator).to(features.dtype)
    (features * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in classifier.named_parameters() if p.grad is not None}
    return features.detach(), grads


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture
def shared_calls(monkeypatch):
    """Counts the classifier's calls of the shared-prefix encoder."""
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[3])  # the prefix length
        return encode_text_shared_prefix(*args, **kwargs)

    monkeypatch.setattr(classifier_module, "encode_text_shared_prefix", spy)
    return calls


@pytest.mark.parametrize("case", list(SHARING))
def test_shared_prefix_equals_the_plain_path_forward_and_gradients(
    tiny_backbone, shared_calls, case
):
    classifier = PeftClipClassifier(tiny_backbone, [_adapter(case)]).train()
    shared, shared_grads = _encode(classifier, CLASSES, share=True)
    assert shared_calls and shared_calls[0] >= 1 + classifier.adapters[0].n_ctx
    calls = len(shared_calls)
    plain, plain_grads = _encode(classifier, CLASSES, share=False)
    assert len(shared_calls) == calls  # the switch forces the plain path
    assert _relative(shared, plain) <= 1e-6
    # The text side's trainable tensors (context, deep text prompts, Meta-Net) get equal ones.
    assert shared_grads.keys() == plain_grads.keys()
    assert "adapters.0.ctx" in plain_grads
    assert ("adapters.0.deep_text.0" in plain_grads) == hasattr(classifier.adapters[0], "deep_text")
    for name, grad in plain_grads.items():
        # Each fp32 path is itself up to ~1e-6 from the float64 gradients (sums over classes in
        # another order, packed rows in other matmul shapes); float64 below shows the rest is 0.
        assert _relative(shared_grads[name], grad) <= 2e-6, name


@pytest.mark.parametrize("case", ["coop", "cocoop", "maple"])
def test_in_float64_the_two_paths_agree_to_rounding(tiny_backbone, case):
    # fp32 leaves ~1e-7 of reordered sums; float64 shows that nothing else differs.
    backbone = copy.deepcopy(tiny_backbone).double()
    classifier = PeftClipClassifier(backbone, [_adapter(case)]).train().double()
    shared, shared_grads = _encode(classifier, CLASSES, share=True)
    plain, plain_grads = _encode(classifier, CLASSES, share=False)
    assert _relative(shared, plain) <= 1e-12
    for name, grad in plain_grads.items():
        assert _relative(shared_grads[name], grad) <= 1e-12, name


def test_a_first_word_all_class_names_share_joins_the_prefix(tiny_backbone, shared_calls):
    classnames = ["golden retriever", "golden eagle", "golden_pheasant"]
    classifier = PeftClipClassifier(tiny_backbone, [_adapter("coop_words")]).train()
    shared, _ = _encode(classifier, classnames, share=True)
    assert shared_calls == [1 + 4 + 1]  # [SOS] a photo of a | golden
    plain, _ = _encode(classifier, classnames, share=False)
    assert _relative(shared, plain) <= 1e-6


@pytest.mark.parametrize(
    "overrides",
    [
        {"csc": True, "n_classes": len(CLASSES)},
        {"class_token_position": "middle"},
        {"class_token_position": "front"},
    ],
    ids=["csc", "middle", "front"],
)
def test_prompts_whose_start_differs_per_class_take_the_plain_path(
    tiny_backbone, shared_calls, overrides
):
    adapter = _adapter("coop", n_ctx=4, **overrides)
    classifier = PeftClipClassifier(tiny_backbone, [adapter]).train()
    assert adapter.text_input(tiny_backbone, CLASSES).shared_prefix == 0
    _, grads = _encode(classifier, CLASSES, share=True)
    assert not shared_calls
    assert grads["adapters.0.ctx"].abs().sum() > 0


def test_sharing_what_differs_per_class_changes_the_result(tiny_backbone):
    # The equivalence tests have teeth: a wrong sharing claim (per-class contexts) is visible.
    adapter = _adapter("coop", n_ctx=4, csc=True, n_classes=len(CLASSES))
    adapter.attach(tiny_backbone)
    with torch.no_grad():
        text_input = adapter.text_input(tiny_backbone, CLASSES)
        plain = tiny_backbone.encode_text(text_input.embeddings, text_input.pool_index)
        wrong = encode_text_shared_prefix(
            tiny_backbone, text_input.embeddings.unsqueeze(0), text_input.pool_index, 5
        )[0]
    assert _relative(wrong, plain) > 1e-3


def test_what_cannot_be_shared_falls_back_to_the_plain_path(tiny_backbone):
    pool_index = torch.tensor([7, 9])
    width = tiny_backbone.text_width
    assert shareable_prefix(tiny_backbone, 5, pool_index, None) == 5
    # Every pooled token must lie in the tail.
    assert shareable_prefix(tiny_backbone, 12, pool_index, None) == 7
    # A deep prompt that reaches past the prefix, or one per prompt, is not shared.
    assert shareable_prefix(tiny_backbone, 5, pool_index, [None, torch.zeros(4, width)]) == 5
    assert shareable_prefix(tiny_backbone, 5, pool_index, [None, torch.zeros(5, width)]) == 0
    assert shareable_prefix(tiny_backbone, 5, pool_index, [torch.zeros(2, 4, width)]) == 0
    assert shareable_prefix(tiny_backbone, 1, pool_index, None) == 0  # [SOS] alone


def test_template_heads_share_the_template_words_and_equal_the_plain_path(
    tiny_backbone, monkeypatch
):
    prefixes = []
    real = shared_prefix.encode_text_shared_prefix
    monkeypatch.setattr(
        shared_prefix,
        "encode_text_shared_prefix",
        lambda *args: prefixes.append(args[3]) or real(*args),
    )
    # "{} …" puts the class name first: only [SOS] is common, so that template runs plain.
    templates = ["a photo of a {}.", "the {} in a photo.", "{} in a photo."]
    with torch.no_grad():
        shared = template_head(tiny_backbone, CLASSES, templates)
        plain = template_head(tiny_backbone, CLASSES, templates, share_prefix=False)
    assert prefixes == [5, 2]  # [SOS] a photo of a | [SOS] the
    assert _relative(shared, plain) <= 1e-6


@pytest.mark.parametrize("case", ["coop", "cocoop", "maple"])
def test_with_one_attention_bucket_per_tail_length_the_paths_still_agree(
    tiny_backbone, monkeypatch, case
):
    # The names above have tails of 3 to 7 tokens; free calls give every length its bucket.
    monkeypatch.setattr(shared_prefix, "_CALL_COST", 0)
    pool_index = tiny_backbone.pool_index(tiny_backbone.tokenize(CLASSES))
    assert len(shared_prefix._PackedTails(pool_index - 1, 2, 1).buckets) == 4
    classifier = PeftClipClassifier(tiny_backbone, [_adapter(case)]).train()
    shared, shared_grads = _encode(classifier, CLASSES, share=True)
    plain, plain_grads = _encode(classifier, CLASSES, share=False)
    assert _relative(shared, plain) <= 1e-6
    for name, grad in plain_grads.items():
        assert _relative(shared_grads[name], grad) <= 2e-6, name


def test_attention_buckets_trade_padding_against_calls(monkeypatch):
    lengths = [2, 2, 3, 9]  # sorted tail lengths, 17 prefix positions
    monkeypatch.setattr(shared_prefix, "_CALL_COST", 0)
    assert shared_prefix._bucket_ends(lengths, 17) == [2, 3, 4]
    monkeypatch.setattr(shared_prefix, "_CALL_COST", 10**6)
    assert shared_prefix._bucket_ends(lengths, 17) == [4]
    # Buckets {2,2}{3}{9}: 370 + 3c; {2,2,3}{9}: 414 + 2c; {2,2,3,9}: 936 + c (c: call cost).
    monkeypatch.setattr(shared_prefix, "_CALL_COST", 200)
    assert shared_prefix._bucket_ends(lengths, 17) == [3, 4]
