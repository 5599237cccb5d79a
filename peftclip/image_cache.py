"""Image features of the frozen image tower, computed once and reused (docs/performance.md).

When no adapter prompts the image tower or changes its weights, an image's features depend on
the image, the transform (and, for a random one, the augmentation seed) and the frozen weights
only. peftclip then computes a *table* per (split, view) — the raw, un-normalised features of
every image of the split, in the split's order — and every step, every evaluation and every
later run with the same key reads it instead of running the tower again.

A table is keyed by everything that can change a bit of it:

* the backbone's identity (model, weights SHA-256) and weight dtype;
* how it was computed: device type (and GPU model), trainer precision, images per tower call,
  torch / torchvision / Pillow versions (a tower is not batch-invariant to the last bit, so the
  batch size is part of the key: a table is exact only for the batches it was computed in);
* the dataset's name, the split and the split's image list (file paths with their sizes and
  modification times, or the bytes of in-memory images), in order;
* the transform (its full description) and the view: deterministic transforms have one view
  for every seed; a random one is keyed by the run's seed and the view (epoch), because view
  ``e`` of image ``i`` is augmented under a seed that is a function of ``(seed, e, i)`` only
  (peftclip.data.order);
* the storage dtype (``float32``: exact; ``float16``: half the size, rounded). A run reads
  what it stored, cold or warm, so a warm run equals a cold one bitwise either way.

Tables live in memory for the process (bounded, least recently used dropped first) and, with a
directory, on disk: one safetensors file per table, its key in the file's metadata, written
through an atomic rename (two processes writing the same table cannot tear it; the last rename
wins with the same bytes). A cap bounds the directory: after a write, the least recently used
tables go until it fits. ``peftclip cache info`` / ``peftclip cache clear`` inspect and empty it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from peftclip.atomic_files import atomic_path
from peftclip.data.images import LabeledImageFiles, LabeledImageTensors
from peftclip.distributed import rank_zero_first
from peftclip.errors import PeftClipError

FORMAT_VERSION = 1
#: ``model.image_cache_dir``'s default: the per-user cache folder (:func:`default_cache_dir`).
AUTO = "auto"
DEFAULT_MAX_GB = 10.0
StorageDtype = Literal["float32", "float16"]
_SUFFIX = ".safetensors"
_log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/peftclip/features``, or ``~/.cache/peftclip/features``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "peftclip" / "features"


def resolve_cache_dir(directory: str | Path | None) -> Path | None:
    """``auto`` → :func:`default_cache_dir`; ``None`` → no disk cache; else the path."""
    if directory is None:
        return None
    return default_cache_dir() if str(directory) == AUTO else Path(directory).expanduser()


def transform_id(transform: Callable) -> str:
    """A short hash of a transform's full description (class, sizes, scales, statistics).

    torchvision's ``Compose`` prints every step with its parameters; a plain function prints
    with its address, which is dropped (its name stays).
    """
    description = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(transform))
    return hashlib.sha256(description.encode()).hexdigest()[:16]


def identifiable(dataset) -> bool:
    """Whether :func:`image_list_hash` can identify the images of ``dataset``: a dataset type
    peftclip builds (the features of any other are never cached)."""
    return isinstance(dataset, LabeledImageFiles | LabeledImageTensors)


def image_list_hash(dataset) -> str:
    """A hash of a split's images in order (:func:`identifiable` datasets).

    Files count by path, size and modification time (a replaced file misses); in-memory images
    by their bytes. Labels do not count: they do not change a feature.
    """
    digest = hashlib.sha256()
    if isinstance(dataset, LabeledImageFiles):
        for path, _ in dataset.samples:
            stat = os.stat(path)
            digest.update(f"{Path(path).resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    elif isinstance(dataset, LabeledImageTensors):
        digest.update(str(tuple(dataset.images.shape)).encode())
        digest.update(dataset.images.contiguous().numpy().tobytes())
    else:
        raise TypeError(f"cannot identify the images of a {type(dataset).__name__}")
    return digest.hexdigest()


def computation_identity(device: torch.device, precision: str, batch_size: int) -> dict:
    """How a table is computed, as far as it changes its bits."""
    import PIL
    import torchvision

    device_type = torch.device(device).type
    if device_type == "cuda":
        device_type = f"cuda:{torch.cuda.get_device_name(device)}"
    return {
        "device": device_type,
        "precision": str(precision),
        "batch_size": batch_size,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
    }


class _MemoryTables:
    """The process's tables in memory, least recently used dropped first beyond ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._tables: OrderedDict[str, torch.Tensor] = OrderedDict()

    def get(self, key: str) -> torch.Tensor | None:
        if key in self._tables:
            self._tables.move_to_end(key)
        return self._tables.get(key)

    def put(self, key: str, table: torch.Tensor) -> None:
        self._tables[key] = table
        while sum(_bytes(t) for t in self._tables.values()) > self.max_bytes:
            if len(self._tables) == 1:
                break  # one table larger than the budget: kept while it is the only one
            self._tables.popitem(last=False)

    def clear(self) -> None:
        self._tables.clear()


#: Shared by every cache of the process: keys are content hashes, so modules that share a
#: backbone (a protocol's zero-shot baseline and its trained model) share tables.
MEMORY = _MemoryTables(max_bytes=2 * 1024**3)


def _bytes(table: torch.Tensor) -> int:
    return table.numel() * table.element_size()


@dataclass(frozen=True)
class CacheEntry:
    """One table on disk."""

    path: Path
    size: int
    last_used: float
    description: dict


class ImageFeatureCache:
    """Tables of raw image features in memory and, with ``directory``, on disk.

    Args:
        directory: Where tables are written (``None``: memory only, this process).
        max_gb: Cap of the directory in GB (10⁹ bytes); the least recently used tables go.
        dtype: Storage dtype: ``float32`` (exact) or ``float16`` (rounded, half the size).
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        max_gb: float = DEFAULT_MAX_GB,
        dtype: StorageDtype = "float32",
    ) -> None:
        if not max_gb > 0:
            raise PeftClipError(
                f"model.image_cache_max_gb must be > 0 (GB of tables kept on disk); got {max_gb}."
                " To keep no tables on disk, set model.image_cache_dir: null."
            )
        if dtype not in ("float32", "float16"):
            raise PeftClipError(
                f"model.image_cache_dtype must be float32 or float16; got '{dtype}'."
            )
        self.directory = resolve_cache_dir(directory)
        self.max_bytes = int(max_gb * 1e9)
        self.dtype = dtype

    # ------------------------------------------------------------------------------ keys
    def key(self, description: dict) -> str:
        payload = {"format": FORMAT_VERSION, "storage": self.dtype, **description}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def path(self, description: dict) -> Path:
        """``<dir>/<model>/<dataset>/<split>-<key>.safetensors`` (names made file-safe)."""
        folder = [_safe(description["backbone"]["model_name"]), _safe(description["dataset"])]
        name = f"{_safe(description['split'])}-{self.key(description)[:24]}{_SUFFIX}"
        return self.directory.joinpath(*folder, name)

    # ---------------------------------------------------------------------- get / compute
    def features(self, description: dict, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The table of ``description``: from memory, from disk, or ``compute()``d and stored.

        What is returned is always what a later lookup returns (rounded to the storage dtype,
        back in the computed dtype), so a cold run and a warm run see the same bits. Under DDP
        with a cache folder, rank 0 is the one writer: the other ranks wait for it, then read.
        """
        with rank_zero_first(self.directory is not None):
            return self._features(description, compute)

    def _features(self, description: dict, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        key = self.key(description)
        table, source = MEMORY.get(key), "hit (memory)"
        if self.directory is not None:
            if table is None:
                table, source = self._read(description), f"hit ({self.path(description)})"
            elif not self.path(description).is_file():  # computed for another cache folder
                self._write(description, table)
        if table is None:
            computed = compute()
            table = computed.to(getattr(torch, self.dtype)).to(computed.dtype).cpu()
            source = "miss: computed"
            if self.directory is not None:
                self._write(description, table)
                source += f", stored in {self.path(description)}"
        MEMORY.put(key, table)
        _log.info(
            "image-feature cache %s: %s %s, %d images",
            source, description.get("dataset"), description.get("split"), len(table),
        )  # fmt: skip
        return table

    def _read(self, description: dict) -> torch.Tensor | None:
        path = self.path(description)
        try:
            with safe_open(path, "pt") as handle:
                stored = json.loads(handle.metadata()["peftclip"])
            tensors = load_file(path)
        except FileNotFoundError:
            return None
        except Exception as error:  # torn, foreign or evicted meanwhile: recompute it
            warnings.warn(
                f"image-feature cache file {path} is unreadable ({error}); recomputing.",
                stacklevel=3,
            )
            return None
        if stored["description"] != json.loads(json.dumps(description)):
            warnings.warn(
                f"image-feature cache file {path} holds another table; recomputing.", stacklevel=3
            )
            return None
        with contextlib.suppress(OSError):  # mark as used (a read-only cache still reads)
            os.utime(path)
        return tensors["features"].to(getattr(torch, stored["dtype"]))

    def _write(self, description: dict, table: torch.Tensor) -> None:
        path = self.path(description)
        metadata = {"peftclip": json.dumps({"description": description, "dtype": _name(table)})}
        stored = table.to(getattr(torch, self.dtype)).contiguous()
        try:
            with atomic_path(path) as partial:
                save_file({"features": stored}, partial, metadata=metadata)
        except OSError as error:
            warnings.warn(
                f"cannot write the image-feature cache file {path} ({error}).", stacklevel=3
            )
            return
        self.evict(keep=path)

    # ------------------------------------------------------------------- on-disk contents
    def entries(self) -> list[CacheEntry]:
        """The tables on disk, least recently used first."""
        return disk_entries(self.directory) if self.directory is not None else []

    def evict(self, keep: Path | None = None) -> list[CacheEntry]:
        """Removes the least recently used tables until the directory fits the cap."""
        entries = self.entries()
        total = sum(entry.size for entry in entries)
        removed = []
        for entry in entries:
            if total <= self.max_bytes:
                break
            if entry.path == keep:
                continue
            entry.path.unlink(missing_ok=True)
            total -= entry.size
            removed.append(entry)
        return removed


def disk_entries(directory: Path) -> list[CacheEntry]:
    """The tables under ``directory``, least recently used first (unreadable files too)."""
    entries = []
    for path in Path(directory).rglob(f"*{_SUFFIX}"):
        try:
            stat = path.stat()
            with safe_open(path, "pt") as handle:
                description = json.loads(handle.metadata()["peftclip"])["description"]
        except FileNotFoundError:
            continue  # removed meanwhile
        except Exception:
            description = {}
        entries.append(CacheEntry(path, stat.st_size, stat.st_mtime, description))
    return sorted(entries, key=lambda entry: entry.last_used)


def _name(table: torch.Tensor) -> str:
    return str(table.dtype).removeprefix("torch.")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name))


# ---------------------------------------------------------------------------- commands
def _describe(entry: CacheEntry) -> tuple[str, ...]:
    description = entry.description
    if not description:
        return ("(unreadable)", "", "", "", "")
    view = description.get("view")
    view_text = "all seeds" if view is None else f"seed {view['seed']} view {view['view']}"
    return (
        description["backbone"]["model_name"],
        description["dataset"],
        description["split"],
        str(description["images"]),
        view_text,
    )


def _matching(
    entries: Sequence[CacheEntry], dataset: str | None, backbone: str | None
) -> list[CacheEntry]:
    def keep(entry: CacheEntry) -> bool:
        description = entry.description
        if dataset is not None and description.get("dataset") != dataset:
            return False
        model = description.get("backbone", {}).get("model_name")
        return backbone is None or model == backbone

    return [entry for entry in entries if keep(entry)]


def _size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""  # not reached


def cache_info_command(
    *, cache_dir: str = AUTO, dataset: str | None = None, backbone: str | None = None
) -> int:
    """Lists the image-feature cache's tables: backbone, dataset, split, images, view, size.

    One line per table (least recently used first, the order in which the cap removes them),
    then how many tables and bytes there are.

    Args:
        cache_dir: The cache folder (``auto``: $XDG_CACHE_HOME/peftclip/features, the default of
            ``model.image_cache_dir``).
        dataset: Only the tables of this dataset.
        backbone: Only the tables of this model (``model.backbone.model_name``).
    """
    directory = resolve_cache_dir(cache_dir)
    entries = _matching(disk_entries(directory), dataset, backbone)
    header = ("backbone", "dataset", "split", "images", "view", "size", "last used (UTC)")
    rows = [header]
    for entry in entries:
        used = datetime.fromtimestamp(entry.last_used, UTC).strftime("%Y-%m-%d %H:%M")
        rows.append((*_describe(entry), _size(entry.size), used))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    if entries:
        for row in rows:
            cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            print("  ".join(cells).rstrip())
    total = sum(entry.size for entry in entries)
    print(f"{len(entries)} tables, {_size(total)} in {directory}")
    return 0


def cache_clear_command(
    *, cache_dir: str = AUTO, dataset: str | None = None, backbone: str | None = None
) -> int:
    """Removes the image-feature cache's tables (all, or those of a dataset or backbone).

    Args:
        cache_dir: The cache folder (``auto``: $XDG_CACHE_HOME/peftclip/features).
        dataset: Only the tables of this dataset.
        backbone: Only the tables of this model (``model.backbone.model_name``).
    """
    directory = resolve_cache_dir(cache_dir)
    entries = _matching(disk_entries(directory), dataset, backbone)
    for entry in entries:
        entry.path.unlink(missing_ok=True)
    print(f"removed {len(entries)} tables, {_size(sum(e.size for e in entries))} from {directory}")
    return 0
