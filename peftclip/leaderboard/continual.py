"""The continual leaderboard: Transfer / Avg / Last per stream and strategy from stored rows.

A continual run stores one record per evaluated dataset and evaluation row (split
``after_task_<t>``; ``metrics`` say the row, the dataset's column in learning order and whether
it is held out: docs/continual.md#results). Per seed the records give back the accuracy matrix,
whose metrics are :func:`peftclip.continual.metrics.continual_metrics` — the function the run
itself reports with; over seeds a number is the mean ± population std (docs/leaderboard.md).
Rounding (1 decimal, as the MTIL and X-TAIL tables) happens only in the rendering.

Imports neither torch nor Lightning; matplotlib only when a plot is drawn.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from peftclip.continual.metrics import ContinualMetrics, continual_metrics
from peftclip.leaderboard.aggregate import SeedStat
from peftclip.leaderboard.reference import PaperNumber, ReferenceNumbers
from peftclip.leaderboard.render import (
    BLANK,
    DELTA,
    MEASURED,
    OUTLIER_MARK,
    PAPER,
    PER_SEED,
    Column,
    TextTable,
)
from peftclip.results.records import ZERO_SHOT, ResultRecord

#: The measured columns: the ZSCL metrics, BWT, and the held-out means before and after.
METRICS = ("transfer", "avg", "last", "bwt")
HELD_OUT = ("held_out_zero_shot", "held_out_last")
#: The columns with published numbers.
PAPER_COLUMNS = ("transfer", "avg", "last")
COLUMN_NAMES = {
    "transfer": "Transfer",
    "avg": "Avg",
    "last": "Last",
    "bwt": "BWT",
    "held_out_zero_shot": "held-out zero-shot",
    "held_out_last": "held-out last",
}
#: Cell keys that differ between the seeds of one configuration, not between configurations.
_PER_RUN_KEYS = ("seed", "recipe", "recipe_sha256", "overrides")


@dataclass(frozen=True)
class SeedRun:
    """The evaluations of one seed of a configuration.

    Attributes:
        seed: The run's seed.
        rows: ``rows[t][dataset]`` = top-1 (%) after task t (row 0: zero-shot), every evaluated
            dataset (learned and held out).
        metrics: The metrics of the T×T matrix of the learned datasets.
    """

    seed: int | None
    rows: tuple[dict[str, float], ...]
    metrics: ContinualMetrics

    def matrix(self, datasets: tuple[str, ...]) -> list[list[float]]:
        return [[row[d] for d in datasets] for row in self.rows[1:]]

    def held_out(self, row: int, held_out: tuple[str, ...]) -> float | None:
        if not held_out:
            return None
        return statistics.fmean(self.rows[row][d] for d in held_out)


@dataclass(frozen=True)
class ContinualBoard:
    """One stream × strategy configuration (profile, backbone, settings) over its seeds.

    Attributes:
        stream: The stream's name.
        method: The strategy (``zeroshot``: the zero-shot row of the runs).
        profile: The runs' precision (``32-true`` / ``bf16-mixed``).
        backbone: The open_clip model name.
        pretrained: The weights tag or file.
        settings: A short hash of the configuration (the cell without seed and recipe file).
        datasets: The learned datasets, in learning order (the matrix's columns).
        held_out: The held-out datasets.
        runs: The complete seeds.
        stats: ``column → SeedStat`` over the seeds (``bwt`` absent for one task, held-out
            columns absent without held-out datasets).
        paper: ``column → PaperNumber`` where a published number exists.
        notes: Incomplete seeds, duplicate records.
    """

    stream: str
    method: str
    profile: str | None
    backbone: str | None
    pretrained: str | None
    settings: str
    datasets: tuple[str, ...]
    held_out: tuple[str, ...]
    runs: tuple[SeedRun, ...]
    stats: dict
    paper: dict
    notes: tuple[str, ...] = ()

    @property
    def seeds(self) -> tuple:
        return tuple(run.seed for run in self.runs)

    def mean_rows(self) -> list[dict[str, float]]:
        """Per row, the seed mean of every evaluated dataset's top-1."""
        names = self.datasets + self.held_out
        return [
            {d: statistics.fmean(run.rows[t][d] for run in self.runs) for d in names}
            for t in range(len(self.runs[0].rows))
        ]


def _configuration(record: ResultRecord) -> str:
    cell = {k: v for k, v in record.cell.items() if k not in _PER_RUN_KEYS}
    return hashlib.sha256(json.dumps(cell, sort_keys=True).encode()).hexdigest()[:8]


def _row(record: ResultRecord) -> int:
    return int(record.metrics.get("row", record.split.removeprefix("after_task_")))


def _newest(records: list[ResultRecord]) -> tuple[list[ResultRecord], list[str]]:
    """One record per (seed, row, dataset): the newest; and a note per evaluation stored twice."""
    slots: dict[tuple, list[ResultRecord]] = defaultdict(list)
    for record in records:
        slots[(record.seed, _row(record), record.evaluation)].append(record)
    kept, notes = [], []
    for (seed, row, dataset), found in slots.items():
        newest = sorted(found, key=lambda r: r.created_at)[-1]  # stable: store order breaks ties
        kept.append(newest)
        if len(found) > 1:
            notes.append(
                f"{dataset} after task {row} seed {seed}: {len(found)} records; the newest "
                f"(run {newest.run_id}, {newest.created_at}) is used"
            )
    return kept, notes


def _seed_run(seed, records: list[ResultRecord], datasets, held_out) -> SeedRun | str:
    """The seed's run, or why it is left out (rows missing: a run still going or killed)."""
    rows: dict[int, dict[str, float]] = defaultdict(dict)
    for record in records:
        rows[_row(record)][record.evaluation] = record.top1
    names = set(datasets) | set(held_out)
    complete = [t for t in range(len(datasets) + 1) if set(rows.get(t, {})) >= names]
    if len(complete) < len(datasets) + 1:
        return (
            f"seed {seed} left out: {len(complete)} of {len(datasets) + 1} evaluation rows "
            "recorded (a run still going or stopped; `peftclip run continual` resumes it)"
        )
    ordered = tuple(rows[t] for t in range(len(datasets) + 1))
    matrix = [[row[d] for d in datasets] for row in ordered[1:]]
    return SeedRun(seed, ordered, continual_metrics(matrix))


def _stats(runs: list[SeedRun], held_out: tuple[str, ...]) -> dict:
    values: dict[str, dict] = defaultdict(dict)
    last = len(runs[0].rows) - 1 if runs else 0
    for run in runs:
        for column in METRICS:
            value = getattr(run.metrics, column)
            if value is not None:
                values[column][run.seed] = value
        if held_out:
            values["held_out_zero_shot"][run.seed] = run.held_out(0, held_out)
            values["held_out_last"][run.seed] = run.held_out(last, held_out)
    return {column: SeedStat.of(per_seed) for column, per_seed in values.items()}


def _zero_shot_board(board: ContinualBoard) -> ContinualBoard:
    """The zero-shot CLIP of a board's runs: a matrix whose every row is their row 0 (so
    Transfer = mean of columns 2…T, Avg = Last = mean of all)."""
    runs = []
    for run in board.runs:
        zero = [run.rows[0][d] for d in board.datasets]
        metrics = continual_metrics([zero] * len(board.datasets))
        runs.append(SeedRun(run.seed, (run.rows[0],) * len(run.rows), metrics))
    return ContinualBoard(
        board.stream, ZERO_SHOT, board.profile, board.backbone, board.pretrained,
        board.settings, board.datasets, board.held_out, tuple(runs),
        _stats(runs, board.held_out), {},
    )  # fmt: skip


def _with_paper(board: ContinualBoard, references: ReferenceNumbers) -> ContinualBoard:
    """The board with its published numbers, where its stream learns the published stream's
    datasets in the published order (a custom stream of the same name is not compared)."""
    found = {
        column: references.lookup("continual", board.method, board.backbone, board.stream, column)
        for column in PAPER_COLUMNS
    }
    paper = {column: number for column, number in found.items() if number is not None}
    notes = board.notes
    if paper:
        from peftclip.continual.streams import BUILTIN_STREAMS  # the paper streams: no torch

        published = tuple(task.dataset for task in BUILTIN_STREAMS[board.stream]().tasks)
        if published != board.datasets:
            paper = {}
            notes += (
                f"not compared with the paper: its {board.stream} learns "
                f"{' → '.join(published)}, these runs {' → '.join(board.datasets)}",
            )
    return ContinualBoard(**{**board.__dict__, "paper": paper, "notes": notes})


def build_continual_boards(
    records: Iterable[ResultRecord], references: ReferenceNumbers
) -> list[ContinualBoard]:
    """The boards of the continual records, by stream; per stream the zero-shot rows first
    (one per distinct zero-shot evaluation), then the strategies by name."""
    groups: dict[tuple, list[ResultRecord]] = defaultdict(list)
    for record in records:
        if record.protocol == "continual" and record.split.startswith("after_task_"):
            backbone = record.cell.get("backbone") or {}
            key = (
                record.dataset,
                record.method,
                record.cell.get("profile"),
                backbone.get("model_name"),
                backbone.get("pretrained"),
                _configuration(record),
            )
            groups[key].append(record)
    boards = []
    for key in sorted(groups, key=lambda k: tuple(map(str, k))):
        stream, method, profile, model_name, pretrained, settings = key
        kept, notes = _newest(groups[key])
        columns = {r.evaluation: r.metrics.get("column") for r in kept}
        datasets = tuple(sorted((d for d, c in columns.items() if c is not None), key=columns.get))
        # Held out: in the stream's order where the cell gives it, else by name.
        given = [t["dataset"] for t in (kept[0].cell.get("stream") or {}).get("held_out", [])]
        held = {d for d, c in columns.items() if c is None}
        held_out = tuple([d for d in given if d in held] + sorted(held - set(given)))
        by_seed: dict = defaultdict(list)
        for record in kept:
            by_seed[record.seed].append(record)
        runs = []
        for seed in sorted(by_seed, key=lambda s: (s is not None, s or 0)):
            run = _seed_run(seed, by_seed[seed], datasets, held_out)
            if isinstance(run, str):
                notes.append(run)
            else:
                runs.append(run)
        board = ContinualBoard(
            stream, method, profile, model_name, pretrained, settings, datasets, held_out,
            tuple(runs), _stats(runs, held_out), {}, tuple(notes),
        )  # fmt: skip
        boards.append(board)
    # Boards without a complete seed still show (their notes say why), with no numbers.
    with_zero_shot = []
    for stream in sorted({b.stream for b in boards}):
        of_stream = [b for b in boards if b.stream == stream]
        zero_shots: list[ContinualBoard] = []
        for board in of_stream:
            if not board.runs:
                continue
            zero = _zero_shot_board(board)
            if not any(_same_zero_shot(zero, other) for other in zero_shots):
                zero_shots.append(zero)
        with_zero_shot += [_with_paper(b, references) for b in (*zero_shots, *of_stream)]
    return with_zero_shot


def _same_zero_shot(a: ContinualBoard, b: ContinualBoard) -> bool:
    identity = (a.profile, a.backbone, a.pretrained, a.datasets, a.held_out)
    if identity != (b.profile, b.backbone, b.pretrained, b.datasets, b.held_out):
        return False
    rows_a = {run.seed: run.rows[0] for run in a.runs}
    return all(rows_a.get(run.seed, run.rows[0]) == run.rows[0] for run in b.runs)


# ------------------------------------------------------------------------------------ rendering
def _stat_text(stat: SeedStat | None) -> str:
    if stat is None:
        return BLANK
    spread = stat.std is not None and len(stat.per_seed) > 1
    text = f"{stat.mean:.1f} ± {stat.std:.1f}" if spread else f"{stat.mean:.1f}"
    return text + (OUTLIER_MARK if stat.flagged else "")


def board_label(board: ContinualBoard, boards: list[ContinualBoard]) -> str:
    """``lwf · 32-true · ViT-B-16 (openai) · seeds 1, 2``, plus ``settings <hash>`` where
    two boards of the stream differ only in their settings."""
    backbone = board.backbone or "backbone not recorded"
    if board.pretrained:
        backbone += f" ({board.pretrained})"
    seeds = ", ".join(str(s) for s in board.seeds) or "none complete"
    parts = [board.method, board.profile or "profile not recorded", backbone]
    parts.append(f"seed{'s' * (len(board.seeds) != 1)} {seeds}")
    twins = [
        b
        for b in boards
        if (b.stream, b.method, b.profile, b.backbone, b.pretrained)
        == (board.stream, board.method, board.profile, board.backbone, board.pretrained)
    ]
    if board.method != ZERO_SHOT and len(twins) > 1:
        parts.append(f"settings {board.settings}")
    return " · ".join(parts)


def stream_title(boards: list[ContinualBoard]) -> str:
    """``xtail · 10 tasks: fgvc_aircraft → … · held out: …`` (the first board's datasets)."""
    first = boards[0]
    title = f"{first.stream} · {len(first.datasets)} tasks: {' → '.join(first.datasets)}"
    if first.held_out:
        title += f" · held out: {', '.join(first.held_out)}"
    return title


def continual_layout(boards: list[ContinualBoard], per_seed: bool = False) -> list[TextTable]:
    """One table per stream: a row per board, the measured columns, [per seed], paper, Δ."""
    tables = []
    for stream in dict.fromkeys(b.stream for b in boards):
        of_stream = [b for b in boards if b.stream == stream]
        measured = [*METRICS, *(HELD_OUT if any(b.held_out for b in of_stream) else ())]
        columns = [Column(MEASURED, COLUMN_NAMES[c], c) for c in measured]
        if per_seed:
            columns += [Column(PER_SEED, COLUMN_NAMES[c], c) for c in PAPER_COLUMNS]
        with_paper = [c for c in PAPER_COLUMNS if any(c in b.paper for b in of_stream)]
        columns += [Column(PAPER, COLUMN_NAMES[c], c) for c in with_paper]
        columns += [Column(DELTA, COLUMN_NAMES[c], c) for c in with_paper]
        rows, notes = [], []
        for board in of_stream:
            cells = []
            for column in columns:
                stat = board.stats.get(column.key)
                paper: PaperNumber | None = board.paper.get(column.key)
                if column.group == MEASURED:
                    cells.append(_stat_text(stat))
                elif column.group == PER_SEED:
                    values = stat.per_seed if stat is not None else {}
                    cells.append(" / ".join(f"{values[s]:.1f}" for s in values) or BLANK)
                elif paper is None:
                    cells.append(BLANK)
                elif column.group == PAPER:
                    cells.append(f"{paper.value:.1f}")
                else:
                    cells.append(BLANK if stat is None else f"{stat.mean - paper.value:+.1f}")
            label = board_label(board, boards)
            rows.append((label, tuple(cells), board.method == ZERO_SHOT))
            for column, stat in board.stats.items():
                for seed in stat.flagged:
                    notes.append(
                        f"{OUTLIER_MARK} {board.method} {COLUMN_NAMES[column]} seed {seed}: "
                        f"{stat.per_seed[seed]:.1f}, median of its seeds {stat.median:.1f}"
                    )
            notes += [f"{board.method}: {note}" for note in board.notes]
            citations = {number.citation() for number in board.paper.values()}
            notes += [f"paper numbers of {board.method}: {c}" for c in sorted(citations)]
        tables.append(
            TextTable(
                stream_title(of_stream), "strategy", tuple(columns), tuple(rows), tuple(notes)
            )
        )
    return tables


def render_continual_csv(boards: list[ContinualBoard]) -> str:
    """One line per measured number: stream, strategy, profile, backbone, settings, column,
    mean, std, seeds and per-seed values, and the paper number, its difference and source."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(
        ["protocol", "stream", "method", "profile", "backbone", "pretrained", "settings",
         "column", "mean", "std", "seeds", "per_seed", "outlier_seeds", "paper", "delta",
         "paper_source"]
    )  # fmt: skip
    for board in boards:
        for column in (*METRICS, *HELD_OUT):
            stat = board.stats.get(column)
            if stat is None:
                continue
            paper = board.paper.get(column)
            writer.writerow(
                [
                    "continual",
                    board.stream,
                    board.method,
                    board.profile or "",
                    board.backbone or "",
                    board.pretrained or "",
                    board.settings,
                    COLUMN_NAMES[column],
                    f"{stat.mean:.1f}",
                    "" if stat.std is None else f"{stat.std:.1f}",
                    " ".join(map(str, stat.per_seed)),
                    " ".join(f"{v:.1f}" for v in stat.per_seed.values()),
                    " ".join(map(str, stat.flagged)),
                    "" if paper is None else f"{paper.value:.1f}",
                    "" if paper is None else f"{stat.mean - paper.value:+.1f}",
                    "" if paper is None else paper.citation(),
                ]
            )
    return text.getvalue()


# ---------------------------------------------------------------------------------------- plots
def _file_stem(board: ContinualBoard, boards: list[ContinualBoard]) -> str:
    """``continual_<stream>_<method>``, with the profile, backbone and settings where another
    board of the stream shares the method."""
    stem = f"continual_{board.stream}_{board.method}"
    twins = [b for b in boards if (b.stream, b.method) == (board.stream, board.method)]
    if len(twins) > 1:
        stem += f"_{twins.index(board) + 1}"
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in stem)


def accuracy_heatmap(board: ContinualBoard, label: str) -> bytes:
    """The seed-mean accuracy matrix: a row per evaluation (zero-shot, after task 1 … T), a
    column per dataset (learned in learning order, then held out), each cell's value printed."""
    from matplotlib.figure import Figure

    from peftclip.leaderboard.plots import _png

    names = [*board.datasets, *board.held_out]
    rows = board.mean_rows()
    values = [[row[d] for d in names] for row in rows]
    figure = Figure(figsize=(1.0 + 0.75 * len(names), 1.2 + 0.45 * len(rows)), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for t, row in enumerate(values):
        for d, value in enumerate(row):
            color = "black" if value > 60 else "white"
            axes.text(d, t, f"{value:.1f}", ha="center", va="center", fontsize=7, color=color)
    axes.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize="small")
    axes.set_yticks(range(len(rows)), ["zero-shot", *(f"after {t}" for t in range(1, len(rows)))])
    if board.held_out:  # the held-out columns are never trained on
        axes.axvline(len(board.datasets) - 0.5, color="white", linewidth=2)
    axes.set_title(f"{board.stream}: {label}", fontsize="small")
    figure.colorbar(image, ax=axes, label="top-1 accuracy (%)")
    return _png(figure)


def task_curves(board: ContinualBoard, label: str) -> bytes:
    """Accuracy of each dataset after each task (x: 0 = zero-shot … T), one line per dataset;
    a dataset's line is marked where it is learned, held-out datasets are dashed."""
    from matplotlib.figure import Figure

    from peftclip.leaderboard.plots import _png

    rows = board.mean_rows()
    steps = list(range(len(rows)))
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.add_subplot()
    for index, name in enumerate((*board.datasets, *board.held_out)):
        values = [row[name] for row in rows]
        held = name in board.held_out
        line = axes.plot(steps, values, linestyle="--" if held else "-", marker=".", label=name)
        if not held:  # learned in task index + 1
            axes.plot(index + 1, values[index + 1], marker="o", color=line[0].get_color())
    axes.set_xticks(steps, ["0-shot", *map(str, steps[1:])])
    axes.set_xlabel("after task")
    axes.set_ylabel("top-1 accuracy (%)")
    axes.set_title(f"{board.stream}: {label}", fontsize="small")
    axes.grid(alpha=0.3)
    figure.legend(*axes.get_legend_handles_labels(), fontsize="x-small", loc="outside right upper")
    return _png(figure)


def continual_plots(boards: list[ContinualBoard]) -> dict[str, bytes]:
    """``continual_<stream>_<strategy>_matrix.png`` and ``…_curves.png`` per board with a
    complete seed (the zero-shot rows have none: their matrix is constant)."""
    plots = {}
    for board in boards:
        if board.method == ZERO_SHOT or not board.runs:
            continue
        stem, label = _file_stem(board, boards), board_label(board, boards)
        plots[f"{stem}_matrix.png"] = accuracy_heatmap(board, label)
        plots[f"{stem}_curves.png"] = task_curves(board, label)
    return plots
