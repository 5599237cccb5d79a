"""CLIP-SVD: fine-tune only the singular values of CLIP's weights (HealthX-Lab/CLIP-SVD).

Semantics: specs/methods.md §7. Every targeted Linear ``W = U diag(σ) Vᵀ`` (thin SVD, nothing
truncated) computes ``y = x V diag(s) Uᵀ + b`` with ``s`` initialised to ``σ``; only ``s`` is
trainable (92,160 scalars on ViT-B/16 with the default 144 targets).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from rich.progress import track
from torch import nn

from peftclip.adapters.registry import register_adapter
from peftclip.adapters.targets import LAYER_KINDS, LinearTarget, Tower
from peftclip.adapters.weight_space import WeightSpaceAdapter


class SingularValueLinear(nn.Module):
    """A Linear layer re-expressed as ``U diag(s) Vᵀ`` with trainable singular values ``s``.

    ``U``, ``V`` and the bias are frozen, non-persistent buffers: they are recomputed from the
    pretrained weight, so checkpoints hold ``s`` only.

    Args:
        linear: The pretrained layer.
        svd_dtype: Precision of the decomposition (the factors are stored in fp32).
        factorized: Compute ``((x V) ⊙ s) Uᵀ + b`` like the anchor instead of materializing
            ``W(s)`` once per call (same result; materializing is cheaper for ViT batches).
    """

    def __init__(
        self, linear: nn.Linear, svd_dtype: torch.dtype = torch.float64, factorized: bool = False
    ) -> None:
        super().__init__()
        weight = linear.weight.detach()
        # On a GPU when there is one: 144 ViT-B decompositions take minutes on a small CPU.
        device = "cuda" if torch.cuda.is_available() else weight.device
        u, sigma, vh = torch.linalg.svd(weight.to(device, svd_dtype), full_matrices=False)
        u, sigma, vh = (t.to(weight.device) for t in (u, sigma, vh))
        self.register_buffer("U", u.float().contiguous(), persistent=False)  # (out, k)
        self.register_buffer("Vh", vh.float().contiguous(), persistent=False)  # (k, in)
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)
        self.s = nn.Parameter(sigma.float())
        self.factorized = factorized
        self._frozen_weight: tuple[tuple, torch.Tensor] | None = None

    @property
    def in_features(self) -> int:
        return self.Vh.shape[1]

    @property
    def out_features(self) -> int:
        return self.U.shape[0]

    @property
    def weight(self) -> torch.Tensor:
        """``U diag(s) Vᵀ`` ``(out, in)`` (a property, like ``nn.Linear.weight``)."""
        if torch.is_grad_enabled():
            return (self.U * self.s) @ self.Vh
        # Evaluation: rebuild W(s) only when s changed (every in-place update bumps _version).
        version = (self.s._version, self.s.device)
        if self._frozen_weight is None or self._frozen_weight[0] != version:
            self._frozen_weight = (version, (self.U * self.s) @ self.Vh)
        return self._frozen_weight[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.factorized:
            return F.linear(F.linear(x, self.Vh) * self.s, self.U, self.bias)
        return F.linear(x, self.weight, self.bias)


class ClipSVD(WeightSpaceAdapter):
    """Singular-value fine-tuning of the targeted Linear layers of both towers.

    Args:
        towers: ``vision``, ``text`` or ``both`` (paper: both).
        layers: Layer kinds (paper: all six — q, k, v, o, c_fc, c_proj).
        blocks: Block indices (paper: all).
        svd_dtype: ``float64`` (peftclip) or ``float32`` (the anchor's ``torch.svd``; faithful).
        factorized: Run the anchor's factorized forward instead of materializing ``W(s)``.
    """

    def __init__(
        self,
        towers: Tower = "both",
        layers: Sequence[str] = LAYER_KINDS,
        blocks: Sequence[int] | None = None,
        svd_dtype: Literal["float64", "float32"] = "float64",
        factorized: bool = False,
    ) -> None:
        super().__init__(towers, layers, blocks)
        self.svd_dtype = svd_dtype
        self.factorized = factorized

    def _adapt(self, targets: list[LinearTarget]) -> None:
        dtype = getattr(torch, self.svd_dtype)
        # A ViT-B/16 has 144 targets: seconds on a GPU, minutes on a small CPU.
        large = sum(target.module.weight.numel() for target in targets) > 10_000_000
        for target in track(
            targets, description="CLIP-SVD: decomposing weights", transient=True, disable=not large
        ):
            layer = SingularValueLinear(target.module, dtype, self.factorized)
            self.sites[target.key] = layer
            target.replace(layer)

    def _merge(self, target: LinearTarget) -> nn.Linear:
        layer: SingularValueLinear = target.module
        merged = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        with torch.no_grad():
            merged.weight.copy_(layer.weight)
            if layer.bias is not None:
                merged.bias.copy_(layer.bias)
        return merged.requires_grad_(False).to(layer.s.device)


register_adapter("clip_svd", ClipSVD)
