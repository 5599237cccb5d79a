"""MaPLe: coupled language and vision prompts in the first J layers (Khattak et al., CVPR 2023).

Semantics: docs/methods/maple.md. Trainable: the shallow text context ``ctx`` (n × text width),
the layer-0 coupling ``F₀`` (text width → vision width), deep text prompts ``D_k`` and deep
couplings ``F_k`` for k = 1 … J−1. Vision prompts are always computed from text prompts
(one-way coupling), so gradients reach ``D_k`` from both towers. Widths come from the
backbone (the anchor hard-codes 512 / 768).

Word init follows the official code (muzairkhattak/multimodal-prompt-learning
``trainers/maple.py``), which differs from CoOp's: ``n_ctx`` is kept (not the word count), the
first ``n_ctx`` token embeddings of ``ctx_init`` are learned and the rest of the string stays
frozen in the prompt. The string is used only when ``n_ctx <= 4``; a longer context starts
random and the prompt reads "X X … X {class}.".
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from peftclip.adapters.base import Prompts
from peftclip.adapters.coop import CoOp
from peftclip.adapters.registry import register_adapter
from peftclip.backbone import FrozenClip
from peftclip.errors import PeftClipError


class MaPLe(CoOp):
    """Multi-modal prompt learning.

    Args:
        n_ctx: Prompt tokens per layer and tower (the paper: 2).
        prompt_depth: J, the number of layers that receive prompts (the paper: 9; 3 for
            cross-dataset and domain generalization).
        ctx_init: Words whose first ``n_ctx`` token embeddings initialise ``ctx`` (``_`` reads
            as a space); the whole string stays in the prompt, so with "a photo of a" and n = 2
            the words "of a" stay frozen (the anchor's layout, kept as the method's definition).
            Used only with ``n_ctx <= 4``, as in the official code; a longer context is random.
    """

    #: The official code initialises from ``ctx_init`` only up to this many context tokens.
    max_init_tokens = 4

    # The anchor builds ctx in clip_model.dtype and calls proj.half(); deep prompts and deep
    # couplings are fp32 there, cast to fp16 where they enter the encoders.
    clip_dtype_tensors = ("ctx", "proj")

    def __init__(self, n_ctx: int = 2, prompt_depth: int = 9, ctx_init: str = "a photo of a"):
        super().__init__(n_ctx=n_ctx, ctx_init=ctx_init, class_token_position="end")
        self.n_ctx = n_ctx  # unlike CoOp, the official code keeps n_ctx with a ctx_init
        if self.ctx_init and n_ctx > self.max_init_tokens:
            warnings.warn(
                f"{type(self).__name__} ignores ctx_init '{self.ctx_init}' with {n_ctx} context "
                f"tokens (more than {self.max_init_tokens}): the context starts random, as in the "
                f"official code. Give at most {self.max_init_tokens} context tokens to initialise "
                "from words.",
                stacklevel=2,
            )
            self.ctx_init = ""
        self.prompt_depth = prompt_depth
        self.proj: nn.Linear | None = None
        self.deep_text = nn.ParameterList()
        self.deep_proj = nn.ModuleList()

    def attach(self, backbone: FrozenClip) -> None:
        if backbone.vision_width is None:
            raise PeftClipError("MaPLe prompts the image tower too: it needs a ViT backbone.")
        depth = min(backbone.text_depth, backbone.vision_depth)
        if not 1 <= self.prompt_depth <= depth:
            raise PeftClipError(
                f"prompt_depth {self.prompt_depth} must be between 1 and the {depth} blocks of "
                f"'{backbone.identity.model_name}'."
            )
        text, vision = backbone.text_width, backbone.vision_width
        self._attach_context(backbone)
        self.proj = nn.Linear(text, vision)
        self.deep_text = nn.ParameterList(
            nn.Parameter(torch.randn(self.n_ctx, text) * 0.02) for _ in range(self.prompt_depth - 1)
        )
        # The anchor deep-copies one Linear, so all J − 1 couplings start identical.
        coupling = nn.Linear(text, vision)
        self.deep_proj = nn.ModuleList(
            copy.deepcopy(coupling) for _ in range(self.prompt_depth - 1)
        )

    def prompts(self, backbone: FrozenClip) -> Prompts:
        deep_vision = [
            proj(prompt) for proj, prompt in zip(self.deep_proj, self.deep_text, strict=True)
        ]
        return Prompts(
            text_deep=[None, *self.deep_text],
            vision_input=self.proj(self.ctx),
            vision_deep=[None, *deep_vision],
        )


register_adapter("maple", MaPLe)
