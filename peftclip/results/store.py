"""The results database: result records and the status of protocol cells in one SQLite file.

Any number of processes may write to one database at once (SQLite's write-ahead log, WAL, and a
busy timeout): every write is one transaction, so a record is stored whole or not at all, also
when its writer is killed; a record added twice is stored once. The schema is versioned: a
database from an older peftclip is migrated when opened for writing, one from a newer peftclip
is refused. docs/results.md describes the tables.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote

import peftclip
from peftclip.errors import PeftClipError
from peftclip.results.records import ResultRecord, canonical_json, cell_key, check_cell, utc_now

#: Where the database is when neither ``--db`` nor the environment variable names one.
DEFAULT_PATH = Path("runs") / "results.sqlite"
#: The environment variable that moves the default database.
ENV_VAR = "PEFTCLIP_RESULTS_DB"
#: A cell is being run, has run and recorded its results, or has failed (with its error).
CELL_STATUSES = ("ok", "failed", "running")

#: The schema's history: ``MIGRATIONS[n]`` takes a database from version n to n + 1 (version 0
#: is an empty file). Append a migration for every change; never edit a released one, since
#: databases in the field were made by it.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE schema_version (
            version INTEGER PRIMARY KEY,
            peftclip_version TEXT NOT NULL,
            applied_at TEXT NOT NULL
        )""",
        """CREATE TABLE records (
            record_id TEXT PRIMARY KEY,
            run_id TEXT NOT NULL,
            protocol TEXT NOT NULL,
            method TEXT NOT NULL,
            dataset TEXT NOT NULL,
            shots INTEGER,
            seed INTEGER,
            evaluation TEXT NOT NULL,
            split TEXT NOT NULL,
            metrics TEXT NOT NULL,
            selection_rule TEXT NOT NULL,
            trainable_params INTEGER NOT NULL,
            wall_time_s REAL NOT NULL,
            peak_memory_mb REAL,
            throughput REAL,
            peftclip_version TEXT NOT NULL,
            git_commit TEXT,
            created_at TEXT NOT NULL,
            cell_key TEXT NOT NULL,
            cell TEXT NOT NULL,
            recipe TEXT NOT NULL
        )""",
        "CREATE INDEX records_by_table ON records (protocol, dataset, method, shots, seed)",
        "CREATE INDEX records_by_cell ON records (cell_key)",
        "CREATE INDEX records_by_run ON records (run_id)",
        """CREATE TABLE cells (
            cell_key TEXT PRIMARY KEY,
            protocol TEXT NOT NULL,
            cell TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'running')),
            error TEXT,
            attempts INTEGER NOT NULL,
            updated_at TEXT NOT NULL
        )""",
        "CREATE INDEX cells_by_protocol ON cells (protocol, status)",
    ),
)
#: The schema version this peftclip writes.
SCHEMA_VERSION = len(MIGRATIONS)

_RECORD_COLUMNS = tuple(f.name for f in fields(ResultRecord))
_JSON_COLUMNS = ("cell", "metrics")
_CELL_COLUMNS = ("cell_key", "protocol", "cell", "status", "error", "attempts", "updated_at")


def _writable(path: Path) -> bool:
    return not path.exists() or os.access(path, os.W_OK)


def default_db_path() -> Path:
    """``$PEFTCLIP_RESULTS_DB`` if set, else ``runs/results.sqlite``."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_PATH)


@dataclass(frozen=True)
class CellStatus:
    """Where a protocol cell stands.

    Attributes:
        cell_key: The cell's key.
        protocol: Its protocol.
        cell: Its identity.
        status: ``running``, ``ok`` (its records are stored) or ``failed``.
        error: What went wrong (``failed`` only).
        attempts: How often it was started (marked ``running``, or finished without being
            marked ``running`` first).
        updated_at: When the status was last set (UTC, ISO 8601).
    """

    cell_key: str
    protocol: str
    cell: dict
    status: str
    error: str | None
    attempts: int
    updated_at: str


class ResultsStore:
    """A results database (SQLite in WAL mode); open one per process.

    Args:
        path: The database file (default: :func:`default_db_path`). Opened for writing, it and
            its folder are made when absent.
        readonly: Open for reading only (the file must exist and have this peftclip's schema).
        timeout_s: How long a write waits for another process's write to finish.

    Raises:
        PeftClipError: The database is from a newer peftclip, is not a results database, is
            read-only (when opened for writing), stays locked beyond ``timeout_s`` or cannot be
            opened.

    Example::

        with ResultsStore("runs/results.sqlite") as store:
            store.add(record)
            store.records(protocol="few_shot", dataset="oxford_pets")
    """

    def __init__(
        self, path: str | Path | None = None, *, readonly: bool = False, timeout_s: float = 30.0
    ) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        self.readonly = readonly
        self.timeout_s = timeout_s
        self._connection = self._connect()
        try:
            if readonly:
                self._check_schema()
            else:
                mode = self._use_wal()
                self._migrate()  # first: a read-only file keeps its mode, and gets its message
                if mode != "wal":
                    raise PeftClipError(
                        f"the results database {self.path} cannot use SQLite's write-ahead log "
                        f"(it stays in '{mode}' mode; network file systems such as NFS do not "
                        "support it); put it on a local disk."
                    )
        except BaseException:
            self._connection.close()
            raise

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection (the data is already on disk)."""
        self._connection.close()

    # Writing

    def add(self, record: ResultRecord) -> bool:
        """Stores a record; ``False`` when one with its ``record_id`` is already stored (the
        first one stays)."""
        return self.add_all([record]) == 1

    def add_all(self, records: Iterable[ResultRecord]) -> int:
        """Stores records in one transaction (all or none); returns how many were new."""
        rows = [self._record_row(record) for record in records]
        with self._transaction("storing records") as connection:
            return self._insert(connection, rows)

    def finish_cell(self, cell: dict, records: Iterable[ResultRecord]) -> int:
        """Stores what a cell recorded and marks the cell ``ok``, in one transaction.

        A runner killed between the two steps would leave records of a cell that still looks
        unfinished (and a rerun would add a second set); one transaction cannot.

        Args:
            cell: The cell's identity (as in :class:`ResultRecord`).
            records: What the cell's runs recorded (a base-to-new cell also records zero-shot
                CLIP, under a cell of its own).

        Returns:
            How many records were new.
        """
        check_cell(cell)
        rows = [self._record_row(record) for record in records]
        with self._transaction("storing a cell's records") as connection:
            added = self._insert(connection, rows)
            self._upsert_cell(connection, cell, "ok", None)
        return added

    def mark_cell(self, cell: dict, status: str, error: str | None = None) -> CellStatus:
        """Sets the status of a protocol cell (its key and protocol come from ``cell``).

        Args:
            cell: The cell's identity (as in :class:`ResultRecord`).
            status: ``running``, ``ok`` or ``failed``.
            error: What went wrong; required for ``failed``, refused otherwise.
        """
        check_cell(cell)
        if status not in CELL_STATUSES:
            raise ValueError(f"a cell's status is one of {CELL_STATUSES}; not {status!r}")
        if (status == "failed") != isinstance(error, str):
            raise ValueError(
                f"a failed cell needs its error (a str), other statuses none; got {error!r}"
            )
        with self._transaction("marking a cell") as connection:
            self._upsert_cell(connection, cell, status, error)
        return self.cell_status(cell_key(cell))

    # Reading

    def records(
        self,
        *,
        protocol: str | None = None,
        dataset: str | None = None,
        method: str | None = None,
        shots: int | None = None,
        seed: int | None = None,
        evaluation: str | None = None,
        split: str | None = None,
        cell_key: str | None = None,
        run_id: str | None = None,
    ) -> list[ResultRecord]:
        """The stored records that match every filter given (None: any), oldest first
        (in the order they were stored within a second)."""
        filters = {
            "protocol": protocol,
            "dataset": dataset,
            "method": method,
            "shots": shots,
            "seed": seed,
            "evaluation": evaluation,
            "split": split,
            "cell_key": cell_key,
            "run_id": run_id,
        }
        given = {column: value for column, value in filters.items() if value is not None}
        where = " AND ".join(f"{column} = ?" for column in given) or "1"
        return self._select_records(where, list(given.values()))

    def record(self, record_id: str) -> ResultRecord:
        """The record with this id, or with the one id that starts with it (4+ characters).

        Raises:
            PeftClipError: No record, or several, match.
        """
        if len(record_id) < 4:
            raise PeftClipError(f"give at least 4 characters of a record id; got '{record_id}'.")
        escaped = record_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        found = self._select_records("record_id LIKE ? ESCAPE '\\'", [f"{escaped}%"])
        if len(found) != 1:
            what = "no record" if not found else f"{len(found)} records"
            raise PeftClipError(
                f"{what} in {self.path} with an id starting '{record_id}'; "
                "`peftclip results list` shows the ids."
            )
        return found[0]

    def count(self) -> int:
        """How many records are stored."""
        with self._sqlite_errors("counting records"):
            return self._connection.execute("SELECT COUNT(*) FROM records").fetchone()[0]

    def cell_status(self, cell_key: str) -> CellStatus | None:
        """The status of a cell by its key; ``None`` when it was never marked."""
        found = self._select_cells("cell_key = ?", [cell_key])
        return found[0] if found else None

    def cells(self, protocol: str | None = None, status: str | None = None) -> list[CellStatus]:
        """The marked cells (of a protocol, with a status: None is any), oldest update first."""
        given = {"protocol": protocol, "status": status}
        given = {column: value for column, value in given.items() if value is not None}
        return self._select_cells(
            " AND ".join(f"{column} = ?" for column in given) or "1", list(given.values())
        )

    def done_cells(self, protocol: str) -> set[str]:
        """The keys of a protocol's cells marked ``ok``: the ones a rerun skips."""
        return {status.cell_key for status in self.cells(protocol, "ok")}

    # The connection and the schema

    def _connect(self) -> sqlite3.Connection:
        if self.path.is_dir():
            raise PeftClipError(
                f"the results database {self.path} is a folder; give a file, e.g. "
                f"{self.path / 'results.sqlite'}."
            )
        if self.readonly:
            if not self.path.is_file():
                raise PeftClipError(
                    f"no results database at {self.path}: nothing was recorded there; give the "
                    f"database with --db PATH or ${ENV_VAR}."
                )
            target, uri = f"file:{quote(str(self.path.resolve()))}?mode=ro", True
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise PeftClipError(
                    f"cannot make the folder of the results database {self.path} ({error}); "
                    f"give a writable place with --db PATH or ${ENV_VAR}."
                ) from error
            # In WAL mode SQLite finds a read-only file only at the first write (BEGIN
            # IMMEDIATE passes); a writer should learn it before it runs anything.
            unwritable = [p for p in (self.path, self.path.parent) if not _writable(p)]
            if unwritable:
                raise PeftClipError(self._explain_read_only(f"cannot write to {unwritable[0]}"))
            target, uri = str(self.path), False
        with self._sqlite_errors("opening it"):
            # isolation_level=None: no implicit transactions; every write below says BEGIN and
            # COMMIT itself, so what a transaction holds is visible in the code.
            return sqlite3.connect(target, timeout=self.timeout_s, isolation_level=None, uri=uri)

    def _use_wal(self) -> str:
        """Switches the file to WAL mode (it stays so); returns the mode it is in."""
        with self._sqlite_errors("switching it to WAL mode"):
            return self._connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]

    def _schema_version(self) -> tuple[int, str | None]:
        """The schema version of the file and the peftclip that wrote it (0: an empty file)."""
        with self._sqlite_errors("reading its schema version"):
            tables = {
                name
                for (name,) in self._connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                )
            }
            if "schema_version" not in tables:
                if tables:
                    raise PeftClipError(
                        f"{self.path} is an SQLite database but not a peftclip results database "
                        f"(it has tables {', '.join(sorted(tables))} and no schema_version); "
                        f"give the results database with --db PATH or ${ENV_VAR}."
                    )
                return 0, None
            return self._connection.execute(
                "SELECT version, peftclip_version FROM schema_version ORDER BY version DESC"
            ).fetchone()

    def _refuse_newer(self, version: int, writer: str | None) -> None:
        if version > SCHEMA_VERSION:
            raise PeftClipError(
                f"the results database {self.path} has schema version {version}, written by "
                f"peftclip {writer}; this peftclip ({peftclip.__version__}) knows versions up to "
                f"{SCHEMA_VERSION}: upgrade peftclip to {writer} or newer to use it, or give "
                f"another database with --db PATH or ${ENV_VAR}."
            )

    def _check_schema(self) -> None:
        version, writer = self._schema_version()
        self._refuse_newer(version, writer)
        if version < SCHEMA_VERSION:
            raise PeftClipError(
                f"the results database {self.path} has schema version {version}; this peftclip "
                f"reads version {SCHEMA_VERSION}: open it once for writing (make it writable; "
                "any command that writes results migrates it) to read it."
            )

    def _migrate(self) -> None:
        # BEGIN IMMEDIATE takes the write lock: of several processes opening an old database at
        # once, one migrates it and the others then find it current. It also finds out, before
        # any work is done, that the database cannot be written.
        with self._transaction("opening it for writing") as connection:
            version, writer = self._schema_version()
            self._refuse_newer(version, writer)
            for number in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[number]:
                    connection.execute(statement)
                connection.execute(
                    "INSERT INTO schema_version VALUES (?, ?, ?)",
                    (number + 1, peftclip.__version__, utc_now()),
                )

    @contextlib.contextmanager
    def _transaction(self, doing: str) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed whole when the block succeeds, else rolled back."""
        if self.readonly:
            raise PeftClipError(
                f"the results database {self.path} was opened read-only; {doing} writes to it."
            )
        with self._sqlite_errors(doing):
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
                self._connection.execute("COMMIT")
            except BaseException:
                if self._connection.in_transaction:
                    self._connection.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _sqlite_errors(self, doing: str) -> Iterator[None]:
        """Turns SQLite's errors into one-line PeftClipErrors that say what to do."""
        try:
            yield
        except sqlite3.Error as error:
            raise PeftClipError(self._explain(error, doing)) from error

    def _explain(self, error: sqlite3.Error, doing: str) -> str:
        name = getattr(error, "sqlite_errorname", None) or ""
        where = f"the results database {self.path}"
        elsewhere = f"give another database with --db PATH or ${ENV_VAR}"
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return (
                f"{where} stayed locked by another process for more than {self.timeout_s:g} s "
                f"({doing}); let the process that writes to it finish and run this again."
            )
        if name.startswith("SQLITE_READONLY"):
            return self._explain_read_only(f"{doing} writes to it")
        if name.startswith("SQLITE_CANTOPEN"):
            return f"cannot open {where} ({doing}): {error}; check its folder, or {elsewhere}."
        if name.startswith("SQLITE_NOTADB"):
            return f"{self.path} is not an SQLite database; {elsewhere}."
        if name.startswith("SQLITE_CORRUPT"):
            return f"{where} is damaged ({error}); restore it from a copy, or {elsewhere}."
        if name.startswith("SQLITE_FULL"):
            return f"the disk of {where} is full ({doing}); free some space and run this again."
        return f"{where}: {error} ({doing}); {elsewhere}."

    def _explain_read_only(self, reason: str) -> str:
        return (
            f"the results database {self.path} is read-only ({reason}); make the file and its "
            f"folder writable, or give another database with --db PATH or ${ENV_VAR}."
        )

    # Rows

    @staticmethod
    def _record_row(record: ResultRecord) -> tuple:
        if not isinstance(record, ResultRecord):
            raise TypeError(f"the store holds ResultRecords; got {type(record).__name__}")
        values = record.as_dict()
        for column in _JSON_COLUMNS:
            values[column] = canonical_json(values[column])
        return tuple(values[column] for column in _RECORD_COLUMNS)

    @staticmethod
    def _insert(connection: sqlite3.Connection, rows: list[tuple]) -> int:
        before = connection.total_changes
        connection.executemany(
            f"INSERT OR IGNORE INTO records ({', '.join(_RECORD_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(_RECORD_COLUMNS))})",
            rows,
        )
        return connection.total_changes - before

    @staticmethod
    def _upsert_cell(
        connection: sqlite3.Connection, cell: dict, status: str, error: str | None
    ) -> None:
        # attempts counts starts: a mark 'running', or a finish not preceded by 'running'.
        connection.execute(
            f"INSERT INTO cells ({', '.join(_CELL_COLUMNS)}) VALUES (?, ?, ?, ?, ?, 1, ?) "
            "ON CONFLICT (cell_key) DO UPDATE SET status = excluded.status, "
            "error = excluded.error, updated_at = excluded.updated_at, "
            "attempts = cells.attempts "
            "+ (excluded.status = 'running' OR cells.status != 'running')",
            (cell_key(cell), cell["protocol"], canonical_json(cell), status, error, utc_now()),
        )

    def _select_records(self, where: str, parameters: list[Any]) -> list[ResultRecord]:
        with self._sqlite_errors("reading records"):
            rows = self._connection.execute(
                f"SELECT {', '.join(_RECORD_COLUMNS)} FROM records WHERE {where} "
                "ORDER BY created_at, rowid",  # rowid: the order they were stored in
                parameters,
            ).fetchall()
        records = []
        for row in rows:
            values = dict(zip(_RECORD_COLUMNS, row, strict=True))
            try:
                for column in _JSON_COLUMNS:
                    values[column] = json.loads(values[column])
                records.append(ResultRecord.from_dict(values))
            except ValueError as error:  # json's JSONDecodeError is a ValueError
                raise PeftClipError(
                    f"record {values['record_id']} of {self.path} is damaged ({error}); restore "
                    "the database from a copy."
                ) from error
        return records

    def _select_cells(self, where: str, parameters: list[Any]) -> list[CellStatus]:
        with self._sqlite_errors("reading cells"):
            rows = self._connection.execute(
                f"SELECT {', '.join(_CELL_COLUMNS)} FROM cells WHERE {where} "
                "ORDER BY updated_at, cell_key",
                parameters,
            ).fetchall()
        return [
            CellStatus(**{**dict(zip(_CELL_COLUMNS, row, strict=True)), "cell": json.loads(row[2])})
            for row in rows
        ]
