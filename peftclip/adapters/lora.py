"""LoRA on CLIP's split projections, injected with peft (docs/methods/lora.md).

peft's own ``nn.MultiheadAttention`` LoRA path applies the out-projection delta twice, shares
one rank across q/k/v and makes out-projection-only targeting a no-op (docs/methods/lora.md);
after peftclip's attention split every target is a plain ``nn.Linear``, which is peft's exact,
well-tested path. peft creates and owns the layers; this adapter picks the targets, keeps
references to the trainable tensors (so checkpoints hold only them) and merges with peft.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from torch import nn

from peftclip.adapters.registry import register_adapter
from peftclip.adapters.targets import LAYER_KINDS, LinearTarget, Tower
from peftclip.adapters.weight_space import WeightSpaceAdapter
from peftclip.errors import PeftClipError

PEFT_ADAPTER_NAME = "default"


class LoRATensors(nn.Module):
    """The trainable part of one peft LoRA layer (shared with the layer, not copied)."""

    def __init__(self, layer) -> None:
        super().__init__()
        self.A = layer.lora_A[PEFT_ADAPTER_NAME]
        self.B = layer.lora_B[PEFT_ADAPTER_NAME]
        # Registered here so the adapter's train()/eval() reaches it: the frozen CLIP around
        # the layer always stays in eval mode, but LoRA dropout must run while training.
        self.dropout = layer.lora_dropout[PEFT_ADAPTER_NAME]


class LoRA(WeightSpaceAdapter):
    """Low-rank adaptation ``W + scale·B A`` of the targeted Linear layers (peft).

    Defaults are the generic setting of the spec (r 16, α 16, α/r, all six layer kinds, both
    towers); ``recipes/lora/`` carries CLIP-LoRA's (r 2, α 1, α/√r, q/k/v, dropout 0.25).

    Args:
        r: Rank.
        alpha: LoRA α.
        dropout: Dropout on the LoRA input (training only).
        scaling: ``alpha/r`` (peft's default) or ``alpha/sqrt(r)`` (rsLoRA; CLIP-LoRA).
        towers: ``vision``, ``text`` or ``both``.
        layers: Layer kinds among ``q, k, v, o, c_fc, c_proj``.
        blocks: Block indices (``None``: all).
    """

    def __init__(
        self,
        r: int = 16,
        alpha: float = 16.0,
        dropout: float = 0.0,
        scaling: Literal["alpha/r", "alpha/sqrt(r)"] = "alpha/r",
        towers: Tower = "both",
        layers: Sequence[str] = LAYER_KINDS,
        blocks: Sequence[int] | None = None,
    ) -> None:
        super().__init__(towers, layers, blocks)
        if r < 1:
            raise PeftClipError(f"LoRA rank r must be at least 1, got {r}.")
        self.r, self.alpha, self.dropout, self.scaling = r, alpha, dropout, scaling
        self.peft_config: LoraConfig | None = None

    def _adapt(self, targets: list[LinearTarget]) -> None:
        self.peft_config = LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            use_rslora=self.scaling == "alpha/sqrt(r)",
            # A full-match regex: peft matches a list of names by suffix, which would let
            # "transformer.resblocks.0.attn.q" also catch the vision tower's layer.
            target_modules="|".join(re.escape(target.path) for target in targets),
            init_lora_weights=True,  # A kaiming-uniform (a = √5), B = 0: identity at init
        )
        inject_adapter_in_model(self.peft_config, self._model(), PEFT_ADAPTER_NAME)
        for target in targets:
            self.sites[target.key] = LoRATensors(target.module)

    def attach(self, backbone) -> None:
        if getattr(backbone.model, "peft_config", None):
            raise PeftClipError(
                "this backbone already carries a peft LoRA adapter; compose at most one lora "
                "adapter (one adapter can target several towers, layer kinds and blocks)."
            )
        # A plain reference (not a submodule): the adapter must never own the frozen CLIP.
        self._model_ref = (backbone.model,)
        super().attach(backbone)

    def _model(self) -> nn.Module:
        return self._model_ref[0]

    def _merge(self, target: LinearTarget) -> nn.Linear:
        layer = target.module
        layer.merge()  # peft: W ← W + scale·B A, in place
        return layer.get_base_layer()

    def _unmerge(self, target: LinearTarget, adapted: nn.Module) -> None:
        adapted.unmerge()  # peft: W ← W − scale·B A

    def peft_state_dict(self) -> dict:
        """The LoRA tensors in peft's adapter format (keys relative to the open_clip model)."""
        return get_peft_model_state_dict(self._model(), adapter_name=PEFT_ADAPTER_NAME)


register_adapter("lora", LoRA)
