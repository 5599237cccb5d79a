"""Importing Dassl's few-shot pkl files with a restricted unpickler.

See docs/datasets.md#few-shot-samples.
"""

import json
import os
import pickle
import sys
import types

import pytest

from peftclip.cli import main
from peftclip.data.dassl_pkl import read_dassl_pkl
from peftclip.errors import PeftClipError
from peftclip.lightning.datamodule import PeftClipDataModule
from tests.test_coop_datasets import ZHOU_EXAMPLES, _zhou_tree


def _write_dassl_pkl(path, records_by_split):
    """Pickles records the way Dassl does, as instances of its Datum class."""
    module = types.ModuleType("dassl.data.datasets.base_dataset")

    class Datum:
        def __init__(self, impath, label, classname):
            self._impath, self._label, self._domain, self._classname = impath, label, 0, classname

    Datum.__module__, Datum.__qualname__ = module.__name__, "Datum"
    module.Datum = Datum
    names = ["dassl", "dassl.data", "dassl.data.datasets", module.__name__]
    sys.modules.update({name: module for name in names})
    try:
        content = {
            split: [Datum(*record) for record in records]
            for split, records in records_by_split.items()
        }
        path.write_bytes(pickle.dumps(content, protocol=pickle.HIGHEST_PROTOCOL))
    finally:
        for name in names:
            del sys.modules[name]  # peftclip must read it without Dassl installed


def _records(split_rows):
    return [
        (f"/home/someone/DATA/oxford_pets/images/{relpath}", label, classname)
        for relpath, label, classname in split_rows
    ]


def test_imported_sample_is_used_exactly(tmp_path, capsys):
    _zhou_tree(tmp_path, "oxford_pets")
    split = json.loads((tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json").read_text())
    pkl = tmp_path / "shot_1-seed_2.pkl"
    _write_dassl_pkl(
        pkl, {"train": _records(split["train"][1:]), "val": _records(split["val"][:1])}
    )
    assert (
        main(["data", "import-pkl", str(pkl), "--root", str(tmp_path), "--dataset", "oxford_pets"])
        == 0
    )
    manifest_file = (
        tmp_path / ".peftclip" / "fewshot" / "oxford_pets" / "shot_1-seed_2-dassl-pkl.json"
    )
    manifest = json.loads(manifest_file.read_text())
    assert manifest["sampler"] == "dassl-pkl" and manifest["train"] == split["train"][1:]
    datamodule = PeftClipDataModule(
        "oxford_pets", root=str(tmp_path), shots=1, seed=2, sampler="dassl-pkl"
    )
    files = [path.name for path, _ in datamodule.data.splits["train"].samples]
    assert files == [os.path.basename(row[0]) for row in split["train"][1:]]


def test_a_pickle_with_any_other_global_is_refused(tmp_path):
    evil = tmp_path / "shot_1-seed_1.pkl"
    evil.write_bytes(pickle.dumps({"train": [os.system]}))
    with pytest.raises(PeftClipError, match=r"asks to load 'posix\.system'.*refused"):
        read_dassl_pkl(evil)


def test_a_record_that_disagrees_with_the_split_fails(tmp_path):
    _zhou_tree(tmp_path, "oxford_pets")
    relpath = ZHOU_EXAMPLES["oxford_pets"][0][0].replace(".jpg", "_0.jpg")
    pkl = tmp_path / "shot_1-seed_1.pkl"
    _write_dassl_pkl(pkl, {"train": _records([[relpath, 1, "american_pit_bull_terrier"]])})
    with pytest.raises(PeftClipError, match="does not hold"):
        from peftclip.data import build_dataset
        from peftclip.data.dassl_pkl import import_dassl_pkl

        data = build_dataset("oxford_pets", str(tmp_path))
        import_dassl_pkl(data, pkl, tmp_path, tmp_path / "cache")


def test_missing_imported_manifest_says_how_to_import(tmp_path):
    _zhou_tree(tmp_path, "oxford_pets")
    datamodule = PeftClipDataModule("oxford_pets", root=str(tmp_path), shots=1, sampler="dassl-pkl")
    with pytest.raises(PeftClipError, match="peftclip data import-pkl"):
        datamodule.data  # noqa: B018
