"""The Lightning layer: module, datamodule, precision plugins, command line."""

from peftclip.lightning.datamodule import PeftClipDataModule
from peftclip.lightning.module import PeftClipModule
from peftclip.lightning.precision import UnscaledMixedPrecision

__all__ = ["PeftClipDataModule", "PeftClipModule", "UnscaledMixedPrecision"]
