"""Readers of the CoOp benchmark layouts, on fake trees in the exact on-disk formats."""

import pytest

from peftclip.data import build_dataset, dataset_definition, dataset_definitions
from peftclip.data.coop_datasets import read_zhou_split
from peftclip.data.fewshot import few_shot
from peftclip.errors import PeftClipError
from tests.fake_datasets import WNIDS, ZHOU_EXAMPLES, aircraft_tree
from tests.fake_datasets import classnames_file as _classnames_file
from tests.fake_datasets import jpeg as _jpeg
from tests.fake_datasets import zhou_tree as _zhou_tree

ZHOU_DATASETS = sorted(d.name for d in dataset_definitions() if d.reader is read_zhou_split)


@pytest.mark.parametrize("name", ZHOU_DATASETS)
def test_zhou_split_datasets_read_their_exact_layout(tmp_path, name):
    _zhou_tree(tmp_path, name)
    data = build_dataset(name, str(tmp_path))
    assert data.classnames == [classname for _, classname in ZHOU_EXAMPLES[name]]
    assert {split: len(d) for split, d in data.splits.items()} == {"train": 2, "val": 2, "test": 2}
    assert data.templates == list(dataset_definition(name).templates)
    assert all(path.is_file() for path, _ in data.splits["test"].samples)
    assert [label for _, label in data.splits["train"].samples] == [0, 1]
    assert len(few_shot(data, 1, seed=1).splits["train"]) == 2


def test_stanford_cars_paths_are_relative_to_the_dataset_folder(tmp_path):
    _zhou_tree(tmp_path, "stanford_cars")
    path, _ = build_dataset("stanford_cars", str(tmp_path)).splits["train"].samples[0]
    assert path == tmp_path / "stanford_cars" / "cars_train" / "00001_0.jpg"


def test_missing_split_file_and_missing_images_fail_clearly(tmp_path):
    directory = _zhou_tree(tmp_path, "oxford_pets", missing_image=True)
    with pytest.raises(PeftClipError, match=r"1 image\(s\) listed in .*split_zhou_OxfordPets.json"):
        build_dataset("oxford_pets", str(tmp_path))
    (directory / "split_zhou_OxfordPets.json").unlink()
    with pytest.raises(PeftClipError, match=r"has no split_zhou_OxfordPets\.json.*never generates"):
        build_dataset("oxford_pets", str(tmp_path))
    with pytest.raises(PeftClipError, match=r"expects the folder '.*dtd'"):
        build_dataset("dtd", str(tmp_path))


def test_fgvc_aircraft_reads_its_variant_files(tmp_path):
    aircraft_tree(tmp_path)
    data = build_dataset("fgvc_aircraft", str(tmp_path))
    assert data.classnames == ["707-320", "A300B4", "Boeing 717"]
    assert [label for _, label in data.splits["train"].samples] == [1, 2]


def test_imagenet_and_its_flat_val_pitfall(tmp_path):
    directory = tmp_path / "imagenet"
    _classnames_file(directory / "classnames.txt")
    for wnid in WNIDS:
        _jpeg(directory / "images" / "train" / wnid / "a.JPEG")
    _jpeg(directory / "images" / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(PeftClipError, match=r"holds its images flat.*valprep"):
        build_dataset("imagenet", str(tmp_path))
    (directory / "images" / "val" / "ILSVRC2012_val_00000001.JPEG").unlink()
    for wnid in WNIDS:
        _jpeg(directory / "images" / "val" / wnid / "v.JPEG")
    data = build_dataset("imagenet", str(tmp_path))
    assert len(data.classnames) == 1000 and data.classnames[7] == "class 7"
    assert set(data.splits) == {"train", "test"} and len(data.splits["test"]) == 1000
    assert data.splits["test"].samples[7][1] == 7


def test_imagenetv2_folders_are_sorted_numerically(tmp_path):
    _classnames_file(tmp_path / "imagenet" / "classnames.txt")  # the variant falls back to it
    base = tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val"
    for folder in ("2", "10", "999"):
        _jpeg(base / folder / "x.jpeg")
    data = build_dataset("imagenetv2", str(tmp_path))
    assert [label for _, label in data.splits["test"].samples] == [2, 10, 999]
    assert data.classnames[10] == "class 10"


def test_imagenet_sketch_accepts_the_archive_folder_name(tmp_path):
    directory = tmp_path / "imagenet-sketch"
    _classnames_file(directory / "classnames.txt")
    _jpeg(directory / "sketch" / WNIDS[3] / "sketch_1.JPEG")
    data = build_dataset("imagenet_sketch", str(tmp_path))
    assert data.splits["test"].samples[0][1] == 3 and len(data.classnames) == 1000


@pytest.mark.parametrize(
    ("name", "directory", "folder"),
    [
        ("imagenet_a", "imagenet-adversarial", "imagenet-a"),
        ("imagenet_r", "imagenet-rendition", "imagenet-r"),
    ],
)
def test_imagenet_a_and_r_use_a_head_of_their_own_classes(tmp_path, name, directory, folder):
    root = tmp_path / directory
    _classnames_file(root / "classnames.txt")
    for wnid in (WNIDS[900], WNIDS[6], WNIDS[42]):
        _jpeg(root / folder / wnid / "0.jpg")
    (root / folder / "README.txt").write_text("ignored")
    data = build_dataset(name, str(tmp_path))
    assert data.classnames == ["class 6", "class 42", "class 900"]
    assert [label for _, label in data.splits["test"].samples] == [0, 1, 2]


def test_imagenet_a_masked1000_head_keeps_imagenet_labels(tmp_path):
    root = tmp_path / "imagenet-adversarial"
    _classnames_file(root / "classnames.txt")
    for wnid in (WNIDS[900], WNIDS[6], WNIDS[42]):
        _jpeg(root / "imagenet-a" / wnid / "0.jpg")
    data = build_dataset("imagenet_a", str(tmp_path), head="masked1000")
    assert data.name == "imagenet_a:masked1000"
    assert len(data.classnames) == 1000 and data.classnames[42] == "class 42"
    assert data.class_mask == [6, 42, 900]
    assert [label for _, label in data.splits["test"].samples] == [6, 42, 900]
    assert build_dataset("imagenet_a", str(tmp_path)).class_mask is None  # CoOp's 200-way head
    with pytest.raises(PeftClipError, match="masked1000"):
        build_dataset("imagenet_r", str(tmp_path), head="1000")
