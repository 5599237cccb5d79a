"""The official code's names of the adapters' tensors, and which setting sizes each dimension.

One table per method whose authors released checkpoints (CoOp, CoCoOp, MaPLe, CLIP-SVD): the
official checkpoint importer and exporter map names through it (peftclip.official_checkpoints),
and every checkpoint error for a tensor of another shape names the setting behind the differing
dimension from it (docs/checkpoints.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from peftclip.adapters.base import Adapter
from peftclip.adapters.clip_svd import ClipSVD
from peftclip.adapters.cocoop import CoCoOp
from peftclip.adapters.coop import CoOp
from peftclip.adapters.maple import MaPLe

_SVD_LAYER_NAMES = {
    "q": "attn.q_proj",
    "k": "attn.k_proj",
    "v": "attn.v_proj",
    "o": "attn.proj",
    "c_fc": "mlp.c_fc",
    "c_proj": "mlp.c_proj",
}


@dataclass(frozen=True)
class OfficialName:
    """One official tensor and the adapter tensor it is.

    ``dims`` names, per dimension of the adapter tensor, the setting that decides its size (what
    a shape error points at). CLIP-SVD stores a singular-value vector ``(k,)`` as ``(1, k)``.
    """

    official: str
    adapter: str
    dims: tuple[str, ...]
    row_vector: bool = False

    def official_shape(self, adapter_shape: torch.Size) -> tuple[int, ...]:
        return (1, *adapter_shape) if self.row_vector else tuple(adapter_shape)


# ---------------------------------------------------------------------------------- name tables
def _coop_links(adapter: CoOp) -> list[OfficialName]:
    context = "n_ctx (or the word count of ctx_init)"
    if adapter.ctx.dim() == 3:
        return [
            OfficialName(
                "ctx", "ctx", ("n_classes (csc: true)", context, "the backbone's text width")
            )
        ]
    return [OfficialName("ctx", "ctx", (context, "the backbone's text width"))]


def _cocoop_links(adapter: CoCoOp) -> list[OfficialName]:
    hidden, embed, text = "the backbone's embed dim / 16", "the backbone's embed dim", "text width"
    return [
        *_coop_links(adapter),
        OfficialName("meta_net.linear1.weight", "meta_net.0.weight", (hidden, embed)),
        OfficialName("meta_net.linear1.bias", "meta_net.0.bias", (hidden,)),
        OfficialName(
            "meta_net.linear2.weight", "meta_net.2.weight", (f"the backbone's {text}", hidden)
        ),
        OfficialName("meta_net.linear2.bias", "meta_net.2.bias", (f"the backbone's {text}",)),
    ]


def _maple_links(adapter: MaPLe) -> list[OfficialName]:
    text, vision = "the backbone's text width", "the backbone's vision width"
    prompt, coupling = ("n_ctx", text), (vision, text)
    links = [
        OfficialName("ctx", "ctx", prompt),
        OfficialName("proj.weight", "proj.weight", coupling),
        OfficialName("proj.bias", "proj.bias", (vision,)),
    ]
    for j in range(len(adapter.deep_text)):
        links += [
            OfficialName(f"compound_prompts_text.{j}", f"deep_text.{j}", prompt),
            OfficialName(
                f"compound_prompt_projections.{j}.weight", f"deep_proj.{j}.weight", (vision, text)
            ),
            OfficialName(f"compound_prompt_projections.{j}.bias", f"deep_proj.{j}.bias", (vision,)),
        ]
    return [
        OfficialName(f"prompt_learner.{link.official}", link.adapter, link.dims) for link in links
    ]


def _clip_svd_links(adapter: ClipSVD) -> list[OfficialName]:
    links = []
    for target in adapter.targets:
        tower = "visual.transformer" if target.tower == "vision" else "transformer"
        official = f"{tower}.resblocks.{target.block}.{_SVD_LAYER_NAMES[target.kind]}.vector_S"
        rank = f"the rank min(out, in) of {target.path} in the backbone"
        links.append(OfficialName(official, f"sites.{target.key}.s", (rank,), row_vector=True))
    return links


OFFICIAL_NAMES: dict[type[Adapter], Callable[..., list[OfficialName]]] = {
    CoOp: _coop_links,
    CoCoOp: _cocoop_links,
    MaPLe: _maple_links,
    ClipSVD: _clip_svd_links,
}


def official_names(adapter: Adapter) -> list[OfficialName]:
    """``adapter``'s official names and settings per tensor; empty for other adapters."""
    build = OFFICIAL_NAMES.get(type(adapter))
    return build(adapter) if build is not None else []


def _shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def shape_mismatch(
    adapter: Adapter, file_tensor: str, found: Sequence[int], tensor: str, expected: Sequence[int]
) -> str:
    """The error for a tensor of a file whose shape differs from the recipe's adapter tensor.

    Names the adapter, both tensors and shapes, and per differing dimension the setting that
    decides it (from the adapter's table of official names; "a setting" for other adapters).

    Args:
        adapter: The recipe's adapter.
        file_tensor: How to name the file's tensor, e.g. "official tensor 'ctx'".
        found: The file's shape.
        tensor: The adapter's own name of the tensor (its state-dict key).
        expected: The shape the file's tensor must have (the official layout for an official
            file, the adapter's own otherwise).
    """
    found, expected = tuple(found), tuple(expected)
    link = next((link for link in official_names(adapter) if link.adapter == tensor), None)
    dims = link.dims if link is not None else ("a setting of the adapter",) * len(expected)
    if link is not None and link.row_vector and len(expected) == len(link.dims) + 1:
        dims = ("1", *dims)  # the official layout of a singular-value vector
    if len(found) != len(expected):
        differs = (
            f"the file's tensor has {len(found)} dimensions, the recipe's {len(expected)} "
            f"({', '.join(dims)})"
        )
    else:
        differs = "; ".join(
            f"{dims[i]} is {expected[i]} in the recipe but {found[i]} in the file"
            for i in range(len(expected))
            if found[i] != expected[i]
        )
    return (
        f"{adapter.name}: {file_tensor} has shape {_shape(found)}, but the recipe's adapter "
        f"tensor '{tensor}' is {_shape(expected)}: {differs}. Set the recipe's adapter (and "
        "backbone) as the run that wrote the file had them."
    )
