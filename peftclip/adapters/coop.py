"""CoOp: learnable context vectors in front of the class name (Zhou et al., IJCV 2022).

Semantics: specs/methods.md §3. Only the context ``ctx`` (M × text width) is trainable. The
class-dependent pieces (token embeddings of SOT and of the class name + "." + EOT, the EOT
index) are rebuilt for whatever class set is evaluated, so a prompt trained on base classes
evaluates on new ones; they are never saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from peftclip.adapters.base import Adapter, TextInput
from peftclip.adapters.registry import register_adapter
from peftclip.backbone import FrozenClip
from peftclip.errors import PeftClipError


class CoOp(Adapter):
    """Context optimization: one context shared by all classes, or one per class (CSC).

    Args:
        n_ctx: Number of context vectors M (ignored when ``ctx_init`` is given).
        ctx_init: Words to initialise the context from, e.g. ``"a photo of a"``; M becomes
            their token count and CSC is ignored (the anchor's behaviour). Empty: random
            ``N(0, 0.02²)`` init.
        class_token_position: Where the class name goes: ``end``, ``middle`` or ``front``.
        csc: Class-specific context: ``n_classes`` contexts of M vectors each. It is tied to
            one class set, so it cannot be evaluated on other classes.
        n_classes: Number of classes of the dataset (needed with ``csc``).
    """

    clip_dtype_tensors = ("ctx",)  # the anchor builds ctx in clip_model.dtype

    def __init__(
        self,
        n_ctx: int = 16,
        ctx_init: str = "",
        class_token_position: Literal["end", "middle", "front"] = "end",
        csc: bool = False,
        n_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.n_ctx = n_ctx
        self.ctx_init = ctx_init.strip()
        self.class_token_position = class_token_position
        self.csc, self.n_classes = csc and not self.ctx_init, n_classes
        if self.csc and not n_classes:
            raise PeftClipError("CoOp with csc: true needs n_classes (the dataset's class count).")
        self.ctx: nn.Parameter | None = None
        self._class_buffers: tuple[tuple, dict[str, torch.Tensor]] | None = None

    def attach(self, backbone: FrozenClip) -> None:
        if self.ctx_init:
            tokens = backbone.tokenize([self.ctx_init])
            self.n_ctx = int(backbone.pool_index(tokens)[0]) - 1
            with torch.no_grad():
                init = backbone.token_embeddings(tokens)[0, 1 : 1 + self.n_ctx].clone()
        elif self.csc:
            init = torch.randn(self.n_classes, self.n_ctx, backbone.text_width) * 0.02
        else:
            init = torch.randn(self.n_ctx, backbone.text_width) * 0.02
        self.ctx = nn.Parameter(init.float())

    def _prompt_prefix(self) -> str:
        return self.ctx_init or " ".join(["X"] * self.n_ctx)

    def _class_tensors(
        self, backbone: FrozenClip, classnames: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        key = (tuple(classnames), backbone.model.token_embedding.weight.device)
        if self._class_buffers is not None and self._class_buffers[0] == key:
            return self._class_buffers[1]
        names = [name.replace("_", " ") for name in classnames]
        tokens = backbone.tokenize([f"{self._prompt_prefix()} {name}." for name in names])
        name_lengths = backbone.pool_index(backbone.tokenize(names)) - 1
        with torch.no_grad():
            embeddings = backbone.token_embeddings(tokens)
        buffers = {
            "prefix": embeddings[:, :1],
            "suffix": embeddings[:, 1 + self.n_ctx :],
            "pool_index": backbone.pool_index(tokens),
            "name_lengths": name_lengths,
        }
        self._class_buffers = (key, buffers)
        return buffers

    def text_input(
        self,
        backbone: FrozenClip,
        classnames: Sequence[str],
        image_features: torch.Tensor | None = None,
    ) -> TextInput:
        buffers = self._class_tensors(backbone, classnames)
        prefix, suffix = buffers["prefix"], buffers["suffix"]
        ctx = self.ctx.to(prefix.dtype)
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(len(prefix), -1, -1)
        elif len(ctx) != len(prefix):
            raise PeftClipError(
                f"this class-specific context was made for {len(ctx)} classes and cannot "
                f"classify {len(prefix)}; CSC does not transfer to other class sets."
            )
        if self.class_token_position == "end":
            return TextInput(torch.cat([prefix, ctx, suffix], dim=1), buffers["pool_index"])
        half = self.n_ctx // 2
        rows = []
        for index, length in enumerate(buffers["name_lengths"].tolist()):
            name, rest = suffix[index, :length], suffix[index, length:]
            own = ctx[index]
            if self.class_token_position == "middle":
                pieces = [prefix[index], own[:half], name, own[half:], rest]
            else:  # front
                pieces = [prefix[index], name, own, rest]
            rows.append(torch.cat(pieces))
        return TextInput(torch.stack(rows), buffers["pool_index"])


register_adapter("coop", CoOp)
