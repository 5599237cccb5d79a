"""Shared machinery of the adapters that change CLIP's weights (CLIP-SVD, LoRA, CoDyRA).

Such an adapter replaces targeted ``nn.Linear`` layers of the frozen CLIP by modules that add
(or re-express) a trainable part, keeps its trainable tensors under ``sites`` (so checkpoints
hold only them, never the frozen weights), and can fold itself into plain ``nn.Linear`` weights
(``merge``) and back (``unmerge``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from torch import nn

from peftclip.adapters.base import Adapter
from peftclip.adapters.targets import LAYER_KINDS, LinearTarget, Tower, find_targets
from peftclip.backbone import FrozenClip
from peftclip.errors import PeftClipError


class WeightSpaceAdapter(Adapter):
    """Base class: target selection, conflict check, merge / unmerge bookkeeping.

    Subclasses implement ``_adapt(targets)`` (replace the layers, fill ``sites``), and
    ``_merge(target)`` / ``_unmerge(target, adapted)``.

    Args:
        towers: ``vision``, ``text`` or ``both``.
        layers: Layer kinds among ``q, k, v, o, c_fc, c_proj``.
        blocks: Block indices to adapt (``None``: all).
    """

    def __init__(
        self,
        towers: Tower = "both",
        layers: Sequence[str] = LAYER_KINDS,
        blocks: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.towers = towers
        self.layers = list(layers)
        self.blocks = None if blocks is None else list(blocks)
        self.sites = nn.ModuleDict()
        self.targets: list[LinearTarget] = []
        self.merged = False
        self._adapted: dict[str, nn.Module] = {}  # the adapted modules while merged

    @property
    def adapted_towers(self) -> set[str]:
        return {target.tower for target in self.targets}

    def attach(self, backbone: FrozenClip) -> None:
        if self.targets:
            raise PeftClipError(f"adapter {self.name} is already attached to a backbone.")
        targets = find_targets(backbone, self.towers, self.layers, self.blocks)
        for target in targets:
            module = target.module
            if type(module) is not nn.Linear:
                owner = getattr(module, "peftclip_owner", type(module).__name__)
                raise PeftClipError(
                    f"{self.name}: layer {target.path} is already adapted by {owner}. Two "
                    "weight-space adapters cannot share a layer: give them disjoint targets "
                    "(towers / layers / blocks) or keep one of them."
                )
        self.targets = targets
        self._adapt(targets)
        for target in targets:
            target.module.peftclip_owner = self.name

    def _adapt(self, targets: list[LinearTarget]) -> None:
        raise NotImplementedError

    def _merge(self, target: LinearTarget) -> nn.Linear:
        """Returns a plain Linear computing what the adapted layer computes."""
        raise NotImplementedError

    def _unmerge(self, target: LinearTarget, adapted: nn.Module) -> None:
        """Undoes what ``_merge`` did to shared tensors (if anything)."""

    def merge(self) -> None:
        """Folds the adapter into plain ``nn.Linear`` layers: no inference overhead.

        The adapter's tensors are kept, so :meth:`unmerge` can restore the adapted layers.
        Do not train while merged (the merged weights are constants).
        """
        if self.merged:
            return
        for target in self.targets:
            adapted = target.module
            self._adapted[target.key] = adapted
            target.replace(self._merge(target))
        self.merged = True

    def unmerge(self) -> None:
        """Restores the adapted layers after :meth:`merge`."""
        if not self.merged:
            return
        for target in self.targets:
            adapted = self._adapted.pop(target.key)
            self._unmerge(target, adapted)
            target.replace(adapted)
        self.merged = False


@contextlib.contextmanager
def one_weight_per_step(model: nn.Module) -> Iterator[None]:
    """Within the block, every adapted layer of ``model`` materializes its weight at most once.

    For the layers that build their weight from trainable factors (CLIP-SVD's ``U diag(s) Vᵀ``):
    the first call of the step builds it, later calls of the step reuse that tensor. Leaving
    the block forgets it, so the next step (after an optimizer update, or a gradient-
    accumulation micro-batch whose backward freed the graph) builds a fresh one. Exact: the
    backward accumulates the gradient of every use into the one tensor first.
    """
    layers = [module for module in model.modules() if hasattr(module, "step_scopes")]
    for layer in layers:
        layer.step_scopes += 1
    try:
        yield
    finally:
        for layer in layers:
            layer.step_scopes -= 1
            if not layer.step_scopes:
                layer.end_step()
