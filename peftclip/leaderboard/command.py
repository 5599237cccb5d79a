"""``peftclip leaderboard``: a protocol's tables and plots from a results database only."""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

from peftclip.atomic_files import atomic_path, write_text_atomically
from peftclip.errors import PeftClipError
from peftclip.leaderboard.aggregate import PROTOCOLS, Board, build_boards
from peftclip.leaderboard.continual import (
    ContinualBoard,
    build_continual_boards,
    continual_layout,
    continual_plots,
    render_continual_csv,
)
from peftclip.leaderboard.plots import leaderboard_plots
from peftclip.leaderboard.reference import reference_numbers
from peftclip.leaderboard.render import (
    FORMATS,
    layout,
    render_csv,
    render_html,
    render_latex,
    render_markdown,
)
from peftclip.results.records import ZERO_SHOT, ResultRecord
from peftclip.results.store import ResultsStore, default_db_path


def _names(values) -> str:
    return ", ".join(sorted(values))


def _row_dataset(record: ResultRecord) -> str:
    """The dataset ``--datasets`` selects by: the evaluated one for dg / xd, else the trained
    (for continual: the stream)."""
    return record.evaluation if record.protocol in ("dg", "xd") else record.dataset


def _what_is_stored(records: list[ResultRecord]) -> str:
    """``base2new: methods coop, zeroshot; datasets dtd, eurosat | few_shot: ...``."""
    methods, datasets = defaultdict(set), defaultdict(set)
    for record in records:
        methods[record.protocol].add(record.method)
        datasets[record.protocol].add(_row_dataset(record))
    return " | ".join(
        f"{protocol}: methods {_names(methods[protocol])}; datasets {_names(datasets[protocol])}"
        for protocol in sorted(methods)
    )


def _check_method_names(names: list[str], protocol: str) -> None:
    """Raises PeftClipError for a name that is no method (imports the adapters or strategies:
    only called for names the database does not hold)."""
    if protocol == "continual":
        from peftclip.continual.registry import list_strategies

        known = list_strategies()
        for name in names:
            if name != ZERO_SHOT and name not in known:
                raise PeftClipError(
                    f"unknown strategy '{name}'; a continual method is one of {', '.join(known)}."
                )
        return
    from peftclip.adapters import list_adapters

    adapters = list_adapters()
    for name in names:
        if name != ZERO_SHOT and not all(part in adapters for part in name.split("+")):
            raise PeftClipError(
                f"unknown method '{name}'; a method is {ZERO_SHOT} or adapter names joined by "
                f"'+' (e.g. maple+clip_svd), the adapters being {', '.join(adapters)}."
            )


def _check_dataset_names(names: list[str], protocol: str) -> None:
    if protocol == "continual":
        from peftclip.continual.streams import list_streams

        known = list_streams()
        for name in names:
            if name not in known:
                raise PeftClipError(
                    f"unknown stream '{name}'; the built-in streams are {', '.join(known)} "
                    "(a custom stream is selected by its name once it has records)."
                )
        return
    from peftclip.data import list_datasets

    known = list_datasets()
    for name in names:
        if name not in known:
            raise PeftClipError(f"unknown dataset '{name}'; the datasets are {', '.join(known)}.")


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise PeftClipError(f"unknown format '{format}'; choose one of {', '.join(FORMATS)}.")


def select_records(
    store: ResultsStore,
    protocol: str,
    methods: list[str] | None = None,
    datasets: list[str] | None = None,
) -> list[ResultRecord]:
    """The records of a protocol for the named methods and datasets (None: all).

    Raises:
        PeftClipError: The protocol or a name is unknown, or nothing matches (the message says
            what the database holds).
    """
    if protocol not in PROTOCOLS:
        raise PeftClipError(
            f"unknown protocol '{protocol}'; a leaderboard is made for {', '.join(PROTOCOLS)}."
        )
    stored = store.records()
    if not stored:
        raise PeftClipError(
            f"no records in {store.path} (the database is empty); `peftclip run {protocol} "
            "--config RECIPE.yaml` records them."
        )
    of_protocol = [r for r in stored if r.protocol == protocol]
    absent_methods = [m for m in methods or [] if m not in {r.method for r in of_protocol}]
    absent_datasets = [d for d in datasets or [] if d not in {_row_dataset(r) for r in of_protocol}]
    if absent_methods:
        _check_method_names(absent_methods, protocol)
    if absent_datasets:
        _check_dataset_names(absent_datasets, protocol)
    selected = [
        r
        for r in of_protocol
        if (methods is None or r.method in methods)
        and (datasets is None or _row_dataset(r) in datasets)
    ]
    if not selected:
        filters = "".join(
            f" {option} {' '.join(values)}"
            for option, values in (("--methods", methods), ("--datasets", datasets))
            if values
        )
        raise PeftClipError(
            f"no {protocol} records in {store.path}{' match' + filters if filters else ''}; "
            f"it holds {_what_is_stored(stored)}."
        )
    return selected


def render_leaderboard(
    boards: list[Board] | list[ContinualBoard],
    protocol: str,
    *,
    format: str = "md",
    per_seed: bool = False,
    database: str = "",
    count: int = 0,
    plots: dict[str, bytes] | None = None,
) -> str:
    """The leaderboard text in a format (``md``, ``csv``, ``html``, ``latex``); ``html``
    embeds ``plots`` (file name → PNG)."""
    _check_format(format)
    continual = protocol == "continual"
    if format == "csv":
        return render_continual_csv(boards) if continual else render_csv(boards, per_seed)
    if continual:
        tables = continual_layout(boards, per_seed)
    else:
        tables = [layout(board, per_seed) for board in boards]
    if format == "html":
        return render_html(tables, protocol, database, count, plots or {})
    if format == "latex":
        return render_latex(tables, protocol, database, count)
    return render_markdown(tables, protocol, database, count)


def leaderboard(
    protocol: str,
    *,
    db: str | Path | None = None,
    methods: list[str] | None = None,
    datasets: list[str] | None = None,
    format: str = "md",
    per_seed: bool = False,
    plots_dir: str | Path | None = None,
) -> tuple[str, list[Path]]:
    """The leaderboard of a protocol from a results database, and the plots written.

    What ``peftclip leaderboard`` prints; a protocol runner can call it after a sweep.

    Args:
        protocol: few_shot, base2new, dg, xd or continual.
        db: The results database (default: $PEFTCLIP_RESULTS_DB, else runs/results.sqlite);
            opened read-only.
        methods: Only these methods (continual: strategies; None: all).
        datasets: Only these datasets (dg / xd: evaluated datasets; continual: streams; None:
            all).
        format: md, csv, html (one self-contained page with the plots) or latex.
        per_seed: Add each seed's value.
        plots_dir: Write the plots there as PNG files (None: none).

    Returns:
        The text, and the paths of the plots written.

    Raises:
        PeftClipError: An unknown protocol, format, method or dataset, a missing or unreadable
            database, or a selection without records.
    """
    _check_format(format)
    path = Path(db) if db is not None else default_db_path()
    with ResultsStore(path, readonly=True) as store:
        records = select_records(store, protocol, methods, datasets)
    if protocol == "continual":
        boards = build_continual_boards(records, reference_numbers())
    else:
        boards = build_boards(records, protocol, reference_numbers())
    if not boards:
        raise PeftClipError(
            f"the {protocol} records of {path} have no evaluation a {protocol} table shows "
            "(e.g. only val splits); `peftclip results list` shows them."
        )
    draw = continual_plots if protocol == "continual" else lambda b: leaderboard_plots(b, protocol)
    plots = draw(boards) if format == "html" or plots_dir else {}
    written = []
    if plots_dir is not None:
        folder = Path(plots_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for name, png in plots.items():
            with atomic_path(folder / name) as partial:
                partial.write_bytes(png)
            written.append(folder / name)
    text = render_leaderboard(
        boards,
        protocol,
        format=format,
        per_seed=per_seed,
        database=str(path),
        count=len(records),
        plots=plots,
    )
    return text, written


def leaderboard_command(
    *,
    protocol: str,
    db: str | None = None,
    methods: list[str] | None = None,
    datasets: list[str] | None = None,
    format: str = "md",
    output: str | None = None,
    plots: str | None = None,
    per_seed: bool = False,
) -> int:
    """Prints the leaderboard of a protocol from a results database, with paper numbers.

    Reads only the database: per method (and profile and backbone) a table of mean ± population
    std over seeds (2 decimals), the average row, seeds more than 5 points from their median
    flagged, and, in columns of their own, the published number and the difference where one
    exists; continual: per stream, Transfer / Avg / Last / BWT and the held-out means per
    strategy (1 decimal). docs/leaderboard.md describes the tables.

    Args:
        protocol: few_shot, base2new, dg, xd or continual.
        db: The results database (default: $PEFTCLIP_RESULTS_DB, else runs/results.sqlite).
        methods: Only these methods (adapter names joined by '+'; zeroshot; continual: the
            strategies), e.g. --methods coop maple.
        datasets: Only these datasets (for dg and xd: the evaluated ones; continual: streams).
        format: md, csv, html (one self-contained page, plots embedded) or latex.
        output: Write the leaderboard to this file instead of printing it.
        plots: Write the plots (PNG) into this folder: few-shot curves per dataset and their
            average; bars of Base / New / HM (base2new) or top-1 (dg, xd); continual: the
            accuracy-matrix heatmap and per-task curves of each strategy.
        per_seed: Add every seed's value beside the means.
    """
    text, written = leaderboard(
        protocol,
        db=db,
        methods=methods,
        datasets=datasets,
        format=format,
        per_seed=per_seed,
        plots_dir=plots,
    )
    # With the table on stdout, what was written goes to stderr, so stdout stays the table.
    status = sys.stdout if output else sys.stderr
    if output:
        write_text_atomically(output, text)
        print(f"wrote the {protocol} leaderboard ({format}) to {output}", file=status)
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    if written:
        print(
            f"wrote {len(written)} plot{'s' * (len(written) != 1)} to {plots}: "
            f"{', '.join(p.name for p in written)}",
            file=status,
        )
    return 0
