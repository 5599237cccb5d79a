"""The Lightning layer: module, datamodule, command line."""

from peftclip.lightning.datamodule import PeftClipDataModule
from peftclip.lightning.module import PeftClipModule

__all__ = ["PeftClipDataModule", "PeftClipModule"]
