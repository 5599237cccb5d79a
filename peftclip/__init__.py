"""peftclip: parameter-efficient fine-tuning of a frozen CLIP."""

__version__ = "0.1.0.dev0"
