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
    tails = _PackedTails((pool_index - prefix_length).repeat(groups), length - prefix_length)
    rows = tails.pack(x[:, :, prefix_length:].flatten(0, 1))
    mask = model.attn_mask[:length, :length]
    blocks = model.transformer.resblocks
    for index, block in enumerate(blocks):
        prompt = _layer_prompt(deep_prompts, index)
        if prompt is not None:
            prefix = _replace_tokens(prefix, prompt, start=1)
        if index == len(blocks) - 1:
            rows = _last_block(block, prefix, rows, tails, classes)
        else:
            prefix, rows = _shared_block(block, prefix, rows, tails, mask, classes)
    return backbone.project_text(rows).view(groups, classes, -1)


class _PackedTails:
    """The class tails' rows without the positions after each tail's pooled token.

    Tails differ in length (class names of 1 to ~10 tokens) and the padded layout repeats the
    per-token work (projections, MLP) on every position up to the longest tail: about half of
    it for ImageNet's names. Causally, no kept row attends to a dropped one, so the per-token
    layers run on the packed rows and only attention sees the padded layout (with zero rows
    where nothing was kept, which no kept query can see).

    Args:
        pool_index: ``(tails,)`` pooled position of each tail, counted from the tail's start.
        length: ``T``, the padded tail length.
    """

    def __init__(self, pool_index: torch.Tensor, length: int) -> None:
        kept = torch.arange(length, device=pool_index.device) <= pool_index.unsqueeze(1)
        self.shape = kept.shape
        self.kept = kept.flatten().nonzero().squeeze(1)  # positions in the padded layout
        self.pooled = kept.sum(1).cumsum(0) - 1  # each tail's pooled row among the packed
        self.pool_index = pool_index

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """``(tails, T, width)`` → ``(kept rows, width)``."""
        return padded.flatten(0, 1).index_select(0, self.kept)

    def unpack(self, rows: torch.Tensor) -> torch.Tensor:
        """``(kept rows, width)`` → ``(tails, T, width)``, zeros after each pooled token."""
        padded = rows.new_zeros(self.shape.numel(), rows.shape[-1])
        return padded.index_copy(0, self.kept, rows).view(*self.shape, -1)


def _prefix_keys_values(attention, normed_prefix, classes: int):
    """The prefix's keys and values, and one view of them per tail of the group (no copy until
    the tails' keys are appended)."""
    keys, values = attention.keys_values(normed_prefix)  # (groups, heads, P, head_width)

    def per_tail(projected: torch.Tensor) -> torch.Tensor:
        return projected.unsqueeze(1).expand(-1, classes, -1, -1, -1).flatten(0, 1)

    return keys, values, per_tail(keys), per_tail(values)


def _tail_keys_values(attention, normed_rows, tails: _PackedTails, prefix_keys, prefix_values):
    """Every tail's keys and values: the prefix's, then its own (padded layout)."""
    keys = attention.split_heads(tails.unpack(attention.k(normed_rows)))
    values = attention.split_heads(tails.unpack(attention.v(normed_rows)))
    return torch.cat([prefix_keys, keys], dim=2), torch.cat([prefix_values, values], dim=2)


def _shared_block(
    block: ResidualAttentionBlock,
    prefix: torch.Tensor,
    rows: torch.Tensor,
    tails: _PackedTails,
    mask: torch.Tensor,
    classes: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``ResidualAttentionBlock`` on the prefixes and on the packed tail rows attending to
    them."""
    attention = block.attn
    size = prefix.shape[1]
    normed_prefix, normed_rows = block.ln_1(prefix), block.ln_1(rows)
    prefix_keys, prefix_values, keys, values = _prefix_keys_values(
        attention, normed_prefix, classes
    )
    keys, values = _tail_keys_values(attention, normed_rows, tails, keys, values)
    prefix_out = attention.attend(normed_prefix, prefix_keys, prefix_values, mask[:size, :size])
    # Tail rows of the causal mask: every prefix column is visible, tail columns causally.
    queries = attention.split_heads(tails.unpack(attention.q(normed_rows)))
    mixed = tails.pack(attention.mix(queries, keys, values, mask[size:, :]))
    return _residual(block, prefix, prefix_out), _residual(block, rows, attention.o(mixed))


def _last_block(
    block: ResidualAttentionBlock,
    prefix: torch.Tensor,
    rows: torch.Tensor,
    tails: _PackedTails,
    classes: int,
) -> torch.Tensor:
    """The last block, for the pooled rows only ``(tails, width)``: nothing reads its other
    outputs, so the others give keys and values but no queries, output projection or MLP."""
    attention = block.attn
    size = prefix.shape[1]
    normed_rows = block.ln_1(rows)
    _, _, keys, values = _prefix_keys_values(attention, block.ln_1(prefix), classes)
    keys, values = _tail_keys_values(attention, normed_rows, tails, keys, values)
    pooled = rows.index_select(0, tails.pooled)
    queries = attention.split_heads(attention.q(normed_rows.index_select(0, tails.pooled))[:, None])
    # The pooled query at tail position p sees the prefix and tail positions ≤ p.
    columns = torch.arange(size + tails.shape[1], device=rows.device)
    visible = (columns <= size + tails.pool_index.unsqueeze(1))[:, None, None]
    mixed = attention.mix(queries, keys, values, visible)[:, 0]
    return _residual(block, pooled, attention.o(mixed))


def _residual(block: ResidualAttentionBlock, x: torch.Tensor, attended: torch.Tensor):
    # The rest of open_clip's ResidualAttentionBlock.forward (FrozenClip admits no other block).
    x = x + block.ls_1(attended)
    return x + block.ls_2(block.mlp(block.ln_2(x)))
