"""Bring-your-own datasets (folder per class, CSV) and their errors."""

import pytest
import torch
from PIL import Image

from peftclip.data import build_dataset, list_datasets
from peftclip.errors import PeftClipError


def _image(path, color=(255, 0, 0), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (8, 8), color if mode == "RGB" else 128).save(path)


def test_image_folder_with_splits(tmp_path):
    for split, n in (("train", 2), ("test", 1)):
        for name in ("dog", "cat"):
            for i in range(n):
                _image(tmp_path / split / name / f"{i}.jpg")
    (tmp_path / "train" / "dog" / ".DS_Store").write_text("junk")
    data = build_dataset("image_folder", str(tmp_path))
    assert data.classnames == ["cat", "dog"]
    assert set(data.splits) == {"train", "test"}
    assert len(data.splits["train"]) == 4
    assert [label for _, label in data.splits["test"].samples] == [0, 1]


def test_flat_image_folder_is_a_test_split_and_images_become_rgb(tmp_path):
    _image(tmp_path / "a" / "gray.png", mode="L")
    _image(tmp_path / "b" / "cmyk.jpg", mode="CMYK")
    data = build_dataset("image_folder", str(tmp_path))
    dataset = data.splits["test"]
    dataset.transform = lambda image: torch.tensor((*image.size, len(image.getbands())))
    assert [dataset[i][0].tolist() for i in range(2)] == [[8, 8, 3], [8, 8, 3]]


def test_empty_folder_and_empty_class_fail_clearly(tmp_path):
    with pytest.raises(PeftClipError, match="has no class folders"):
        build_dataset("image_folder", str(tmp_path))
    (tmp_path / "cat").mkdir()
    _image(tmp_path / "dog" / "0.jpg")
    with pytest.raises(PeftClipError, match=r"contain no images.*cat"):
        build_dataset("image_folder", str(tmp_path))
    with pytest.raises(PeftClipError, match="does not exist"):
        build_dataset("image_folder", str(tmp_path / "nope"))


def test_corrupt_image_is_reported_by_path(tmp_path):
    bad = tmp_path / "dog" / "broken.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    dataset = build_dataset("image_folder", str(tmp_path)).splits["test"]
    dataset.transform = lambda image: image
    with pytest.raises(PeftClipError, match=r"cannot read image '.*broken\.jpg'"):
        dataset[0]


def test_csv_dataset(tmp_path):
    _image(tmp_path / "img" / "a.jpg")
    _image(tmp_path / "img" / "b.jpg")
    (tmp_path / "train.csv").write_text("path,label\nimg/a.jpg,sea_lion\nimg/b.jpg,dog\n")
    (tmp_path / "test.csv").write_text("path,label\nimg/b.jpg,dog\n")
    data = build_dataset("csv", str(tmp_path))
    assert data.classnames == ["dog", "sea_lion"]
    assert [label for _, label in data.splits["train"].samples] == [1, 0]
    (tmp_path / "classnames.txt").write_text("sea_lion\ndog\n")
    assert build_dataset("csv", str(tmp_path)).classnames == ["sea_lion", "dog"]
    single = build_dataset("csv", str(tmp_path / "test.csv"))
    assert set(single.splits) == {"test"}


def test_csv_errors_name_the_row(tmp_path):
    (tmp_path / "test.csv").write_text("path,label\nmissing.jpg,dog\n")
    with pytest.raises(PeftClipError, match=r"1 missing files \(line 2: .*missing.jpg"):
        build_dataset("csv", str(tmp_path))
    (tmp_path / "test.csv").write_text("file,class\nx.jpg,dog\n")
    with pytest.raises(PeftClipError, match="'path,label' header"):
        build_dataset("csv", str(tmp_path))


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(PeftClipError, match=r"unknown dataset 'image_fodler'.*image_folder"):
        build_dataset("image_fodler", "x")
    assert {"image_folder", "csv", "world_objects"} <= set(list_datasets())


def test_unreadable_folder_fails_clearly(tmp_path, monkeypatch):
    _image(tmp_path / "dog" / "0.jpg")
    original = type(tmp_path).iterdir

    def denied(self):
        if self.name == "dog":
            raise PermissionError(13, "Permission denied")
        return original(self)

    monkeypatch.setattr(type(tmp_path), "iterdir", denied)
    with pytest.raises(PeftClipError, match=r"cannot list '.*dog' \(Permission denied\)"):
        build_dataset("image_folder", str(tmp_path))
