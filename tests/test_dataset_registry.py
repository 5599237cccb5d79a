"""Every registered dataset, because it is registered: a fake tree in its exact layout is read
back, ``data check`` compares it with the definition's published counts, and the definition's
facts (templates, base/new sizes) are the ones the rest of peftclip uses."""

import dataclasses
import hashlib
import math
import subprocess
import sys
from functools import partial

import numpy as np
import pytest
import torch

import peftclip.data.check as check
import peftclip.data.registry as registry
from peftclip.data import (
    SPLITS,
    ClassificationData,
    DatasetDefinition,
    LabeledImageTensors,
    PublishedCounts,
    build_dataset,
    dataset_definition,
    dataset_definitions,
    list_datasets,
    register_dataset,
    resolve_templates,
    template_sets,
)
from peftclip.data.fewshot import base_new_labels
from peftclip.errors import PeftClipError
from tests.fake_datasets import fake_tree

COUNTED = [d.name for d in dataset_definitions() if d.counts is not None]


def _to_tensor(image):
    return torch.from_numpy(np.asarray(image).copy())


@pytest.mark.parametrize("name", list_datasets())
def test_every_registered_dataset_reads_its_fake_tree(tmp_path, name):
    definition = dataset_definition(name)
    fake = fake_tree(definition, tmp_path)
    data = build_dataset(name, None if fake.root is None else str(fake.root), **fake.options)
    assert data.name == name
    assert data.classnames == fake.classnames
    assert {split: len(dataset) for split, dataset in data.splits.items()} == fake.sizes
    assert data.templates == list(definition.templates)
    if definition.classnames is not None:
        assert data.classnames == list(definition.classnames)
    if definition.counts is not None:  # the splits that exist are the published ones
        published = {split for split in SPLITS if definition.counts.split_size(split) is not None}
        assert set(data.splits) == published
    for dataset in data.splits.values():
        dataset.transform = _to_tensor
        image, label = dataset[len(dataset) - 1]
        assert image.numel() > 0 and 0 <= label < len(data.classnames)
        for path, _ in getattr(dataset, "samples", []):
            assert path.is_file() and (
                data.image_root is None or path.is_relative_to(data.image_root)
            )


def test_a_reader_without_a_fake_tree_factory_says_what_to_add(tmp_path):
    def read_new_layout(definition, root=None):
        raise AssertionError("never read")

    with pytest.raises(LookupError, match=r"read_new_layout.*Add .* FAKE_TREES in tests/fake_"):
        fake_tree(DatasetDefinition("new_layout_dataset", read_new_layout), tmp_path)


@pytest.mark.parametrize("name", COUNTED)
def test_data_check_compares_every_counted_dataset_with_its_definition(tmp_path, name, monkeypatch):
    definition = dataset_definition(name)
    fake = fake_tree(definition, tmp_path)
    counts = definition.counts
    result = check.check_dataset(name, str(fake.root), decode=False)
    assert result.status == "problem"
    if len(fake.classnames) != counts.classes:
        assert f"{len(fake.classnames)} classes, expected {counts.classes}" in result.problems
    for split, found in fake.sizes.items():
        assert f"{split}: {found} images, expected {counts.split_size(split)}" in result.problems
    for relpath in definition.file_md5:
        assert any(f"{relpath}' differs from the official file" in p for p in result.problems)
    # With the fake tree's own sizes and checksums as the published ones, the same tree passes.
    base, new = (len(labels) for labels in base_new_labels(build_dataset(name, str(fake.root))))
    own = PublishedCounts(len(fake.classnames), *(fake.sizes.get(s) for s in SPLITS))
    if counts.base is not None:
        own = dataclasses.replace(own, base=base, new=new)
    md5 = {
        path: hashlib.md5((fake.root / path).read_bytes()).hexdigest()
        for path in definition.file_md5
    }
    replaced = dataclasses.replace(definition, counts=own, file_md5=md5)
    monkeypatch.setitem(registry._DATASETS, name, replaced)
    assert check.check_dataset(name, str(fake.root), decode=False).status == "ok"


def test_data_check_knows_exactly_the_definitions_with_published_counts():
    assert check.checked_names() == COUNTED
    assert {d.name for d in dataset_definitions() if d.counts is None} == {
        name for name in list_datasets() if name.startswith("world_")
    } | {"image_folder", "csv"}
    assert check.default_names() == [
        name for name in COUNTED if dataset_definition(name).check_by_default
    ]
    assert {"mtil_caltech101", "mtil_eurosat", "mtil_sun397"}.isdisjoint(check.default_names())
    with pytest.raises(PeftClipError, match=r"no published counts.*data check knows imagenet"):
        check.check_dataset("world_shapes", "unused")


def test_published_base_new_sizes_follow_the_half_split_rule():
    with_base_new = [d for d in dataset_definitions() if d.counts and d.counts.base is not None]
    assert len(with_base_new) == 11  # the base-to-new benchmark's datasets
    for definition in with_base_new:
        n = definition.counts.classes
        data = ClassificationData(
            definition.name,
            [f"c{i}" for i in range(n)],
            {"train": LabeledImageTensors(torch.zeros(n, 1, 1, 3), torch.arange(n))},
        )
        base, new = base_new_labels(data)
        assert (len(base), len(new)) == (definition.counts.base, definition.counts.new)
        assert len(base) == math.ceil(n / 2) and base + new == list(range(n))


def test_coop_template_sets_are_the_coop_definitions_templates():
    coop = [d for d in dataset_definitions() if d.benchmark == "coop"]
    assert len(coop) == 15
    for definition in coop:
        assert resolve_templates(f"coop:{definition.name}") == list(definition.templates)
    assert {name for name in template_sets() if name.startswith("coop:")} == {
        f"coop:{d.name}" for d in coop
    }


def test_a_new_zhou_dataset_is_one_definition(tmp_path, monkeypatch):
    """CONTRIBUTING.md's recipe: one register_dataset call gives a readable dataset, its
    ``coop:`` template set and its ``data check`` entry."""
    from peftclip.data.coop_datasets import ZhouLayout, read_zhou_split

    monkeypatch.setattr(registry, "_DATASETS", dict(registry._DATASETS))
    definition = register_dataset(
        DatasetDefinition(
            "country211",
            read_zhou_split,
            ZhouLayout("country211", "images", "split_zhou_Country211.json"),
            templates=("a photo i took in {}.",),
            counts=PublishedCounts(211, 31_650, 10_550, 21_100, base=106, new=105),
            benchmark="coop",
        )
    )
    fake = fake_tree(definition, tmp_path)
    assert build_dataset("country211", str(fake.root)).classnames == fake.classnames
    assert resolve_templates("coop:country211") == ["a photo i took in {}."]
    assert "country211" in check.default_names()
    assert (
        check.check_dataset("country211", str(fake.root)).problems[0] == "2 classes, expected 211"
    )


def test_definitions_refuse_inconsistent_facts():
    reader = partial(build_dataset, "csv")
    with pytest.raises(ValueError, match=r"exactly one '\{\}'"):
        DatasetDefinition("bad", reader, templates=("a photo of a cat.",))
    with pytest.raises(ValueError, match="2 class names but published counts say 3"):
        DatasetDefinition("bad", reader, classnames=("a", "b"), counts=PublishedCounts(3, 1, 1, 1))
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(DatasetDefinition("oxford_pets", reader))


def test_registries_need_no_import_of_the_world_or_the_readers():
    """A fresh interpreter: importing the backbone or the data package pulls in neither the world
    nor the readers; the first lookup registers everything peftclip ships."""
    code = """
import sys
import peftclip.backbone
assert not [m for m in sys.modules if m.startswith(("peftclip.data", "peftclip.world"))]
import peftclip.data
assert not [m for m in sys.modules if m.startswith(("peftclip.world", "peftclip.data.coop"))]
from peftclip.data import list_datasets
assert {"world_objects", "oxford_pets", "mtil_sun397", "csv"} <= set(list_datasets())
from peftclip.backbone import list_models, load_backbone
assert "peftclip-world-tiny" in list_models()
backbone = load_backbone("peftclip-world-tiny", pretrained="world")
assert type(backbone.tokenizer).__name__ == "WordTokenizer", type(backbone.tokenizer)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
