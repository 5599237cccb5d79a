"""CoOp (docs/methods/coop.md): token layouts, init from words, counts, class-set rebuilds."""

import pytest
import torch
import torch.nn.functional as F

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
    assert coop.n_ctx == 4  # overridden by the number of init words
    with torch.no_grad():
        built = coop.text_input(tiny_backbone, CLASSES)
    expected, pool_index = _embeddings(tiny_backbone, class_prompts(CLASSES, template))
    assert torch.equal(built.embeddings, expected)
    assert torch.equal(built.pool_index, pool_index)


XRAY = "an X-ray photo of a"  # 5 words, 7 BPE tokens: an x - ray photo | of a


def test_word_init_learns_one_vector_per_word_and_keeps_the_other_tokens_frozen(tiny_backbone):
    coop = CoOp(ctx_init=XRAY)
    classifier = PeftClipClassifier(tiny_backbone, [coop])
    trainable = [p for p in classifier.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == 5 * tiny_backbone.text_width
    init_tokens = tiny_backbone.tokenize([XRAY])
    assert int(tiny_backbone.pool_index(init_tokens)[0]) - 1 == 7
    assert torch.equal(coop.ctx, tiny_backbone.token_embeddings(init_tokens)[0, 1:6])
    # At init the prompt is the hand-crafted template, frozen words included.
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        zero_shot = PeftClipClassifier(tiny_backbone, templates=XRAY + " {}.").eval()
        expected = zero_shot(images, CLASSES)["logits"]
        assert torch.allclose(classifier.eval()(images, CLASSES)["logits"], expected, atol=1e-5)
        before = coop.text_input(tiny_backbone, CLASSES).embeddings.clone()
    # One SGD step moves positions 1…5 only; SOT, "of a", the class and EOT stay as they were.
    classifier.train()
    loss = F.cross_entropy(classifier(images, CLASSES)["logits"], torch.tensor([0, 1, 2]))
    loss.backward()
    torch.optim.SGD(trainable, lr=1.0).step()
    with torch.no_grad():
        after = coop.text_input(tiny_backbone, CLASSES).embeddings
    moved = (after != before).any(dim=-1).any(dim=0)
    assert moved.nonzero().flatten().tolist() == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("position", "template"),
    [("middle", "an X {} -ray photo of a."), ("front", "{} an X-ray photo of a.")],
)
def test_frozen_init_words_travel_with_the_context(tiny_backbone, position, template):
    coop = CoOp(ctx_init=XRAY, class_token_position=position)  # half = 5 // 2 = 2: "an x"
    coop.attach(tiny_backbone)
    with torch.no_grad():
        built = coop.text_input(tiny_backbone, CLASSES)
    expected, pool_index = _embeddings(tiny_backbone, class_prompts(CLASSES, template))
    assert torch.equal(built.embeddings, expected)
    assert torch.equal(built.pool_index, pool_index)


def test_word_init_reads_underscores_as_spaces(tiny_backbone):
    coop = CoOp(ctx_init="a_photo  of_a")  # the official scripts pass "a_photo_of_a"
    assert (coop.ctx_init, coop.n_ctx) == ("a photo of a", 4)


def test_word_init_with_the_word_tokenizer_of_the_world():
    world = load_backbone("peftclip-world-tiny", pretrained="world")
    coop = CoOp(ctx_init=XRAY)  # world tokens: an x <unk> photo of | a
    classifier = PeftClipClassifier(world, [coop]).eval()
    assert coop.ctx.shape == (5, world.text_width)
    images = torch.randn(2, 3, world.image_size, world.image_size)
    names = ["red circle", "blue square"]
    with torch.no_grad():
        zero_shot = PeftClipClassifier(world, templates=XRAY + " {}.").eval()
        expected = zero_shot(images, names)["logits"]
        assert torch.allclose(classifier(images, names)["logits"], expected, atol=1e-5)
    with pytest.raises(PeftClipError, match=r"needs 3 token embeddings .* only 2 tokens"):
        CoOp(ctx_init="a - photo").attach(world)  # the word tokenizer drops the "-"


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
@pytest.mark.parametrize(
    ("n_ctx", "ctx_init", "expected"), [(4, "", 2048), (16, "", 8192), (16, XRAY, 2560)]
)
def test_parameter_count_on_vit_b_16(n_ctx, ctx_init, expected):
    backbone = _vit_b_16()
    coop = CoOp(n_ctx=n_ctx, ctx_init=ctx_init)
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
