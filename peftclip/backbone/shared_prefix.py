"""Shared-prefix text encoding: the common start of the class prompts is encoded once.

The text tower is causal: position ``p`` attends to positions ``≤ p`` only. When every prompt of
a group starts with the same ``P`` input rows — ``[SOS][ctx…]`` with one shared context (CoOp
without CSC, KgCoOp, MaPLe, IVLP, PromptSRC; CoCoOp per image, whose shifted context is shared
by all classes of that image) — their hidden states over those ``P`` positions are identical in
every block. So each block runs the prefix once per group, and every class tail attends to the
prefix's keys and values (computed once) plus its own causal keys. The operations and values are
those of the plain path, only not repeated: features and gradients are equal to fp32 rounding
(docs/performance.md).

Gradients stay exact because the adapter promises that the prefix rows are the *same function*
of its parameters in every prompt (:attr:`peftclip.adapters.TextInput.shared_prefix`), not just
equal values: the plain path sums one gradient contribution per class through identical
Jacobians, the shared path sums the classes' upstream gradients first and applies the Jacobian
once.
"""

from __future__ import annotations

import torch
from open_clip.transformer import ResidualAttentionBlock

from peftclip.backbone.frozen_clip import DeepPrompts, FrozenClip, _layer_prompt, _replace_tokens


def common_token_prefix(tokens: torch.Tensor) -> int:
    """How many leading positions hold the same token id in every row of ``tokens`` ``(n, L)``.

    Equal ids are equal frozen embeddings, so for token rows equal values *are* the same
    function (unlike learned rows, see the module docstring).
    """
    return int((tokens == tokens[:1]).all(dim=0).int().cumprod(dim=0).sum())


def encode_text_tokens(backbone: FrozenClip, tokens: torch.Tensor) -> torch.Tensor:
    """``backbone.encode_text_tokens(tokens)`` with the leading tokens all rows share (e.g. "a
    photo of a" of one template over all classes) encoded once."""
    pool_index = backbone.pool_index(tokens)
    shared = shareable_prefix(backbone, common_token_prefix(tokens), pool_index, None)
    if not shared:
        return backbone.encode_text_tokens(tokens)
    embeddings = backbone.token_embeddings(tokens).unsqueeze(0)
    return encode_text_shared_prefix(backbone, embeddings, pool_index, shared)[0]


def shareable_prefix(
    backbone: FrozenClip,
    prefix_length: int,
    pool_index: torch.Tensor,
    deep_prompts: DeepPrompts | None,
) -> int:
    """How many of the ``prefix_length`` claimed rows can be encoded once (0: the plain path).

    Sharing needs the causal mask, every pooled token in the tail, and deep prompts that are the
    same for all prompts (2-D) and replace positions inside the prefix only.
    """
    if backbone.model.attn_mask is None:  # a bidirectional tower: the prefix sees the tail
        return 0
    length = min(prefix_length, int(pool_index.min()))
    for prompt in deep_prompts or ():
        if prompt is not None and (prompt.dim() != 2 or 1 + prompt.shape[0] > length):
            return 0
    return length if length >= 2 else 0  # [SOS] alone is not worth a second code path


def encode_text_shared_prefix(
    backbone: FrozenClip,
    embeddings: torch.Tensor,
    pool_index: torch.Tensor,
    prefix_length: int,
    deep_prompts: DeepPrompts | None = None,
) -> torch.Tensor:
    """Text features of prompt groups whose first ``prefix_length`` rows are shared.

    Equal to ``backbone.encode_text`` on the flattened prompts (tested). Check the arguments
    with :func:`shareable_prefix` first.

    Args:
        embeddings: ``(groups, classes, L, width)`` token embeddings; rows ``0 … P−1`` of every
            prompt of a group are the same, and group ``g``'s first prompt stands for them all.
        pool_index: ``(classes,)`` pooled (EOT) position of each prompt, ``≥ prefix_length``.
        prefix_length: ``P``, the number of shared leading rows.
        deep_prompts: Per-block ``(n, width)`` prompts replacing positions ``1 … n`` (inside the
            prefix, so they are shared too).

    Returns:
        Unnormalized text features ``(groups, classes, embed_dim)``.
    """
    model = backbone.model
    groups, classes = embeddings.shape[:2]
    # As in the plain path, nothing after the last pooled token can change a pooled feature.
    length = int(pool_index.max()) + 1
    x = embeddings[:, :, :length].to(model.transformer.get_cast_dtype())
    x = x + model.positional_embedding[:length].to(x.dtype)
    prefix = x[:, 0, :prefix_length]  # (groups, P, width)
    tails = x[:, :, prefix_length:].flatten(0, 1)  # (groups · classes, T, width)
    mask = model.attn_mask[:length, :length]
    for index, block in enumerate(model.transformer.resblocks):
        prompt = _layer_prompt(deep_prompts, index)
        if prompt is not None:
            prefix = _replace_tokens(prefix, prompt, start=1)
        prefix, tails = _shared_block(block, prefix, tails, mask, classes)
    features = backbone.pool_text(tails, (pool_index - prefix_length).repeat(groups))
    return features.view(groups, classes, -1)


def _shared_block(
    block: ResidualAttentionBlock,
    prefix: torch.Tensor,
    tails: torch.Tensor,
    mask: torch.Tensor,
    classes: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``ResidualAttentionBlock`` on the prefixes and on the tails attending to them."""
    attention = block.attn
    size = prefix.shape[1]
    normed_prefix, normed_tails = block.ln_1(prefix), block.ln_1(tails)
    prefix_keys, prefix_values = attention.keys_values(normed_prefix)
    tail_keys, tail_values = attention.keys_values(normed_tails)

    def per_tail(projected: torch.Tensor) -> torch.Tensor:
        # (groups, heads, P, head_width) → one view per tail of the group; no copy until the cat.
        return projected.unsqueeze(1).expand(-1, classes, -1, -1, -1).flatten(0, 1)

    keys = torch.cat([per_tail(prefix_keys), tail_keys], dim=2)
    values = torch.cat([per_tail(prefix_values), tail_values], dim=2)
    prefix_out = attention.attend(normed_prefix, prefix_keys, prefix_values, mask[:size, :size])
    # Tail rows of the causal mask: every prefix column is visible, tail columns causally.
    tails_out = attention.attend(normed_tails, keys, values, mask[size:, :])
    return _residual(block, prefix, prefix_out), _residual(block, tails, tails_out)


def _residual(block: ResidualAttentionBlock, x: torch.Tensor, attended: torch.Tensor):
    # The rest of open_clip's ResidualAttentionBlock.forward (FrozenClip admits no other block).
    x = x + block.ls_1(attended)
    return x + block.ls_2(block.mlp(block.ln_2(x)))
