"""MaPLe (docs/methods/maple.md): where prompts land, coupling, counts."""

import pytest
import torch

from peftclip.adapters import MaPLe
from peftclip.classifier import PeftClipClassifier
from peftclip.errors import PeftClipError
from tests.test_backbone import _block_inputs
from tests.test_coop import _vit_b_16

CLASSES = ["sea_lion", "dog", "golden retriever"]


def test_prompts_land_at_the_specified_positions_and_layers(tiny_backbone):
    maple = MaPLe(n_ctx=2, prompt_depth=2)
    # Block hooks see the plain path's inputs (the shared-prefix path, tested equal in
    # tests/test_shared_prefix.py, runs the blocks' parts, not their forward).
    classifier = PeftClipClassifier(tiny_backbone, [maple], share_text_prefix=False).eval()
    model = tiny_backbone.model
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        text_inputs, _ = _block_inputs(
            model.transformer.resblocks, lambda: classifier.text_features(CLASSES)
        )
        vision_inputs, _ = _block_inputs(
            model.visual.transformer.resblocks, lambda: tiny_backbone.encode_image(
                images, maple.prompts(tiny_backbone).vision_input,
                maple.prompts(tiny_backbone).vision_deep,
            ),
        )  # fmt: skip
        # Text layer 0: the learnable context sits after SOT and gets positional embeddings.
        expected_ctx = maple.ctx + model.positional_embedding[1:3]
        assert torch.allclose(text_inputs[0][:, 1:3], expected_ctx.expand(3, -1, -1), atol=1e-6)
        # Text block 1: positions 1..n are replaced by D_1, exactly.
        assert torch.equal(text_inputs[1][:, 1:3], maple.deep_text[0].expand(3, -1, -1))
        # Vision: 1 + grid² + n tokens into block 0, the last n being ln_pre(F₀(ctx)).
        assert vision_inputs[0].shape[1] == 1 + 16 + 2
        projected = model.visual.ln_pre(maple.proj(maple.ctx))
        assert torch.allclose(vision_inputs[0][:, -2:], projected.expand(2, -1, -1), atol=1e-6)
        # Vision block 1: the last n tokens are F₁(D₁).
        coupled = maple.deep_proj[0](maple.deep_text[0])
        assert torch.equal(vision_inputs[1][:, -2:], coupled.expand(2, -1, -1))


def test_depth_one_has_no_deep_prompts(tiny_backbone):
    maple = MaPLe(prompt_depth=1)
    maple.attach(tiny_backbone)
    prompts = maple.prompts(tiny_backbone)
    assert prompts.text_deep == [None] and prompts.vision_deep == [None]
    assert len(maple.deep_text) == 0 and len(maple.deep_proj) == 0


@pytest.mark.parametrize("ctx_init", ["a photo of a", "an X-ray photo of a"])
def test_the_tokens_after_the_learnable_ones_stay_frozen_in_the_prompt(tiny_backbone, ctx_init):
    maple = MaPLe(n_ctx=2, prompt_depth=1, ctx_init=ctx_init)
    maple.attach(tiny_backbone)
    assert maple.ctx.shape == (2, tiny_backbone.text_width)  # n_ctx kept, not the word count
    with torch.no_grad():
        built = maple.text_input(tiny_backbone, CLASSES)
    tokens = tiny_backbone.tokenize([f"{ctx_init} {name.replace('_', ' ')}." for name in CLASSES])
    frozen = tiny_backbone.token_embeddings(tokens)
    assert torch.equal(built.embeddings[:, 1:3], maple.ctx.expand(3, -1, -1))
    assert torch.equal(built.embeddings[:, 1:3], frozen[:, 1:3])  # the first two tokens
    assert torch.equal(built.embeddings[:, 3:], frozen[:, 3:])  # the rest, class, ".", EOT, pad
    assert torch.equal(built.pool_index, tokens.argmax(-1))


def test_more_than_four_context_tokens_start_random_as_in_the_official_code(tiny_backbone):
    with pytest.warns(UserWarning, match="ignores ctx_init 'an X-ray photo of a' with 5"):
        maple = MaPLe(n_ctx=5, prompt_depth=1, ctx_init="an X-ray photo of a")
    maple.attach(tiny_backbone)
    assert maple.ctx.shape == (5, tiny_backbone.text_width)
    assert 0.01 < maple.ctx.std().item() < 0.03  # N(0, 0.02²), not word embeddings
    with torch.no_grad():
        built = maple.text_input(tiny_backbone, CLASSES)
    tokens = tiny_backbone.tokenize([f"X X X X X {name.replace('_', ' ')}." for name in CLASSES])
    assert torch.equal(built.embeddings[:, 6:], tiny_backbone.token_embeddings(tokens)[:, 6:])


def test_bad_settings_fail_clearly(tiny_backbone):
    with pytest.raises(PeftClipError, match="prompt_depth 9 must be between 1 and the 2 blocks"):
        MaPLe().attach(tiny_backbone)
    with pytest.raises(PeftClipError, match=r"needs 3 token embeddings .* only 2 tokens"):
        MaPLe(n_ctx=3, prompt_depth=1, ctx_init="a photo").attach(tiny_backbone)


@pytest.mark.slow
@pytest.mark.parametrize(("depth", "expected"), [(9, 3_555_072), (3, 1_185_024)])
def test_parameter_counts_and_identical_couplings_on_vit_b_16(depth, expected):
    maple = MaPLe(prompt_depth=depth)
    maple.attach(_vit_b_16())
    assert sum(p.numel() for p in maple.parameters()) == expected
    first = maple.deep_proj[0]
    assert all(torch.equal(first.weight, other.weight) for other in maple.deep_proj)
    assert not torch.equal(first.weight, maple.proj.weight)
