"""Adapters: one module per method, a registry, composition rules."""

from peftclip.adapters.base import Adapter, Prompts, TextInput, check_composition
from peftclip.adapters.cocoop import CoCoOp
from peftclip.adapters.coop import CoOp
from peftclip.adapters.ivlp import IVLP, VPTDeep
from peftclip.adapters.maple import MaPLe
from peftclip.adapters.registry import (
    adapter_class_path,
    get_adapter_class,
    list_adapters,
    register_adapter,
)

__all__ = [
    "IVLP",
    "Adapter",
    "CoCoOp",
    "CoOp",
    "MaPLe",
    "Prompts",
    "TextInput",
    "VPTDeep",
    "adapter_class_path",
    "check_composition",
    "get_adapter_class",
    "list_adapters",
    "register_adapter",
]
