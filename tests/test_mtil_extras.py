"""CIFAR100 and MNIST readers on fake files in torchvision's exact formats."""

import pickle

import numpy as np
import pytest
import torch

from peftclip.data import build_dataset
from peftclip.errors import PeftClipError
from tests.fake_datasets import cifar_files as _cifar
from tests.fake_datasets import idx_file as _idx


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
