"""Precision profiles: peftclip's ``modern`` default and the CoOp family's ``anchor_fp16``.

Semantics: docs/methods/index.md#precision-profiles; ``anchor_fp16`` is the CoOp family's
reproduction switch (the method pages, e.g. docs/methods/coop.md).

* ``modern`` (default): every weight fp32; the trainer's precision decides the rest (recipes use
  Lightning ``16-mixed``: fp16 autocast and a gradient scaler).
* ``anchor_fp16``: the layout of the CoOp / CoCoOp / MaPLe / IVLP reference code, which runs
  OpenAI CLIP after its ``convert_weights``. Conv / Linear weights and biases (so the split
  q/k/v/o attention projections), ``text_projection`` and the visual ``proj`` are fp16; token,
  positional and class embeddings, LayerNorm parameters and ``logit_scale`` stay fp32, and every
  LayerNorm computes in fp32 and casts back to its input dtype. The adapter tensors that the
  anchor creates in CLIP's dtype (each adapter lists them in ``clip_dtype_tensors``) become fp16
  *parameters*: plain SGD updates them in fp16, with no fp32 master copy and no loss scaling,
  so the trainer must run ``32-true`` (no autocast, no scaler). All other adapter parameters
  stay fp32 and are cast to fp16 where they enter the encoders (e.g. MaPLe's deep prompts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from open_clip.transformer import LayerNormFp32
from torch import nn

from peftclip.adapters import Adapter
from peftclip.backbone import FrozenClip
from peftclip.errors import PeftClipError

PrecisionProfile = Literal["modern", "anchor_fp16"]
PROFILES: tuple[str, ...] = get_args(PrecisionProfile)
#: CLIP's dtype under ``anchor_fp16`` (OpenAI's ``convert_weights``).
ANCHOR_DTYPE = torch.float16
#: The only Lightning precision that neither autocasts nor scales nor converts the module.
ANCHOR_TRAINER_PRECISION = "32-true"
#: MultiheadAttention tensors that ``convert_weights`` converts (its ``out_proj`` is a Linear).
_ATTENTION_TENSORS = (
    "in_proj_weight",
    "q_proj_weight",
    "k_proj_weight",
    "v_proj_weight",
    "in_proj_bias",
    "bias_k",
    "bias_v",
)


def check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise PeftClipError(
            f"unknown precision_profile '{profile}'; choose one of {', '.join(PROFILES)}."
        )


def apply_precision_profile(
    backbone: FrozenClip, adapters: Sequence[Adapter], profile: str
) -> None:
    """Puts ``backbone`` and its attached ``adapters`` in the layout of ``profile`` (in place)."""
    check_profile(profile)
    if profile == "anchor_fp16":
        convert_to_anchor_fp16(backbone, adapters)


def check_trainer_precision(profile: str, trainer_precision: str) -> None:
    """Refuses a trainer precision that would autocast, scale or convert ``anchor_fp16``."""
    if profile == "anchor_fp16" and str(trainer_precision) != ANCHOR_TRAINER_PRECISION:
        raise PeftClipError(
            f"precision_profile anchor_fp16 trains fp16 parameters with plain SGD and no "
            f"autocast or gradient scaler (as the CoOp-family reference code does), so it needs "
            f"--trainer.precision {ANCHOR_TRAINER_PRECISION}; this trainer runs "
            f"'{trainer_precision}'. Set --trainer.precision {ANCHOR_TRAINER_PRECISION}, or keep "
            "precision_profile modern for mixed precision."
        )


def convert_to_anchor_fp16(backbone: FrozenClip, adapters: Sequence[Adapter] = ()) -> None:
    """Converts a frozen CLIP and its attached adapters to the ``anchor_fp16`` layout, in place.

    Parameters keep their identity (only their data changes dtype), so references held by
    adapters stay valid. Call it after the adapters are attached and before the optimizer is
    built. Adapters without ``clip_dtype_tensors`` (weight-space methods, whose anchors use
    autocast) are refused.
    """
    unsupported = [
        adapter.name or type(adapter).__name__
        for adapter in adapters
        if adapter.clip_dtype_tensors is None
    ]
    if unsupported:
        raise PeftClipError(
            f"precision_profile anchor_fp16 is the CoOp family's layout (coop, cocoop, maple, "
            f"ivlp, vpt_deep); {', '.join(unsupported)} has none. Use precision_profile modern "
            "(their faithful setting is fp16 autocast: --trainer.precision 16-mixed)."
        )
    convert_clip_weights(backbone.model)
    layer_norms_in_fp32(backbone.model)
    for adapter in adapters:
        for name in adapter.clip_dtype_tensors:
            _to_dtype(getattr(adapter, name), ANCHOR_DTYPE)


def convert_clip_weights(model: nn.Module, dtype: torch.dtype = ANCHOR_DTYPE) -> None:
    """OpenAI CLIP's ``convert_weights``: Conv/Linear/attention projections and the two output
    projections to ``dtype``; embeddings, norms and ``logit_scale`` are left as they are."""
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            _to_dtype(module.weight, dtype)
            _to_dtype(module.bias, dtype)
        if isinstance(module, nn.MultiheadAttention):
            for name in _ATTENTION_TENSORS:
                _to_dtype(getattr(module, name, None), dtype)
        for name in ("text_projection", "proj"):
            projection = getattr(module, name, None)
            if isinstance(projection, nn.Parameter):
                _to_dtype(projection, dtype)


def layer_norms_in_fp32(model: nn.Module) -> int:
    """Replaces every ``nn.LayerNorm`` by open_clip's ``LayerNormFp32`` (same parameters): it
    normalizes in fp32 and casts back to the input dtype, like OpenAI CLIP's ``LayerNorm``.

    Returns:
        The number of LayerNorm modules replaced.
    """
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.LayerNorm) and not isinstance(child, LayerNormFp32)
    ]
    for parent, name, norm in targets:
        fp32 = LayerNormFp32(
            norm.normalized_shape,
            eps=norm.eps,
            elementwise_affine=norm.elementwise_affine,
            bias=norm.bias is not None,
            device=norm.weight.device if norm.weight is not None else None,
        )
        fp32.weight, fp32.bias = norm.weight, norm.bias  # the very same (frozen) parameters
        setattr(parent, name, fp32.train(norm.training))
    return len(targets)


def _to_dtype(item: nn.Module | torch.Tensor | None, dtype: torch.dtype) -> None:
    if item is None:
        return
    if isinstance(item, nn.Module):
        item.to(dtype)
    elif item.is_floating_point():
        item.data = item.data.to(dtype)
