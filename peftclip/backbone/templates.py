"""Prompt templates (specs/datasets.md §6). Each template has exactly one ``{}`` placeholder."""

from open_clip import OPENAI_IMAGENET_TEMPLATES

#: CoOp's single hand-crafted template per dataset (CoOp ``trainers/zsclip.py``).
COOP_TEMPLATES: dict[str, str] = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "food101": "a photo of {}, a type of food.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "stanford_cars": "a photo of a {}.",
    "sun397": "a photo of a {}.",
    "imagenetv2": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
}

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
#: ``IMAGENET_TEMPLATES`` (spec §6.3); taken from open_clip.
IMAGENET_80_TEMPLATES: tuple[str, ...] = tuple(fn("{}") for fn in OPENAI_IMAGENET_TEMPLATES)

#: Named template sets usable wherever templates are accepted (``templates: imagenet80``).
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "imagenet80": IMAGENET_80_TEMPLATES,
    "imagenet_select": IMAGENET_SELECT_TEMPLATES,
    **{f"coop:{name}": (template,) for name, template in COOP_TEMPLATES.items()},
}

DEFAULT_TEMPLATE = "a photo of a {}."
