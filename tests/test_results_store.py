"""The results store: records, concurrent writers, killed writers, schema versions, bad files."""

import contextlib
import itertools
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import time

import pytest

from peftclip.errors import PeftClipError
from peftclip.results import ResultRecord, ResultsStore, cell_key, default_db_path
from peftclip.results import store as store_module
from peftclip.results.records import record_id, top1_from_counts

SPAWN = multiprocessing.get_context("spawn")


def make_cell(dataset="oxford_pets", seed=1, shots=16, protocol="few_shot", **extra):
    return {
        "protocol": protocol,
        "dataset": dataset,
        "methods": [{"name": "coop", "config": {"n_ctx": 16, "csc": False}}],
        "backbone": {"model_name": "ViT-B-16", "pretrained": "openai", "weights_sha256": "ab" * 32},
        "profile": "modern",
        "shots": shots,
        "seed": seed,
        "overrides": [],
        **extra,
    }


def make_record(run_id="run-1", evaluation="oxford_pets", split="test", cell=None, **fields):
    values = {
        "metrics": {"correct": [8, 5, 0], "total": [10, 10, 4], "macro_f1": 50.0},
        "trainable_params": 8192,
        "wall_time_s": 3.5,
        "recipe": "model:\n  adapters: [coop]\n",
        "created_at": "2026-05-09T07:35:25+00:00",  # records made apart compare equal
        **fields,
    }
    return ResultRecord(
        run_id=run_id, cell=cell or make_cell(), evaluation=evaluation, split=split, **values
    )


def _write_records(path, writer, count, barrier=None):
    """A writer process: ``count`` records, one transaction each (most contention)."""
    store = ResultsStore(path)
    if barrier is not None:
        barrier.wait(timeout=60)  # all writers start together (a broken one fails the rest)
    for index in range(count):
        store.add(make_record(run_id=f"writer{writer}-{index}", cell=make_cell(seed=writer)))
    store.close()


def _write_batches_until_killed(path, round_number, batch, hold_event=None):
    """A writer process adding batches of ``batch`` records until it is killed.

    With ``hold_event``, the third batch is inserted but not committed: the writer sets the
    event and waits inside the transaction, to be killed there.
    """
    store = ResultsStore(path)
    if hold_event is not None:
        insert, calls = store._insert, []

        def insert_then_hold(connection, rows):
            insert(connection, rows)
            calls.append(len(rows))
            if len(calls) == 3:
                hold_event.set()
                time.sleep(600)

        store._insert = insert_then_hold
    for number in itertools.count():
        store.add_all(
            make_record(run_id=f"round{round_number}-batch{number}-{index}", recipe="x" * 4000)
            for index in range(batch)
        )


def _run_processes(target, argument_lists):
    processes = [SPAWN.Process(target=target, args=args) for args in argument_lists]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0] * len(processes)


# Records


def test_top1_comes_from_the_integer_counts():
    record = make_record()
    assert record.top1 == pytest.approx(100 * 13 / 24)
    assert record.top1 == top1_from_counts([8, 5, 0], [10, 10, 4])
    agreeing = make_record(metrics={"correct": [1, 2], "total": [4, 4], "top1": 37.5})
    assert agreeing.top1 == 37.5
    with pytest.raises(ValueError, match="disagrees with the counts"):
        make_record(metrics={"correct": [1, 2], "total": [4, 4], "top1": 38.0})
    for bad in (
        {"correct": [5], "total": [4]},  # more correct than images
        {"correct": [1, 2], "total": [4]},  # classes do not pair up
        {"correct": [1.0], "total": [4]},  # counts are ints
        {"top1": 50.0},  # no counts
    ):
        with pytest.raises(ValueError):
            make_record(metrics=bad)
    with pytest.raises(ValueError, match="undefined"):
        top1_from_counts([0], [0])


def test_ids_and_keys_are_deterministic_hashes_of_what_identifies_them():
    first, again = make_record(wall_time_s=1.0), make_record(wall_time_s=99.0)
    assert first.record_id == again.record_id == record_id("run-1", "oxford_pets", "test")
    assert len({make_record(split=s).record_id for s in ("test", "base", "new")}) == 3
    assert make_record(run_id="run-2").record_id != first.record_id
    cell = make_cell()
    reordered = dict(reversed(list(cell.items())))
    assert cell_key(reordered) == cell_key(cell) == first.cell_key
    assert cell_key(make_cell(seed=2)) != cell_key(cell)
    assert cell_key({**cell, "shots": 16.0}) != cell_key(cell)  # JSON types are identity


def test_a_record_round_trips_and_refuses_altered_derived_fields():
    record = make_record(peak_memory_mb=812.5, throughput=140.2, git_commit=None)
    values = record.as_dict()
    assert ResultRecord.from_dict(values) == record
    assert (values["protocol"], values["method"], values["shots"], values["seed"]) == (
        "few_shot",
        "coop",
        16,
        1,
    )
    with pytest.raises(ValueError, match="seed disagree"):
        ResultRecord.from_dict({**values, "seed": 2})
    with pytest.raises(ValueError, match="no fields"):
        ResultRecord.from_dict({**values, "colour": "red"})
    zero_shot = make_record(cell={**make_cell(), "methods": []})
    assert zero_shot.method == "zeroshot"


def test_a_record_holds_a_copy_and_refuses_what_json_cannot_hold():
    cell = make_cell()
    record = make_record(cell=cell)
    cell["seed"] = 7
    assert record.cell["seed"] == 1 and record.seed == 1
    with pytest.raises(ValueError, match="plain JSON"):
        make_record(cell=make_cell(data_root=os.path))
    with pytest.raises(ValueError, match="needs 'dataset'"):
        make_record(cell={k: v for k, v in make_cell().items() if k != "dataset"})
    with pytest.raises(ValueError, match="selection_rule"):
        make_record(selection_rule="best_train")
    with pytest.raises(ValueError, match="wall_time_s"):
        make_record(wall_time_s=float("nan"))


# The store, one process


def test_records_are_stored_once_and_found_by_their_filters(tmp_path):
    path = tmp_path / "sub" / "results.sqlite"
    with ResultsStore(path) as store:
        records = [
            make_record(run_id=f"run-{seed}-{dataset}", cell=make_cell(dataset, seed), split=split)
            for seed in (1, 2, 3)
            for dataset in ("oxford_pets", "dtd")
            for split in ("base", "new")
        ]
        assert store.add_all(records) == 12
        assert store.add_all(records) == 0
        assert not store.add(records[0])
        assert store.count() == 12
    with ResultsStore(path, readonly=True) as store:
        assert store.records() == records  # in the order they were stored
        assert len(store.records(dataset="dtd")) == 6
        assert len(store.records(dataset="dtd", seed=2, split="new")) == 1
        assert store.records(method="coop", protocol="few_shot", shots=16) == store.records()
        assert store.records(protocol="base2new") == []
        found = store.record(records[5].record_id[:8])
        assert found == records[5]
        with pytest.raises(PeftClipError, match="no record"):
            store.record("ffffffffffffffffff")
        with pytest.raises(PeftClipError, match="at least 4"):
            store.record("ab")


def test_cells_keep_their_status_error_and_attempts(tmp_path):
    store = ResultsStore(tmp_path / "results.sqlite")
    cell, other = make_cell(seed=1), make_cell(seed=2)
    assert store.cell_status(cell_key(cell)) is None
    assert store.mark_cell(cell, "running").attempts == 1
    failed = store.mark_cell(cell, "failed", "CUDA out of memory")
    assert (failed.status, failed.error, failed.attempts) == ("failed", "CUDA out of memory", 1)
    assert store.done_cells("few_shot") == set()
    store.mark_cell(cell, "running")
    records = [make_record(cell=cell, split="base"), make_record(cell=cell, split="new")]
    assert store.finish_cell(cell, records) == 2
    done = store.cell_status(cell_key(cell))
    assert (done.status, done.error, done.attempts, done.cell) == ("ok", None, 2, cell)
    store.mark_cell(other, "failed", "no images")
    assert store.done_cells("few_shot") == {cell_key(cell)}
    assert [s.cell_key for s in store.cells("few_shot", "failed")] == [cell_key(other)]
    assert store.done_cells("base2new") == set()
    with pytest.raises(ValueError, match="needs its error"):
        store.mark_cell(cell, "failed")
    assert store.finish_cell(other, [make_record(run_id="x", cell=other)]) == 1
    assert store.done_cells("few_shot") == {cell_key(cell), cell_key(other)}
    assert store.count() == 3


def test_the_default_path_and_its_environment_variable(monkeypatch, tmp_path):
    monkeypatch.delenv("PEFTCLIP_RESULTS_DB", raising=False)
    assert default_db_path() == store_module.DEFAULT_PATH
    monkeypatch.setenv("PEFTCLIP_RESULTS_DB", str(tmp_path / "elsewhere.sqlite"))
    assert ResultsStore().path == tmp_path / "elsewhere.sqlite"
    assert (tmp_path / "elsewhere.sqlite").is_file()


# Many processes, killed processes


def test_eight_concurrent_writers_store_every_record_exactly_once(tmp_path):
    path = tmp_path / "results.sqlite"  # absent: the writers create and migrate it together
    barrier = SPAWN.Barrier(8)
    _run_processes(_write_records, [(path, writer, 50, barrier) for writer in range(8)])
    with ResultsStore(path, readonly=True) as store:
        assert store.count() == 400
        assert {r.seed for r in store.records()} == set(range(8))
        assert all(len(store.records(seed=writer)) == 50 for writer in range(8))
    _run_processes(_write_records, [(path, writer, 50) for writer in range(8)])
    assert ResultsStore(path).count() == 400
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("SELECT COUNT(*) FROM schema_version").fetchone() == (1,)


def _check_consistent(path, reader):
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    records = reader.records()  # every row parses, and its ids match its content
    assert len(records) == reader.count() and all(len(r.recipe) == 4000 for r in records)


def test_a_writer_killed_inside_a_transaction_leaves_only_committed_batches(tmp_path):
    path, batch = tmp_path / "results.sqlite", 1000  # 4 MB a batch: more than SQLite's cache,
    reader = ResultsStore(path)  # so the open transaction has written pages to the WAL file
    hold = SPAWN.Event()
    writer = SPAWN.Process(target=_write_batches_until_killed, args=(path, 0, batch, hold))
    writer.start()
    assert hold.wait(timeout=120)
    os.kill(writer.pid, signal.SIGKILL)
    writer.join()
    assert writer.exitcode == -signal.SIGKILL
    _check_consistent(path, reader)
    assert reader.count() == 2 * batch
    assert reader.records(run_id="round0-batch2-0") == []
    assert ResultsStore(path).add(make_record(run_id="after"))
    assert reader.count() == 2 * batch + 1


def test_writers_killed_at_random_moments_leave_whole_batches(tmp_path):
    path, batch = tmp_path / "results.sqlite", 100
    reader = ResultsStore(path)
    for round_number in range(3):
        before = reader.count()
        writer = SPAWN.Process(target=_write_batches_until_killed, args=(path, round_number, batch))
        writer.start()
        deadline = time.monotonic() + 60
        while reader.count() < before + 2 * batch and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        assert writer.exitcode == -signal.SIGKILL
        _check_consistent(path, reader)
        count = reader.count()
        assert count >= before + 2 * batch and count % batch == 0  # no half batch
    assert ResultsStore(path).add_all(make_record(run_id=f"after-{i}") for i in range(7)) == 7
    assert reader.count() == count + 7


# Schema versions and bad files


def _one_line_error(call) -> str:
    with pytest.raises(PeftClipError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_database_from_a_newer_peftclip_is_refused(tmp_path):
    path = tmp_path / "results.sqlite"
    ResultsStore(path).add(make_record())
    with sqlite3.connect(path) as connection:
        connection.execute("INSERT INTO schema_version VALUES (2, '9.9.0', 'then')")
    for readonly in (False, True):
        message = _one_line_error(lambda readonly=readonly: ResultsStore(path, readonly=readonly))
        assert "schema version 2, written by peftclip 9.9.0" in message
        assert "upgrade peftclip to 9.9.0 or newer" in message
    with sqlite3.connect(path) as connection:  # nothing was changed
        assert connection.execute("SELECT MAX(version) FROM schema_version").fetchone() == (2,)


def test_an_older_database_is_migrated_when_opened_for_writing(tmp_path, monkeypatch):
    path = tmp_path / "results.sqlite"
    ResultsStore(path).add(make_record())
    path_empty = tmp_path / "empty.sqlite"
    path_empty.touch()  # an empty file is a database of version 0
    assert ResultsStore(path_empty).count() == 0
    newer = (*store_module.MIGRATIONS, ("CREATE TABLE leaderboard_cache (key TEXT)",))
    monkeypatch.setattr(store_module, "MIGRATIONS", newer)
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 2)
    assert "version 1" in _one_line_error(lambda: ResultsStore(path, readonly=True))
    assert ResultsStore(path).records() == [make_record()]
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT version FROM schema_version").fetchall() == [(1,), (2,)]
        assert connection.execute("SELECT COUNT(*) FROM leaderboard_cache").fetchone() == (0,)


def test_files_that_are_not_results_databases_are_refused(tmp_path):
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database, but long enough to have a header of sorts " * 20)
    assert "not an SQLite database" in _one_line_error(lambda: ResultsStore(text))
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE songs (title TEXT)")
    assert "not a peftclip results database" in _one_line_error(lambda: ResultsStore(other))
    assert "is a folder" in _one_line_error(lambda: ResultsStore(tmp_path))
    absent = tmp_path / "absent.sqlite"
    assert "no results database" in _one_line_error(lambda: ResultsStore(absent, readonly=True))
    assert not absent.exists()


def test_a_database_locked_beyond_the_timeout_is_a_one_line_error(tmp_path):
    path = tmp_path / "results.sqlite"
    store = ResultsStore(path, timeout_s=0.2)
    store.add(make_record())
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer's transaction that does not end
    try:
        message = _one_line_error(lambda: store.add(make_record(run_id="run-2")))
        assert "locked by another process for more than 0.2 s" in message
        assert "locked" in _one_line_error(lambda: ResultsStore(path, timeout_s=0.2))
        assert store.count() == 1  # reading goes on under WAL
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.add(make_record(run_id="run-2"))
    assert store.count() == 2


@contextlib.contextmanager
def _read_only_file(path):
    """Makes ``path`` unwritable, also for root (who ignores the mode bits: chattr +i)."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        yield
        path.chmod(0o644)
        return
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root where chattr +i is unavailable: no read-only file")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_read_only_database_is_refused_for_writing_and_read_as_it_is(tmp_path):
    path = tmp_path / "results.sqlite"
    ResultsStore(path).add(make_record())
    with _read_only_file(path):
        message = _one_line_error(lambda: ResultsStore(path))
        assert message.startswith(f"the results database {path} is read-only")
        assert "make the file and its folder writable" in message
        with ResultsStore(path, readonly=True) as store:
            assert store.records() == [make_record()]
    store = ResultsStore(path, readonly=True)
    assert "opened read-only" in _one_line_error(lambda: store.add(make_record(run_id="r2")))
    assert store.count() == 1
