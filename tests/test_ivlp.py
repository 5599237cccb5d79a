"""IVLP and VPT-deep (docs/methods/ivlp.md, vpt_deep.md): independent prompts, positions, counts."""

import pytest
import torch

from peftclip.adapters import IVLP, VPTDeep
from peftclip.classifier import PeftClipClassifier
from peftclip.errors import PeftClipError
from tests.test_backbone import _block_inputs
from tests.test_coop import _vit_b_16

CLASSES = ["sea_lion", "dog", "golden retriever"]


def test_independent_prompts_land_where_specified(tiny_backbone):
    ivlp = IVLP(n_text=2, n_vision=3, text_depth=2, vision_depth=2)
    # Block hooks see the plain path's inputs (the shared-prefix path, tested equal in
    # tests/test_shared_prefix.py, runs the blocks' parts, not their forward).
    classifier = PeftClipClassifier(tiny_backbone, [ivlp], share_text_prefix=False).eval()
    model = tiny_backbone.model
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        text_inputs, _ = _block_inputs(
            model.transformer.resblocks, lambda: classifier.text_features(CLASSES)
        )
        vision_inputs, _ = _block_inputs(
            model.visual.transformer.resblocks, lambda: classifier(images, CLASSES)
        )
        assert torch.equal(text_inputs[1][:, 1:3], ivlp.deep_text[0].expand(3, -1, -1))
        assert vision_inputs[0].shape[1] == 1 + 16 + 3
        appended = model.visual.ln_pre(ivlp.vision_ctx)
        assert torch.allclose(vision_inputs[0][:, -3:], appended.expand(2, -1, -1), atol=1e-6)
        assert torch.equal(vision_inputs[1][:, -3:], ivlp.deep_vision[0].expand(2, -1, -1))


def test_vpt_deep_keeps_the_hand_crafted_text(tiny_backbone):
    images = torch.randn(2, 3, 32, 32)
    vpt = VPTDeep(n_vision=4, vision_depth=2)
    classifier = PeftClipClassifier(tiny_backbone, [vpt]).eval()
    zero_shot = PeftClipClassifier(tiny_backbone).eval()
    with torch.no_grad():
        assert torch.equal(classifier.text_features(CLASSES), zero_shot.text_features(CLASSES))
        assert not torch.allclose(
            classifier(images, CLASSES)["logits"], zero_shot(images, CLASSES)["logits"]
        )


def test_language_only_variant_has_no_vision_prompts(tiny_backbone):
    ivlp = IVLP(n_text=4, n_vision=0, text_depth=2)
    ivlp.attach(tiny_backbone)
    prompts = ivlp.prompts(tiny_backbone)
    assert prompts.vision_input is None and prompts.vision_deep is None


def test_text_context_follows_the_maple_init_rule(tiny_backbone):
    ivlp = IVLP(n_text=3, n_vision=0, text_depth=1, ctx_init="an X-ray photo of a")
    ivlp.attach(tiny_backbone)
    tokens = tiny_backbone.tokenize(["an X-ray photo of a"])
    assert torch.equal(ivlp.ctx, tiny_backbone.token_embeddings(tokens)[0, 1:4])  # an x -
    with pytest.warns(UserWarning, match="IVLP ignores ctx_init 'a photo of a' with 5"):
        assert IVLP(n_text=5).ctx_init == ""


def test_bad_settings_fail_clearly(tiny_backbone):
    with pytest.raises(PeftClipError, match="text_depth 12 must be between 1 and the 2"):
        IVLP().attach(tiny_backbone)
    with pytest.raises(PeftClipError, match="vision_depth 12 must be between 1 and the 2"):
        VPTDeep().attach(tiny_backbone)
    with pytest.raises(PeftClipError, match="n_text >= 1"):
        IVLP(n_text=0, text_depth=2, vision_depth=2).attach(tiny_backbone)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("adapter", "expected"),
    [
        (lambda: IVLP(), 30_720),
        (lambda: IVLP(n_text=4, n_vision=0), 24_576),
        (lambda: IVLP(n_text=4, n_vision=4, text_depth=9, vision_depth=9), 46_080),
        (lambda: VPTDeep(n_vision=8), 73_728),
    ],
)
def test_parameter_counts_on_vit_b_16(adapter, expected):
    instance = adapter()
    instance.attach(_vit_b_16())
    assert sum(p.numel() for p in instance.parameters()) == expected
