"""CoCoOp: CoOp's context shifted per image by a small Meta-Net (Zhou et al., CVPR 2022).

Semantics: docs/methods/cocoop.md. Trainable: ``ctx`` (initialised as CoOp, class token at the
end) and the Meta-Net ``Linear(d, d/16) → ReLU → Linear(d/16, text width)`` on the
L2-normalized image features. Every context token of image ``b`` is shifted by the same
``π_b``. The anchor loops over images one by one (so it only runs batch 1); here all
batch × classes prompts go through the text encoder in one batched call — the same math.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from peftclip.adapters.base import TextInput
from peftclip.adapters.coop import CoOp
from peftclip.adapters.registry import register_adapter
from peftclip.backbone import FrozenClip
from peftclip.errors import PeftClipError


class CoCoOp(CoOp):
    """Conditional context optimization.

    Args:
        n_ctx: Number of context vectors M (ignored when ``ctx_init`` is given).
        ctx_init: Words to initialise the context from (the paper: ``"a photo of a"``). As in
            CoOp and the official code, M becomes their word count; tokens of the string beyond
            the first M stay frozen in the prompt.
    """

    image_conditioned = True
    clip_dtype_tensors = ("ctx", "meta_net")  # the anchor calls meta_net.half() under fp16

    def __init__(self, n_ctx: int = 4, ctx_init: str = "a photo of a") -> None:
        super().__init__(n_ctx=n_ctx, ctx_init=ctx_init, class_token_position="end")
        self.meta_net: nn.Sequential | None = None

    def attach(self, backbone: FrozenClip) -> None:
        super().attach(backbone)
        hidden = backbone.embed_dim // 16
        self.meta_net = nn.Sequential(
            nn.Linear(backbone.embed_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, backbone.text_width),
        )

    def text_input(
        self,
        backbone: FrozenClip,
        classnames: Sequence[str],
        image_features: torch.Tensor | None = None,
    ) -> TextInput:
        if image_features is None:
            raise PeftClipError("CoCoOp builds prompts per image; it needs the image features.")
        tensors = self._class_tensors(backbone, classnames)
        prefix, suffix = tensors["prefix"], tensors["suffix"]
        normalized = F.normalize(image_features.float(), dim=-1)
        shift = self.meta_net(normalized.to(self.meta_net[0].weight.dtype))  # (batch, width)
        ctx = self.ctx.unsqueeze(0) + shift.unsqueeze(1)  # (batch, M, width): same π per token
        batch, classes = len(ctx), len(prefix)
        embeddings = torch.cat(
            [
                prefix.unsqueeze(0).expand(batch, -1, -1, -1),
                ctx.to(prefix.dtype).unsqueeze(1).expand(-1, classes, -1, -1),
                suffix.unsqueeze(0).expand(batch, -1, -1, -1),
            ],
            dim=2,
        )  # (batch, classes, L, width)
        # Image b's shifted context is the same in all of its class prompts.
        return TextInput(embeddings, tensors["pool_index"], self._shared_prefix(tensors))


register_adapter("cocoop", CoCoOp)
