"""Fake data trees in the exact on-disk layout of every registered dataset (tests only).

:data:`FAKE_TREES` maps a dataset reader to a factory ``factory(definition, tmp_path) ->
FakeTree`` that lays out a tiny tree of that reader's layout and says what reading it must give.
One factory serves every dataset of a layout, so a new ``split_zhou`` dataset is covered by the
registry tests (tests/test_dataset_registry.py) without a line here; a dataset with a new reader
needs a factory for that reader.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import io
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import peftclip.data.registry as registry
from peftclip.data.coop_datasets import (
    read_fgvc_aircraft,
    read_imagenet,
    read_imagenet_sketch,
    read_imagenet_subset,
    read_imagenetv2,
    read_zhou_split,
)
from peftclip.data.folders import build_csv, build_image_folder
from peftclip.data.mtil_classnames import CALTECH101_FOLDERS, EUROSAT_FOLDERS
from peftclip.data.mtil_extras import read_cifar100, read_mnist
from peftclip.data.mtil_splits import (
    build_manifest,
    default_manifest_path,
    read_mtil_split,
    write_manifest,
)
from peftclip.data.registry import DatasetDefinition, PublishedCounts, dataset_definition
from peftclip.world.datasets import SPLIT_SIZES, build_world_dataset


@dataclass
class FakeTree:
    """A fake tree and what reading it must give.

    Attributes:
        root: What ``build_dataset`` gets as ``root`` (``None`` for rendered datasets).
        classnames: The class names the reader must return, in label order.
        sizes: Images per split the reader must return (absent splits: absent keys).
        options: Reader options for the read.
    """

    root: Path | None
    classnames: list[str]
    sizes: dict[str, int]
    options: dict[str, Any] = field(default_factory=dict)


FakeTreeFactory = Callable[[DatasetDefinition, Path], FakeTree]


@functools.cache
def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 6), (10, 200, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def jpeg(path: Path) -> None:
    """A real (decodable) 6×6 JPEG at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_jpeg_bytes())


# --- CoOp's split_zhou layout ------------------------------------------------------------------

#: Per dataset: two (relative path, class name) examples in the anchors' naming style.
ZHOU_EXAMPLES = {
    "caltech101": [("airplanes/image_0001.jpg", "airplane"), ("Faces/image_0001.jpg", "face")],
    "oxford_pets": [
        ("Abyssinian_1.jpg", "abyssinian"),
        ("american_pit_bull_terrier_1.jpg", "american_pit_bull_terrier"),
    ],
    "stanford_cars": [
        ("cars_train/00001.jpg", "2012 Tesla Model S Sedan"),
        ("cars_test/00002.jpg", "2007 BMW X5 SUV"),
    ],
    "oxford_flowers": [("image_00001.jpg", "pink primrose"), ("image_00002.jpg", "globe thistle")],
    "food101": [("apple_pie/1005649.jpg", "apple_pie"), ("baby_back_ribs/1.jpg", "baby_back_ribs")],
    "sun397": [("a/abbey/sun_aaa.jpg", "abbey"), ("a/apse/indoor/sun_b.jpg", "indoor apse")],
    "dtd": [("banded/banded_0002.jpg", "banded"), ("blotchy/blotchy_0003.jpg", "blotchy")],
    "eurosat": [
        ("AnnualCrop/AnnualCrop_1.jpg", "Annual Crop Land"),
        ("SeaLake/SeaLake_1.jpg", "Sea or Lake"),
    ],
    "ucf101": [
        ("Apply_Eye_Makeup/v_ApplyEyeMakeup_g01_c01.jpg", "Apply_Eye_Makeup"),
        ("Archery/v_Archery_g01_c01.jpg", "Archery"),
    ],
}
#: Examples for a split_zhou dataset without its own above.
_GENERIC_ZHOU_EXAMPLES = [("class_a/0001.jpg", "class_a"), ("class_b/0001.jpg", "class b")]


def zhou_tree(root: Path, name: str, missing_image: bool = False) -> Path:
    """``<root>/<directory>/`` of a split_zhou dataset: 2 classes × 1 image per split."""
    layout = dataset_definition(name).layout
    directory = root / layout.directory
    entries = []
    for label, (relpath, classname) in enumerate(ZHOU_EXAMPLES.get(name, _GENERIC_ZHOU_EXAMPLES)):
        for copy in range(3):
            rel = relpath.replace(".jpg", f"_{copy}.jpg")
            entries.append([rel, label, classname])
            if not (missing_image and copy == 2 and label == 1):
                jpeg(directory / layout.image_prefix / rel)
    split = {"train": entries[0:1] + entries[3:4], "val": entries[1:2] + entries[4:5]}
    split["test"] = entries[2:3] + entries[5:6]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / layout.split_file).write_text(json.dumps(split))
    return directory


def _zhou(definition: DatasetDefinition, tmp_path: Path) -> FakeTree:
    zhou_tree(tmp_path, definition.name)
    examples = ZHOU_EXAMPLES.get(definition.name, _GENERIC_ZHOU_EXAMPLES)
    return FakeTree(tmp_path, [name for _, name in examples], {"train": 2, "val": 2, "test": 2})


# --- FGVC-Aircraft and the ImageNet family -----------------------------------------------------

AIRCRAFT_VARIANTS = ["707-320", "A300B4", "Boeing 717"]


def aircraft_tree(root: Path, splits: dict[str, list[str]] | None = None) -> Path:
    """``<root>/fgvc_aircraft/``: ``variants.txt``, ``images_variant_<split>.txt``, images."""
    splits = splits or {
        "train": ["0001 A300B4", "0002 Boeing 717"],
        "val": ["0003 707-320"],
        "test": ["0004 Boeing 717"],
    }
    directory = root / dataset_definition("fgvc_aircraft").layout.directory
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "variants.txt").write_text("".join(f"{v}\n" for v in AIRCRAFT_VARIANTS))
    for part, lines in splits.items():
        (directory / f"images_variant_{part}.txt").write_text("\n".join(lines) + "\n")
        for line in lines:
            jpeg(directory / "images" / f"{line.split()[0]}.jpg")
    return directory


def _aircraft(definition: DatasetDefinition, tmp_path: Path) -> FakeTree:
    aircraft_tree(tmp_path)
    return FakeTree(tmp_path, AIRCRAFT_VARIANTS, {"train": 2, "val": 1, "test": 1})


WNIDS = [f"n{index:08d}" for index in range(1000)]
IMAGENET_CLASSNAMES = [f"class {index}" for index in range(1000)]


def classnames_file(path: Path) -> None:
    """ImageNet's ``classnames.txt``: 1000 lines ``<wnid> <name>`` in sorted wnid order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = zip(WNIDS, IMAGENET_CLASSNAMES, strict=True)
    path.write_text("".join(f"{wnid} {name}\n" for wnid, name in lines))


def _imagenet(definition: DatasetDefinition, tmp_path: Path) -> FakeTree:
    layout = definition.layout
    directory = tmp_path / layout.directory
    classnames_file(directory / "classnames.txt")
    for wnid in WNIDS:
        jpeg(directory / layout.image_folders[0] / "train" / wnid / "t.JPEG")
        jpeg(directory / layout.image_folders[0] / "val" / wnid / "v.JPEG")
    return FakeTree(tmp_path, IMAGENET_CLASSNAMES, {"train": 1000, "test": 1000})


def _imagenetv2(definition: DatasetDefinition, tmp_path: Path) -> FakeTree:
    classnames_file(tmp_path / "imagenet" / "classnames.txt")  # the variant falls back to it
    base = tmp_path / definition.layout.directory / definition.layout.image_folders[0]
    for folder in ("2", "10", "999"):
        jpeg(base / folder / "x.jpeg")
    return FakeTree(tmp_path, IMAGENET_CLASSNAMES, {"test": 3})


def _imagenet_sketch(definition: DatasetDefinition, tmp_path: Path) -> FakeTree:
    directory = tmp_path / definition.layout.directory
    classnames_file(directory / "classnames.txt")
    for wnid in WNIDS[:3]:
        jpeg(directory / definition.layout.image_folders[0] / wnid / "sketch_1.JPEG")
    return FakeTree(tmp_path, IMAGENET_CLASSNAMES, {"test": 3})


def _imagenet_subset(definition: DatasetDefinition, tmp_path: Path) -> FakeTree:
    directory = tmp_path / definition.layout.directory
    classnames_file(directory / "classnames.txt")
    folder = directory / definition.layout.image_folders[0]
    for wnid in (WNIDS[900], WNIDS[6], WNIDS[42]):
        jpeg(folder / wnid / "0.jpg")
    (folder / "README.txt").write_text("ignored")
    return FakeTree(tmp_path, ["class 6", "class 42", "class 900"], {"test": 3})


# --- CIFAR100 and MNIST (torchvision's files) --------------------------------------------------

CIFAR_CLASSNAMES = [f"class_{i}" for i in range(100)]
CIFAR_CLASSNAMES[4] = "aquarium_fish"


def cifar_files(root: Path, n_train: int = 6, n_test: int = 4) -> np.ndarray:
    """``<root>/cifar-100-python/{train,test,meta}``; returns the test rows."""
    directory = root / "cifar-100-python"
    directory.mkdir(parents=True)
    (directory / "meta").write_bytes(pickle.dumps({"fine_label_names": CIFAR_CLASSNAMES}))
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        content = {b"data": data, b"fine_labels": list(range(n)), b"coarse_labels": [0] * n}
        (directory / split).write_bytes(pickle.dumps(content))
    return data


def idx_file(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """An unsigned-byte IDX file (MNIST's format), gzipped with ``compress``."""
    header = b"\x00\x00\x08" + bytes([array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def mnist_files(root: Path) -> Path:
    """``<root>/MNIST/raw/``: 3 train images (plain files), 2 test images (gzipped)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    idx_file(raw / "train-images-idx3-ubyte", images)
    idx_file(raw / "train-labels-idx1-ubyte", np.array([0, 1, 2]))
    idx_file(raw / "t10k-images-idx3-ubyte.gz", images[:2], compress=True)
    idx_file(raw / "t10k-labels-idx1-ubyte.gz", np.array([7, 9]), compress=True)
    return raw


def _cifar(definition: DatasetDefinition, tmp_path: Path) -> FakeTree:
    cifar_files(tmp_path)
    return FakeTree(tmp_path, CIFAR_CLASSNAMES, {"train": 6, "test": 4})


def _mnist(definition: DatasetDefinition, tmp_path: Path) -> FakeTree:
    mnist_files(tmp_path)
    return FakeTree(tmp_path, list(definition.classnames), {"train": 3, "test": 2})


# --- MTIL's randomly split datasets (torchvision's trees + a generated manifest) ---------------


def caltech_tree(root: Path) -> Path:
    folder = root / "caltech101" / "101_ObjectCategories"
    for position, category in enumerate(("BACKGROUND_Google", *CALTECH101_FOLDERS)):
        for number in range(1, 2 + position % 3):
            jpeg(folder / category / f"image_{number:04d}.jpg")
    return folder


def eurosat_tree(root: Path) -> Path:
    folder = root / "eurosat" / "2750"
    for position, name in enumerate(EUROSAT_FOLDERS):
        for number in range(1 + position % 4):
            jpeg(folder / name / f"{name}_{number + 1}.jpg")
    jpeg(folder / "Forest" / "extra" / "Forest_0.JPG")  # ImageFolder walks sub-folders…
    (folder / "Forest" / "notes.txt").write_text("not an image")  # …and skips other files
    return folder


SUN_CLASSES = ["/a/abbey", "/a/apartment_building/outdoor", "/b/bakery/shop", "/b/beach"]


def sun_tree(root: Path) -> Path:
    folder = root / "SUN397"
    folder.mkdir(parents=True)
    (folder / "ClassName.txt").write_text("\n".join(SUN_CLASSES) + "\n")
    for position, name in enumerate(SUN_CLASSES):
        for number in range(2 + position):
            jpeg(folder / name.lstrip("/") / f"sun_{chr(97 + number)}{position}.jpg")
    return folder


_MTIL_TREES = {
    "mtil_caltech101": caltech_tree,
    "mtil_eurosat": eurosat_tree,
    "mtil_sun397": sun_tree,
}


def _mtil_split(definition: DatasetDefinition, tmp_path: Path) -> FakeTree:
    if definition.name not in _MTIL_TREES:
        raise KeyError(f"add a torchvision tree for '{definition.name}' to _MTIL_TREES")
    _MTIL_TREES[definition.name](tmp_path)
    manifest = build_manifest(tmp_path, definition.name)
    write_manifest(manifest, default_manifest_path(tmp_path, definition.name))
    sizes = {split: len(manifest[split]) for split in ("train", "test")}
    return FakeTree(tmp_path, manifest["classnames"], sizes)


# --- bring-your-own data and the world ---------------------------------------------------------


def _image_folder(definition: DatasetDefinition, tmp_path: Path) -> FakeTree:
    for split, count in (("train", 2), ("test", 1)):
        for name in ("cat", "sea_lion"):
            for index in range(count):
                jpeg(tmp_path / split / name / f"{index}.png")
    return FakeTree(tmp_path, ["cat", "sea_lion"], {"train": 4, "test": 2})


def _csv(definition: DatasetDefinition, tmp_path: Path) -> FakeTree:
    for split, rows in (("train", ["a.jpg,dog", "b.jpg,cat"]), ("val", ["c.jpg,dog"])):
        (tmp_path / f"{split}.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
        for row in rows:
            jpeg(tmp_path / row.split(",")[0])
    return FakeTree(tmp_path, ["cat", "dog"], {"train": 2, "val": 1})


def _world(definition: DatasetDefinition, tmp_path: Path) -> FakeTree:
    shifted = definition.reader.keywords.get("shift") is not None
    per_class = {split: n for split, n in SPLIT_SIZES.items() if not shifted or split == "test"}
    classes = len(definition.classnames)
    sizes = {split: n * classes for split, n in per_class.items()}
    return FakeTree(None, list(definition.classnames), sizes, {"image_size": 16})


#: Reader → fake-tree factory. A dataset whose reader is missing here fails the registry tests.
FAKE_TREES: dict[Callable, FakeTreeFactory] = {
    read_zhou_split: _zhou,
    read_fgvc_aircraft: _aircraft,
    read_imagenet: _imagenet,
    read_imagenetv2: _imagenetv2,
    read_imagenet_sketch: _imagenet_sketch,
    read_imagenet_subset: _imagenet_subset,
    read_cifar100: _cifar,
    read_mnist: _mnist,
    read_mtil_split: _mtil_split,
    build_image_folder: _image_folder,
    build_csv: _csv,
    build_world_dataset: _world,
}


def reader_function(definition: DatasetDefinition) -> Callable:
    """The definition's reader, unwrapped from a ``functools.partial``."""
    return getattr(definition.reader, "func", definition.reader)


def fake_tree(definition: DatasetDefinition, tmp_path: Path) -> FakeTree:
    """Lays out the fake tree of ``definition`` under ``tmp_path``."""
    reader = reader_function(definition)
    if reader not in FAKE_TREES:
        raise LookupError(
            f"dataset '{definition.name}' is registered with the reader "
            f"{reader.__module__}.{reader.__qualname__}, which has no fake-tree factory. Add "
            "`<reader>: <factory>` to FAKE_TREES in tests/fake_datasets.py, the factory laying "
            "out a tiny tree in the reader's exact on-disk layout and returning a FakeTree."
        )
    return FAKE_TREES[reader](definition, tmp_path)


def publish_counts(monkeypatch, name: str, *counts, file_md5=None) -> None:
    """Replaces the published counts (and checksums) of ``name``'s definition for one test."""
    changes = {"counts": PublishedCounts(*counts)}
    if file_md5 is not None:
        changes["file_md5"] = file_md5
    definition = dataclasses.replace(dataset_definition(name), **changes)
    monkeypatch.setitem(registry._DATASETS, name, definition)
