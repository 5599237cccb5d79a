"""MTIL split manifests (Caltech101, EuroSAT, SUN397) on fake torchvision trees.

See docs/datasets.md#mtil-datasets.

The reference is what ZSCL runs: torchvision's dataset classes, then
``random_split(dataset, [int(0.8 * n), n - int(0.8 * n)], generator=Generator().manual_seed(42))``.
"""

import json
import shutil

import pytest
import torch
import torchvision
from torch.utils.data import random_split

import peftclip.data.check as check
from peftclip.cli import main
from peftclip.data import build_dataset
from peftclip.data.mtil_classnames import (
    CALTECH101_CLASSNAMES,
    CALTECH101_FOLDERS,
    EUROSAT_CLASSNAMES,
)
from peftclip.data.mtil_splits import build_manifest, default_manifest_path, zscl_split
from peftclip.errors import PeftClipError
from tests.fake_datasets import caltech_tree as _caltech_tree
from tests.fake_datasets import eurosat_tree as _eurosat_tree
from tests.fake_datasets import jpeg as _touch
from tests.fake_datasets import publish_counts
from tests.fake_datasets import sun_tree as _sun_tree


def _zscl_reference(dataset):
    n = len(dataset)
    train, test = random_split(
        dataset, [int(0.8 * n), n - int(0.8 * n)], generator=torch.Generator().manual_seed(42)
    )
    return list(train.indices), list(test.indices)


def _refs(manifest, split):
    return [(ref, label) for ref, label, _ in manifest[split]]


def test_caltech101_split_equals_zscl_on_torchvision(tmp_path):
    folder = _caltech_tree(tmp_path)
    manifest = build_manifest(tmp_path, "caltech101")
    reference = torchvision.datasets.Caltech101(str(tmp_path))
    assert reference.categories == list(CALTECH101_FOLDERS)
    items = [
        (f"{reference.categories[y]}/image_{k:04d}.jpg", y)
        for y, k in zip(reference.y, reference.index, strict=True)
    ]
    train, test = _zscl_reference(reference)
    assert _refs(manifest, "train") == [items[i] for i in train]
    assert _refs(manifest, "test") == [items[i] for i in test]
    assert manifest["classnames"] == list(CALTECH101_CLASSNAMES)
    assert all(
        classname == CALTECH101_CLASSNAMES[label] for _, label, classname in manifest["test"]
    )
    assert all((folder / ref).is_file() for ref, _ in _refs(manifest, "train"))


def test_eurosat_split_equals_zscl_on_torchvision(tmp_path):
    folder = _eurosat_tree(tmp_path)
    manifest = build_manifest(tmp_path, "mtil_eurosat")
    reference = torchvision.datasets.EuroSAT(str(tmp_path))
    items = [(str(path)[len(str(folder)) + 1 :], label) for path, label in reference.samples]
    assert "Forest/extra/Forest_0.JPG" in dict(items)
    train, test = _zscl_reference(reference)
    assert _refs(manifest, "train") == [items[i] for i in train]
    assert _refs(manifest, "test") == [items[i] for i in test]
    assert manifest["classnames"] == list(EUROSAT_CLASSNAMES)


def test_sun397_split_uses_sorted_paths_and_zscl_names(tmp_path):
    folder = _sun_tree(tmp_path)
    manifest = build_manifest(tmp_path, "sun397")
    reference = torchvision.datasets.SUN397(str(tmp_path))
    # torchvision keeps rglob's order; peftclip sorts it, then splits as ZSCL does.
    pairs = sorted(
        (path.relative_to(folder).as_posix(), label)
        for path, label in zip(reference._image_files, reference._labels, strict=True)
    )
    train, test = _zscl_reference(pairs)
    assert _refs(manifest, "train") == [pairs[i] for i in train]
    assert _refs(manifest, "test") == [pairs[i] for i in test]
    assert manifest["classnames"] == [
        "abbey",
        "apartment building/outdoor",
        "bakery/shop",
        "beach",
    ]
    assert [c.replace("_", " ") for c in reference.classes] == manifest["classnames"]


@pytest.mark.parametrize("count", [2, 5, 13, 97, 8677, 27_000, 108_754])
def test_train_size_is_zscl_int_of_the_float_product(count):
    train, test = zscl_split(count)
    assert len(train) == int(0.8 * count) and len(test) == count - int(0.8 * count)
    assert sorted(train + test) == list(range(count))


def test_same_tree_gives_the_same_manifest_file(tmp_path, capsys):
    _eurosat_tree(tmp_path)
    first, second = tmp_path / "one.json", tmp_path / "two.json"
    for path in (first, second):
        assert main(["data", "mtil-manifest", "--root", str(tmp_path), "--dataset", "eurosat",
                     "--output", str(path)]) == 0  # fmt: skip
    assert first.read_bytes() == second.read_bytes()
    assert capsys.readouterr().out.count("sha256") == 2
    content = json.loads(first.read_text())
    assert content["split"]["train_size"] == len(content["train"])
    assert not any(ref.startswith("/") for ref, _, _ in content["train"] + content["test"])


def test_generated_manifest_is_read_from_the_cache(tmp_path):
    _caltech_tree(tmp_path)
    assert main(["data", "mtil-manifest", "--root", str(tmp_path), "--dataset", "caltech101"]) == 0
    assert default_manifest_path(tmp_path, "caltech101").is_file()
    data = build_dataset("mtil_caltech101", str(tmp_path))
    total = sum(1 + position % 3 for position in range(1, 102))
    assert len(data.splits["train"]) == int(0.8 * total)
    assert len(data.splits["train"]) + len(data.splits["test"]) == total
    assert data.classnames == list(CALTECH101_CLASSNAMES) and data.templates == ["a photo of a {}."]
    assert data.split_file == default_manifest_path(tmp_path, "caltech101")


def test_manifest_resolves_against_the_coop_tree(tmp_path):
    torchvision_root, coop_root = tmp_path / "mtil", tmp_path / "coop"
    _caltech_tree(torchvision_root)
    manifest = tmp_path / "caltech101.json"
    main(["data", "mtil-manifest", "--root", str(torchvision_root), "--dataset", "caltech101",
          "--output", str(manifest)])  # fmt: skip
    shutil.copytree(torchvision_root / "caltech101", coop_root / "caltech-101")
    data = build_dataset("mtil_caltech101", str(coop_root), manifest=str(manifest))
    path, _ = data.splits["test"].samples[0]
    assert path.is_relative_to(coop_root / "caltech-101" / "101_ObjectCategories")


def test_missing_manifest_says_how_to_generate_it(tmp_path):
    _sun_tree(tmp_path)
    with pytest.raises(
        PeftClipError, match=r"peftclip data mtil-manifest --root .* --dataset sun397"
    ):
        build_dataset("mtil_sun397", str(tmp_path))
    with pytest.raises(PeftClipError, match="expects the folder"):
        build_dataset("mtil_eurosat", str(tmp_path))


def test_faults_in_the_tree_are_named(tmp_path):
    folder = _caltech_tree(tmp_path)
    (folder / "Faces" / ".DS_Store").write_bytes(b"")  # torchvision would count it as an image
    with pytest.raises(PeftClipError, match=r"has 3 entries but no image_0003\.jpg"):
        build_manifest(tmp_path, "caltech101")
    (folder / "Faces" / ".DS_Store").unlink()
    shutil.rmtree(folder / "yin_yang")
    with pytest.raises(PeftClipError, match="missing: yin_yang"):
        build_manifest(tmp_path, "caltech101")
    sun = _sun_tree(tmp_path / "sun")
    _touch(sun / "c" / "castle" / "sun_x.jpg")
    with pytest.raises(PeftClipError, match=r"class folder 'castle', which .*ClassName\.txt"):
        build_manifest(tmp_path / "sun", "sun397")


def test_missing_images_and_changed_manifests_are_refused(tmp_path):
    folder = _eurosat_tree(tmp_path)
    assert main(["data", "mtil-manifest", "--root", str(tmp_path), "--dataset", "eurosat"]) == 0
    data = build_dataset("mtil_eurosat", str(tmp_path))
    lost, _ = data.splits["test"].samples[0]
    lost.unlink()
    with pytest.raises(PeftClipError, match="do not exist under"):
        build_dataset("mtil_eurosat", str(tmp_path))
    # The tree changed: regenerating would silently change the split, so it needs --force.
    assert main(["data", "mtil-manifest", "--root", str(tmp_path), "--dataset", "eurosat"]) == 2
    args = ["data", "mtil-manifest", "--root", str(tmp_path), "--dataset", "eurosat", "--force"]
    assert main(args) == 0
    assert len(build_dataset("mtil_eurosat", str(tmp_path)).splits["test"]) >= 1
    assert folder.is_dir()


def test_data_check_reads_the_manifest(tmp_path, monkeypatch):
    _eurosat_tree(tmp_path)
    assert check.check_dataset("mtil_eurosat", str(tmp_path)).status == "problem"  # no manifest
    main(["data", "mtil-manifest", "--root", str(tmp_path), "--dataset", "eurosat"])
    n = sum(1 + position % 4 for position in range(10)) + 1
    publish_counts(monkeypatch, "mtil_eurosat", 10, int(0.8 * n), None, n - int(0.8 * n))
    result = check.check_dataset("mtil_eurosat", str(tmp_path), decode=False)
    assert result.status == "ok", result.problems
    assert "mtil_eurosat" not in check.default_names()
