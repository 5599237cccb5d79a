"""CoOp: learnable context vectors in front of the class name (Zhou et al., IJCV 2022).

Semantics: docs/methods/coop.md. Only the context ``ctx`` (M × text width) is trainable. The
class-dependent pieces (token embeddings of SOT and of the class name + "." + EOT, the EOT
index) are rebuilt for whatever class set is evaluated, so a prompt trained on base classes
evaluates on new ones; they are never saved.

Word init follows the official code (KaiyangZhou/CoOp ``trainers/coop.py``): M is the number of
*words* of ``ctx_init``, the first M token embeddings of the string are learned and any further
tokens of the string stay frozen in the prompt. "an X-ray photo of a" is 5 words but 7 BPE tokens
(``an x - ray photo of a``): ``an x - ray photo`` are learned, ``of a`` stay frozen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from peftclip.adapters.base import Adapter, TextInput
from peftclip.adapters.registry import register_adapter
from peftclip.backbone import FrozenClip
from peftclip.backbone.shared_prefix import common_token_prefix
from peftclip.errors import PeftClipError


def normalize_ctx_init(ctx_init: str) -> str:
    """The init string as the official code reads it: ``_`` means a space, words split on spaces.

    Runs of whitespace collapse to one space (the official ``split(" ")`` would count empty
    words there and learn EOT and padding embeddings).
    """
    return " ".join(ctx_init.replace("_", " ").split())


def leading_token_embeddings(backbone: FrozenClip, text: str, count: int) -> torch.Tensor:
    """The frozen token embeddings of the first ``count`` tokens of ``text`` (after SOT).

    Raises:
        PeftClipError: ``text`` has fewer than ``count`` tokens under the backbone's tokenizer
            (e.g. the world model's word tokenizer drops a lone "-").
    """
    tokens = backbone.tokenize([text])
    available = int(backbone.pool_index(tokens)[0]) - 1
    if count > available:
        raise PeftClipError(
            f"the context needs {count} token embeddings of ctx_init '{text}', but the tokenizer "
            f"of '{backbone.identity.model_name}' splits it into only {available} tokens; give a "
            "longer ctx_init, fewer context vectors, or no ctx_init (random init)."
        )
    with torch.no_grad():
        return backbone.token_embeddings(tokens)[0, 1 : 1 + count].clone()


class CoOp(Adapter):
    """Context optimization: one context shared by all classes, or one per class (CSC).

    Args:
        n_ctx: Number of context vectors M (ignored when ``ctx_init`` is given).
        ctx_init: Words to initialise the context from, e.g. ``"a photo of a"`` (``_`` reads as
            a space). As in the official code, M becomes their *word* count, the first M token
            embeddings of the string are learned and its remaining tokens stay frozen in the
            prompt; CSC is ignored. Empty: random ``N(0, 0.02²)`` init.
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
        self.ctx_init = normalize_ctx_init(ctx_init)
        # The official rule: `n_ctx = len(ctx_init.split(" "))`, words, not tokens.
        self.n_ctx = len(self.ctx_init.split(" ")) if self.ctx_init else n_ctx
        self.class_token_position = class_token_position
        self.csc, self.n_classes = csc and not self.ctx_init, n_classes
        if self.csc and not n_classes:
            raise PeftClipError("CoOp with csc: true needs n_classes (the dataset's class count).")
        self.ctx: nn.Parameter | None = None
        self._class_buffers: tuple[tuple, dict[str, torch.Tensor]] | None = None

    def attach(self, backbone: FrozenClip) -> None:
        self._attach_context(backbone)

    def _attach_context(self, backbone: FrozenClip) -> None:
        """``ctx``: the first M token embeddings of ``ctx_init``, or ``N(0, 0.02²)``."""
        if self.ctx_init:
            init = leading_token_embeddings(backbone, self.ctx_init, self.n_ctx)
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
        prefix_length = int(backbone.pool_index(backbone.tokenize([self._prompt_prefix()]))[0]) - 1
        with torch.no_grad():
            embeddings = backbone.token_embeddings(tokens)
        buffers = {
            "prefix": embeddings[:, :1],
            # The frozen init tokens after the M learned ones (if any), class, ".", EOT, padding.
            "suffix": embeddings[:, 1 + self.n_ctx :],
            "pool_index": backbone.pool_index(tokens),
            "name_lengths": name_lengths,
            "frozen_init_length": prefix_length - self.n_ctx,
            # Leading positions whose token is the same in every prompt: [SOS], the context
            # placeholders, frozen init words (and any first word all class names share).
            "common_tokens": common_token_prefix(tokens),
        }
        self._class_buffers = (key, buffers)
        return buffers

    def _shared_prefix(self, buffers: dict[str, torch.Tensor]) -> int:
        """Rows every class prompt shares with the class token at the end: those of identical
        tokens, where the learned positions hold the one context (with CSC, none)."""
        return 0 if self.csc else buffers["common_tokens"]

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
            embeddings = torch.cat([prefix, ctx, suffix], dim=1)
            return TextInput(embeddings, buffers["pool_index"], self._shared_prefix(buffers))
        # The frozen init tokens travel with the context (the official code has no rule here: it
        # would cut them as if they were the class name).
        frozen, half = buffers["frozen_init_length"], self.n_ctx // 2
        rows = []
        for index, length in enumerate(buffers["name_lengths"].tolist()):
            words = suffix[index, :frozen]
            name, rest = suffix[index, frozen : frozen + length], suffix[index, frozen + length :]
            own = ctx[index]
            if self.class_token_position == "middle":
                pieces = [prefix[index], own[:half], name, own[half:], words, rest]
            else:  # front
                pieces = [prefix[index], name, own, words, rest]
            rows.append(torch.cat(pieces))
        return TextInput(torch.stack(rows), buffers["pool_index"])


register_adapter("coop", CoOp)
