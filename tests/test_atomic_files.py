"""``atomic_path``: the previous file or the complete new one, never a torn or stray file."""

import pytest
import torch

from peftclip.atomic_files import atomic_path, write_text_atomically


def test_success_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "deep" / "state.pt"  # missing folders are made
    write_text_atomically(target, "old")
    with atomic_path(target) as partial:
        assert not partial.exists() and target.read_text() == "old"  # untouched until the end
        torch.save({"step": 2}, partial)
    assert torch.load(target)["step"] == 2
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.pt"]


def test_a_failing_write_keeps_the_previous_file_and_removes_the_partial_one(tmp_path):
    target = tmp_path / "manifest.json"
    write_text_atomically(target, '{"complete": true}')
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as partial:
        partial.write_text('{"compl')  # half written when the writer fails
        raise RuntimeError("disk full")
    assert target.read_text() == '{"complete": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_a_failing_first_write_leaves_no_file_at_all(tmp_path):
    with pytest.raises(ValueError), atomic_path(tmp_path / "new.txt") as partial:
        partial.write_text("x")
        raise ValueError
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["a.json", "a.json.partial", ".hidden", "x.partial.partial"])
def test_the_partial_name_is_never_the_final_name(tmp_path, name):
    with atomic_path(tmp_path / name) as partial:
        assert partial.parent == tmp_path  # same folder: the rename is atomic
        assert partial.name != name
        partial.write_text("done")
    assert (tmp_path / name).read_text() == "done"
