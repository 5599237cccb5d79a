"""MTIL's random 80/20 splits (Caltech101, EuroSAT, SUN397) as manifests.

See docs/datasets.md#mtil-datasets.

ZSCL reads these three datasets whole through torchvision and splits them with
``ClassificationDataset.split_dataset`` (ZSCL ``mtil/src/datasets/collections.py``)::

    train_size = int(ratio * len(dataset))          # ratio = 0.8
    random_split(dataset, [train_size, len(dataset) - train_size],
                 generator=torch.Generator().manual_seed(42))

``peftclip data mtil-manifest`` lists a tree in torchvision's order, applies that same call and
writes ``mtil/<dataset>.json`` (references relative to the image folder, so the manifest resolves
against torchvision's tree or CoOp's). The registered datasets ``mtil_caltech101``,
``mtil_eurosat`` and ``mtil_sun397`` read such a manifest. Caltech101 and EuroSAT reproduce
ZSCL's split exactly; SUN397 does not: torchvision lists it with an unsorted ``rglob``, so ZSCL's
split depends on the filesystem, and peftclip lists sorted paths instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import random_split

from peftclip.atomic_files import write_text_atomically
from peftclip.data.images import LabeledImageFiles
from peftclip.data.listing import existing_root, folder_entries
from peftclip.data.mtil_classnames import (
    CALTECH101_CLASSNAMES,
    CALTECH101_FOLDERS,
    EUROSAT_CLASSNAMES,
    EUROSAT_FOLDERS,
)
from peftclip.data.registry import (
    ClassificationData,
    DatasetDefinition,
    PublishedCounts,
    register_dataset,
)
from peftclip.data.templates import MTIL_TEMPLATES
from peftclip.errors import DatasetMissing, PeftClipError

MANIFEST_FORMAT = "peftclip-mtil-split/1"
#: ZSCL's ``split_dataset``: seed of ``torch.Generator().manual_seed`` and the train ratio.
SPLIT_SEED = 42
TRAIN_RATIO = 0.8
#: Manifests shipped inside the package (``peftclip/data/mtil/<dataset>.json``) and their
#: SHA-256; a shipped manifest is used only if its hash is listed here.
SHIPPED_DIR = Path(__file__).parent / "mtil"
SHIPPED_SHA256: dict[str, str] = {}
#: torchvision's ``IMG_EXTENSIONS`` (``ImageFolder``, hence EuroSAT), compared in lower case.
_IMAGEFOLDER_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)

Listing = tuple[list[str], list[tuple[str, int]]]  # class names, (ref, label) in source order


@dataclass(frozen=True)
class MtilSplitLayout:
    """Where a randomly split MTIL dataset lives and how torchvision orders it.

    Attributes:
        image_folders: Candidate image folders under the root, torchvision's layout first, then
            CoOp's (docs/datasets.md#on-disk-layouts); manifest references are relative to the
            one found.
        list_images: ``folder → (classnames, [(ref, label), …])`` in torchvision's order.
        source_order: How the listing is ordered (recorded in the manifest).
    """

    image_folders: tuple[str, ...]
    list_images: Callable[[Path], Listing]
    source_order: str


def _listdir(folder: Path) -> list[str]:
    return [path.name for path in folder_entries(folder)]


def _unexpected_classes(folder: Path, found: list[str], expected: tuple[str, ...]) -> str:
    extra = [name for name in found if name not in expected]
    missing = [name for name in expected if name not in found]
    return (
        f"'{folder}' must hold exactly the {len(expected)} class folders of torchvision's "
        f"layout, which ZSCL's class names are matched to by position; unexpected entries: "
        f"{', '.join(extra[:5]) or 'none'}; missing: {', '.join(missing[:5]) or 'none'}. "
        "Remove stray files (e.g. .DS_Store) or restore the missing folders."
    )


def list_caltech101(folder: Path) -> Listing:
    """torchvision ``Caltech101``: sorted categories without ``BACKGROUND_Google``; category
    ``c`` with ``n`` directory entries holds ``image_0001.jpg`` … ``image_<n>.jpg``."""
    categories = [name for name in sorted(_listdir(folder)) if name != "BACKGROUND_Google"]
    if tuple(categories) != CALTECH101_FOLDERS:
        raise PeftClipError(_unexpected_classes(folder, categories, CALTECH101_FOLDERS))
    items = []
    for label, category in enumerate(categories):
        # torchvision counts the entries of the folder and opens image_0001 … image_<count>.
        count = len(_listdir(folder / category))
        for number in range(1, count + 1):
            ref = f"{category}/image_{number:04d}.jpg"
            if not (folder / ref).is_file():
                raise PeftClipError(
                    f"'{folder / category}' has {count} entries but no image_{number:04d}.jpg. "
                    "torchvision's Caltech101 (which ZSCL reads) numbers the images 1…<number "
                    "of entries>, so the folder must hold only image_0001.jpg… in sequence: "
                    "remove other files from it."
                )
            items.append((ref, label))
    return list(CALTECH101_CLASSNAMES), items


def list_eurosat(folder: Path) -> Listing:
    """torchvision ``EuroSAT`` = ``ImageFolder(2750/)``: sorted class folders, each walked in
    sorted order keeping files with an image extension."""
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    if tuple(classes) != EUROSAT_FOLDERS:
        raise PeftClipError(_unexpected_classes(folder, classes, EUROSAT_FOLDERS))
    items = []
    for label, name in enumerate(classes):
        before = len(items)
        for directory, _, files in sorted(os.walk(folder / name, followlinks=True)):
            for file in sorted(files):
                if file.lower().endswith(_IMAGEFOLDER_EXTENSIONS):
                    ref = (Path(directory) / file).relative_to(folder).as_posix()
                    items.append((ref, label))
        if len(items) == before:
            raise PeftClipError(f"'{folder / name}' holds no images; restore the EuroSAT folder.")
    return list(EUROSAT_CLASSNAMES), items


def list_sun397(folder: Path) -> Listing:
    """torchvision ``SUN397``: classes from ``ClassName.txt`` (``/a/abbey`` → ``abbey``), images
    ``sun_*.jpg`` found recursively; the label is the path between the letter and the file.
    Paths are **sorted** here (torchvision keeps its filesystem's order)."""
    class_file = next(
        (p for p in (folder / "ClassName.txt", folder.parent / "ClassName.txt") if p.is_file()),
        None,
    )
    if class_file is None:
        raise PeftClipError(
            f"no ClassName.txt in '{folder}' or its parent; it comes with SUN397.tar.gz (or "
            "CoOp's Partitions.zip). Copy it there."
        )
    lines = [line for line in class_file.read_text().splitlines() if line.strip()]
    raw_names = [line[3:].strip() for line in lines]  # torchvision: c[3:].strip()
    label_of = {name: label for label, name in enumerate(raw_names)}
    items = []
    for path in sorted(folder.rglob("sun_*.jpg"), key=lambda p: p.relative_to(folder).as_posix()):
        relative = path.relative_to(folder)
        key = "/".join(relative.parts[1:-1])
        if key not in label_of:
            raise PeftClipError(
                f"'{path}' lies in class folder '{key}', which '{class_file}' does not list. "
                "Move the file out of the SUN397 tree or restore the original ClassName.txt."
            )
        items.append((relative.as_posix(), label_of[key]))
    if not items:
        raise PeftClipError(f"no sun_*.jpg images under '{folder}'; extract SUN397.tar.gz there.")
    return [name.replace("_", " ") for name in raw_names], items


def zscl_split(count: int) -> tuple[list[int], list[int]]:
    """ZSCL's ``split_dataset`` on ``count`` items: the train and test positions, in the order
    ``random_split`` yields them."""
    train_size = int(TRAIN_RATIO * count)  # float product as in ZSCL, not 4 * count // 5
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    train, test = random_split(range(count), [train_size, count - train_size], generator=generator)
    return list(train.indices), list(test.indices)


def _dataset_key(name: str) -> str:
    key = name.removeprefix("mtil_")
    if key not in MTIL_SPLIT_LAYOUTS:
        raise PeftClipError(
            f"no MTIL split manifest for '{name}'; the randomly split MTIL datasets are "
            f"{', '.join(MTIL_SPLIT_LAYOUTS)}."
        )
    return key


def image_folder(root: str | Path | None, name: str) -> Path:
    """The dataset's image folder under ``root``: torchvision's layout, else CoOp's."""
    key = _dataset_key(name)
    base = existing_root(str(root) if root else None, "the MTIL data root (torchvision layout)")
    candidates = [base / folder for folder in MTIL_SPLIT_LAYOUTS[key].image_folders]
    found = next((path for path in candidates if path.is_dir()), None)
    if found is None:
        raise DatasetMissing(
            f"dataset 'mtil_{key}' expects the folder "
            f"{' or '.join(repr(str(path)) for path in candidates)}, which is missing.",
            candidates[0],
        )
    return found


def default_manifest_path(root: str | Path, name: str, cache_dir: str | Path | None = None) -> Path:
    """``<cache>/mtil/<dataset>.json``; ``<cache>`` defaults to ``<root>/.peftclip``."""
    cache = Path(cache_dir) if cache_dir else Path(root).expanduser() / ".peftclip"
    return cache / "mtil" / f"{_dataset_key(name)}.json"


def build_manifest(root: str | Path, name: str) -> dict:
    """Lists ``name`` under ``root`` in torchvision's order and splits it as ZSCL does."""
    key = _dataset_key(name)
    layout = MTIL_SPLIT_LAYOUTS[key]
    folder = image_folder(root, key)
    classnames, items = layout.list_images(folder)
    train, test = zscl_split(len(items))
    listing = json.dumps([[ref, label] for ref, label in items]).encode()

    def entries(positions: list[int]) -> list[list]:
        return [[items[i][0], items[i][1], classnames[items[i][1]]] for i in positions]

    return {
        "format": MANIFEST_FORMAT,
        "dataset": key,
        "protocol": "zscl",
        "refs_relative_to": Path(layout.image_folders[0]).name,
        "source_order": layout.source_order,
        "split": {
            "method": "torch.utils.data.random_split",
            "generator": f"torch.Generator().manual_seed({SPLIT_SEED})",
            "train_size": len(train),
            "test_size": len(test),
        },
        "listing_sha256": hashlib.sha256(listing).hexdigest(),
        "classnames": classnames,
        "train": entries(train),
        "test": entries(test),
    }


def manifest_text(manifest: dict) -> str:
    """JSON with one image per line (diffable, and compact enough for 100k images)."""
    lines = ["{"]
    header = [key for key in manifest if key not in ("train", "test")]
    lines += [f" {json.dumps(key)}: {json.dumps(manifest[key])}," for key in header]
    for split in ("train", "test"):
        rows = ",\n".join(f"  {json.dumps(entry)}" for entry in manifest[split])
        lines.append(f' "{split}": [\n{rows}\n ]' + ("," if split == "train" else ""))
    return "\n".join(lines) + "\n}\n"


def write_manifest(manifest: dict, path: Path, force: bool = False) -> str:
    """Writes ``manifest`` to ``path`` and returns the file's SHA-256. An existing different
    manifest is replaced only with ``force`` (results drawn from it would stop matching)."""
    text = manifest_text(manifest)
    if path.is_file() and path.read_text() != text and not force:
        raise PeftClipError(
            f"'{path}' already holds a different {manifest['dataset']} split; results made with "
            "it would no longer be comparable. Pass --force to replace it, or --output to write "
            "elsewhere."
        )
    try:
        write_text_atomically(path, text)
    except OSError as error:
        raise PeftClipError(
            f"cannot write '{path}' ({error.strerror}); the data root may be read-only. Pass "
            "--output with a writable path."
        ) from error
    return hashlib.sha256(text.encode()).hexdigest()


def find_manifest(
    root: str | Path, name: str, manifest: str | Path | None, cache_dir: str | Path | None
) -> Path:
    """The manifest to read: ``manifest`` if given, else the shipped one, else the cache's."""
    key = _dataset_key(name)
    if manifest is not None:
        path = Path(manifest).expanduser()
        if not path.is_file():
            raise PeftClipError(
                f"the MTIL split manifest '{path}' (data.options.manifest) is missing."
            )
        return path
    shipped = SHIPPED_DIR / f"{key}.json"
    if shipped.is_file():
        digest = hashlib.sha256(shipped.read_bytes()).hexdigest()
        if SHIPPED_SHA256.get(key) != digest:
            raise PeftClipError(
                f"the shipped manifest '{shipped}' has SHA-256 {digest}, not the recorded "
                f"{SHIPPED_SHA256.get(key)}; reinstall peftclip."
            )
        return shipped
    cached = default_manifest_path(root, key, cache_dir)
    if cached.is_file():
        return cached
    raise PeftClipError(
        f"dataset 'mtil_{key}' needs its split manifest, and '{cached}' does not exist (nor does "
        f"a shipped one). Generate it once with `peftclip data mtil-manifest --root {root} "
        f"--dataset {key}`, which writes that file, or point data.options.manifest at an "
        "existing manifest."
    )


def read_mtil_split(
    definition: DatasetDefinition,
    root: str | None = None,
    manifest: str | None = None,
    cache_dir: str | None = None,
) -> ClassificationData:
    """An MTIL dataset split by its manifest (train / test; ZSCL's class names).

    Args:
        definition: ``mtil_caltech101``, ``mtil_eurosat`` or ``mtil_sun397``.
        root: MTIL data root (torchvision layout) or CoOp data root.
        manifest: Path of the manifest; default: the shipped one, else
            ``<cache_dir>/mtil/<name>.json``.
        cache_dir: Default ``<root>/.peftclip``.
    """
    key = _dataset_key(definition.name)
    folder = image_folder(root, key)
    path = find_manifest(root, key, manifest, cache_dir)
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PeftClipError(f"'{path}' is not valid JSON ({error}); generate it again.") from error
    if content.get("format") != MANIFEST_FORMAT or content.get("dataset") != key:
        raise PeftClipError(
            f"'{path}' is not a {MANIFEST_FORMAT} manifest of {key} (format "
            f"{content.get('format')!r}, dataset {content.get('dataset')!r})."
        )
    classnames = list(content["classnames"])
    splits = {}
    for split in ("train", "test"):
        samples = []
        for ref, label, classname in content[split]:
            if not 0 <= label < len(classnames) or classnames[label] != classname:
                raise PeftClipError(
                    f"'{path}' lists '{ref}' as label {label} '{classname}', which disagrees with "
                    "its class names; the file is corrupt: generate it again."
                )
            samples.append((folder / ref, label))
        missing = [str(file) for file, _ in samples if not file.is_file()]
        if missing:
            raise PeftClipError(
                f"{len(missing)} image(s) of the {split} split in '{path}' do not exist under "
                f"'{folder}', e.g. {', '.join(missing[:3])}. Restore them, or generate the "
                f"manifest of this tree with `peftclip data mtil-manifest --dataset {key}`."
            )
        splits[split] = LabeledImageFiles(samples)
    templates = list(definition.templates)
    return ClassificationData(definition.name, classnames, splits, templates, folder, path)


def mtil_manifest_command(
    *, root: str, dataset: str, output: str | None = None, force: bool = False
) -> int:
    """Writes ZSCL's random 80/20 split of an MTIL dataset as a manifest.

    Lists a torchvision-layout tree and splits it with torch.Generator().manual_seed(42), as ZSCL
    does. Caltech101 and EuroSAT reproduce ZSCL's split; SUN397 is listed in sorted order, so its
    split is peftclip's own (ZSCL's depends on the filesystem).

    Args:
        root: The MTIL data root (or a CoOp data root).
        dataset: A randomly split MTIL dataset, e.g. caltech101 (the mtil_ prefix is optional).
        output: The manifest file (default: <root>/.peftclip/mtil/<dataset>.json).
        force: Replace an existing manifest that differs.
    """
    manifest = build_manifest(root, dataset)
    path = Path(output) if output else default_manifest_path(root, dataset)
    digest = write_manifest(manifest, path, force)
    print(
        f"wrote {path}: {len(manifest['classnames'])} classes, {len(manifest['train'])} train / "
        f"{len(manifest['test'])} test images; sha256 {digest}"
    )
    return 0


# Templates: ZSCL trains with the first of its ensemble (``mtil:<dataset>`` is the whole one).
# Counts: train = int(0.8 · N) of the whole set, N = 8,677 (Caltech101 without
# BACKGROUND_Google), 27,000 (EuroSAT), 108,754 (SUN397). Checked only when named: they need a
# generated manifest and share their folders with CoOp's datasets.
_DEFINITIONS = (
    DatasetDefinition(
        "mtil_caltech101",
        read_mtil_split,
        MtilSplitLayout(
            ("caltech101/101_ObjectCategories", "caltech-101/101_ObjectCategories"),
            list_caltech101,
            "torchvision Caltech101: sorted categories, image_0001… per category",
        ),
        templates=MTIL_TEMPLATES["caltech101"][:1],
        counts=PublishedCounts(101, 6_941, None, 1_736),
        check_by_default=False,
        benchmark="mtil",
    ),
    DatasetDefinition(
        "mtil_eurosat",
        read_mtil_split,
        MtilSplitLayout(
            ("eurosat/2750",),
            list_eurosat,
            "torchvision EuroSAT (ImageFolder): sorted classes, sorted walk per class",
        ),
        templates=MTIL_TEMPLATES["eurosat"][:1],
        counts=PublishedCounts(10, 21_600, None, 5_400),
        check_by_default=False,
        benchmark="mtil",
    ),
    DatasetDefinition(
        "mtil_sun397",
        read_mtil_split,
        MtilSplitLayout(
            ("SUN397", "sun397/SUN397"),
            list_sun397,
            "sorted relative paths of sun_*.jpg (torchvision/ZSCL use unsorted rglob order)",
        ),
        templates=MTIL_TEMPLATES["sun397"][:1],
        counts=PublishedCounts(397, 87_003, None, 21_751),
        check_by_default=False,
        benchmark="mtil",
    ),
)
for _definition in _DEFINITIONS:
    register_dataset(_definition)
#: The layouts of the randomly split datasets, by ZSCL's name (``caltech101``), from their
#: definitions.
MTIL_SPLIT_LAYOUTS: dict[str, MtilSplitLayout] = {
    definition.name.removeprefix("mtil_"): definition.layout for definition in _DEFINITIONS
}
