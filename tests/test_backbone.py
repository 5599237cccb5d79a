"""The split-attention backbone equals open_clip's forward; its extension points are exact."""

import open_clip
import pytest
import torch
from torch import nn

from peftclip.backbone import FrozenClip, SplitAttention, load_backbone
from tests.conftest import TINY

PROMPTS = ["a photo of a dog.", "a cat sitting on a big red mat, photo", "x"]


def _reference(name: str, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return open_clip.create_model(name).eval()


def _images(model: nn.Module, batch: int = 2) -> torch.Tensor:
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def _assert_equivalent(name: str, check_image: bool = True) -> None:
    backbone = load_backbone(name, init_seed=0)
    reference = _reference(name)
    tokens = open_clip.get_tokenizer(name)(PROMPTS)
    with torch.no_grad():
        text_diff = (
            (backbone.encode_text_tokens(tokens) - reference.encode_text(tokens)).abs().max()
        )
        assert text_diff <= 1e-5, f"{name} text tower differs by {text_diff}"
        if check_image:
            images = _images(reference)
            image_diff = (
                (backbone.encode_image(images) - reference.encode_image(images)).abs().max()
            )
            assert image_diff <= 1e-5, f"{name} image tower differs by {image_diff}"


def test_tiny_config_equals_open_clip():
    _assert_equivalent(TINY)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-B-16", "ViT-B-32"])
def test_vit_b_equals_open_clip(name):
    _assert_equivalent(name)


@pytest.mark.slow
def test_rn50_text_tower_equals_open_clip():
    _assert_equivalent("RN50", check_image=True)  # the image tower (attention pool) is untouched


def test_every_attention_is_split_and_frozen(tiny_backbone):
    model = tiny_backbone.model
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    splits = [m for m in model.modules() if isinstance(m, SplitAttention)]
    assert len(splits) == tiny_backbone.text_depth + tiny_backbone.vision_depth
    assert all(isinstance(getattr(m, part), nn.Linear) for m in splits for part in "qkvo")
    assert not any(p.requires_grad for p in tiny_backbone.parameters())


def test_split_attention_copies_weights_exactly():
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    split = SplitAttention.from_multihead_attention(mha)
    x = torch.randn(3, 5, 16)
    mask = torch.full((5, 5), float("-inf")).triu(1)
    expected = mha(x, x, x, need_weights=False, attn_mask=mask)[0]
    assert torch.allclose(split(x, x, x, attn_mask=mask)[0], expected, atol=1e-6)
    assert torch.equal(split.q.weight, mha.in_proj_weight[:16])
    assert torch.equal(split.v.bias, mha.in_proj_bias[32:])


def test_backbone_stays_in_eval_mode(tiny_backbone):
    tiny_backbone.train()
    assert not any(module.training for module in tiny_backbone.modules())


def test_encode_text_from_embeddings_equals_open_clip_of_the_prompt(tiny_backbone):
    reference = _reference(TINY)
    tokens = tiny_backbone.tokenize(PROMPTS)
    embeddings = tiny_backbone.token_embeddings(tokens)
    with torch.no_grad():
        ours = tiny_backbone.encode_text(embeddings, tiny_backbone.pool_index(tokens))
        assert torch.allclose(ours, reference.encode_text(tokens), atol=1e-5)
    assert torch.equal(tiny_backbone.pool_index(tokens), tokens.argmax(-1))


def _block_inputs(blocks: nn.ModuleList, run) -> list[torch.Tensor]:
    captured = []
    handles = [
        b.register_forward_pre_hook(lambda m, args: captured.append(args[0].clone()))
        for b in blocks
    ]
    try:
        output = run()
    finally:
        for handle in handles:
            handle.remove()
    return captured, output


def test_deep_text_prompts_with_the_values_already_there_are_identity(tiny_backbone):
    tokens = tiny_backbone.tokenize(PROMPTS)
    embeddings = tiny_backbone.token_embeddings(tokens)
    index = tiny_backbone.pool_index(tokens)
    blocks = tiny_backbone.model.transformer.resblocks
    with torch.no_grad():
        inputs, plain = _block_inputs(blocks, lambda: tiny_backbone.encode_text(embeddings, index))
        n = 2
        deep = [None] + [x[:, 1 : 1 + n] for x in inputs[1:]]
        again = tiny_backbone.encode_text(embeddings, index, deep_prompts=deep)
    assert torch.equal(again, plain)


def test_deep_text_prompts_land_at_positions_after_sot(tiny_backbone):
    tokens = tiny_backbone.tokenize(PROMPTS)
    embeddings = tiny_backbone.token_embeddings(tokens)
    index = tiny_backbone.pool_index(tokens)
    blocks = tiny_backbone.model.transformer.resblocks
    prompt = torch.randn(2, tiny_backbone.text_width)
    with torch.no_grad():
        plain_inputs, plain = _block_inputs(
            blocks, lambda: tiny_backbone.encode_text(embeddings, index)
        )
        inputs, prompted = _block_inputs(
            blocks,
            lambda: tiny_backbone.encode_text(embeddings, index, deep_prompts=[None, prompt]),
        )
    assert torch.equal(inputs[0], plain_inputs[0])
    assert torch.equal(inputs[1][:, 1:3], prompt.expand(len(PROMPTS), -1, -1))
    assert torch.equal(inputs[1][:, 0], plain_inputs[1][:, 0])
    assert torch.equal(inputs[1][:, 3:], plain_inputs[1][:, 3:])
    assert not torch.allclose(prompted, plain)


def test_vision_prompts_are_appended_and_replace_the_last_tokens(tiny_backbone):
    images = torch.randn(2, 3, 32, 32)
    blocks = tiny_backbone.model.visual.transformer.resblocks
    width = tiny_backbone.vision_width
    first, second = torch.randn(3, width), torch.randn(2, 3, width)
    with torch.no_grad():
        inputs, output = _block_inputs(
            blocks,
            lambda: tiny_backbone.encode_image(
                images, input_prompts=first, deep_prompts=[None, second]
            ),
        )
        plain_inputs, plain = _block_inputs(blocks, lambda: tiny_backbone.encode_image(images))
    patches = plain_inputs[0].shape[1]
    assert inputs[0].shape[1] == patches + 3  # 1 + grid² + n tokens into block 0
    assert torch.equal(inputs[1][:, -3:], second)
    # Replacing with the values already there is an identity.
    with torch.no_grad():
        again = tiny_backbone.encode_image(
            images, input_prompts=first, deep_prompts=[None, inputs[1][:, -3:]]
        )
    assert torch.equal(again, output)
    assert not torch.allclose(output, plain)


def test_vision_prompts_on_a_resnet_fail_clearly():
    backbone = load_backbone("RN50", init_seed=0)
    with pytest.raises(Exception, match="need a ViT image tower"):
        backbone.encode_image(torch.randn(1, 3, 224, 224), input_prompts=torch.zeros(2, 64))


def test_logit_scale_and_logits(tiny_backbone):
    image, text = torch.randn(4, 64), torch.randn(3, 64)
    expected = tiny_backbone.model.logit_scale.exp() * (
        nn.functional.normalize(image, dim=-1) @ nn.functional.normalize(text, dim=-1).T
    )
    assert torch.allclose(tiny_backbone.logits(image, text), expected)
    per_image = tiny_backbone.logits(image, text.expand(4, -1, -1))
    assert torch.allclose(per_image, expected, atol=1e-6)


def test_identity_is_deterministic_and_weight_sensitive(tiny_backbone):
    assert load_backbone(TINY, init_seed=0).identity == tiny_backbone.identity
    assert (
        load_backbone(TINY, init_seed=1).identity.weights_sha256
        != tiny_backbone.identity.weights_sha256
    )
    assert isinstance(tiny_backbone, FrozenClip)
