"""CIFAR100 and MNIST, the extra MTIL datasets, from torchvision's on-disk formats (spec §7).

``<DATA>/cifar-100-python/{train,test,meta}`` (python pickles of numpy arrays) and
``<DATA>/MNIST/raw/*-ubyte[.gz]`` (IDX files). Both are small enough to hold in memory.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch

from peftclip.data.images import LabeledImageTensors
from peftclip.data.listing import existing_root
from peftclip.data.registry import ClassificationData, register_dataset
from peftclip.errors import DatasetMissing, PeftClipError

MNIST_CLASSNAMES = [
    f"{digit} - {word}"
    for digit, word in enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    )
]
#: The globals a CIFAR pickle needs to rebuild its numpy arrays, and nothing else.
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise PeftClipError(f"a CIFAR file asks to load '{module}.{name}'; refused.")


def _cifar_file(directory: Path, name: str) -> dict:
    path = directory / name
    if not path.is_file():
        raise PeftClipError(f"'{path}' is missing; extract cifar-100-python.tar.gz there.")
    with path.open("rb") as file:
        content = _NumpyOnlyUnpickler(file, encoding="latin1").load()
    return {
        key.decode() if isinstance(key, bytes) else key: value for key, value in content.items()
    }


def read_cifar100(root: str | None = None) -> ClassificationData:
    """CIFAR-100: official train (50,000) / test (10,000); torchvision's fine class names."""
    directory = (
        existing_root(root, "the data root that holds cifar-100-python/") / "cifar-100-python"
    )
    if not directory.is_dir():
        raise DatasetMissing(f"dataset 'cifar100' expects the folder '{directory}'.", directory)
    classnames = list(_cifar_file(directory, "meta")["fine_label_names"])
    splits = {}
    for split in ("train", "test"):
        content = _cifar_file(directory, split)
        pixels = np.asarray(content["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        images = torch.from_numpy(pixels.transpose(0, 2, 3, 1).copy())  # (n, H, W, RGB)
        labels = torch.tensor(content["fine_labels"], dtype=torch.long)
        splits[split] = LabeledImageTensors(images, labels)
    return ClassificationData("cifar100", classnames, splits, ["a photo of a {}."])


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        data = file.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise PeftClipError(f"'{path}' is not an unsigned-byte IDX file.")
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def read_mnist(root: str | None = None) -> ClassificationData:
    """MNIST: official train (60,000) / test (10,000); class names "0 - zero" … "9 - nine"."""
    raw = existing_root(root, "the data root that holds MNIST/raw/") / "MNIST" / "raw"
    if not raw.is_dir():
        raise DatasetMissing(f"dataset 'mnist' expects the folder '{raw}'.", raw)
    splits = {}
    for split, stem in (("train", "train"), ("test", "t10k")):
        arrays = []
        for kind in ("images-idx3", "labels-idx1"):
            candidates = [raw / f"{stem}-{kind}-ubyte", raw / f"{stem}-{kind}-ubyte.gz"]
            path = next((c for c in candidates if c.is_file()), None)
            if path is None:
                raise PeftClipError(f"'{candidates[0]}' (or .gz) is missing.")
            arrays.append(_read_idx(path))
        gray = torch.from_numpy(arrays[0].copy())
        images = gray.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous()  # grey → RGB
        splits[split] = LabeledImageTensors(images, torch.from_numpy(arrays[1].astype(np.int64)))
    template = 'a photo of the number: "{}".'
    return ClassificationData("mnist", MNIST_CLASSNAMES, splits, [template])


register_dataset("cifar100", read_cifar100)
register_dataset("mnist", read_mnist)
