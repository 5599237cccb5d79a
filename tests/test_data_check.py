"""``peftclip data check`` reports each kind of fault and sets the exit code."""

import pytest

import peftclip.data.check as check
from peftclip.cli import main
from tests.test_coop_datasets import _zhou_tree


@pytest.fixture
def pets_root(tmp_path, monkeypatch):
    _zhou_tree(tmp_path, "oxford_pets")
    # The fake tree has 2 classes and 2 images per split: make that the expectation.
    monkeypatch.setitem(check.EXPECTED, "oxford_pets", (2, 2, 2, 2))
    return tmp_path


def test_a_complete_dataset_passes(pets_root, capsys):
    assert main(["data", "check", "--root", str(pets_root), "oxford_pets"]) == 0
    assert "ok" in capsys.readouterr().out


def test_count_and_class_mismatches_fail(pets_root, monkeypatch):
    monkeypatch.setitem(check.EXPECTED, "oxford_pets", (37, 2944, 736, 3669))
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
    monkeypatch.setattr(check, "EXPECTED", {"oxford_pets": (2, 2, 2, 2), "dtd": (47, 1, 1, 1)})
    assert main(["data", "check", "--root", str(pets_root)]) == 0
    assert main(["data", "check", "--root", str(pets_root), "dtd"]) == 1


def test_unknown_dataset_name_is_a_user_error(tmp_path, capsys):
    assert main(["data", "check", "--root", str(tmp_path), "petz"]) == 2
    assert "not petz" in capsys.readouterr().err
