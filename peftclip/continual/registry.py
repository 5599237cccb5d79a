"""Looking up continual-learning strategies by name: every strategy module is imported here, so
each registers where it is defined (docs/continual.md#strategies)."""

from __future__ import annotations

import difflib
from typing import Any

from peftclip.continual import distillation, zscl  # noqa: F401  (register lwf, vr_lwf; zscl)
from peftclip.continual.strategies import _STRATEGIES, Strategy
from peftclip.errors import PeftClipError


def list_strategies() -> list[str]:
    return sorted(_STRATEGIES)


def build_strategy(name: str, options: dict[str, Any] | None = None) -> Strategy:
    """The strategy ``name`` with ``options`` (its keyword arguments).

    Raises:
        PeftClipError: An unknown name (with the closest ones) or an unknown option.
    """
    known = list_strategies()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise PeftClipError(f"unknown strategy '{name}'.{hint} Strategies: {', '.join(known)}.")
    try:
        return _STRATEGIES[name](**(options or {}))
    except TypeError as error:
        raise PeftClipError(
            f"strategy '{name}' does not take the options {sorted(options or {})}: {error}. "
            "See docs/continual.md#strategies for each strategy's options."
        ) from None
