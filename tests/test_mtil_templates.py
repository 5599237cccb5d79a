"""ZSCL's MTIL template ensembles and hand-written class names, as transcribed.

See docs/datasets.md#templates and docs/datasets.md#mtil-datasets.
"""

import pytest

from peftclip.data import resolve_templates, template_sets
from peftclip.data.mtil_classnames import (
    CALTECH101_CLASSNAMES,
    CALTECH101_FOLDERS,
    EUROSAT_CLASSNAMES,
    EUROSAT_FOLDERS,
)
from peftclip.data.templates import MTIL_TEMPLATES

# dataset: (number of templates, first = training template, last), from ZSCL's sources.
ZSCL_ENSEMBLES = {
    "aircraft": (
        2,
        "a photo of a {}, a type of aircraft.",
        "a photo of the {}, a type of aircraft.",
    ),
    "caltech101": (34, "a photo of a {}.", "a doodle of the {}."),
    "cifar100": (18, "a photo of a {}.", "a photo of the big {}."),
    "dtd": (8, "a photo of a {} texture.", "a photo of the {} object."),
    "eurosat": (3, "a centered satellite photo of {}.", "a centered satellite photo of the {}."),
    "flowers": (1, "a photo of a {}, a type of flower.", None),
    "food": (1, "a photo of a {}, a type of food.", None),
    "mnist": (1, 'a photo of the number: "{}".', None),
    "oxford_pet": (1, "a photo of a {}, a type of pet.", None),
    "stanford_cars": (9, "a photo of a {}, a type of car.", "a photo of my old {}."),
    "sun397": (2, "a photo of a {}.", "a photo of the {}."),
}


def test_every_mtil_dataset_has_an_ensemble():
    assert set(MTIL_TEMPLATES) == set(ZSCL_ENSEMBLES)
    assert {name for name in template_sets() if name.startswith("mtil:")} == {
        f"mtil:{name}" for name in ZSCL_ENSEMBLES
    }


@pytest.mark.parametrize("name", sorted(ZSCL_ENSEMBLES))
def test_mtil_ensemble_counts_and_first_template(name):
    count, first, last = ZSCL_ENSEMBLES[name]
    templates = resolve_templates(f"mtil:{name}")
    assert len(templates) == count
    assert templates[0] == first
    assert templates[-1] == (last or first)
    assert len(set(templates)) == count  # no duplicate from a copy slip


def test_mtil_ensembles_spot_checks():
    cars = MTIL_TEMPLATES["stanford_cars"]
    assert cars[4] == "i love my {}!" and cars[5] == "a photo of my dirty {}."
    caltech = MTIL_TEMPLATES["caltech101"]
    assert caltech[10] == "a {} in a video game." and caltech[17] == "a photo of the {}."
    assert caltech[19] == "the plastic {}."  # "the", not "a plastic of the"
    cifar = MTIL_TEMPLATES["cifar100"]
    assert cifar[2] == "a black and white photo of a {}." and cifar[9] == "a photo of the {}."
    # Food differs from CoOp's "a photo of {}, a type of food." by its article.
    assert template_sets()["coop:food101"] != template_sets()["mtil:food"]


def test_zscl_class_names_line_up_with_torchvision_folders():
    assert len(CALTECH101_FOLDERS) == len(CALTECH101_CLASSNAMES) == 101
    assert list(CALTECH101_FOLDERS) == sorted(CALTECH101_FOLDERS)
    assert CALTECH101_CLASSNAMES[:6] == (
        "off-center face",
        "centered face",
        "leopard",
        "motorbike",
        "accordion",
        "airplane",
    )
    position = CALTECH101_FOLDERS.index("crocodile_head")
    assert CALTECH101_CLASSNAMES[position] == "head of a  crocodile"  # ZSCL's double space
    assert CALTECH101_CLASSNAMES[CALTECH101_FOLDERS.index("yin_yang")] == "yin and yang symbol"
    assert CALTECH101_CLASSNAMES[-1] == "yin and yang symbol"
    assert list(EUROSAT_FOLDERS) == sorted(EUROSAT_FOLDERS) and len(EUROSAT_CLASSNAMES) == 10
    assert EUROSAT_CLASSNAMES[EUROSAT_FOLDERS.index("HerbaceousVegetation")] == (
        "brushland or shrubland"
    )
    assert EUROSAT_CLASSNAMES[EUROSAT_FOLDERS.index("SeaLake")] == "lake or sea"
