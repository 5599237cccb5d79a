"""Importing Dassl's ``split_fewshot/shot_<K>-seed_<s>.pkl`` as a peftclip manifest.

See docs/datasets.md#few-shot-samples.

The only way to reproduce a given Dassl ImageNet few-shot sample (Dassl lists ImageNet folders
unsorted, so its samples depend on the filesystem). The pickle is read with an unpickler that
accepts Dassl's ``Datum`` record and nothing else: a pickle is code, and this one comes from
another machine.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

from peftclip.atomic_files import write_text_atomically
from peftclip.data.fewshot import MANIFEST_FORMAT, manifest_path, source_sha256
from peftclip.data.registry import ClassificationData
from peftclip.errors import PeftClipError

DATUM = ("dassl.data.datasets.base_dataset", "Datum")
SAMPLER = "dassl-pkl"


class DasslDatum:
    """Local stand-in for ``dassl.data.datasets.base_dataset.Datum`` (attributes only)."""

    _impath: str
    _label: int
    _classname: str


class _DatumOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) == DATUM:
            return DasslDatum
        raise PeftClipError(
            f"'{self.path}' asks to load '{module}.{name}'; a Dassl few-shot pkl holds only "
            f"{'.'.join(DATUM)} records, so it was refused (a pickle can run code)."
        )


def read_dassl_pkl(path: Path) -> dict[str, list[DasslDatum]]:
    with Path(path).open("rb") as file:
        content = _DatumOnlyUnpickler(file, Path(path)).load()
    if not isinstance(content, dict) or "train" not in content:
        raise PeftClipError(f"'{path}' is not a Dassl few-shot file (a dict with 'train').")
    return content


def import_dassl_pkl(
    data: ClassificationData, pkl: Path, root: Path, cache_dir: Path, shots: int | None = None,
    seed: int | None = None,
) -> Path:  # fmt: skip
    """Writes the manifest of ``pkl`` for ``data`` (read from data root ``root``) and returns it.

    Absolute paths of the machine that made the pkl are cut after the dataset's image folder
    (e.g. ``…/oxford_pets/images/``); every file must exist and every (label, class name) must
    agree with the split file.
    """
    match = re.fullmatch(r"shot_(\d+)-seed_(\d+)\.pkl", Path(pkl).name)
    if shots is None or seed is None:
        if match is None:
            raise PeftClipError(
                f"cannot read shots and seed from '{pkl}'; pass --shots and --seed."
            )
        shots, seed = int(match.group(1)), int(match.group(2))
    if data.image_root is None:
        raise PeftClipError(f"dataset '{data.name}' is not read from files; nothing to import.")
    anchor = "/" + data.image_root.relative_to(root).as_posix().strip("/") + "/"
    entries = {}
    for split, records in read_dassl_pkl(pkl).items():
        known = {
            path.relative_to(data.image_root).as_posix(): label
            for path, label in data.splits[split].samples
        }
        rows = []
        for record in records:
            impath = record._impath.replace("\\", "/")
            if anchor not in impath:
                raise PeftClipError(f"'{pkl}': path '{impath}' does not contain '{anchor}'.")
            relpath = impath.rsplit(anchor, 1)[1]
            label, classname = int(record._label), record._classname
            if known.get(relpath) != label or data.classnames[label] != classname:
                raise PeftClipError(
                    f"'{pkl}' lists '{relpath}' as {label} '{classname}', which the {split} split "
                    f"of '{data.name}' under '{root}' does not hold. Is it the same split file?"
                )
            rows.append([relpath, label, classname])
        entries[split] = rows
    manifest = {
        "format": MANIFEST_FORMAT,
        "dataset": data.name,
        "shots": shots,
        "seed": seed,
        "sampler": SAMPLER,
        "source_split": {
            "file": data.split_file.name if data.split_file else None,
            "sha256": source_sha256(data),
        },
        **entries,
    }
    output = manifest_path(cache_dir, data.name, shots, seed, SAMPLER)
    write_text_atomically(output, json.dumps(manifest, indent=1) + "\n")
    return output


def import_pkl_command(
    pkl: Path,
    *,
    root: Path,
    dataset: str,
    shots: int | None = None,
    seed: int | None = None,
    cache_dir: Path | None = None,
) -> int:
    """Imports a Dassl few-shot pkl as a peftclip manifest.

    Reads Dassl's split_fewshot/shot_<K>-seed_<s>.pkl; a recipe then trains on exactly that
    sample with data.sampler: dassl-pkl (and the same data.shots and data.seed).

    Args:
        pkl: The Dassl pickle.
        root: The data root <DATA>.
        dataset: Registry name of the dataset, e.g. imagenet.
        shots: Shots per class (default: from the file name).
        seed: Sampling seed (default: from the file name).
        cache_dir: Where manifests live (default: <DATA>/.peftclip).
    """
    from peftclip.data.registry import build_dataset

    data = build_dataset(dataset, str(root))
    output = import_dassl_pkl(data, pkl, root, cache_dir or root / ".peftclip", shots, seed)
    print(f"wrote {output}")
    return 0
