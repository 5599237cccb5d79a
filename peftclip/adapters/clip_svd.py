"""CLIP-SVD: fine-tune only the singular values of CLIP's weights (HealthX-Lab/CLIP-SVD).

Semantics: docs/methods/clip_svd.md. Every targeted Linear ``W = U diag(σ) Vᵀ`` (thin SVD, nothing
truncated) computes ``y = x V diag(s) Uᵀ + b`` with ``s`` initialised to ``σ``; only ``s`` is
trainable (92,160 scalars on ViT-B/16 with the default 144 targets).

The 144 decompositions of a ViT-B/16 take minutes on a small CPU, so the factors are cached on
disk, one file per layer, keyed by everything that determines them (see :class:`SvdFactorCache`).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from rich.progress import track
from safetensors.torch import load_file, save_file
from torch import nn

from peftclip.adapters.registry import register_adapter
from peftclip.adapters.targets import LAYER_KINDS, LinearTarget, Tower
from peftclip.adapters.weight_space import WeightSpaceAdapter
from peftclip.atomic_files import atomic_path
from peftclip.backbone import FrozenClip


class SvdFactors(NamedTuple):
    """Thin SVD ``W = U diag(S) Vh`` of one weight, in fp32 on the weight's device."""

    U: torch.Tensor  # (out, k)
    S: torch.Tensor  # (k,)
    Vh: torch.Tensor  # (k, in)


def decompose(
    weight: torch.Tensor, svd_dtype: torch.dtype, device: torch.device | None = None
) -> SvdFactors:
    """Thin SVD of ``weight`` computed in ``svd_dtype`` on ``device`` (default: the weight's).

    The factors come back in fp32 on the weight's device.
    """
    device = weight.device if device is None else torch.device(device)
    u, sigma, vh = torch.linalg.svd(weight.detach().to(device, svd_dtype), full_matrices=False)
    return SvdFactors(*(t.to(weight.device, torch.float32).contiguous() for t in (u, sigma, vh)))


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/peftclip/svd``, or ``~/.cache/peftclip/svd`` without XDG_CACHE_HOME."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "peftclip" / "svd"


class SvdFactorCache:
    """SVD factors on disk: one safetensors file per layer, written atomically.

    A file is named by the SHA-256 of what determines the factors: the backbone's weights hash,
    the layer, its shape and dtype, the SVD dtype, the device type that decomposes and the torch
    version (another LAPACK gives other rounding). A loaded file is checked against the layer
    (names, shapes, dtypes, and ``U diag(S) Vh x ≈ W x`` for a fixed probe ``x``); a file that
    fails is recomputed with a warning. ViT-B/16 with all 144 targets takes about 0.7 GB.

    Args:
        directory: Where the files live (created on first write).
    """

    format_version = 1

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()

    def path(self, description: dict) -> Path:
        payload = json.dumps({"format": self.format_version, **description}, sort_keys=True)
        return self.directory / f"{hashlib.sha256(payload.encode()).hexdigest()}.safetensors"

    def load(self, path: Path, weight: torch.Tensor) -> SvdFactors | None:
        """The factors stored at ``path`` if they decompose ``weight``; else ``None``."""
        if not path.is_file():
            return None
        try:
            factors = SvdFactors(**load_file(path, device=str(weight.device)))
            problem = _mismatch(factors, weight)
        except Exception as error:  # a torn or foreign file: any reader error means "recompute"
            problem = f"unreadable: {type(error).__name__}: {error}"
        if problem is None:
            return factors
        warnings.warn(
            f"CLIP-SVD cache file {path} does not match its layer ({problem}); recomputing it.",
            stacklevel=3,
        )
        return None

    def save(self, path: Path, factors: SvdFactors, description: dict) -> None:
        metadata = {"peftclip": json.dumps(description, sort_keys=True)}
        tensors = {name: tensor.cpu() for name, tensor in factors._asdict().items()}
        with atomic_path(path) as partial:
            save_file(tensors, partial, metadata=metadata)


def _mismatch(factors: SvdFactors, weight: torch.Tensor) -> str | None:
    """Why ``factors`` are not a thin SVD of ``weight`` (``None`` when they are)."""
    out_features, in_features = weight.shape
    rank = min(out_features, in_features)
    expected = {"U": (out_features, rank), "S": (rank,), "Vh": (rank, in_features)}
    for name, shape in expected.items():
        tensor = getattr(factors, name)
        if tuple(tensor.shape) != shape or tensor.dtype != torch.float32:
            return f"{name} is {tuple(tensor.shape)} {tensor.dtype}, expected {shape} float32"
    # One matrix-vector product per layer: cheap, and no other weight passes it.
    probe = torch.randn(
        in_features, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    ).to(weight.device)
    u, sigma, vh = (t.double() for t in factors)
    reconstructed = u @ (sigma[:, None] * (vh @ probe))
    reference = weight.detach().double() @ probe
    error = (reconstructed - reference).norm() / reference.norm().clamp_min(1e-30)
    if not error <= 1e-4:  # also catches NaN
        return f"U diag(S) Vh differs from the weight by {float(error):.1e} (relative)"
    return None


class SingularValueLinear(nn.Module):
    """A Linear layer re-expressed as ``U diag(s) Vᵀ`` with trainable singular values ``s``.

    ``U``, ``V`` and the bias are frozen, non-persistent buffers: they are recomputed (or
    reloaded) from the pretrained weight, so checkpoints hold ``s`` only.

    Args:
        linear: The pretrained layer.
        factors: The thin SVD of ``linear.weight`` (:func:`decompose`).
        factorized: Compute ``((x V) ⊙ s) Uᵀ + b`` like the anchor instead of materializing
            ``W(s)`` (same result; materializing is cheaper for ViT batches).

    ``W(s)`` is built once per step, not once per call: inside :func:`one_weight_per_step` (the
    classifier's forward) every call reuses the same ``W(s)`` tensor, and the backward sums the
    gradients of all its uses before the one backward of ``U diag(s) Vᵀ`` — the same gradient
    as building it per call. A layer is called more than once per step when the text tower
    encodes a shared prompt prefix and the class tails separately, or the classes in chunks.
    """

    def __init__(self, linear: nn.Linear, factors: SvdFactors, factorized: bool = False) -> None:
        super().__init__()
        self.register_buffer("U", factors.U, persistent=False)  # (out, k)
        self.register_buffer("Vh", factors.Vh, persistent=False)  # (k, in)
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)
        self.s = nn.Parameter(factors.S.clone())
        self.factorized = factorized
        self._frozen_weight: tuple[tuple, torch.Tensor] | None = None
        self._step_weight: tuple[tuple, torch.Tensor] | None = None
        self.step_scopes = 0  # open one_weight_per_step blocks

    @property
    def in_features(self) -> int:
        return self.Vh.shape[1]

    @property
    def out_features(self) -> int:
        return self.U.shape[0]

    @property
    def weight(self) -> torch.Tensor:
        """``U diag(s) Vᵀ`` ``(out, in)`` (a property, like ``nn.Linear.weight``)."""
        version = (self.s._version, self.s.device)
        if torch.is_grad_enabled():
            if not self.step_scopes:
                return (self.U * self.s) @ self.Vh
            if self._step_weight is None or self._step_weight[0] != version:
                self._step_weight = (version, (self.U * self.s) @ self.Vh)
            return self._step_weight[1]
        # Evaluation: rebuild W(s) only when s changed (every in-place update bumps _version).
        if self._frozen_weight is None or self._frozen_weight[0] != version:
            self._frozen_weight = (version, (self.U * self.s) @ self.Vh)
        return self._frozen_weight[1]

    def end_step(self) -> None:
        """Forgets the step's ``W(s)`` (its autograd graph belongs to that step's backward)."""
        self._step_weight = None

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
        svd_device: Where to decompose, e.g. ``cuda`` (seconds instead of minutes for a first
            ViT-B build on a small CPU). Default: where the weights are.
        cache: Keep the factors on disk so the next build with the same weights, layers and
            SVD dtype loads them instead of decomposing (:class:`SvdFactorCache`).
        cache_dir: The cache folder (default: ``$XDG_CACHE_HOME/peftclip/svd``, i.e.
            ``~/.cache/peftclip/svd``).
    """

    def __init__(
        self,
        towers: Tower = "both",
        layers: Sequence[str] = LAYER_KINDS,
        blocks: Sequence[int] | None = None,
        svd_dtype: Literal["float64", "float32"] = "float64",
        factorized: bool = False,
        svd_device: str | None = None,
        cache: bool = True,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(towers, layers, blocks)
        self.svd_dtype = svd_dtype
        self.factorized = factorized
        self.svd_device = svd_device
        self.cache = cache
        self.cache_dir = cache_dir
        self._weights_sha256: str | None = None

    def attach(self, backbone: FrozenClip) -> None:
        self._weights_sha256 = backbone.identity.weights_sha256
        super().attach(backbone)

    def _adapt(self, targets: list[LinearTarget]) -> None:
        dtype = getattr(torch, self.svd_dtype)
        cache = self._factor_cache()
        factors: dict[str, SvdFactors] = {}
        if cache is not None:
            for target in targets:
                found = cache.load(cache.path(self._describe(target)), target.module.weight)
                if found is not None:
                    factors[target.key] = found
        missing = [target for target in targets if target.key not in factors]
        # A ViT-B/16 has 144 targets: seconds on a GPU, minutes on a small CPU.
        large = sum(target.module.weight.numel() for target in missing) > 10_000_000
        for target in track(
            missing, description="CLIP-SVD: decomposing weights", transient=True, disable=not large
        ):
            factors[target.key] = decompose(target.module.weight, dtype, self.svd_device)
            if cache is not None:
                description = self._describe(target)
                cache.save(cache.path(description), factors[target.key], description)
        for target in targets:
            layer = SingularValueLinear(target.module, factors[target.key], self.factorized)
            self.sites[target.key] = layer
            target.replace(layer)

    def _factor_cache(self) -> SvdFactorCache | None:
        if not self.cache or not self._weights_sha256:
            return None
        return SvdFactorCache(self.cache_dir or default_cache_dir())

    def _describe(self, target: LinearTarget) -> dict:
        """Everything the factors of ``target`` depend on (the cache key)."""
        weight = target.module.weight
        device = torch.device(self.svd_device) if self.svd_device else weight.device
        return {
            "weights_sha256": self._weights_sha256,
            "layer": target.path,
            "shape": list(weight.shape),
            "weight_dtype": str(weight.dtype),
            "svd_dtype": self.svd_dtype,
            "svd_device": device.type,
            "torch": torch.__version__,
        }

    def _merge(self, target: LinearTarget) -> nn.Linear:
        layer: SingularValueLinear = target.module
        merged = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        with torch.no_grad():
            merged.weight.copy_(layer.weight)
            if layer.bias is not None:
                merged.bias.copy_(layer.bias)
        return merged.requires_grad_(False).to(layer.s.device)


register_adapter("clip_svd", ClipSVD)
