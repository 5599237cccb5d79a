"""Attention surgery: open_clip's fused ``nn.MultiheadAttention`` → four ``nn.Linear`` + SDPA.

Every weight-space adapter (CLIP-SVD, LoRA, CoDyRA) targets plain ``nn.Linear`` layers, and
peft's own MultiheadAttention LoRA path is wrong (docs/methods/lora.md), so each block's
attention is split once at load time. The split module keeps MultiheadAttention's call
signature, so open_clip's ``ResidualAttentionBlock.forward`` runs unchanged around it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SplitAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/o projections (batch-first layout).

    Args:
        width: Model width (embedding dimension).
        heads: Number of attention heads; ``width`` must be divisible by it.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.o = nn.Linear(width, width)

    @classmethod
    def from_multihead_attention(cls, mha: nn.MultiheadAttention) -> SplitAttention:
        """Builds the split module holding exactly ``mha``'s weights (q, k, v row-thirds)."""
        if not mha.batch_first or not mha._qkv_same_embed_dim or mha.bias_k is not None:
            raise ValueError(
                "only batch-first self-attention with a fused in-projection is supported"
            )
        if mha.in_proj_bias is None or mha.add_zero_attn or mha.dropout:
            raise ValueError("only CLIP-style attention (with biases, no dropout) is supported")
        split = cls(mha.embed_dim, mha.num_heads).to(mha.in_proj_weight.device)
        weights = mha.in_proj_weight.detach().chunk(3)
        biases = mha.in_proj_bias.detach().chunk(3)
        with torch.no_grad():
            for linear, weight, bias in zip(
                (split.q, split.k, split.v), weights, biases, strict=True
            ):
                linear.weight.copy_(weight)
                linear.bias.copy_(bias)
            split.o.weight.copy_(mha.out_proj.weight)
            split.o.bias.copy_(mha.out_proj.bias)
        return split.to(mha.in_proj_weight.dtype)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise ValueError("SplitAttention does not return attention weights")
        keys, values = self.split_heads(self.k(key)), self.split_heads(self.v(value))
        return self.attend(query, keys, values, attn_mask), None

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``x`` ``(batch, length, width)``, split into heads
        ``(batch, heads, length, head_width)``."""
        return self.split_heads(self.k(x)), self.split_heads(self.v(x))

    def attend(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention of ``query`` ``(batch, length, width)`` over projected keys and values
        (:meth:`keys_values` layout); shared-prefix text encoding passes keys it computed once.
        """
        return self.o(self.mix(self.split_heads(self.q(query)), keys, values, attn_mask))

    def mix(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The attention-weighted values ``(batch, length, width)`` of projected ``queries``
        (:meth:`split_heads` layout), before the output projection ``o``.

        Shared-prefix text encoding projects its packed rows itself and calls this on them.
        """
        batch, _, length, head_width = queries.shape
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            # Under autocast q is low precision while open_clip hands over an fp32 mask.
            attn_mask = attn_mask.to(queries.dtype)
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=attn_mask)
        return out.transpose(1, 2).reshape(batch, length, self.heads * head_width)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, length, width)`` → ``(batch, heads, length, head_width)`` (a view)."""
        batch, length, width = x.shape
        return x.view(batch, length, self.heads, width // self.heads).transpose(1, 2)


def split_attention(module: nn.Module) -> int:
    """Replaces, in place, every ``nn.MultiheadAttention`` named ``attn`` inside ``module``.

    RN50's attention pool is not an ``nn.MultiheadAttention`` and is left as it is.

    Returns:
        The number of attention modules replaced.
    """
    targets = [
        (parent, name)
        for parent in module.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.MultiheadAttention)
    ]
    # The new Linear layers' random init is overwritten at once; it must not consume the global
    # generator, or an adapter's init would depend on whether a backbone was loaded before it.
    with torch.random.fork_rng(devices=[]):
        for parent, name in targets:
            setattr(parent, name, SplitAttention.from_multihead_attention(getattr(parent, name)))
    return len(targets)
