"""``peftclip results list | show | export`` in-process, on a database filled here."""

import csv
import json

import pytest
import yaml

from peftclip.cli import main
from peftclip.results import ResultsStore, top1_from_counts
from tests.test_results_store import _read_only_file, make_cell, make_record


@pytest.fixture
def filled_db(tmp_path):
    """Base-to-new CoOp on two datasets × two seeds, and one DG record of MaPLe + CLIP-SVD."""
    path = tmp_path / "results.sqlite"
    records = [
        make_record(
            run_id=f"coop-{dataset}-{seed}",
            cell=make_cell(dataset, seed, protocol="base2new"),
            evaluation=dataset,
            split=split,
            metrics={"correct": [seed, 3], "total": [4, 4 + len(split)], "macro_f1": None},
        )
        for dataset in ("oxford_pets", "dtd")
        for seed in (1, 2)
        for split in ("base", "new")
    ]
    maple_svd = [
        {"name": "maple", "config": {"depth": 9}},
        {"name": "clip_svd", "config": {}},
    ]
    records.append(
        make_record(
            run_id="maple-imagenet-1",
            cell=make_cell("imagenet", 1, protocol="dg", methods=maple_svd),
            evaluation="imagenet_sketch",
            metrics={"correct": [7, 0, 2], "total": [9, 1, 2], "val_loss": 0.25, "per_head": [1]},
            peak_memory_mb=5120.0,
            throughput=310.5,
        )
    )
    ResultsStore(path).add_all(records)
    return path, records


def _lines(capsys):
    return capsys.readouterr().out.splitlines()


def test_list_prints_one_line_per_record_and_filters(filled_db, capsys):
    path, records = filled_db
    assert main(["results", "list", "--db", str(path)]) == 0
    lines = _lines(capsys)
    assert lines[0].split()[:4] == ["record", "run", "protocol", "method"]
    assert lines[-1] == f"9 records in {path}"
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert set(rows) == {r.record_id for r in records}
    dg = records[-1]
    assert rows[dg.record_id][1:11] == [
        "maple-imagenet-1",
        "dg",
        "maple+clip_svd",
        "imagenet",
        "imagenet_sketch",
        "test",
        "16",
        "1",
        f"{100 * 9 / 12:.2f}",
        "2026-05-09",
    ]
    assert main(["results", "list", "--db", str(path), "--protocol", "base2new"]) == 0
    assert _lines(capsys)[-1] == f"8 records in {path}"
    assert main(["results", "list", "--db", str(path), "--dataset", "dtd", "--method", "coop"]) == 0
    lines = _lines(capsys)
    assert lines[-1] == f"4 records in {path}" and all(" dtd " in line for line in lines[1:-1])
    assert main(["results", "list", "--db", str(path), "--protocol", "xd"]) == 0
    assert _lines(capsys) == [f"no records in {path} match --protocol xd"]


def test_an_empty_or_absent_database_says_so(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty.sqlite"
    ResultsStore(empty).close()
    assert main(["results", "list", "--db", str(empty)]) == 0
    assert _lines(capsys) == [f"no records in {empty} (the database is empty)"]
    monkeypatch.setenv("PEFTCLIP_RESULTS_DB", str(empty))  # the default database moves
    assert main(["results", "list"]) == 0
    assert _lines(capsys) == [f"no records in {empty} (the database is empty)"]
    absent = tmp_path / "absent.sqlite"
    assert main(["results", "list", "--db", str(absent)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"peftclip: error: no results database at {absent}: nothing was recorded there; give "
        "the database with --db PATH or $PEFTCLIP_RESULTS_DB."
    ]
    assert not absent.exists()


def test_show_prints_the_whole_record_as_yaml_or_json(filled_db, capsys):
    path, records = filled_db
    record = records[-1]
    assert main(["results", "show", record.record_id[:6], "--db", str(path)]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out) == record.as_dict()
    assert "recipe: |\n  model:\n" in out and "correct: [7, 0, 2]" in out
    assert main(["results", "show", record.record_id, "--db", str(path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == record.as_dict()
    assert main(["results", "show", "0000000", "--db", str(path)]) == 2
    assert "no record in" in capsys.readouterr().err


def test_export_writes_one_row_per_record_with_recomputable_counts(filled_db, tmp_path, capsys):
    path, records = filled_db
    target = tmp_path / "out" / "results.csv"
    assert main(["results", "export", "--db", str(path), "--csv", str(target)]) == 0
    assert _lines(capsys) == [f"wrote 9 records to {target}"]
    with target.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["record_id"] for row in rows] == [r.record_id for r in ResultsStore(path).records()]
    by_id = {row["record_id"]: row for row in rows}
    for record in records:
        row = by_id[record.record_id]
        correct, total = json.loads(row["correct"]), json.loads(row["total"])
        assert (correct, total) == (record.metrics["correct"], record.metrics["total"])
        assert float(row["top1"]) == record.top1 == top1_from_counts(correct, total)
        assert row["recipe"] == record.recipe and json.loads(row["cell"]) == record.cell
    dg = by_id[records[-1].record_id]
    assert (dg["val_loss"], dg["per_head"], dg["peak_memory_mb"]) == ("0.25", "[1]", "5120.0")
    assert (dg["macro_f1"], by_id[records[0].record_id]["val_loss"]) == ("", "")
    assert list(rows[0])[:12] == [
        "record_id",
        "run_id",
        "protocol",
        "method",
        "dataset",
        "shots",
        "seed",
        "evaluation",
        "split",
        "top1",
        "macro_f1",
        "correct",
    ]


def test_export_of_nothing_writes_the_header_and_says_so(filled_db, tmp_path, capsys):
    path, _ = filled_db
    target = tmp_path / "none.csv"
    assert (
        main(["results", "export", "--db", str(path), "--csv", str(target), "--method", "lora"])
        == 0
    )
    assert _lines(capsys) == [
        f"no records in {path} match --method lora; wrote only the header to {target}"
    ]
    assert target.read_text().startswith("record_id,run_id,protocol,")
    assert len(target.read_text().splitlines()) == 1


def test_a_read_only_database_can_still_be_listed(filled_db, capsys):
    path, _ = filled_db
    with _read_only_file(path):
        assert main(["results", "list", "--db", str(path)]) == 0
        assert _lines(capsys)[-1] == f"9 records in {path}"


def test_the_results_commands_are_in_the_overview(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("results list", "results show", "results export"):
        assert f"  {command} " in out
