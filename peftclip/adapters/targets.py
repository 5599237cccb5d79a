"""Which ``nn.Linear`` layers of the frozen CLIP a weight-space adapter targets.

After the attention split (``peftclip.backbone.attention``) every transformer block of both
towers has six plain Linear layers: ``attn.q``, ``attn.k``, ``attn.v``, ``attn.o``, ``mlp.c_fc``
and ``mlp.c_proj`` (docs/methods/clip_svd.md, docs/methods/lora.md, docs/methods/codyra.md). A
target is named by its tower, block index and layer kind; its short key (``text3_q``,
``vision11_c_fc``) names the adapter's tensors in checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from open_clip.transformer import VisionTransformer
from torch import nn

from peftclip.backbone import FrozenClip
from peftclip.errors import PeftClipError

LAYER_KINDS = ("q", "k", "v", "o", "c_fc", "c_proj")
Tower = Literal["vision", "text", "both"]


@dataclass(frozen=True)
class LinearTarget:
    """One targeted Linear: where it sits in the model and how it is named."""

    tower: str
    block: int
    kind: str
    parent: nn.Module
    attr: str

    @property
    def key(self) -> str:
        return f"{self.tower}{self.block}_{self.kind}"

    @property
    def path(self) -> str:
        tower = "visual.transformer" if self.tower == "vision" else "transformer"
        group = "attn" if self.kind in ("q", "k", "v", "o") else "mlp"
        return f"{tower}.resblocks.{self.block}.{group}.{self.kind}"

    @property
    def module(self) -> nn.Module:
        return getattr(self.parent, self.attr)

    def replace(self, module: nn.Module) -> None:
        setattr(self.parent, self.attr, module)


def find_targets(
    backbone: FrozenClip,
    towers: Tower = "both",
    layers: Sequence[str] = LAYER_KINDS,
    blocks: Sequence[int] | None = None,
) -> list[LinearTarget]:
    """The targeted Linear layers, vision tower first, blocks in order.

    Args:
        backbone: The frozen CLIP (attention already split).
        towers: ``vision``, ``text`` or ``both``.
        layers: Layer kinds among ``q, k, v, o, c_fc, c_proj``.
        blocks: Block indices (negative counts from the end); ``None``: every block.
    """
    unknown = [kind for kind in layers if kind not in LAYER_KINDS]
    if unknown or not layers:
        raise PeftClipError(
            f"unknown layer kinds {unknown or '(none given)'}; choose among {list(LAYER_KINDS)}."
        )
    if towers not in ("vision", "text", "both"):
        raise PeftClipError(f"towers must be 'vision', 'text' or 'both', not {towers!r}.")
    model = backbone.model
    chosen = {"vision": ["vision"], "text": ["text"], "both": ["vision", "text"]}[towers]
    if "vision" in chosen and not isinstance(model.visual, VisionTransformer):
        raise PeftClipError(
            f"'{backbone.identity.model_name}' has a {type(model.visual).__name__} image tower, "
            "which has no transformer blocks to adapt. Use towers: text, or a ViT model."
        )
    targets = []
    for tower in chosen:
        resblocks = (model.visual.transformer if tower == "vision" else model.transformer).resblocks
        depth = len(resblocks)
        indices = range(depth) if blocks is None else blocks
        for index in indices:
            if not -depth <= index < depth:
                raise PeftClipError(
                    f"block {index} does not exist: the {tower} tower of "
                    f"'{backbone.identity.model_name}' has {depth} blocks (0 … {depth - 1})."
                )
            block = resblocks[index % depth]
            for kind in LAYER_KINDS:  # canonical order, whatever order the recipe lists
                if kind in layers:
                    parent = block.attn if kind in ("q", "k", "v", "o") else block.mlp
                    targets.append(LinearTarget(tower, index % depth, kind, parent, kind))
    return targets
