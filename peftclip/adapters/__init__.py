"""Adapters: one module per method, a registry, composition rules."""

from peftclip.adapters.base import (
    Adapter,
    HeadInput,
    Prompts,
    SelectionSet,
    StepContext,
    TextInput,
    TrainingFeatures,
    check_composition,
)
from peftclip.adapters.clip_svd import ClipSVD
from peftclip.adapters.cocoop import CoCoOp
from peftclip.adapters.codyra import CoDyRA
from peftclip.adapters.coop import CoOp
from peftclip.adapters.gda import GDA
from peftclip.adapters.ivlp import IVLP, VPTDeep
from peftclip.adapters.kgcoop import KgCoOp
from peftclip.adapters.linear_probe import LinearProbe, LPPlusPlus
from peftclip.adapters.lora import LoRA
from peftclip.adapters.maple import MaPLe
from peftclip.adapters.promptsrc import PromptSRC
from peftclip.adapters.registry import (
    adapter_class_path,
    get_adapter_class,
    list_adapters,
    register_adapter,
)
from peftclip.adapters.tip_adapter import TipAdapter, TipAdapterF
from peftclip.adapters.weight_space import WeightSpaceAdapter

__all__ = [
    "GDA",
    "IVLP",
    "Adapter",
    "ClipSVD",
    "CoCoOp",
    "CoDyRA",
    "CoOp",
    "HeadInput",
    "KgCoOp",
    "LPPlusPlus",
    "LinearProbe",
    "LoRA",
    "MaPLe",
    "PromptSRC",
    "Prompts",
    "SelectionSet",
    "StepContext",
    "TextInput",
    "TipAdapter",
    "TipAdapterF",
    "TrainingFeatures",
    "VPTDeep",
    "WeightSpaceAdapter",
    "adapter_class_path",
    "check_composition",
    "get_adapter_class",
    "list_adapters",
    "register_adapter",
]
