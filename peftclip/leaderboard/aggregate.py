"""From result records to leaderboard tables: seed means, population std, HM, averages, flags.

The reporting rules (docs/leaderboard.md): mean ± population standard deviation (ddof = 0) over
seeds, each seed's value kept; a seed more than 5 points from the median of its group is
flagged; base-to-new HM = HM of the seed means of base and new; a dataset average is the mean
of the per-dataset seed means, its std the std over seeds of the per-seed dataset average, and
the base-to-new average HM is HM(B̄_avg, N̄_avg). Nothing is rounded here.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from peftclip.leaderboard.reference import (
    AVERAGE,
    TARGET_AVERAGE,
    ReferenceNumbers,
)
from peftclip.results.records import ResultRecord, harmonic_mean

#: The protocols a leaderboard is made for (continual: peftclip.leaderboard.continual).
PROTOCOLS = ("few_shot", "base2new", "dg", "xd", "continual")
#: How far (percentage points) a seed may lie from the median of its seeds before it is flagged.
OUTLIER_POINTS = 5.0
#: The few-shot column of a record without shots (zero-shot CLIP).
ZERO_SHOTS = 0


@dataclass(frozen=True)
class SeedStat:
    """One measured number over seeds.

    Attributes:
        per_seed: ``seed → value`` (top-1 %); for an average row, the per-seed dataset average
            (empty when the averaged rows do not all have the same seeds).
        mean: The mean over seeds (for an average row: the mean of the rows' seed means).
        std: The population std over seeds; None for an average over rows with different seeds.
        flagged: The seeds more than ``OUTLIER_POINTS`` from the median of ``per_seed``.
    """

    per_seed: dict
    mean: float
    std: float | None
    flagged: tuple = ()

    @classmethod
    def of(cls, per_seed: dict) -> SeedStat:
        """The stat of one group of seeds, with its outliers flagged."""
        values = list(per_seed.values())
        median = statistics.median(values)
        flagged = tuple(s for s, v in per_seed.items() if abs(v - median) > OUTLIER_POINTS)
        return cls(dict(per_seed), statistics.fmean(values), statistics.pstdev(values), flagged)

    @classmethod
    def average(cls, stats: list[SeedStat]) -> SeedStat:
        """The average of rows: the mean of their means, with a std over seeds of the per-seed
        average when every row has the same seeds."""
        mean = statistics.fmean(stat.mean for stat in stats)
        seeds = [tuple(stat.per_seed) for stat in stats]
        if any(set(s) != set(seeds[0]) for s in seeds):
            return cls({}, mean, None)
        per_seed = {s: statistics.fmean(stat.per_seed[s] for stat in stats) for s in seeds[0]}
        return cls(per_seed, mean, statistics.pstdev(per_seed.values()))

    @property
    def median(self) -> float:
        return statistics.median(self.per_seed.values())


@dataclass(frozen=True)
class Row:
    """One row of a leaderboard table.

    Attributes:
        label: The dataset, or ``average`` / ``target_average``.
        kind: ``dataset``, ``source`` (the training set of dg / xd) or ``average``.
        stats: ``column → SeedStat`` of the measured columns.
        derived: ``column → value`` of the columns computed from seed means (base-to-new HM).
        paper: ``column → PaperNumber`` where a published number exists.
        averaged: For an average row, the rows it averages.
    """

    label: str
    kind: str
    stats: dict
    derived: dict = field(default_factory=dict)
    paper: dict = field(default_factory=dict)
    averaged: tuple[str, ...] = ()

    def value(self, column) -> float | None:
        """The measured number of a column (a seed mean or a derived value), or None."""
        if column in self.stats:
            return self.stats[column].mean
        return self.derived.get(column)


@dataclass(frozen=True)
class Board:
    """The leaderboard table of one method (with one profile and backbone) in one protocol.

    Attributes:
        protocol: few_shot, base2new, dg or xd.
        method: Adapter names joined by ``+``; ``zeroshot`` for none.
        profile: The precision profile of the runs (``modern`` / ``faithful``).
        backbone: The backbone's open_clip model name (None: not recorded).
        pretrained: The backbone's weights tag or file (None: not recorded).
        shots: The shots of every run (base2new, dg, xd); None for few_shot (a column each).
        source: The training dataset (dg, xd); None otherwise.
        columns: The column keys: ``base``, ``new``, ``hm``; K (few_shot); ``top1`` (dg, xd).
        rows: The rows, datasets in the papers' order, then the average.
        notes: What a reader must know about the numbers (duplicates, incomplete averages).
        selection_rule: How the runs' models were chosen (results records' ``selection_rule``):
            a table of the anchors' rules (``best_full_val``, ``best_test``) is never merged
            with one of the clean rules, and its title says so.
    """

    protocol: str
    method: str
    profile: str | None
    backbone: str | None
    pretrained: str | None
    shots: int | None
    source: str | None
    columns: tuple
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = ()
    selection_rule: str = "last"

    @property
    def seeds(self) -> tuple:
        """Every seed of the table's measured rows, in order."""
        found = {
            s
            for row in self.rows
            if row.kind != "average"
            for st in row.stats.values()
            for s in st.per_seed
        }
        return tuple(sorted(found, key=_seed_order))

    def row(self, label: str) -> Row | None:
        return next((row for row in self.rows if row.label == label), None)


def _seed_order(seed) -> tuple:
    return (seed is not None, seed if seed is not None else 0)


def _by_seed(per_seed: dict) -> dict:
    """``per_seed`` in the order of its seeds (a seed of None first)."""
    return dict(sorted(per_seed.items(), key=lambda item: _seed_order(item[0])))


def _column(record: ResultRecord):
    if record.protocol == "base2new":
        return record.split
    if record.protocol == "few_shot":
        return record.shots if record.shots is not None else ZERO_SHOTS
    return "top1"


def _wanted(record: ResultRecord) -> bool:
    """The evaluations a protocol's table shows: base2new's halves, the others' test split."""
    if record.protocol == "base2new":
        return record.split in ("base", "new")
    if record.protocol == "few_shot":
        return record.split == "test" and record.evaluation == record.dataset
    return record.split == "test"


def _board_key(record: ResultRecord) -> tuple:
    backbone = record.cell.get("backbone") or {}
    fixed_shots = None if record.protocol == "few_shot" else record.shots
    source = record.dataset if record.protocol in ("dg", "xd") else None
    return (
        record.method,
        record.cell.get("profile"),
        backbone.get("model_name"),
        backbone.get("pretrained"),
        fixed_shots,
        source,
        record.selection_rule,
    )


def _row_label(record: ResultRecord) -> str:
    return record.evaluation if record.protocol in ("dg", "xd") else record.dataset


def newest_records(
    records: Iterable[ResultRecord],
) -> tuple[list[ResultRecord], dict[tuple, list[str]]]:
    """One record per evaluation: the newest (``created_at``, then store order) of those that
    measure the same thing (same table, row, column and seed); and, per table, a note on each
    evaluation recorded more than once."""
    slots: dict[tuple, list[ResultRecord]] = defaultdict(list)
    for record in records:
        slot = (_board_key(record), _row_label(record), _column(record), record.seed)
        slots[slot].append(record)
    kept, notes = [], defaultdict(list)
    for (board, row, column, seed), found in slots.items():
        # A stable sort: among equal times the store's order (the order they were added) decides.
        newest = sorted(found, key=lambda r: r.created_at)[-1]
        kept.append(newest)
        if len(found) > 1:
            cells = len({r.cell_key for r in found})
            kind = "of the same cell" if cells == 1 else f"of {cells} different cells"
            notes[board].append(
                f"{row} {column_name(column)} seed {seed}: {len(found)} records {kind}; the "
                f"newest (run {newest.run_id}, {newest.created_at}) is used"
            )
    return kept, notes


def column_name(column) -> str:
    """How a column is headed: ``Base``, ``New``, ``HM``, ``top-1``, ``4-shot``, ``zero-shot``."""
    if isinstance(column, int):
        return "zero-shot" if column == ZERO_SHOTS else f"{column}-shot"
    return {"base": "Base", "new": "New", "hm": "HM", "top1": "top-1"}[column]


def _row_order(
    protocol: str, labels: Iterable[str], source: str | None, references: ReferenceNumbers
) -> list[str]:
    """The papers' order (the datasets of the published average), then the others by name."""
    known = references.averages.get(protocol, ())
    labels = set(labels)
    first = [source] if source in labels else []
    labels -= {source}
    return first + [d for d in known if d in labels] + sorted(labels - set(known))


def _paper(
    references: ReferenceNumbers, protocol: str, key: tuple, row: str, columns: Iterable
) -> dict:
    method, _, backbone, *_ = key
    found = {c: references.lookup(protocol, method, backbone, row, c) for c in columns}
    return {c: number for c, number in found.items() if number is not None}


def _average_row(
    protocol: str,
    key: tuple,
    rows: list[Row],
    columns: tuple,
    references: ReferenceNumbers,
    notes: list[str],
) -> Row | None:
    """The average (base2new, few_shot) or target average (dg, xd) of a table's rows."""
    averaged = [row for row in rows if row.kind == "dataset"]
    if len(averaged) < 2:
        return None
    label = TARGET_AVERAGE if protocol in ("dg", "xd") else AVERAGE
    measured = [c for c in columns if c != "hm"]
    stats = {}
    for column in measured:
        missing = [row.label for row in averaged if column not in row.stats]
        if missing:
            notes.append(
                f"no {label.replace('_', ' ')} of {column_name(column)}: "
                f"{', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no "
                f"{column_name(column)} result"
            )
            continue
        stats[column] = SeedStat.average([row.stats[column] for row in averaged])
        if stats[column].std is None:
            notes.append(
                f"{label.replace('_', ' ')} {column_name(column)}: the datasets have different "
                "seeds, so no std over seeds is given"
            )
    derived = {}
    if protocol == "base2new" and {"base", "new"} <= set(stats):
        derived["hm"] = harmonic_mean(stats["base"].mean, stats["new"].mean)
    names = tuple(row.label for row in averaged)
    # A published average is over fixed datasets: compare only an average over exactly those.
    same_datasets = set(names) == set(references.averages.get(protocol, ()))
    paper = _paper(references, protocol, key, label, columns) if same_datasets else {}
    return Row(label, "average", stats, derived, paper, names)


def build_boards(
    records: Iterable[ResultRecord], protocol: str, references: ReferenceNumbers
) -> list[Board]:
    """The leaderboard tables of one protocol's records: one per method, profile, backbone (and
    shots, and source dataset for dg / xd), zero-shot first, then by method name.

    Args:
        records: The records of the protocol (others are ignored, as are splits its tables do
            not show, e.g. val).
        protocol: few_shot, base2new, dg or xd.
        references: The published numbers to put beside the measured ones.
    """
    chosen = [r for r in records if r.protocol == protocol and _wanted(r)]
    kept, duplicate_notes = newest_records(chosen)
    per_board: dict[tuple, list[ResultRecord]] = defaultdict(list)
    for record in kept:
        per_board[_board_key(record)].append(record)
    boards = []
    for key in sorted(per_board, key=lambda k: (k[0] != "zeroshot", *map(str, k))):
        method, profile, backbone, pretrained, shots, source, selection_rule = key
        found = per_board[key]
        values: dict[tuple, dict] = defaultdict(dict)  # (row, column) → seed → top-1
        for record in found:
            values[(_row_label(record), _column(record))][record.seed] = record.top1
        if protocol == "base2new":
            columns = ("base", "new", "hm")
        elif protocol == "few_shot":
            columns = tuple(sorted({column for _, column in values}))
        else:
            columns = ("top1",)
        rows = []
        for label in _row_order(protocol, {row for row, _ in values}, source, references):
            stats = {
                column: SeedStat.of(_by_seed(values[(label, column)]))
                for column in columns
                if (label, column) in values
            }
            derived = {}
            if protocol == "base2new" and {"base", "new"} <= set(stats):
                derived["hm"] = harmonic_mean(stats["base"].mean, stats["new"].mean)
            kind = "source" if label == source else "dataset"
            paper = _paper(references, protocol, key, label, columns)
            rows.append(Row(label, kind, stats, derived, paper))
        notes = list(duplicate_notes.get(key, []))
        average = _average_row(protocol, key, rows, columns, references, notes)
        if average is not None:
            rows.append(average)
        boards.append(
            Board(
                protocol,
                method,
                profile,
                backbone,
                pretrained,
                shots,
                source,
                columns,
                tuple(rows),
                tuple(notes),
                selection_rule,
            )
        )
    return boards
