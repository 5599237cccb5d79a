"""Few-shot sampling equals Dassl's algorithm; base/new splits follow
docs/protocols/base-to-new.md."""

import random
from collections import defaultdict

import pytest
import torch

from peftclip.data import ClassificationData, LabeledImageTensors, build_dataset
from peftclip.data.fewshot import base_new_split, few_shot, sample_per_class
from peftclip.lightning.datamodule import PeftClipDataModule


def _dassl_generate_fewshot_dataset(data_source, num_shots):
    """Dassl's ``generate_fewshot_dataset`` (repeat=False), written out as the anchor has it."""
    tracker = defaultdict(list)
    for item in data_source:
        tracker[item[1]].append(item)
    dataset = []
    for _, items in tracker.items():
        sampled = random.sample(items, num_shots) if len(items) >= num_shots else items
        dataset.extend(sampled)
    return dataset


def _tensor_data(labels_by_split: dict[str, list[int]], n_classes: int) -> ClassificationData:
    splits = {
        split: LabeledImageTensors(
            torch.arange(len(labels)).view(-1, 1, 1, 1).expand(-1, 2, 2, 3).to(torch.uint8),
            torch.tensor(labels),
        )
        for split, labels in labels_by_split.items()
    }
    return ClassificationData("toy", [f"class {i}" for i in range(n_classes)], splits)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sampler_equals_dassl_on_the_same_listing(seed):
    rng = random.Random(0)
    train = [(f"img{i}.jpg", rng.randrange(7)) for i in range(120)]
    val = [(f"val{i}.jpg", rng.randrange(7)) for i in range(40)]
    random.seed(seed)  # the anchors seed Python's global RNG, then sample train, then val
    expected_train = _dassl_generate_fewshot_dataset(train, 16)
    expected_val = _dassl_generate_fewshot_dataset(val, 4)

    ours = random.Random(seed)
    train_positions = sample_per_class([label for _, label in train], 16, ours)
    val_positions = sample_per_class([label for _, label in val], 4, ours)
    assert [train[i] for i in train_positions] == expected_train
    assert [val[i] for i in val_positions] == expected_val


def test_few_shot_counts_and_determinism():
    labels = [i % 5 for i in range(100)] + [5, 5]  # class 5 has only 2 images
    data = _tensor_data({"train": labels, "val": labels, "test": labels}, 6)
    with pytest.warns(UserWarning, match=r"1 of 6 classes .*: 'class 5' \(2\)\.$"):
        sample = few_shot(data, 16, seed=1)
    counts = torch.bincount(torch.tensor(sample.splits["train"].targets))
    assert counts.tolist() == [16, 16, 16, 16, 16, 2]  # never repeated, never dropped
    assert torch.bincount(torch.tensor(sample.splits["val"].targets)).tolist() == [4] * 5 + [2]
    assert len(sample.splits["test"]) == len(labels)
    with pytest.warns(UserWarning):
        again, other = few_shot(data, 16, seed=1), few_shot(data, 16, seed=2)
    assert torch.equal(sample.splits["train"].images, again.splits["train"].images)
    assert not torch.equal(sample.splits["train"].images, other.splits["train"].images)


def test_base_new_split_relabels_each_half_from_zero():
    labels = [0, 1, 2, 3, 4] * 3
    data = _tensor_data({"train": labels, "test": labels}, 5)
    base, new = base_new_split(data, "base"), base_new_split(data, "new")
    assert base.classnames == ["class 0", "class 1", "class 2"]  # m = ceil(5 / 2) = 3
    assert new.classnames == ["class 3", "class 4"]
    assert sorted(set(base.splits["test"].targets)) == [0, 1, 2]
    assert sorted(set(new.splits["test"].targets)) == [0, 1]
    new_images = new.splits["test"].images[:, 0, 0, 0].tolist()
    assert [labels[i] for i in new_images] == [3, 4] * 3  # the right images went to "new"


def test_datamodule_applies_shots_then_subsample():
    datamodule = PeftClipDataModule("world_shapes", shots=4, seed=1, subsample="new")
    assert datamodule.classnames == list(build_dataset("world_shapes").classnames[5:])
    assert len(datamodule.data.splits["train"]) == 4 * 5
    assert len(datamodule.data.splits["test"]) == 25 * 5


def test_train_transform_eval_means_no_augmentation():
    datamodule = PeftClipDataModule("world_shapes", shots=1, train_transform="eval")
    datamodule.set_transforms("train-transform", "eval-transform")
    assert {d.transform for d in datamodule.data.splits.values()} == {"eval-transform"}
    datamodule = PeftClipDataModule("world_shapes", shots=1)
    datamodule.set_transforms("train-transform", "eval-transform")
    assert datamodule.data.splits["train"].transform == "train-transform"


def _pets(tmp_path):
    from tests.test_coop_datasets import _zhou_tree

    return _zhou_tree(tmp_path, "oxford_pets")


def test_manifest_is_written_with_relative_paths_and_reused(tmp_path, monkeypatch):
    import json

    import peftclip.data.fewshot as fewshot

    _pets(tmp_path)
    first = PeftClipDataModule("oxford_pets", root=str(tmp_path), shots=1, seed=3)
    path = tmp_path / ".peftclip" / "fewshot" / "oxford_pets" / "shot_1-seed_3-dassl.json"
    samples = first.data.splits["train"].samples
    manifest = json.loads(path.read_text())
    assert manifest["format"] == "peftclip-fewshot/1" and manifest["sampler"] == "dassl"
    assert manifest["source_split"]["file"] == "split_zhou_OxfordPets.json"
    assert [entry[0] for entry in manifest["train"]] == [
        file.relative_to(tmp_path / "oxford_pets" / "images").as_posix() for file, _ in samples
    ]

    def no_sampling(*args):
        raise AssertionError("sampled again instead of reusing the manifest")

    monkeypatch.setattr(fewshot, "sample_per_class", no_sampling)
    again = PeftClipDataModule("oxford_pets", root=str(tmp_path), shots=1, seed=3)
    assert again.data.splits["train"].samples == samples


def test_manifest_of_another_split_version_is_refused(tmp_path):
    directory = _pets(tmp_path)
    PeftClipDataModule("oxford_pets", root=str(tmp_path), shots=1).data  # noqa: B018
    split_file = directory / "split_zhou_OxfordPets.json"
    split_file.write_text(split_file.read_text().replace("]]", "] ]"))
    with pytest.raises(Exception, match="different version of the split"):
        PeftClipDataModule("oxford_pets", root=str(tmp_path), shots=1).data  # noqa: B018


def test_unwritable_cache_says_how_to_fix(tmp_path):
    _pets(tmp_path)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    datamodule = PeftClipDataModule(
        "oxford_pets", root=str(tmp_path), shots=1, cache_dir=str(blocker)
    )
    with pytest.raises(Exception, match=r"Set data\.cache_dir"):
        datamodule.data  # noqa: B018


def test_classes_short_of_k_are_named_in_one_warning_and_kept_whole(tmp_path):
    from PIL import Image

    for name, count in (("cat", 2), ("dog", 6), ("eel", 4)):
        folder = tmp_path / "train" / name
        folder.mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (4, 4)).save(folder / f"{i}.png")
    datamodule = PeftClipDataModule("image_folder", root=str(tmp_path), shots=4)
    with pytest.warns(UserWarning) as caught:
        train = datamodule.data.splits["train"]
    assert [str(w.message) for w in caught] == [
        "data.shots is 4, but 1 of 3 classes of 'image_folder' have fewer training images, and "
        "all of them are used (as in Dassl): 'cat' (2)."
    ]
    assert sorted(train.targets) == [0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    with pytest.warns(UserWarning, match=r"of 3 classes .*'cat' \(2\), 'dog' \(6\), 'eel' \(4\)"):
        PeftClipDataModule("image_folder", root=str(tmp_path), shots=100).data  # noqa: B018
    with pytest.warns(UserWarning, match=r"'cat' \(2\)\."):  # the reused manifest, too
        PeftClipDataModule("image_folder", root=str(tmp_path), shots=4).data  # noqa: B018
