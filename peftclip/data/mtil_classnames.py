"""Class names of the MTIL benchmark that ZSCL writes out by hand.

See docs/datasets.md#mtil-datasets.

Transcribed verbatim, in label order, from ZSCL ``mtil/src/datasets/collections.py``
(``Caltech101.classnames``, ``EuroSAT.classnames``). Label ``i`` is the ``i``-th folder of
torchvision's order, listed beside each list so that a tree can be checked against it.
"""

#: torchvision ``Caltech101.categories``: sorted folders of ``101_ObjectCategories`` without
#: ``BACKGROUND_Google`` (upper case sorts first; ``Faces`` and ``Faces_easy`` both kept).
CALTECH101_FOLDERS: tuple[str, ...] = (
    "Faces", "Faces_easy", "Leopards", "Motorbikes", "accordion", "airplanes", "anchor", "ant",
    "barrel", "bass", "beaver", "binocular", "bonsai", "brain", "brontosaurus", "buddha",
    "butterfly", "camera", "cannon", "car_side", "ceiling_fan", "cellphone", "chair",
    "chandelier", "cougar_body", "cougar_face", "crab", "crayfish", "crocodile", "crocodile_head",
    "cup", "dalmatian", "dollar_bill", "dolphin", "dragonfly", "electric_guitar", "elephant",
    "emu", "euphonium", "ewer", "ferry", "flamingo", "flamingo_head", "garfield", "gerenuk",
    "gramophone", "grand_piano", "hawksbill", "headphone", "hedgehog", "helicopter", "ibis",
    "inline_skate", "joshua_tree", "kangaroo", "ketch", "lamp", "laptop", "llama", "lobster",
    "lotus", "mandolin", "mayfly", "menorah", "metronome", "minaret", "nautilus", "octopus",
    "okapi", "pagoda", "panda", "pigeon", "pizza", "platypus", "pyramid", "revolver", "rhino",
    "rooster", "saxophone", "schooner", "scissors", "scorpion", "sea_horse", "snoopy",
    "soccer_ball", "stapler", "starfish", "stegosaurus", "stop_sign", "strawberry", "sunflower",
    "tick", "trilobite", "umbrella", "watch", "water_lilly", "wheelchair", "wild_cat",
    "windsor_chair", "wrench", "yin_yang",
)  # fmt: skip

#: ZSCL's 101 Caltech101 names. "head of a  crocodile" has two spaces in the source; kept (the
#: tokenizer collapses whitespace).
CALTECH101_CLASSNAMES: tuple[str, ...] = (
    "off-center face", "centered face", "leopard", "motorbike", "accordion", "airplane",
    "anchor", "ant", "barrel", "bass", "beaver", "binocular", "bonsai", "brain", "brontosaurus",
    "buddha", "butterfly", "camera", "cannon", "side of a car", "ceiling fan", "cellphone",
    "chair", "chandelier", "body of a cougar cat", "face of a cougar cat", "crab", "crayfish",
    "crocodile", "head of a  crocodile", "cup", "dalmatian", "dollar bill", "dolphin",
    "dragonfly", "electric guitar", "elephant", "emu", "euphonium", "ewer", "ferry", "flamingo",
    "head of a flamingo", "garfield", "gerenuk", "gramophone", "grand piano", "hawksbill",
    "headphone", "hedgehog", "helicopter", "ibis", "inline skate", "joshua tree", "kangaroo",
    "ketch", "lamp", "laptop", "llama", "lobster", "lotus", "mandolin", "mayfly", "menorah",
    "metronome", "minaret", "nautilus", "octopus", "okapi", "pagoda", "panda", "pigeon", "pizza",
    "platypus", "pyramid", "revolver", "rhino", "rooster", "saxophone", "schooner", "scissors",
    "scorpion", "sea horse", "snoopy (cartoon beagle)", "soccer ball", "stapler", "starfish",
    "stegosaurus", "stop sign", "strawberry", "sunflower", "tick", "trilobite", "umbrella",
    "watch", "water lilly", "wheelchair", "wild cat", "windsor chair", "wrench",
    "yin and yang symbol",
)  # fmt: skip

#: torchvision ``EuroSAT`` (an ``ImageFolder`` over ``2750/``): sorted class folders.
EUROSAT_FOLDERS: tuple[str, ...] = (
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
    "PermanentCrop", "Residential", "River", "SeaLake",
)  # fmt: skip

#: ZSCL's EuroSAT names (not CoOp's).
EUROSAT_CLASSNAMES: tuple[str, ...] = (
    "annual crop land",
    "forest",
    "brushland or shrubland",
    "highway or road",
    "industrial buildings or commercial buildings",
    "pasture land",
    "permanent crop land",
    "residential buildings or homes or apartments",
    "river",
    "lake or sea",
)
