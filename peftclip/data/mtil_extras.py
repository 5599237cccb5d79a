"""CIFAR100 and MNIST, the extra MTIL datasets, from torchvision's on-disk formats.

See docs/datasets.md#mtil-datasets.

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
from peftclip.data.listing import FolderLayout, existing_root
from peftclip.data.registry import (
    ClassificationData,
    DatasetDefinition,
    PublishedCounts,
    register_dataset,
)
from peftclip.data.templates import MTIL_TEMPLATES
from peftclip.errors import DatasetMissing, PeftClipError

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
        raise PeftClipError(
            f"'{path}' is missing; extract cifar-100-python.tar.gz into '{directory.parent}' "
            "(it unpacks to cifar-100-python/{train,test,meta})."
        )
    try:
        with path.open("rb") as file:
            content = _NumpyOnlyUnpickler(file, encoding="latin1").load()
    except PeftClipError:
        raise
    except Exception as error:  # a damaged pickle fails in many ways (EOFError, ValueError, …)
        raise PeftClipError(
            f"'{path}' is not a readable CIFAR-100 file ({type(error).__name__}: {error}); "
            "extract cifar-100-python.tar.gz again."
        ) from error
    if not isinstance(content, dict):
        raise PeftClipError(f"'{path}' does not hold a CIFAR-100 dictionary; extract it again.")
    return {
        key.decode() if isinstance(key, bytes) else key: value for key, value in content.items()
    }


def _cifar_entry(content: dict, key: str, path: Path):
    if key not in content:
        raise PeftClipError(
            f"'{path}' has no '{key}' entry, so it is not CIFAR-100's file (a CIFAR-10 batch has "
            "'labels' instead); extract cifar-100-python.tar.gz again."
        )
    return content[key]


def read_cifar100(definition: DatasetDefinition, root: str | None = None) -> ClassificationData:
    """CIFAR-100: official train (50,000) / test (10,000); torchvision's fine class names."""
    folder = definition.layout.directory
    directory = existing_root(root, f"the data root that holds {folder}/") / folder
    if not directory.is_dir():
        raise DatasetMissing(
            f"dataset '{definition.name}' expects the folder '{directory}'.", directory
        )
    meta = _cifar_file(directory, "meta")
    classnames = list(_cifar_entry(meta, "fine_label_names", directory / "meta"))
    splits = {}
    for split in ("train", "test"):
        content = _cifar_file(directory, split)
        rows = np.asarray(_cifar_entry(content, "data", directory / split), dtype=np.uint8)
        labels = list(_cifar_entry(content, "fine_labels", directory / split))
        if rows.ndim != 2 or rows.shape[1] != 3 * 32 * 32 or len(rows) != len(labels):
            raise PeftClipError(
                f"'{directory / split}' holds data of shape {rows.shape} and {len(labels)} labels; "
                "CIFAR-100 has one 3072-byte row per label. Extract the archive again."
            )
        pixels = rows.reshape(-1, 3, 32, 32)
        images = torch.from_numpy(pixels.transpose(0, 2, 3, 1).copy())  # (n, H, W, RGB)
        splits[split] = LabeledImageTensors(images, torch.tensor(labels, dtype=torch.long))
    return ClassificationData(definition.name, classnames, splits, list(definition.templates))


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise PeftClipError(f"cannot read '{path}' ({error}); download it again.") from error
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise PeftClipError(f"'{path}' is not an unsigned-byte IDX file; download it again.")
    dims = data[3]
    header = 4 + 4 * dims
    if len(data) < header:
        raise PeftClipError(f"'{path}' is truncated (its header is incomplete); download it again.")
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise PeftClipError(
            f"'{path}' is truncated or damaged: its header announces {shape} = {expected} bytes "
            f"of data, the file holds {len(data) - header}. Download it again."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_mnist(definition: DatasetDefinition, root: str | None = None) -> ClassificationData:
    """MNIST: official train (60,000) / test (10,000); the definition's class names."""
    folder = definition.layout.directory
    raw = existing_root(root, f"the data root that holds {folder}/") / folder
    if not raw.is_dir():
        raise DatasetMissing(f"dataset '{definition.name}' expects the folder '{raw}'.", raw)
    splits = {}
    for split, stem in (("train", "train"), ("test", "t10k")):
        arrays = []
        for kind in ("images-idx3", "labels-idx1"):
            candidates = [raw / f"{stem}-{kind}-ubyte", raw / f"{stem}-{kind}-ubyte.gz"]
            path = next((c for c in candidates if c.is_file()), None)
            if path is None:
                raise PeftClipError(
                    f"'{candidates[0]}' (or its .gz) is missing; put the four MNIST IDX files "
                    f"into '{raw}', as torchvision's MNIST(root, download=True) does."
                )
            arrays.append(_read_idx(path))
        if arrays[0].ndim != 3 or arrays[1].ndim != 1 or len(arrays[0]) != len(arrays[1]):
            raise PeftClipError(
                f"the {stem} files in '{raw}' hold images of shape {arrays[0].shape} and labels "
                f"of shape {arrays[1].shape}; MNIST has one 28×28 image per label. Download "
                "them again."
            )
        gray = torch.from_numpy(arrays[0].copy())
        images = gray.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous()  # grey → RGB
        splits[split] = LabeledImageTensors(images, torch.from_numpy(arrays[1].astype(np.int64)))
    classnames = list(definition.classnames)
    return ClassificationData(definition.name, classnames, splits, list(definition.templates))


# ZSCL trains with the first template of its ensemble (``templates: mtil:<dataset>`` is the
# whole ensemble); counts: the official train / test splits.
register_dataset(
    DatasetDefinition(
        "cifar100",
        read_cifar100,
        FolderLayout("cifar-100-python"),
        templates=MTIL_TEMPLATES["cifar100"][:1],
        counts=PublishedCounts(100, 50_000, None, 10_000),
        # torchvision's CIFAR100 class (which ZSCL uses) refuses files that do not match.
        file_md5={
            "cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
            "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
            "cifar-100-python/meta": "7973b15100ade9c7d40fb424638fde48",
        },
        benchmark="mtil",
    )
)
register_dataset(
    DatasetDefinition(
        "mnist",
        read_mnist,
        FolderLayout("MNIST/raw"),
        templates=MTIL_TEMPLATES["mnist"][:1],
        classnames=tuple(
            f"{digit} - {word}"
            for digit, word in enumerate(
                ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
            )
        ),
        counts=PublishedCounts(10, 60_000, None, 10_000),
        benchmark="mtil",
    )
)
