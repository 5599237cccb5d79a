"""``peftclip results list | show | export``: what a results database holds (docs/results.md)."""

from __future__ import annotations

import csv as csv_format
import io
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

import yaml

from peftclip.atomic_files import write_text_atomically
from peftclip.results.records import ResultRecord
from peftclip.results.store import ResultsStore, default_db_path

#: The metrics ``export`` writes first; the per-class counts are JSON lists.
_HEADLINE_METRICS = ("top1", "macro_f1", "correct", "total")


def _open(db: str | None) -> ResultsStore:
    """The database for reading: opened for writing where that is allowed, so that one from an
    older peftclip is migrated, and read-only where it is not (or absent: a clear error)."""
    path = Path(db) if db else default_db_path()
    writable = path.is_file() and os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
    return ResultsStore(path, readonly=not writable)


def _selected(
    store: ResultsStore, protocol: str | None, dataset: str | None, method: str | None
) -> tuple[list[ResultRecord], str]:
    """The records the filters select, and the line that says there are none."""
    records = store.records(protocol=protocol, dataset=dataset, method=method)
    given = {"protocol": protocol, "dataset": dataset, "method": method}
    filters = " ".join(f"--{name} {value}" for name, value in given.items() if value is not None)
    if store.count() == 0:
        return records, f"no records in {store.path} (the database is empty)"
    return records, f"no records in {store.path} match {filters}"


def _blank(value: Any) -> Any:
    return "-" if value is None else value


def results_list_command(
    *,
    db: str | None = None,
    protocol: str | None = None,
    dataset: str | None = None,
    method: str | None = None,
) -> int:
    """Lists the records of a results database, one line each.

    Columns: the record id (for `peftclip results show`), the run, protocol, method, training
    dataset, the evaluated dataset and split, shots, seed, top-1 (%) and when it was recorded
    (UTC); then how many records there are.

    Args:
        db: The results database (default: $PEFTCLIP_RESULTS_DB, else runs/results.sqlite).
        protocol: Only the records of this protocol (few_shot, base2new, dg, xd, ...).
        dataset: Only the records of cells trained on this dataset.
        method: Only the records of this method: adapter names joined by '+' (maple+clip_svd),
            zeroshot for none.
    """
    with _open(db) as store:
        records, none_line = _selected(store, protocol, dataset, method)
    if not records:
        print(none_line)
        return 0
    header = ("record", "run", "protocol", "method", "dataset", "evaluation", "split")
    header += ("shots", "seed", "top1", "created (UTC)")
    rows = [header] + [
        (
            r.record_id,
            r.run_id,
            r.protocol,
            r.method,
            r.dataset,
            r.evaluation,
            r.split,
            str(_blank(r.shots)),
            str(_blank(r.seed)),
            f"{r.top1:.2f}",
            r.created_at[:16].replace("T", " "),
        )
        for r in records
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    numeric = {"shots", "seed", "top1"}
    for row in rows:
        cells = [
            value.rjust(width) if name in numeric else value.ljust(width)
            for name, value, width in zip(header, row, widths, strict=True)
        ]
        print("  ".join(cells).rstrip())
    print(f"{len(records)} record{'s' * (len(records) != 1)} in {store.path}")
    return 0


class _RecordDumper(yaml.SafeDumper):
    """YAML for people: the recipe as a block of lines, count lists on one line each."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _represent_list(dumper: yaml.SafeDumper, value: list) -> yaml.Node:
    flat = all(not isinstance(item, dict | list) for item in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flat)


_RecordDumper.add_representer(str, _represent_str)
_RecordDumper.add_representer(list, _represent_list)


def results_show_command(
    record_id: str, *, db: str | None = None, format: Literal["yaml", "json"] = "yaml"
) -> int:
    """Prints one record in full: its cell, metrics with per-class counts, run and recipe.

    Args:
        record_id: The record's id, or its first characters (at least 4; `peftclip results
            list` shows them).
        db: The results database (default: $PEFTCLIP_RESULTS_DB, else runs/results.sqlite).
        format: yaml or json.
    """
    with _open(db) as store:
        record = store.record(record_id).as_dict()
    if format == "json":
        print(json.dumps(record, indent=2, ensure_ascii=False))
    else:
        print(
            yaml.dump(record, Dumper=_RecordDumper, sort_keys=False, allow_unicode=True, width=100),
            end="",
        )
    return 0


def _csv_value(value: Any) -> Any:
    """A cell of the CSV: numbers and text as they are, lists and dicts as JSON, None empty."""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return "" if value is None else value


def results_export_command(
    *,
    csv: str,
    db: str | None = None,
    protocol: str | None = None,
    dataset: str | None = None,
    method: str | None = None,
) -> int:
    """Writes the records of a results database to a CSV file, one row per record.

    Columns: the fields of a record in the order `peftclip results show` prints them, its
    metrics spread into columns (top1, macro_f1, the per-class counts correct and total as JSON
    lists, then any other metric), the cell as JSON.

    Args:
        csv: The CSV file to write (replaced whole).
        db: The results database (default: $PEFTCLIP_RESULTS_DB, else runs/results.sqlite).
        protocol: Only the records of this protocol (few_shot, base2new, dg, xd, ...).
        dataset: Only the records of cells trained on this dataset.
        method: Only the records of this method (adapter names joined by '+'; zeroshot).
    """
    with _open(db) as store:
        records, none_line = _selected(store, protocol, dataset, method)
    other_metrics = sorted({name for r in records for name in r.metrics} - set(_HEADLINE_METRICS))
    columns = []  # the record's fields in order, its metrics spread into columns
    for name in (f.name for f in fields(ResultRecord)):
        columns += [*_HEADLINE_METRICS, *other_metrics] if name == "metrics" else [name]
    text = io.StringIO()
    writer = csv_format.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for record in records:
        values = {**record.as_dict(), **record.metrics}
        writer.writerow({column: _csv_value(values.get(column)) for column in columns})
    write_text_atomically(csv, text.getvalue())
    if records:
        print(f"wrote {len(records)} record{'s' * (len(records) != 1)} to {csv}")
    else:
        print(f"{none_line}; wrote only the header to {csv}")
    return 0
