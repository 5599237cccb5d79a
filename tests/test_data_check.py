"""``peftclip data check`` reports each kind of fault and sets the exit code."""

import hashlib
import pickle

import numpy as np
import pytest

import peftclip.data.check as check
from peftclip.cli import main
from peftclip.data import dataset_definition
from tests.fake_datasets import cifar_files as _cifar
from tests.fake_datasets import idx_file as _idx
from tests.fake_datasets import mnist_files, publish_counts
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
