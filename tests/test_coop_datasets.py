"""Readers of the CoOp benchmark layouts, on fake trees in the exact on-disk formats."""

import json

import pytest
from PIL import Image

from peftclip.backbone.templates import COOP_TEMPLATES
from peftclip.data import build_dataset
from peftclip.data.coop_datasets import ZHOU_LAYOUTS
from peftclip.data.fewshot import few_shot
from peftclip.errors import PeftClipError

# Per dataset: two (relative path, class name) examples in the anchors' naming style.
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


def _jpeg(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 6), (10, 200, 30)).save(path)


def _zhou_tree(root, name, missing_image=False):
    layout = ZHOU_LAYOUTS[name]
    directory = root / layout.directory
    entries = []
    for label, (relpath, classname) in enumerate(ZHOU_EXAMPLES[name]):
        for copy in range(3):
            rel = relpath.replace(".jpg", f"_{copy}.jpg")
            entries.append([rel, label, classname])
            if not (missing_image and copy == 2 and label == 1):
                _jpeg(directory / layout.image_prefix / rel)
    split = {"train": entries[0:1] + entries[3:4], "val": entries[1:2] + entries[4:5]}
    split["test"] = entries[2:3] + entries[5:6]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / layout.split_file).write_text(json.dumps(split))
    return directory


@pytest.mark.parametrize("name", sorted(ZHOU_LAYOUTS))
def test_zhou_split_datasets_read_their_exact_layout(tmp_path, name):
    _zhou_tree(tmp_path, name)
    data = build_dataset(name, str(tmp_path))
    assert data.classnames == [classname for _, classname in ZHOU_EXAMPLES[name]]
    assert {split: len(d) for split, d in data.splits.items()} == {"train": 2, "val": 2, "test": 2}
    assert data.templates == [COOP_TEMPLATES[name]]
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
    directory = tmp_path / "fgvc_aircraft"
    directory.mkdir()
    (directory / "variants.txt").write_text("707-320\nA300B4\nBoeing 717\n")
    for part, lines in {
        "train": ["0001 A300B4", "0002 Boeing 717"],
        "val": ["0003 707-320"],
        "test": ["0004 Boeing 717"],
    }.items():
        (directory / f"images_variant_{part}.txt").write_text("\n".join(lines) + "\n")
        for line in lines:
            _jpeg(directory / "images" / f"{line.split()[0]}.jpg")
    data = build_dataset("fgvc_aircraft", str(tmp_path))
    assert data.classnames == ["707-320", "A300B4", "Boeing 717"]
    assert [label for _, label in data.splits["train"].samples] == [1, 2]


WNIDS = [f"n{index:08d}" for index in range(1000)]


def _classnames_file(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{wnid} class {index}\n" for index, wnid in enumerate(WNIDS)))


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
