"""Everything peftclip ships, registered in one place: :func:`load_builtins`.

Each package registers what it owns in the module that defines it, with an explicit call
(``register_dataset(DatasetDefinition(...))``, ``register_model(...)``, ``register_adapter``):
the CoOp readers their datasets, the world its model and datasets. :data:`BUILTIN_MODULES`
lists those modules; :func:`load_builtins` imports them once.

Why the registries call :func:`load_builtins` on their first lookup (``list_datasets``,
``build_dataset``, ``load_backbone``, ``list_models``), rather than ``peftclip/__init__.py``
importing everything: a lookup is the only moment a name must be known, so the registries
answer the same whether the caller is the CLI, LightningCLI, a notebook or a test, and whatever
was imported before. Importing one package (``peftclip.backbone``) stays light and free of side
effects on another, the backbone and the data package never import the world, and no import
order can leave a registry half filled. ``load_builtins`` is idempotent and may be called
directly, e.g. before listing every registered name.
"""

from __future__ import annotations

import importlib

#: Modules whose import registers peftclip's built-in adapters, dataset definitions and models.
BUILTIN_MODULES = (
    "peftclip.adapters",
    "peftclip.data.coop_datasets",
    "peftclip.data.mtil_extras",
    "peftclip.data.mtil_splits",
    "peftclip.data.folders",
    "peftclip.world.model",
    "peftclip.world.datasets",
)

_loaded = False


def load_builtins() -> None:
    """Imports :data:`BUILTIN_MODULES` (once), registering everything peftclip ships."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # first: a registry looked up while these modules import must not recurse
    try:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
    except BaseException:
        _loaded = False  # a failed import must not leave the registries silently half filled
        raise
