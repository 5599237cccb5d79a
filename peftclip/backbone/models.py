"""Model configs peftclip adds to open_clip: :func:`register_model` and its lookups.

open_clip knows a model by its JSON config (``add_model_config``). A package that ships a model
registers it here with what open_clip does not keep: a tokenizer of its own (the world model's
word tokenizer) and the weights files shipped with it, by pretrained tag. The backbone never
imports the packages that register models; lookups load what peftclip ships first
(:func:`peftclip.builtins.load_builtins`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import open_clip

from peftclip.errors import PeftClipError

#: ``tokenizer_factory(context_length)`` → a callable with open_clip's tokenizer interface.
TokenizerFactory = Callable[[int], Callable]


@dataclass(frozen=True)
class RegisteredModel:
    """A model config registered by peftclip or a package built on it.

    Attributes:
        name: open_clip model name (the config file's stem).
        config_file: The JSON config handed to ``open_clip.add_model_config``.
        tokenizer_factory: Builds the model's tokenizer from the config's context length;
            ``None``: open_clip's tokenizer for the config.
        shipped_weights: Weights files that come with the model, by pretrained tag
            (``pretrained: world`` → ``peftclip/world/weights/peftclip-world-tiny.safetensors``).
    """

    name: str
    config_file: Path
    tokenizer_factory: TokenizerFactory | None = None
    shipped_weights: Mapping[str, Path] = field(default_factory=dict)


_MODELS: dict[str, RegisteredModel] = {}


def register_model(
    name: str,
    config_file: str | Path,
    tokenizer_factory: TokenizerFactory | None = None,
    shipped_weights: Mapping[str, str | Path] | None = None,
) -> RegisteredModel:
    """Adds ``config_file`` to open_clip's configs and records the model's tokenizer and weights.

    Args:
        name: The model name; must be the config file's stem (open_clip names configs so).
        config_file: An open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``).
        tokenizer_factory: ``factory(context_length)`` for a tokenizer other than open_clip's.
        shipped_weights: ``{pretrained tag: weights file}`` for weights that ship with the model.
    """
    config_file = Path(config_file)
    if config_file.stem != name:
        raise ValueError(f"model '{name}': its config file must be named {name}.json")
    model = RegisteredModel(
        name,
        config_file,
        tokenizer_factory,
        {tag: Path(path) for tag, path in (shipped_weights or {}).items()},
    )
    if _MODELS.get(name, model) != model:
        raise ValueError(f"model name '{name}' is already registered")
    if name not in _MODELS:
        open_clip.add_model_config(config_file)
        if open_clip.get_model_config(name) is None:
            raise ValueError(f"'{config_file}' is not an open_clip model config")
    _MODELS[name] = model
    return model


def registered_model(name: str) -> RegisteredModel | None:
    """The registration of ``name``, or ``None`` for a plain open_clip model (``ViT-B-16``)."""
    if name not in _MODELS:
        from peftclip.builtins import load_builtins

        load_builtins()
    return _MODELS.get(name)


def model_config(name: str) -> dict | None:
    """open_clip's config of ``name`` (peftclip's registrations included), or ``None``."""
    registered_model(name)
    return open_clip.get_model_config(name)


def require_model_config(name: str) -> dict:
    """:func:`model_config` of ``name``; an unknown name is an error with the close matches."""
    config = model_config(name)
    if config is None:
        close = difflib.get_close_matches(name, list_models(), n=5, cutoff=0.5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise PeftClipError(
            f"unknown model name '{name}': open_clip has no config of that name.{hint} "
            "`peftclip list models` lists every name."
        )
    return config


def list_models() -> list[str]:
    """Every model name open_clip knows, peftclip's registrations included."""
    from peftclip.builtins import load_builtins

    load_builtins()
    return open_clip.list_models()


#: The tiny random-init config the tests build in seconds (not a trained model).
register_model("peftclip-tiny-vit", Path(__file__).parent / "model_configs/peftclip-tiny-vit.json")
