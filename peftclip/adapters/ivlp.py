"""IVLP (independent vision-language deep prompts) and VPT-deep (vision only).

Semantics: docs/methods/ivlp.md and docs/methods/vpt_deep.md. Text: layer-0 context initialised
as MaPLe's (first ``n_text`` tokens of ``ctx_init``, the whole string kept in the prompt, the
string used only for ``n_text <= 4``: the official ``trainers/independentVL.py`` has MaPLe's
rule) and one ``N(0, 0.02²)`` prompt per further text block, replacing positions 1 … n.
Vision: ``n_vision`` tokens appended after the positional embedding, and one ``N(0, 0.02²)``
prompt per further vision block replacing the last n tokens. No coupling between the towers.
"""

from __future__ import annotations

import torch
from torch import nn

from peftclip.adapters.base import Adapter, Prompts
from peftclip.adapters.maple import MaPLe
from peftclip.adapters.registry import register_adapter
from peftclip.backbone import FrozenClip
from peftclip.errors import PeftClipError


def _gaussian_prompts(count: int, n: int, width: int) -> nn.ParameterList:
    return nn.ParameterList(nn.Parameter(torch.randn(n, width) * 0.02) for _ in range(count))


def _vision_prompts(adapter, backbone: FrozenClip) -> None:
    """Creates ``vision_ctx`` and ``deep_vision`` on ``adapter`` (n_vision, vision_depth)."""
    if adapter.n_vision == 0:
        adapter.vision_ctx, adapter.deep_vision = None, nn.ParameterList()
        return
    if backbone.vision_width is None:
        raise PeftClipError("vision prompts need a ViT image tower.")
    if not 1 <= adapter.vision_depth <= backbone.vision_depth:
        raise PeftClipError(
            f"vision_depth {adapter.vision_depth} must be between 1 and the "
            f"{backbone.vision_depth} vision blocks."
        )
    width = backbone.vision_width
    adapter.vision_ctx = nn.Parameter(torch.randn(adapter.n_vision, width) * 0.02)
    adapter.deep_vision = _gaussian_prompts(adapter.vision_depth - 1, adapter.n_vision, width)


class IVLP(MaPLe):
    """Independent vision-language prompting (the MaPLe repository's baseline).

    Args:
        n_text: Text prompt tokens per layer (at least 1; ``vpt_deep`` prompts vision only).
        n_vision: Vision prompt tokens per layer (0: language-only deep prompting).
        text_depth: Text blocks that receive prompts.
        vision_depth: Vision blocks that receive prompts.
        ctx_init: Words whose first ``n_text`` token embeddings initialise the text context
            (only with ``n_text <= 4``, as in the official code; a longer context is random).
    """

    # The anchor builds the layer-0 text ctx in clip_model.dtype; its per-block text and all
    # vision prompts are fp32 parameters cast to fp16 where they enter the encoders.
    clip_dtype_tensors = ("ctx",)

    def __init__(
        self,
        n_text: int = 2,
        n_vision: int = 2,
        text_depth: int = 12,
        vision_depth: int = 12,
        ctx_init: str = "a photo of a",
    ) -> None:
        super().__init__(n_ctx=n_text, prompt_depth=text_depth, ctx_init=ctx_init)
        self.n_vision, self.vision_depth = n_vision, vision_depth
        self.vision_ctx: nn.Parameter | None = None
        self.deep_vision = nn.ParameterList()

    def attach(self, backbone: FrozenClip) -> None:
        if self.n_ctx < 1:
            raise PeftClipError("IVLP needs n_text >= 1; use vpt_deep for vision-only prompts.")
        if not 1 <= self.prompt_depth <= backbone.text_depth:
            raise PeftClipError(
                f"text_depth {self.prompt_depth} must be between 1 and the "
                f"{backbone.text_depth} text blocks."
            )
        self._attach_context(backbone)
        self.deep_text = _gaussian_prompts(self.prompt_depth - 1, self.n_ctx, backbone.text_width)
        _vision_prompts(self, backbone)

    def prompts(self, backbone: FrozenClip) -> Prompts:
        return Prompts(
            text_deep=[None, *self.deep_text],
            vision_input=self.vision_ctx,
            vision_deep=[None, *self.deep_vision] if self.vision_ctx is not None else None,
        )


class VPTDeep(Adapter):
    """Deep visual prompt tuning: vision prompts only; the text side stays the hand-crafted
    template ("a photo of a {}." features), as in the MaPLe repository's VPT baseline.

    Args:
        n_vision: Prompt tokens per vision block (the paper's setting: 8).
        vision_depth: Vision blocks that receive prompts.
    """

    clip_dtype_tensors = ()  # the anchor's VPT prompts are fp32, cast to fp16 at use

    def __init__(self, n_vision: int = 8, vision_depth: int = 12) -> None:
        super().__init__()
        if n_vision < 1:
            raise PeftClipError("VPT-deep needs n_vision >= 1.")
        self.n_vision, self.vision_depth = n_vision, vision_depth
        self.vision_ctx: nn.Parameter | None = None
        self.deep_vision = nn.ParameterList()

    def attach(self, backbone: FrozenClip) -> None:
        _vision_prompts(self, backbone)

    def prompts(self, backbone: FrozenClip) -> Prompts:
        return Prompts(vision_input=self.vision_ctx, vision_deep=[None, *self.deep_vision])


register_adapter("ivlp", IVLP)
register_adapter("vpt_deep", VPTDeep)
