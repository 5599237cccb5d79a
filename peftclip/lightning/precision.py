"""Lightning precision plugins for anchor quirks that Lightning's precision flags cannot express."""

from __future__ import annotations

import torch
from lightning.pytorch.plugins.precision import MixedPrecision


class UnscaledMixedPrecision(MixedPrecision):
    """fp16 autocast **without** a gradient scaler, as CLIP-SVD's reference code trains
    (a reproduction switch of docs/methods/clip_svd.md).

    Use it instead of ``precision: 16-mixed``::

        trainer:
          precision: null
          plugins: [{class_path: peftclip.lightning.UnscaledMixedPrecision}]

    Args:
        device: Device type of the autocast region (``cuda``, or ``cpu`` for tests).
    """

    def __init__(self, device: str = "cuda") -> None:
        super().__init__("16-mixed", device, scaler=torch.amp.GradScaler(device, enabled=False))
