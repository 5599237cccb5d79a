"""The frozen CLIP: open_clip's modules driven by short encoder loops with extension points.

The loops below reproduce ``open_clip.CLIP.encode_text`` / ``encode_image`` exactly (a test
compares them) and add the places where prompt learners plug in:

* ``encode_text`` starts from token embeddings (learnable rows allowed) and an explicit pooling
  index, and can replace positions ``1 … n`` at the input of any block (deep text prompts).
* ``encode_image`` can append input prompt tokens after the positional embedding (they get no
  positional embedding) and replace the last ``n`` tokens at the input of any block.

Semantics: docs/methods/index.md#notation-and-the-shared-forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn

from peftclip.backbone.attention import split_attention
from peftclip.errors import PeftClipError

#: Per-block prompts: entry ``i`` (a ``(n, d)`` or ``(batch, n, d)`` tensor, or ``None``) replaces
#: ``n`` token positions at the input of block ``i``.
DeepPrompts = Sequence[torch.Tensor | None]


@dataclass(frozen=True)
class BackboneIdentity:
    """What a checkpoint records about the frozen model it was trained on."""

    model_name: str
    pretrained: str | None
    weights_sha256: str

    def to_dict(self) -> dict:
        return asdict(self)


class FrozenClip(nn.Module):
    """A frozen open_clip ``CLIP`` with split attention and extensible encoders.

    Build it with :func:`peftclip.backbone.load_backbone`. All parameters have
    ``requires_grad=False`` and the module stays in eval mode whatever ``train()`` is called with.

    Args:
        model: The open_clip model (its attention is split in place).
        tokenizer: open_clip tokenizer for the model.
        identity: Model name, weights source and weights hash.
    """

    def __init__(
        self,
        model: open_clip.CLIP,
        tokenizer,
        identity: BackboneIdentity,
    ) -> None:
        super().__init__()
        if not isinstance(model, open_clip.CLIP):
            raise PeftClipError(
                f"model '{identity.model_name}' is an open_clip {type(model).__name__}; peftclip "
                "supports CLIP-architecture models with open_clip's own text transformer "
                "(ViT-*, RN50, ...), not custom or Hugging Face text towers."
            )
        for tower in (model.transformer, getattr(model.visual, "transformer", None)):
            if tower is not None and not all(
                isinstance(block, ResidualAttentionBlock) for block in tower.resblocks
            ):
                raise PeftClipError(
                    f"model '{identity.model_name}' uses custom attention blocks (qk-norm, "
                    "scaled-cosine attention, ...); peftclip supports the standard CLIP block only."
                )
        self.n_split = split_attention(model)
        model.requires_grad_(False)  # after the split: the new Linear layers are frozen too
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.identity = identity

    def train(self, mode: bool = True) -> FrozenClip:
        # The frozen CLIP never leaves eval mode (RN50 BatchNorm statistics, dropout).
        return super().train(False)

    # ----------------------------------------------------------------------------- properties
    @property
    def text_width(self) -> int:
        return self.model.transformer.width

    @property
    def vision_width(self) -> int | None:
        visual = self.model.visual
        return visual.transformer.width if isinstance(visual, VisionTransformer) else None

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return size if isinstance(size, int) else size[0]

    @property
    def text_depth(self) -> int:
        return len(self.model.transformer.resblocks)

    @property
    def vision_depth(self) -> int | None:
        visual = self.model.visual
        return len(visual.transformer.resblocks) if isinstance(visual, VisionTransformer) else None

    @property
    def embed_dim(self) -> int:
        projection = self.model.text_projection
        if isinstance(projection, nn.Linear):
            return projection.out_features
        return projection.shape[1] if projection is not None else self.text_width

    @property
    def logit_scale(self) -> torch.Tensor:
        """``exp(logit_scale)``: the frozen temperature used by every method.

        See docs/methods/index.md#notation-and-the-shared-forward.
        """
        return self.model.logit_scale.exp()

    @property
    def context_length(self) -> int:
        return self.model.context_length

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the image stem weights (OpenAI's ``CLIP.dtype``); images are cast to it.

        ``float32`` unless the weights were converted (``precision_profile: anchor_fp16``).
        """
        conv = getattr(self.model.visual, "conv1", None)
        if isinstance(conv, nn.Conv2d):
            return conv.weight.dtype
        return self.model.transformer.get_cast_dtype()

    # ---------------------------------------------------------------------------------- text
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids ``(n, context_length)`` on the backbone's device."""
        return self.tokenizer(list(texts)).to(self.model.token_embedding.weight.device)

    def token_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """The (frozen) input token embeddings of ``tokens`` (no positional embedding)."""
        return self.model.token_embedding(tokens)

    def pool_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Index of the token whose final state is the text feature (the EOT for CLIP)."""
        pool_type = self.model.text_pool_type
        if pool_type == "argmax":  # EOT has the largest id
            return tokens.argmax(dim=-1)
        if pool_type == "eos":
            return (tokens == self.model.text_eos_id).int().argmax(dim=-1)
        if pool_type == "last":
            return torch.full_like(tokens[:, 0], tokens.shape[1] - 1)
        if pool_type == "first":
            return torch.zeros_like(tokens[:, 0])
        raise PeftClipError(f"text pooling '{pool_type}' is not supported")

    def encode_text(
        self,
        token_embeddings: torch.Tensor,
        pool_index: torch.Tensor,
        deep_prompts: DeepPrompts | None = None,
    ) -> torch.Tensor:
        """Text features from token embeddings.

        See docs/methods/index.md#notation-and-the-shared-forward.

        Args:
            token_embeddings: ``(n, L, width)`` input embeddings, possibly with learnable rows.
            pool_index: ``(n,)`` index of the pooled token (see :meth:`pool_index`).
            deep_prompts: Per-block tensors that replace positions ``1 … k`` (right after SOT)
                at the input of that block.

        Returns:
            Unnormalized text features ``(n, embed_dim)``.
        """
        model = self.model
        causal = model.attn_mask is not None
        length = token_embeddings.shape[1]
        if causal:
            # Under the causal mask tokens after the last pooled one cannot change any pooled
            # feature: cutting the sequences there is exact and saves most of the text work.
            length = int(pool_index.max()) + 1
        x = token_embeddings[:, :length].to(model.transformer.get_cast_dtype())
        x = x + model.positional_embedding[:length].to(x.dtype)
        mask = model.attn_mask[:length, :length] if causal else None
        for index, block in enumerate(model.transformer.resblocks):
            prompt = _layer_prompt(deep_prompts, index)
            if prompt is not None:
                x = _replace_tokens(x, prompt, start=1)
            x = block(x, attn_mask=mask)
        return self.pool_text(x, pool_index)

    def pool_text(self, hidden: torch.Tensor, pool_index: torch.Tensor) -> torch.Tensor:
        """Text features from the last block's states ``(n, L, width)``: the state at
        ``pool_index`` ``(n,)``, then :meth:`project_text`."""
        return self.project_text(
            hidden[torch.arange(hidden.shape[0], device=hidden.device), pool_index]
        )

    def project_text(self, pooled: torch.Tensor) -> torch.Tensor:
        """Text features from the pooled states ``(n, width)``: ``ln_final`` (per token, so it
        may follow the pooling), the text projection."""
        model = self.model
        x = model.ln_final(pooled)
        projection = model.text_projection
        if isinstance(projection, nn.Linear):
            return projection(x)
        return x @ projection if projection is not None else x

    def encode_text_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text features of tokenized strings (the plain, prompt-free path)."""
        return self.encode_text(self.token_embeddings(tokens), self.pool_index(tokens))

    # --------------------------------------------------------------------------------- image
    def encode_image(
        self,
        images: torch.Tensor,
        input_prompts: torch.Tensor | None = None,
        deep_prompts: DeepPrompts | None = None,
    ) -> torch.Tensor:
        """Image features.

        See docs/methods/index.md#notation-and-the-shared-forward.

        Args:
            images: ``(batch, 3, H, W)`` preprocessed images.
            input_prompts: ``(n, width)`` or ``(batch, n, width)`` tokens appended after the
                positional embedding, before ``ln_pre``.
            deep_prompts: Per-block tensors that replace the **last** ``n`` tokens at the input
                of that block.

        Returns:
            Unnormalized image features ``(batch, embed_dim)``.
        """
        visual = self.model.visual
        if not isinstance(visual, VisionTransformer):
            if input_prompts is not None or deep_prompts is not None:
                raise PeftClipError(
                    f"vision prompts need a ViT image tower; '{self.identity.model_name}' has a "
                    f"{type(visual).__name__}. Use a ViT model or a text-only method."
                )
            return visual(images.to(self.dtype))
        x = visual.conv1(images.to(self.dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls_token = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls_token.to(x.dtype), x], dim=1)
        x = x + visual.positional_embedding.to(x.dtype)
        x = visual.patch_dropout(x)
        if input_prompts is not None:
            prompts = input_prompts.to(x.dtype)
            if prompts.dim() == 2:
                prompts = prompts.unsqueeze(0).expand(x.shape[0], -1, -1)
            x = torch.cat([x, prompts], dim=1)
        x = visual.ln_pre(x)
        for index, block in enumerate(visual.transformer.resblocks):
            prompt = _layer_prompt(deep_prompts, index)
            if prompt is not None:
                x = _replace_tokens(x, prompt, start=x.shape[1] - prompt.shape[-2])
            x = block(x)
        pooled, _ = visual._pool(x)
        return pooled @ visual.proj if visual.proj is not None else pooled

    # -------------------------------------------------------------------------------- logits
    def logits(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``exp(logit_scale) · normalize(img) @ normalize(txt)ᵀ``.

        The shared head of every method (docs/methods/index.md#notation-and-the-shared-forward).

        ``text_features`` may be ``(classes, d)`` or per-image ``(batch, classes, d)``;
        ``logit_scale`` replaces the checkpoint's temperature when given.
        """
        image = F.normalize(image_features, dim=-1)
        # A frozen template head is fp32 while fp16 weights give fp16 image features.
        text = F.normalize(text_features, dim=-1).to(image.dtype)
        scores = torch.einsum("bd,bcd->bc", image, text) if text.dim() == 3 else image @ text.t()
        return (self.logit_scale if logit_scale is None else logit_scale) * scores


def _layer_prompt(deep_prompts: DeepPrompts | None, index: int) -> torch.Tensor | None:
    if deep_prompts is None or index >= len(deep_prompts):
        return None
    return deep_prompts[index]


def _replace_tokens(x: torch.Tensor, prompt: torch.Tensor, start: int) -> torch.Tensor:
    """Returns ``x`` with positions ``start … start+n-1`` replaced by ``prompt`` (broadcast)."""
    prompt = prompt.to(x.dtype)
    if prompt.dim() == 2:
        prompt = prompt.unsqueeze(0).expand(x.shape[0], -1, -1)
    end = start + prompt.shape[1]
    return torch.cat([x[:, :start], prompt, x[:, end:]], dim=1)
