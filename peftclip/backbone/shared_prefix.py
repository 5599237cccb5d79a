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
    tails = _PackedTails(pool_index - prefix_length, groups, prefix_length)
    rows = tails.pack(x[:, :, prefix_length:].flatten(0, 1))
    mask = model.attn_mask[:length, :length]
    blocks = model.transformer.resblocks
    for index, block in enumerate(blocks):
        prompt = _layer_prompt(deep_prompts, index)
        if prompt is not None:
            prefix = _replace_tokens(prefix, prompt, start=1)
        if index == len(blocks) - 1:
            rows = _last_block(block, prefix, rows, tails)
        else:
            prefix, rows = _shared_block(block, prefix, rows, tails, mask)
    return backbone.project_text(rows).view(groups, classes, -1)


#: Cost of one more attention call, in units of (tail positions × key positions): a bucket of
#: tails pays its padded attention and this. Chosen on 2 CPU threads with ViT-B/16's text tower
#: (docs/performance.md): 4 buckets at 1000 ImageNet classes, 2 at 100.
_CALL_COST = 8000


class _PackedTails:
    """The class tails' rows without the positions after each tail's pooled token.

    Tails differ in length (ImageNet's names give tails of 2 to 13 tokens, 4 on average), and a
    padded layout repeats the per-token work (projections, MLP) on every position up to the
    longest tail. Causally, no kept row attends to a dropped one, so the per-token layers run on
    the packed rows and only attention sees a padded layout (with zero rows where nothing was
    kept, which no kept query can see). Attention runs per *bucket* of tails of similar length,
    each padded to its own longest tail: the buckets are chosen to minimise the padded attention
    work plus a cost per call (:data:`_CALL_COST`). Rows are packed bucket by bucket.

    Args:
        pool_index: ``(classes,)`` pooled position of each class's tail, from the tail's start.
        groups: Prompt groups (images for CoCoOp); tail ``g · classes + c`` is class ``c`` of
            group ``g``.
        prefix_length: ``P``, the shared positions every tail also attends to.
    """

    def __init__(self, pool_index: torch.Tensor, groups: int, prefix_length: int) -> None:
        classes, device = len(pool_index), pool_index.device
        lengths = pool_index + 1
        order = torch.argsort(lengths, stable=True)
        ends = _bucket_ends(lengths[order].tolist(), prefix_length)
        self.buckets: list[_Bucket] = []
        row = 0
        for start, end in zip([0, *ends[:-1]], ends, strict=True):
            # The bucket's classes in every group (tails of one class have one length).
            members = order[start:end]
            tails = (torch.arange(groups, device=device)[:, None] * classes + members).flatten()
            self.buckets.append(_Bucket(tails, pool_index[members].repeat(groups), row, classes))
            row += self.buckets[-1].rows
        # Where each packed row sits in the padded input (tails, longest tail), bucket by bucket.
        longest = int(lengths.max())
        self.kept = torch.cat(
            [b.tails[b.kept // b.length] * longest + b.kept % b.length for b in self.buckets]
        )
        self.pooled = torch.cat([b.span.start + b.pooled for b in self.buckets])
        order_of_tails = torch.cat([bucket.tails for bucket in self.buckets])
        self.tail_order = torch.argsort(order_of_tails)  # bucket-by-bucket tails → tail order

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """``(tails, T, width)`` → ``(kept rows, width)``, bucket by bucket."""
        return padded.flatten(0, 1).index_select(0, self.kept)


class _Bucket:
    """Tails of similar length whose attention runs as one call, padded to the longest."""

    def __init__(self, tails: torch.Tensor, pool_index: torch.Tensor, first_row: int, classes: int):
        self.tails, self.pool_index = tails, pool_index
        self.group = torch.div(tails, classes, rounding_mode="floor")
        self.length = int(pool_index.max()) + 1
        kept = torch.arange(self.length, device=tails.device) <= pool_index[:, None]
        self.shape = kept.shape
        self.kept = kept.flatten().nonzero().squeeze(1)  # positions in the bucket's layout
        self.rows = len(self.kept)
        self.span = slice(first_row, first_row + self.rows)  # its rows among the packed
        self.pooled = kept.sum(1).cumsum(0) - 1  # each tail's pooled row among the bucket's

    def unpack(self, rows: torch.Tensor) -> torch.Tensor:
        """The bucket's ``(rows, width)`` → ``(tails, T_b, width)``, zeros after each pooled
        token."""
        padded = rows.new_zeros(self.shape.numel(), rows.shape[-1])
        return padded.index_copy(0, self.kept, rows).view(*self.shape, -1)

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        return padded.flatten(0, 1).index_select(0, self.kept)

    def keys_values(self, attention, prefix_keys, prefix_values, keys, values):
        """Each tail's keys and values ``(tails, heads, P + T_b, head_width)``: its group's
        prefix, then its own (``keys``, ``values``: the projected packed rows of all buckets).
        """

        def per_tail(projected: torch.Tensor) -> torch.Tensor:
            if len(projected) == 1:  # one group: views until the cat copies them
                return projected.expand(len(self.tails), -1, -1, -1)
            return projected.index_select(0, self.group)

        own_keys = attention.split_heads(self.unpack(keys[self.span]))
        own_values = attention.split_heads(self.unpack(values[self.span]))
        return (
            torch.cat([per_tail(prefix_keys), own_keys], dim=2),
            torch.cat([per_tail(prefix_values), own_values], dim=2),
        )


def _bucket_ends(lengths: list[int], prefix_length: int) -> list[int]:
    """End indices of the buckets of the sorted tail ``lengths`` that minimise the attention
    work ``Σ n_b · T_b · (P + T_b)`` plus :data:`_CALL_COST` per bucket (exact dynamic
    programming over the distinct lengths)."""
    ends = [
        i + 1 for i in range(len(lengths)) if i + 1 == len(lengths) or lengths[i + 1] != lengths[i]
    ]
    best = {0: (0.0, [])}  # cost and bucket ends of the first `end` tails
    for end in ends:
        longest = lengths[end - 1]
        best[end] = min(
            (
                cost + (end - start) * longest * (prefix_length + longest) + _CALL_COST,
                [*chosen, end],
            )
            for start, (cost, chosen) in best.items()
        )
    return best[len(lengths)][1]


def _shared_block(
    block: ResidualAttentionBlock,
    prefix: torch.Tensor,
    rows: torch.Tensor,
    tails: _PackedTails,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``ResidualAttentionBlock`` on the prefixes and on the packed tail rows attending to
    them."""
    attention = block.attn
    size = prefix.shape[1]
    normed_prefix, normed_rows = block.ln_1(prefix), block.ln_1(rows)
    prefix_keys, prefix_values = attention.keys_values(normed_prefix)
    prefix_out = attention.attend(normed_prefix, prefix_keys, prefix_values, mask[:size, :size])
    queries, keys, values = (
        project(normed_rows) for project in (attention.q, attention.k, attention.v)
    )
    mixed = []
    for bucket in tails.buckets:
        # Tail rows of the causal mask: every prefix column is visible, tail columns causally.
        bucket_mask = mask[size : size + bucket.length, : size + bucket.length]
        bucket_queries = attention.split_heads(bucket.unpack(queries[bucket.span]))
        bucket_keys, bucket_values = bucket.keys_values(
            attention, prefix_keys, prefix_values, keys, values
        )
        mixed.append(
            bucket.pack(attention.mix(bucket_queries, bucket_keys, bucket_values, bucket_mask))
        )
    attended = attention.o(torch.cat(mixed))
    return _residual(block, prefix, prefix_out), _residual(block, rows, attended)


def _last_block(
    block: ResidualAttentionBlock,
    prefix: torch.Tensor,
    rows: torch.Tensor,
    tails: _PackedTails,
) -> torch.Tensor:
    """The last block, for the pooled rows only ``(tails, width)`` in tail order: nothing reads
    its other outputs, so the others give keys and values but no queries, output projection or
    MLP."""
    attention = block.attn
    size = prefix.shape[1]
    normed_rows = block.ln_1(rows)
    prefix_keys, prefix_values = attention.keys_values(block.ln_1(prefix))
    keys, values = attention.k(normed_rows), attention.v(normed_rows)
    pooled = rows.index_select(0, tails.pooled)
    queries = attention.q(normed_rows.index_select(0, tails.pooled))
    mixed, first = [], 0
    for bucket in tails.buckets:
        count = len(bucket.tails)
        bucket_queries = attention.split_heads(queries[first : first + count, None])
        first += count
        bucket_keys, bucket_values = bucket.keys_values(
            attention, prefix_keys, prefix_values, keys, values
        )
        # The pooled query at tail position p sees the prefix and tail positions ≤ p.
        columns = torch.arange(size + bucket.length, device=rows.device)
        visible = (columns <= size + bucket.pool_index[:, None])[:, None, None]
        mixed.append(attention.mix(bucket_queries, bucket_keys, bucket_values, visible)[:, 0])
    out = _residual(block, pooled, attention.o(torch.cat(mixed)))
    return out.index_select(0, tails.tail_order)


def _residual(block: ResidualAttentionBlock, x: torch.Tensor, attended: torch.Tensor):
    # The rest of open_clip's ResidualAttentionBlock.forward (FrozenClip admits no other block).
    x = x + block.ls_1(attended)
    return x + block.ls_2(block.mlp(block.ln_2(x)))
