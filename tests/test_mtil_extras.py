"""CIFAR100 and MNIST readers on fake files in torchvision's exact formats."""

import gzip
import pickle

import numpy as np
import pytest
import torch

from peftclip.data import build_dataset
from peftclip.errors import PeftClipError


def _cifar(root, n_train=6, n_test=4):
    directory = root / "cifar-100-python"
    directory.mkdir(parents=True)
    names = [f"class_{i}" for i in range(100)]
    names[4] = "aquarium_fish"
    (directory / "meta").write_bytes(pickle.dumps({"fine_label_names": names}))
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        content = {b"data": data, b"fine_labels": list(range(n)), b"coarse_labels": [0] * n}
        (directory / split).write_bytes(pickle.dumps(content))
    return data


def test_cifar100_reads_channel_first_rows_into_rgb_images(tmp_path):
    test_rows = _cifar(tmp_path)
    data = build_dataset("cifar100", str(tmp_path))
    assert len(data.classnames) == 100 and data.classnames[4] == "aquarium_fish"
    assert len(data.splits["train"]) == 6 and len(data.splits["test"]) == 4
    image = data.splits["test"].images[1]
    assert image.shape == (32, 32, 3)
    assert image[0, 1, 0] == test_rows[1][1] and image[0, 1, 2] == test_rows[1][2048 + 1]
    assert data.splits["test"].labels.tolist() == [0, 1, 2, 3]


def test_cifar_pickle_with_foreign_globals_is_refused(tmp_path):
    _cifar(tmp_path)
    (tmp_path / "cifar-100-python" / "meta").write_bytes(pickle.dumps({"x": print}))
    with pytest.raises(PeftClipError, match="refused"):
        build_dataset("cifar100", str(tmp_path))


def _idx(path, array, compress=False):
    header = b"\x00\x00\x08" + bytes([array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def test_mnist_reads_idx_files_plain_and_gzipped(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.arange(5 * 28 * 28, dtype=np.int64).reshape(5, 28, 28) % 256
    _idx(raw / "train-images-idx3-ubyte", images)
    _idx(raw / "train-labels-idx1-ubyte", np.array([3, 1, 4, 1, 5]))
    _idx(raw / "t10k-images-idx3-ubyte.gz", images[:2], compress=True)
    _idx(raw / "t10k-labels-idx1-ubyte.gz", np.array([9, 2]), compress=True)
    data = build_dataset("mnist", str(tmp_path))
    assert data.classnames[9] == "9 - nine" and data.templates == ['a photo of the number: "{}".']
    assert data.splits["train"].labels.tolist() == [3, 1, 4, 1, 5]
    first = data.splits["test"].images[1]
    assert first.shape == (28, 28, 3) and torch.equal(first[..., 0], first[..., 2])
    assert first[0, 0, 0] == images[1, 0, 0]


def test_missing_mtil_folders_are_reported(tmp_path):
    with pytest.raises(PeftClipError, match="expects the folder"):
        build_dataset("mnist", str(tmp_path))
    with pytest.raises(PeftClipError, match="expects the folder"):
        build_dataset("cifar100", str(tmp_path))
