"""``peftclip data check`` reports each kind of fault and sets the exit code."""

import hashlib
import json
import pickle

import numpy as np
import pytest

import peftclip.data.check as check
from peftclip.cli import main
from peftclip.data import dataset_definition
from tests.fake_datasets import cifar_files as _cifar
from tests.fake_datasets import fake_tree, jpeg, mnist_files, publish_counts
from tests.fake_datasets import idx_file as _idx
from tests.fake_datasets import zhou_tree as _zhou_tree


@pytest.fixture
def pets_root(tmp_path, monkeypatch):
    _zhou_tree(tmp_path, "oxford_pets")
    # The fake tree has 2 classes and 2 images per split: make that the expectation.
    publish_counts(monkeypatch, "oxford_pets", 2, 2, 2, 2)
    return tmp_path


def test_a_complete_dataset_passes(pets_root, capsys):
    assert main(["data", "check", "--root", str(pets_root), "oxford_pets"]) == 0
    assert "ok" in capsys.readouterr().out


def test_count_and_class_mismatches_fail(pets_root, monkeypatch):
    publish_counts(monkeypatch, "oxford_pets", 37, 2944, 736, 3669)
    result = check.check_dataset("oxford_pets", str(pets_root))
    assert result.status == "problem"
    assert "2 classes, expected 37" in result.problems
    assert "train: 2 images, expected 2944" in result.problems


def test_corrupt_images_are_listed(pets_root, capsys):
    broken = next((pets_root / "oxford_pets" / "images").glob("Abyssinian_1_0.jpg"))
    broken.write_bytes(b"\xff\xd8 truncated")
    assert main(["data", "check", "--root", str(pets_root), "oxford_pets"]) == 1
    result = check.check_dataset("oxford_pets", str(pets_root))
    assert result.problems == [f"1 unreadable image(s): {broken}"]
    assert check.check_dataset("oxford_pets", str(pets_root), decode=False).status == "ok"


def test_missing_split_file_and_missing_datasets(pets_root, monkeypatch):
    (pets_root / "oxford_pets" / "split_zhou_OxfordPets.json").unlink()
    result = check.check_dataset("oxford_pets", str(pets_root))
    assert result.status == "problem" and "split_zhou_OxfordPets.json" in result.problems[0]
    missing = check.check_dataset("dtd", str(pets_root))
    assert missing.status == "missing" and missing.problems == [f"no folder {pets_root / 'dtd'}"]


def test_absent_datasets_fail_only_when_named(pets_root, monkeypatch):
    assert main(["data", "check", "--root", str(pets_root)]) == 0  # all others absent
    assert main(["data", "check", "--root", str(pets_root), "dtd"]) == 1


def test_unknown_dataset_name_is_a_user_error(tmp_path, capsys):
    assert main(["data", "check", "--root", str(tmp_path), "petz"]) == 2
    assert "not petz" in capsys.readouterr().err


# --- CIFAR100 and MNIST (torchvision formats, held in memory) ---------------------------------


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    _cifar(tmp_path)  # 6 train / 4 test images, 100 classes
    directory = tmp_path / "cifar-100-python"
    md5 = {f"cifar-100-python/{n}": _md5(directory / n) for n in ("train", "test", "meta")}
    publish_counts(monkeypatch, "cifar100", 100, 6, None, 4, file_md5=md5)
    return tmp_path


@pytest.fixture
def mnist_root(tmp_path, monkeypatch):
    mnist_files(tmp_path)  # 3 train / 2 test images
    publish_counts(monkeypatch, "mnist", 10, 3, None, 2)
    return tmp_path


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_complete_cifar100_and_mnist_pass(cifar_root, mnist_root, capsys):
    assert check.check_dataset("cifar100", str(cifar_root)).status == "ok"
    result = check.check_dataset("mnist", str(mnist_root))
    assert result.status == "ok" and result.counts == {"train": 3, "test": 2}
    assert main(["data", "check", "--root", str(mnist_root), "mnist"]) == 0


def test_cifar100_and_mnist_counts_are_the_official_ones(cifar_root, mnist_root, monkeypatch):
    publish_counts(
        monkeypatch,
        "cifar100",
        100,
        50_000,
        None,
        10_000,
        file_md5=dict(dataset_definition("cifar100").file_md5),
    )  # the fixture's checksums
    publish_counts(monkeypatch, "mnist", 10, 60_000, None, 10_000)
    cifar = check.check_dataset("cifar100", str(cifar_root))
    assert cifar.problems == ["train: 6 images, expected 50000", "test: 4 images, expected 10000"]
    mnist = check.check_dataset("mnist", str(mnist_root))
    assert "train: 3 images, expected 60000" in mnist.problems


def test_cifar100_file_that_torchvision_would_refuse_is_named(cifar_root, monkeypatch):
    cifar = dataset_definition("cifar100")
    official = dict(cifar.file_md5, **{"cifar-100-python/test": "f0ef6b0a"})
    publish_counts(monkeypatch, "cifar100", 100, 6, None, 4, file_md5=official)
    result = check.check_dataset("cifar100", str(cifar_root))
    assert result.status == "problem" and len(result.problems) == 1
    assert "cifar-100-python/test' differs from the official file" in result.problems[0]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "test").unlink(), "test' is missing; extract cifar-100-python.tar.gz"),
        (lambda d: (d / "train").write_bytes(b"\x80\x04truncated"), "not a readable CIFAR-100"),
        (
            lambda d: (d / "meta").write_bytes(pickle.dumps({"coarse_label_names": []})),
            "has no 'fine_label_names' entry",
        ),
        (
            lambda d: (d / "test").write_bytes(
                pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [1]})
            ),
            "one 3072-byte row per label",
        ),
    ],
)
def test_damaged_cifar100_files_are_named(cifar_root, damage, message):
    damage(cifar_root / "cifar-100-python")
    result = check.check_dataset("cifar100", str(cifar_root))
    assert result.status == "problem" and message in result.problems[0]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: (r / "train-labels-idx1-ubyte").unlink(), "(or its .gz) is missing"),
        (
            lambda r: (r / "train-images-idx3-ubyte").write_bytes(
                (r / "train-images-idx3-ubyte").read_bytes()[:-10]
            ),
            "is truncated or damaged",
        ),
        (lambda r: (r / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip"), "cannot read"),
        (
            lambda r: _idx(r / "train-labels-idx1-ubyte", np.array([0, 1])),
            "one 28×28 image per label",
        ),
    ],
)
def test_damaged_mnist_files_are_named(mnist_root, damage, message):
    damage(mnist_root / "MNIST" / "raw")
    result = check.check_dataset("mnist", str(mnist_root))
    assert result.status == "problem" and message in result.problems[0]
    assert main(["data", "check", "--root", str(mnist_root), "mnist"]) == 1


def test_absent_cifar100_and_mnist_are_missing_not_failing(tmp_path):
    for name, folder in (("cifar100", "cifar-100-python"), ("mnist", "MNIST/raw")):
        result = check.check_dataset(name, str(tmp_path))
        assert result.status == "missing" and result.problems == [f"no folder {tmp_path / folder}"]


def _truncated_jpeg(path):
    """A JPEG cut in half: its header parses, decoding its pixels fails."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with Image.open(path) as image:
        assert image.size == (64, 64)  # what a header-only check sees


def test_a_truncated_jpeg_is_found_by_the_default_check(pets_root, capsys):
    broken = pets_root / "oxford_pets" / "images" / "Abyssinian_1_0.jpg"
    _truncated_jpeg(broken)
    assert main(["data", "check", "--root", str(pets_root), "oxford_pets"]) == 1
    assert check.check_dataset("oxford_pets", str(pets_root)).problems == [
        f"1 unreadable image(s): {broken}"
    ]


def test_the_training_error_says_how_to_fix_a_truncated_image(pets_root):
    from peftclip.data import build_dataset
    from peftclip.errors import PeftClipError

    broken = pets_root / "oxford_pets" / "images" / "Abyssinian_1_0.jpg"
    _truncated_jpeg(broken)
    train = build_dataset("oxford_pets", str(pets_root)).splits["train"]
    train.transform = lambda image: image
    position = [path for path, _ in train.samples].index(broken)
    with pytest.raises(PeftClipError) as error:
        train[position]
    message = str(error.value)
    assert message.startswith(f"cannot read image '{broken}' (image file is truncated")
    assert (
        "Replace it with a good copy, or drop it from the dataset (its line in the split" in message
    )
    assert "`peftclip data check --root DATA DATASET` lists every unreadable image." in message


# --- a partial root: --partial and --shots ------------------------------------------------------


@pytest.fixture
def partial_root(tmp_path):
    """ImageNet with one train and one val image per class (of 1,281,167 and 50,000 published),
    and nothing else: the published counts are the real ones."""
    fake_tree(dataset_definition("imagenet"), tmp_path)
    return tmp_path


def _check(capsys, root, *args):
    status = main(["data", "check", "--root", str(root), *args])
    out, err = capsys.readouterr()
    return status, out.splitlines(), err


def test_counts_below_the_published_ones_are_warnings_under_partial(partial_root, capsys):
    status, lines, _ = _check(capsys, partial_root, "imagenet", "--partial")
    assert status == 0
    assert lines == [
        f"peftclip data check — {partial_root} (--partial)",
        "imagenet  warning      1000 classes; train 1000, test 1000",
        "    warning: train: 1000 images of 1281167 published",
        "    warning: test: 1000 images of 50000 published",
        "1 dataset(s): 0 ok, 1 with warnings, 0 with problems, 0 not present",
    ]
    # Without --partial the same tree fails, as before, and the last line says what --partial does.
    status, lines, _ = _check(capsys, partial_root, "imagenet")
    assert status == 1
    assert "    problem: train: 1000 images, expected 1281167" in lines
    assert lines[-1] == (
        "Counts below the published ones are warnings with --partial (a partial root)."
    )


def test_absent_datasets_are_not_present_under_partial_unless_named(partial_root, capsys):
    status, lines, _ = _check(capsys, partial_root, "--partial")
    assert status == 0
    assert f"dtd              not present  no folder {partial_root / 'dtd'}" in lines
    assert lines[-1] == "17 dataset(s): 0 ok, 1 with warnings, 0 with problems, 16 not present"
    status, lines, _ = _check(capsys, partial_root, "--partial", "imagenet", "dtd")
    assert status == 1
    assert lines[4:] == [
        f"dtd       problem      no folder {partial_root / 'dtd'}",
        "2 dataset(s): 0 ok, 1 with warnings, 1 with problems, 0 not present",
    ]


def test_a_corrupt_image_is_a_problem_under_partial(pets_root, capsys, monkeypatch):
    publish_counts(monkeypatch, "oxford_pets", 37, 2944, 736, 3669)
    broken = pets_root / "oxford_pets" / "images" / "Abyssinian_1_0.jpg"
    _truncated_jpeg(broken)
    status, lines, _ = _check(capsys, pets_root, "oxford_pets", "--partial")
    assert status == 1
    assert lines[1:4] == [
        "oxford_pets  problem      2 classes; train 2, val 2, test 2",
        f"    problem: 1 unreadable image(s): {broken}",
        "    warning: 2 classes of 37 published",
    ]


def test_a_missing_listed_image_is_a_problem_under_partial(tmp_path, capsys, monkeypatch):
    _zhou_tree(tmp_path, "oxford_pets", missing_image=True)
    status, lines, _ = _check(capsys, tmp_path, "oxford_pets", "--partial")
    assert status == 1
    assert lines[1].startswith("oxford_pets  problem      1 image(s) listed in ")


def test_counts_above_the_published_ones_and_checksums_stay_problems(
    pets_root, cifar_root, capsys, monkeypatch
):
    publish_counts(monkeypatch, "oxford_pets", 2, 1, 2, 3)
    result = check.check_dataset("oxford_pets", str(pets_root), partial=True)
    assert (result.status, result.problems) == ("problem", ["train: 2 images, expected 1"])
    assert result.warnings == ["test: 2 images of 3 published"]
    cifar = dataset_definition("cifar100")
    official = dict(cifar.file_md5, **{"cifar-100-python/test": "f0ef6b0a"})
    publish_counts(monkeypatch, "cifar100", 100, 50_000, None, 10_000, file_md5=official)
    status, lines, _ = _check(capsys, cifar_root, "cifar100", "--partial")
    assert status == 1
    assert "differs from the official file" in lines[2] and lines[2].startswith("    problem: ")
    assert lines[3:5] == [
        "    warning: train: 6 images of 50000 published",
        "    warning: test: 4 images of 10000 published",
    ]


def _uneven_pets(root, train_per_class):
    """oxford_pets with ``train_per_class[i]`` train images of class ``c<i>``, one val and one
    test image per class, published counts equal to the tree's."""
    directory = root / "oxford_pets"
    entries = {"train": [], "val": [], "test": []}
    for label, n in enumerate(train_per_class):
        for split, count in (("train", n), ("val", 1), ("test", 1)):
            for index in range(count):
                relpath = f"c{label}_{split}_{index}.jpg"
                jpeg(directory / "images" / relpath)
                entries[split].append([relpath, label, f"c{label}"])
    (directory / "split_zhou_OxfordPets.json").write_text(json.dumps(entries))
    classes = len(train_per_class)
    return classes, sum(train_per_class), classes, classes


def test_shots_names_the_classes_short_of_k(tmp_path, capsys, monkeypatch):
    publish_counts(monkeypatch, "oxford_pets", *_uneven_pets(tmp_path, [4, 1, 4, 3]))
    status, lines, _ = _check(capsys, tmp_path, "oxford_pets", "--shots", "4")
    assert status == 0
    assert lines[1:] == [
        "oxford_pets  warning      4 classes; train 12, val 4, test 4",
        "    warning: --shots 4: 2 of 4 classes of 'oxford_pets' have fewer training images, "
        "and all of them are used (as in Dassl): 'c1' (1), 'c3' (3)",
        "1 dataset(s): 0 ok, 1 with warnings, 0 with problems, 0 not present",
    ]
    status, lines, _ = _check(capsys, tmp_path, "oxford_pets", "--shots", "1")
    assert status == 0 and lines[1:] == [
        "oxford_pets  ok           4 classes; train 12, val 4, test 4",
        "1 dataset(s): 1 ok, 0 with warnings, 0 with problems, 0 not present",
    ]


def test_shots_lists_a_few_classes_and_counts_the_rest(partial_root, capsys):
    status, lines, _ = _check(capsys, partial_root, "imagenet", "--partial", "--shots", "2")
    assert status == 0
    assert lines[-2] == (
        "    warning: --shots 2: 1000 of 1000 classes of 'imagenet' have fewer training images, "
        "and all of them are used (as in Dassl): 'class 0' (1), 'class 1' (1), 'class 2' (1), "
        "'class 3' (1), 'class 4' (1) and 995 more"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shots", "0"], "--shots must be at least 1 (training images per class); got 0."),
        (["--shots", "-3"], "--shots must be at least 1 (training images per class); got -3."),
        (["--root", "/no/such/root"], "--root '/no/such/root' is not a folder; give the data"),
    ],
)
def test_bad_options_are_one_line_errors(pets_root, capsys, args, message):
    status, lines, err = _check(capsys, pets_root, *args)
    assert status == 2 and lines == []
    assert err.startswith(f"peftclip: error: {message}") and err.count("\n") == 1


def test_classes_without_train_images_under_partial(tmp_path, capsys, monkeypatch):
    # 4 classes as published, but 2 without train images: base/new then splits 2 classes, not 4.
    publish_counts(monkeypatch, "oxford_pets", 4, 5, 4, 4, 2, 2)
    _uneven_pets(tmp_path, [2, 0, 3, 0])
    result = check.check_dataset("oxford_pets", str(tmp_path), partial=True, shots=1)
    assert result.problems == []
    assert result.warnings == [
        "base/new: 1/1 classes of 2/2 published",
        "--shots 1: 2 of 4 classes of 'oxford_pets' have fewer training images, and all of them "
        "are used (as in Dassl): 'c1' (0), 'c3' (0)",
    ]
    assert check.check_dataset("oxford_pets", str(tmp_path)).problems == [
        "base/new: 1/1 classes, expected 2/2 (base-to-new splits the classes present in train)"
    ]
