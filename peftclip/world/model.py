"""The tiny world CLIP ``peftclip-world-tiny``: its open_clip config, tokenizer and weights.

Registered with the backbone (:func:`peftclip.backbone.register_model`) from here, the package
that owns it: ``load_backbone("peftclip-world-tiny", pretrained="world")`` then builds it with
its word tokenizer and the weights shipped in ``peftclip/world/weights/``.
"""

from __future__ import annotations

from pathlib import Path

from peftclip.backbone.models import register_model
from peftclip.world.tokenizer import WordTokenizer

MODEL_NAME = "peftclip-world-tiny"
CONFIG_FILE = Path(__file__).parent / "config" / f"{MODEL_NAME}.json"
#: The shipped checkpoint (``pretrained: world``); ``peftclip world pretrain`` rewrites it.
SHIPPED_WEIGHTS = Path(__file__).parent / "weights" / f"{MODEL_NAME}.safetensors"

register_model(MODEL_NAME, CONFIG_FILE, WordTokenizer, {"world": SHIPPED_WEIGHTS})
