"""The world model's word-level tokenizer, behind open_clip's tokenizer interface.

Ids: 0 = padding, 1 = unknown word, 2… = ``WORDS``, then SOT and EOT, so EOT has the largest
id and the EOT position is the argmax of the token ids, as for CLIP's BPE tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

#: The fixed vocabulary (its order is part of the shipped checkpoint: append, never reorder).
#: Caption words, plus words only downstream prompts use (never trained in pretraining).
WORDS: tuple[str, ...] = (
    "a", "an", "at", "background", "blue", "bottom", "center", "circle", "circles",
    "crescent", "crescents", "cross", "crosses", "cyan", "dark", "diamond", "diamonds",
    "dotted", "drawing", "gradient", "green", "hexagon", "hexagons", "image", "in", "large",
    "left", "light", "of", "on", "orange", "picture", "pink", "plus", "pluses", "purple",
    "red", "rendering", "right", "ring", "rings", "scene", "small", "square", "squares",
    "star", "stars", "striped", "the", "three", "top", "triangle", "triangles", "two",
    "with", "yellow",
    # Downstream-only words.
    "photo", "x", ".", ",", "one", "object", "shape", "colour", "color", "size", "count",
    "type", "kind", "is", "this", "big", "tiny",
)  # fmt: skip
PAD, UNK = 0, 1
_SPLIT = re.compile(r"[a-z]+|[.,]")


class WordTokenizer:
    """Lower-cases, splits words and ``.``/``,``, maps unknown words to UNK, pads to length.

    Args:
        context_length: Tokens per sequence including SOT and EOT.
    """

    def __init__(self, context_length: int = 24) -> None:
        self.context_length = context_length
        self.word_ids = {word: index + 2 for index, word in enumerate(WORDS)}
        self.sot_token_id = len(WORDS) + 2
        self.eot_token_id = len(WORDS) + 3
        self.vocab_size = len(WORDS) + 4

    def encode(self, text: str) -> list[int]:
        return [self.word_ids.get(word, UNK) for word in _SPLIT.findall(text.lower())]

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None
    ) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        tokens = torch.full((len(texts), length), PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text)[: length - 2], self.eot_token_id]
            tokens[row, : len(ids)] = torch.tensor(ids)
        return tokens
