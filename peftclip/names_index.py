"""The names ``peftclip list`` prints, without importing torch: an index on disk.

Listing the registered adapters, datasets and models needs ``load_builtins``
(peftclip.builtins), which imports torch, Lightning's neighbours and open_clip (seconds).
:func:`registered_names` keeps the names in a small index under ``$XDG_CACHE_HOME/peftclip/
names``, keyed by a fingerprint of the sources that register them: after the first listing,
``peftclip list`` answers without importing torch, and any edit, install or upgrade rebuilds it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Literal

from peftclip.builtins import load_builtins

NameKind = Literal["adapters", "datasets", "models"]


def _list_live(kind: NameKind) -> list[str]:
    """The names in the registry of ``kind``, with everything peftclip ships loaded."""
    load_builtins()
    if kind == "adapters":
        from peftclip.adapters.registry import list_adapters

        return list_adapters()
    if kind == "datasets":
        from peftclip.data.registry import list_datasets

        return list_datasets()
    from peftclip.backbone.models import list_models

    return list_models()


def _sources_fingerprint() -> str:
    """A hash of what the built-in names depend on: peftclip's sources and open_clip's configs.

    File names, sizes and modification times (a stat per file, no reading): any edit, install
    or upgrade of either package changes it.
    """
    roots = [Path(__file__).parent]
    open_clip = importlib.util.find_spec("open_clip")  # finds the package without importing it
    if open_clip is not None and open_clip.submodule_search_locations:
        roots += [Path(location) for location in open_clip.submodule_search_locations]
    digest = hashlib.sha256(sys.version.encode())
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.suffix in {".py", ".json"}:
                stat = path.stat()
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def names_index_dir() -> Path:
    """``$XDG_CACHE_HOME/peftclip/names``, or ``~/.cache/peftclip/names``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "peftclip" / "names"


def registered_names(kind: NameKind) -> list[str]:
    """The registered names of ``kind`` (what ``peftclip list KIND`` prints).

    In a process that has imported the registries already (a notebook, a test, a package that
    registered its own adapters), the live registry answers. Otherwise the names come from the
    on-disk index of the current sources (:func:`_sources_fingerprint`), which the first
    listing writes; an index that cannot be written (a read-only home) only costs the import.
    """
    registry = {
        "adapters": "peftclip.adapters.registry",
        "datasets": "peftclip.data.registry",
        "models": "peftclip.backbone.models",
    }[kind]
    if registry in sys.modules:
        return _list_live(kind)
    path = names_index_dir() / f"{_sources_fingerprint()}.json"
    try:
        return json.loads(path.read_text())[kind]
    except (OSError, ValueError, KeyError):
        pass  # no index yet (or a torn one): build it
    names = {each: _list_live(each) for each in ("adapters", "datasets", "models")}
    try:
        from peftclip.atomic_files import write_text_atomically

        write_text_atomically(path, json.dumps(names))
        for stale in path.parent.glob("*.json"):  # indexes of earlier sources
            if stale != path:
                stale.unlink(missing_ok=True)
    except OSError:
        pass
    return names[kind]
