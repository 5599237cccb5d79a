"""Registry of adapters by short name (explicit registration, no import side effects elsewhere)."""

from __future__ import annotations

import difflib

from peftclip.adapters.base import Adapter
from peftclip.errors import PeftClipError

_ADAPTERS: dict[str, type[Adapter]] = {}


def register_adapter(name: str, cls: type[Adapter]) -> type[Adapter]:
    """Registers ``cls`` under ``name`` (lower-case, stable: it appears in recipes and results)."""
    if not issubclass(cls, Adapter):
        raise TypeError(f"{cls} is not a peftclip Adapter")
    if name in _ADAPTERS and _ADAPTERS[name] is not cls:
        raise ValueError(f"adapter name '{name}' is already registered to {_ADAPTERS[name]}")
    cls.name = name
    _ADAPTERS[name] = cls
    return cls


def list_adapters() -> list[str]:
    return sorted(_ADAPTERS)


def get_adapter_class(name: str) -> type[Adapter]:
    if name not in _ADAPTERS:
        close = difflib.get_close_matches(name, list(_ADAPTERS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise PeftClipError(
            f"unknown adapter '{name}'.{hint} Registered adapters: "
            f"{', '.join(list_adapters()) or 'none yet'}."
        )
    return _ADAPTERS[name]


def adapter_class_path(name: str) -> str:
    """The import path of a registered adapter (what LightningCLI's ``class_path`` needs)."""
    cls = get_adapter_class(name)
    return f"{cls.__module__}.{cls.__qualname__}"
