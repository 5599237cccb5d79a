"""Prompt templates and the named template sets (docs/datasets.md).

Each template has exactly one ``{}`` placeholder. A dataset's own default templates (CoOp's
hand-crafted one per dataset) are part of its registry entry
(:class:`~peftclip.data.registry.DatasetDefinition`); this module holds the sets that are not
one dataset's (the ImageNet ensembles, ZSCL's MTIL ensembles) and turns any template spec into
a list of templates (:func:`resolve_templates`).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence

from open_clip import OPENAI_IMAGENET_TEMPLATES

from peftclip.data.registry import dataset_definitions
from peftclip.errors import PeftClipError

#: CoOp's ``IMAGENET_TEMPLATES_SELECT`` (its ensemble zero-shot baseline).
IMAGENET_SELECT_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

#: The 80 OpenAI ImageNet templates, identical in content and order to CoOp's
#: ``IMAGENET_TEMPLATES`` (docs/datasets.md#templates); taken from open_clip.
IMAGENET_80_TEMPLATES: tuple[str, ...] = tuple(fn("{}") for fn in OPENAI_IMAGENET_TEMPLATES)

#: ZSCL's per-dataset ensembles of the MTIL benchmark (docs/datasets.md#templates), transcribed
#: in order from ZSCL ``mtil/src/datasets/collections.py`` (the ``templates`` of each dataset
#: class) and ``cifar10.py`` (``cifar10_template``, which ZSCL's ``CIFAR100`` uses). ZSCL trains
#: with the first template and evaluates with the mean of all of them. Keys are ZSCL's dataset
#: classes in snake case (``OxfordPet`` → ``oxford_pet``).
MTIL_TEMPLATES: dict[str, tuple[str, ...]] = {
    "aircraft": (
        "a photo of a {}, a type of aircraft.",
        "a photo of the {}, a type of aircraft.",
    ),
    "caltech101": (
        "a photo of a {}.",
        "a painting of a {}.",
        "a plastic {}.",
        "a sculpture of a {}.",
        "a sketch of a {}.",
        "a tattoo of a {}.",
        "a toy {}.",
        "a rendition of a {}.",
        "a embroidered {}.",
        "a cartoon {}.",
        "a {} in a video game.",
        "a plushie {}.",
        "a origami {}.",
        "art of a {}.",
        "graffiti of a {}.",
        "a drawing of a {}.",
        "a doodle of a {}.",
        "a photo of the {}.",
        "a painting of the {}.",
        "the plastic {}.",
        "a sculpture of the {}.",
        "a sketch of the {}.",
        "a tattoo of the {}.",
        "the toy {}.",
        "a rendition of the {}.",
        "the embroidered {}.",
        "the cartoon {}.",
        "the {} in a video game.",
        "the plushie {}.",
        "the origami {}.",
        "art of the {}.",
        "graffiti of the {}.",
        "a drawing of the {}.",
        "a doodle of the {}.",
    ),
    "cifar100": (
        "a photo of a {}.",
        "a blurry photo of a {}.",
        "a black and white photo of a {}.",
        "a low contrast photo of a {}.",
        "a high contrast photo of a {}.",
        "a bad photo of a {}.",
        "a good photo of a {}.",
        "a photo of a small {}.",
        "a photo of a big {}.",
        "a photo of the {}.",
        "a blurry photo of the {}.",
        "a black and white photo of the {}.",
        "a low contrast photo of the {}.",
        "a high contrast photo of the {}.",
        "a bad photo of the {}.",
        "a good photo of the {}.",
        "a photo of the small {}.",
        "a photo of the big {}.",
    ),
    "dtd": (
        "a photo of a {} texture.",
        "a photo of a {} pattern.",
        "a photo of a {} thing.",
        "a photo of a {} object.",
        "a photo of the {} texture.",
        "a photo of the {} pattern.",
        "a photo of the {} thing.",
        "a photo of the {} object.",
    ),
    "eurosat": (
        "a centered satellite photo of {}.",
        "a centered satellite photo of a {}.",
        "a centered satellite photo of the {}.",
    ),
    "flowers": ("a photo of a {}, a type of flower.",),
    # With "a", unlike CoOp's "a photo of {}, a type of food.".
    "food": ("a photo of a {}, a type of food.",),
    "mnist": ('a photo of the number: "{}".',),
    "oxford_pet": ("a photo of a {}, a type of pet.",),
    "stanford_cars": (
        "a photo of a {}, a type of car.",
        "a photo of a {}.",
        "a photo of the {}.",
        "a photo of my {}.",
        "i love my {}!",
        "a photo of my dirty {}.",
        "a photo of my clean {}.",
        "a photo of my new {}.",
        "a photo of my old {}.",
    ),
    "sun397": (
        "a photo of a {}.",
        "a photo of the {}.",
    ),
}

#: Named sets that are not one dataset's defaults.
_FIXED_SETS: dict[str, tuple[str, ...]] = {
    "imagenet80": IMAGENET_80_TEMPLATES,
    "imagenet_select": IMAGENET_SELECT_TEMPLATES,
    **{f"mtil:{name}": templates for name, templates in MTIL_TEMPLATES.items()},
}


#: Where KgCoOp's table of anchor templates (its ``CUSTOM_TEMPLATES``) differs from CoOp's template
#: of the dataset (docs/methods/kgcoop.md).
KGCOOP_TEMPLATES = {"dtd": ("a photo of a {}, a type of texture.",)}


def template_sets() -> dict[str, tuple[str, ...]]:
    """Named template sets usable wherever templates are accepted (``templates: imagenet80``).

    ``imagenet80``, ``imagenet_select``, ``mtil:<ZSCL dataset>``, ``coop:<dataset>``, the
    templates of each registered CoOp dataset (``coop:dtd`` → ``{} texture.``), and
    ``kgcoop:<dataset>``, KgCoOp's anchor templates (CoOp's, but DTD's).
    """
    coop = {
        definition.name: definition.templates
        for definition in dataset_definitions()
        if definition.benchmark == "coop"
    }
    return {
        **_FIXED_SETS,
        **{f"coop:{name}": templates for name, templates in coop.items()},
        **{f"kgcoop:{name}": KGCOOP_TEMPLATES.get(name, t) for name, t in coop.items()},
    }


def templates_of_dataset(
    templates: str | Sequence[str] | None, dataset: str
) -> str | Sequence[str] | None:
    """Resolves a bare family name (``coop``, ``kgcoop``, ``mtil``) to its set for ``dataset``.

    A family without a set for the dataset (e.g. ``kgcoop`` on a world task) gives ``None``: the
    run's own templates. Anything else is returned as given.
    """
    if not isinstance(templates, str) or "{}" in templates or ":" in templates:
        return templates
    return _family_set(templates, dataset)


@functools.lru_cache(maxsize=64)
def _family_set(templates: str, dataset: str) -> str | tuple[str, ...] | None:
    # Called on every training step of a method whose loss asks for a family (KgCoOp): build
    # the named sets once per (family, dataset), not per step.
    sets = template_sets()
    if not any(name.startswith(f"{templates}:") for name in sets):
        return templates
    return sets.get(f"{templates}:{dataset}")


def resolve_templates(templates: str | Sequence[str]) -> list[str]:
    """Turns a template spec into a list of ``{}`` templates.

    Args:
        templates: A named set (:func:`template_sets`: ``imagenet80``, ``imagenet_select``,
            ``coop:<dataset>``, ``mtil:<dataset>``), one template string, or a list of template
            strings.
    """
    sets = template_sets()
    if isinstance(templates, str):
        if templates not in sets and templates.count("{}") != 1:
            close = difflib.get_close_matches(templates, list(sets), n=1)
            if close:  # a misspelt set name, not a template
                raise PeftClipError(
                    f"unknown template set {templates!r}; did you mean {close[0]!r}? Named sets: "
                    f"{', '.join(sorted(sets))}."
                )
        templates = sets.get(templates, (templates,))
    resolved = list(templates)
    if not resolved:
        raise PeftClipError(
            "the template list is empty; give at least one template like 'a photo of a {}.'"
        )
    for template in resolved:
        if template.count("{}") != 1:
            raise PeftClipError(
                f"template {template!r} must contain exactly one '{{}}' placeholder for the class "
                f"name, or be one of the named sets: {', '.join(sorted(sets))}."
            )
    return resolved
