"""Leaderboard tables as Markdown, CSV, one self-contained HTML page, or LaTeX.

Numbers are rounded here, and only here, to 2 decimals (the CoOp-family tables). Measured
numbers, per-seed values, paper numbers and differences are separate column groups; a paper
number never shares a column with a measured one (docs/leaderboard.md).
"""

from __future__ import annotations

import base64
import csv
import html
import io
from dataclasses import dataclass

from peftclip.leaderboard.aggregate import Board, Row, SeedStat, column_name
from peftclip.leaderboard.reference import AVERAGE

#: The output formats.
FORMATS = ("md", "csv", "html", "latex")
#: Marks a value with a seed more than 5 points from the median of its seeds.
OUTLIER_MARK = "†"
#: A table cell without a number.
BLANK = "–"

TITLES = {
    "few_shot": "Few-shot classification",
    "base2new": "Base-to-new generalization",
    "dg": "Domain generalization",
    "xd": "Cross-dataset transfer",
    "continual": "Continual learning",
}
DESCRIPTIONS = {
    "few_shot": (
        "Top-1 accuracy (%) on each dataset's test split after training on K images per class. "
        "The average row is the mean of the datasets' seed means; its std is the std over seeds "
        "of the per-seed average."
    ),
    "base2new": (
        "Top-1 accuracy (%) on the base and on the new classes, from one checkpoint trained on "
        "the base classes. HM = 2·B̄·N̄ / (B̄ + N̄) of the seed means; the average row averages "
        "the datasets' seed means of Base and New, its HM is HM(B̄_avg, N̄_avg) (not the mean of "
        "the datasets' HMs), and its std is the std over seeds of the per-seed average."
    ),
    "dg": (
        "Top-1 accuracy (%) of one checkpoint trained on the source dataset, on the source and "
        "on each target (no training on the targets). Target average = mean of the targets' "
        "seed means; its std is the std over seeds of the per-seed target average."
    ),
    "xd": (
        "Top-1 accuracy (%) of one checkpoint trained on the source dataset, on the source and "
        "on each target dataset with its own classes (no training on the targets). Target "
        "average = mean of the targets' seed means; its std is the std over seeds of the "
        "per-seed target average."
    ),
}
DESCRIPTIONS["continual"] = (
    "Per stream, the metrics of the accuracy matrix A (row t: after learning task t; column d: "
    "the d-th learned dataset in learning order): Transfer = mean over d ≥ 2 of the mean over "
    "t < d of A[t, d] (datasets not learned yet), Avg = mean over d of the mean over all rows, "
    "Last = mean of the last row, BWT = mean over d < T of A[T, d] − A[d, d]. Held-out: the "
    "mean top-1 of the datasets never trained on, at zero-shot and after the last task. The "
    "zeroshot rows are the runs' row 0 (every row of the matrix equal to it). Task streams with "
    "evaluation union (X-TAIL) classify every image against all the stream's classes."
)
CONTINUAL_RULES = (
    "Measured: mean ± population std (ddof = 0) over seeds of each seed's metric, computed "
    "from the stored per-class counts and rounded to 1 decimal only for display. "
    f"{OUTLIER_MARK}: a seed more than 5 points from the median of its seeds. Paper numbers "
    "are published ones (never measured here), in their own columns, with their source under "
    "each table; Δ = measured − paper. Tags: notebook (the official repository's results "
    "notebook), page (the method's project page)."
)
COMMON_RULES = (
    "Measured: mean ± population std (ddof = 0) over seeds, rounded only for display. "
    f"{OUTLIER_MARK}: a seed more than 5 points from the median of its seeds. Paper numbers are "
    "published ones (never measured here), in their own columns, with their source under each "
    "table; Δ = measured − paper. Tags: README (a repository's README), issue (a GitHub issue), "
    "paper-recalled (recalled from the paper's tables, not read from the PDF), analysis "
    "(computed from the paper's other numbers)."
)


@dataclass(frozen=True)
class Column:
    """One column of a rendered table: its group, its name within the group, its key."""

    group: str
    name: str
    key: object


@dataclass(frozen=True)
class TextTable:
    """A board laid out as text cells, ready for any format.

    Attributes:
        title: The table's heading: method, profile, backbone, shots, source, seeds.
        row_header: The heading of the row labels (``dataset``, ``evaluated on``).
        columns: The columns after the row label, in groups.
        rows: ``(label, cells, is_average)`` per row.
        notes: Footnotes: flagged seeds, duplicates, incomplete averages, paper sources.
    """

    title: str
    row_header: str
    columns: tuple[Column, ...]
    rows: tuple[tuple[str, tuple[str, ...], bool], ...]
    notes: tuple[str, ...]


#: Column groups, and the word a flat (Markdown, CSV) header puts before a column's name.
MEASURED, PER_SEED, PAPER, DELTA = "measured", "per seed", "paper", "Δ measured − paper"
_FLAT_PREFIX = {MEASURED: "", PAPER: "paper ", DELTA: "Δ "}


def _seeds_text(seeds: tuple) -> str:
    return ", ".join(str(s) for s in seeds)


#: How a table's title marks the anchors' selection rules (docs/methods/index.md#selection).
ANCHOR_SELECTION = {
    "best_full_val": "selected on the full val split (anchor rule)",
    "best_test": "selected on test (anchor rule)",
}


def board_title(board: Board) -> str:
    """``coop · profile modern · ViT-B-16 (openai) · 16 shots · source imagenet · seeds 1, 2``."""
    backbone = board.backbone or "backbone not recorded"
    if board.pretrained:
        backbone += f" ({board.pretrained})"
    parts = [board.method, f"profile {board.profile or 'not recorded'}", backbone]
    if board.selection_rule in ANCHOR_SELECTION:
        parts.append(ANCHOR_SELECTION[board.selection_rule])
    if board.shots is not None:
        parts.append(f"{board.shots} shots")
    if board.source is not None:
        parts.append(f"source {board.source}")
    parts.append(f"seed{'s' * (len(board.seeds) != 1)} {_seeds_text(board.seeds)}")
    return " · ".join(parts)


def row_label(row: Row) -> str:
    if row.kind == "source":
        return f"{row.label} (source)"
    if row.kind == "average":
        if row.label == AVERAGE:
            return f"Average ({len(row.averaged)} datasets)"
        return f"Target average ({len(row.averaged)} targets)"
    return row.label


def _stat_text(stat: SeedStat) -> str:
    # One seed has no spread to show; an average over rows with different seeds has no std.
    spread = stat.std is not None and len(stat.per_seed) > 1
    text = f"{stat.mean:.2f} ± {stat.std:.2f}" if spread else f"{stat.mean:.2f}"
    return text + (OUTLIER_MARK if stat.flagged else "")


def _per_seed_text(stat: SeedStat | None, seeds: tuple) -> str:
    if stat is None or not stat.per_seed:
        return BLANK
    return " / ".join(
        f"{stat.per_seed[s]:.2f}{OUTLIER_MARK * (s in stat.flagged)}"
        if s in stat.per_seed
        else BLANK
        for s in seeds
    )


def _measured_text(row: Row, column) -> str:
    if column in row.stats:
        return _stat_text(row.stats[column])
    value = row.derived.get(column)
    return BLANK if value is None else f"{value:.2f}"


def _notes(board: Board) -> list[str]:
    notes = []
    for row in board.rows:
        for column, stat in row.stats.items():
            for seed in stat.flagged:
                notes.append(
                    f"{OUTLIER_MARK} {row.label} {column_name(column)} seed {seed}: "
                    f"{stat.per_seed[seed]:.2f}, median of its seeds {stat.median:.2f}"
                )
    for row in board.rows:
        seeds = {s for stat in row.stats.values() for s in stat.per_seed}
        if row.kind != "average" and seeds != set(board.seeds):
            order = [s for s in board.seeds if s in seeds]
            notes.append(f"{row.label}: seeds {_seeds_text(tuple(order))} only")
    notes += board.notes
    sources: dict[str, list[str]] = {}
    for row in board.rows:
        for number in row.paper.values():
            labels = sources.setdefault(number.citation(), [])
            label = row_label(row) if row.kind == "average" else row.label
            if label not in labels:
                labels.append(label)
    for citation, labels in sources.items():
        notes.append(f"paper numbers of {', '.join(labels)}: {citation}")
    return notes


def layout(board: Board, per_seed: bool = False) -> TextTable:
    """The text cells of a board, in column groups: measured, [per seed], [paper, Δ]."""
    columns = [Column(MEASURED, column_name(c), c) for c in board.columns]
    seeds = board.seeds
    stat_columns = [c for c in board.columns if any(c in row.stats for row in board.rows)]
    if per_seed:
        columns += [Column(PER_SEED, column_name(c), c) for c in stat_columns]
    with_paper = [c for c in board.columns if any(c in row.paper for row in board.rows)]
    columns += [Column(PAPER, column_name(c), c) for c in with_paper]
    columns += [Column(DELTA, column_name(c), c) for c in with_paper]
    rows = []
    for row in board.rows:
        cells = []
        for column in columns:
            paper = row.paper.get(column.key)
            measured = row.value(column.key)
            if column.group == MEASURED:
                cells.append(_measured_text(row, column.key))
            elif column.group == PER_SEED:
                cells.append(_per_seed_text(row.stats.get(column.key), seeds))
            elif paper is None:
                cells.append(BLANK)
            elif column.group == PAPER:
                cells.append(f"{paper.value:.2f}")
            else:
                cells.append(BLANK if measured is None else f"{measured - paper.value:+.2f}")
        rows.append((row_label(row), tuple(cells), row.kind == "average"))
    row_header = "evaluated on" if board.protocol in ("dg", "xd") else "dataset"
    if per_seed:
        row_header += f" (per seed: {' / '.join(map(str, seeds))})"
    return TextTable(
        board_title(board), row_header, tuple(columns), tuple(rows), tuple(_notes(board))
    )


def _flat_header(column: Column) -> str:
    if column.group == PER_SEED:
        return f"{column.name} per seed"
    return f"{_FLAT_PREFIX[column.group]}{column.name}"


def _heading(protocol: str, database: str, count: int) -> list[str]:
    return [
        f"Leaderboard: {TITLES[protocol]} ({protocol})",
        DESCRIPTIONS[protocol],
        CONTINUAL_RULES if protocol == "continual" else COMMON_RULES,
        f"From {count} record{'s' * (count != 1)} of {database}.",
    ]


def render_markdown(tables: list[TextTable], protocol: str, database: str, count: int) -> str:
    title, *paragraphs = _heading(protocol, database, count)
    lines = [f"# {title}", ""]
    for paragraph in paragraphs:
        lines += [paragraph, ""]
    for table in tables:
        lines += [f"## {table.title}", ""]
        header = [table.row_header, *map(_flat_header, table.columns)]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|---|" + "---:|" * len(table.columns))
        for label, cells, is_average in table.rows:
            label = f"**{label}**" if is_average else label
            lines.append("| " + " | ".join([label, *cells]) + " |")
        lines.append("")
        lines += [f"- {note}" for note in table.notes]
        if table.notes:
            lines.append("")
    return "\n".join(lines)


def render_csv(boards: list[Board], per_seed: bool = False) -> str:
    """One line per measured number: the table it belongs to, its row and column, the mean,
    std and seeds, the outlier seeds, and the paper number, its difference and source."""
    seeds = sorted({s for board in boards for s in board.seeds}, key=lambda s: (s is not None, s))
    header = [
        "protocol",
        "method",
        "profile",
        "backbone",
        "pretrained",
        "shots",
        "source",
        "row",
        "column",
        "mean",
        "std",
        "seeds",
        "outlier_seeds",
        "paper",
        "delta",
        "paper_source",
    ]
    header += [f"seed_{s}" for s in seeds] if per_seed else []
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    for board in boards:
        for row in board.rows:
            for column in board.columns:
                measured = row.value(column)
                if measured is None:
                    continue
                stat = row.stats.get(column)
                paper = row.paper.get(column)
                line = [
                    board.protocol,
                    board.method,
                    board.profile or "",
                    board.backbone or "",
                    board.pretrained or "",
                    "" if board.shots is None else board.shots,
                    board.source or "",
                    row.label,
                    column_name(column),
                    f"{measured:.2f}",
                    "" if stat is None or stat.std is None else f"{stat.std:.2f}",
                    "" if stat is None else " ".join(map(str, stat.per_seed)),
                    "" if stat is None else " ".join(map(str, stat.flagged)),
                    "" if paper is None else f"{paper.value:.2f}",
                    "" if paper is None else f"{measured - paper.value:+.2f}",
                    "" if paper is None else paper.citation(),
                ]
                if per_seed:
                    values = stat.per_seed if stat is not None else {}
                    line += [f"{values[s]:.2f}" if s in values else "" for s in seeds]
                writer.writerow(line)
    return text.getvalue()


_HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 80em; }
table { border-collapse: collapse; margin: 0.5em 0 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
td { text-align: right; white-space: nowrap; }
td.label, th.label { text-align: left; }
tr.average td { font-weight: bold; background: #f4f4f4; }
th.group { background: #eef; }
th.paper, td.paper { background: #fff8e8; }
ul.notes { font-size: 0.85em; color: #444; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
"""


def _html_group_class(group: str) -> str:
    return "paper" if group in (PAPER, DELTA) else ""


def render_html(
    tables: list[TextTable], protocol: str, database: str, count: int, plots: dict[str, bytes]
) -> str:
    """One page that needs nothing else: inline style, the plots as base64 PNG data URIs."""
    title, *paragraphs = _heading(protocol, database, count)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_HTML_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    out += [f"<p>{html.escape(paragraph)}</p>" for paragraph in paragraphs]
    for table in tables:
        out.append(f"<h2>{html.escape(table.title)}</h2>")
        out.append("<table>")
        groups = _column_groups(table)
        out.append(
            f'<thead><tr><th class="label" rowspan="2">{html.escape(table.row_header)}</th>'
            + "".join(
                f'<th class="group {_html_group_class(g)}" colspan="{n}">{html.escape(g)}</th>'
                for g, n in groups
            )
            + "</tr>"
        )
        out.append(
            "<tr>"
            + "".join(
                f'<th class="{_html_group_class(c.group)}">{html.escape(c.name)}</th>'
                for c in table.columns
            )
            + "</tr></thead>"
        )
        out.append("<tbody>")
        for label, cells, is_average in table.rows:
            tds = "".join(
                f'<td class="{_html_group_class(c.group)}">{html.escape(cell)}</td>'
                for c, cell in zip(table.columns, cells, strict=True)
            )
            row_class = ' class="average"' if is_average else ""
            out.append(f'<tr{row_class}><td class="label">{html.escape(label)}</td>{tds}</tr>')
        out.append("</tbody></table>")
        if table.notes:
            out.append('<ul class="notes">')
            out += [f"<li>{html.escape(note)}</li>" for note in table.notes]
            out.append("</ul>")
    if plots:
        out.append("<h2>Plots</h2>")
        for name, png in plots.items():
            data = base64.b64encode(png).decode("ascii")
            out.append(
                f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
            )
            out.append(f"<figcaption>{html.escape(name)}</figcaption></figure>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_LATEX_UNICODE = {
    "±": r"$\pm$",
    OUTLIER_MARK: r"\textsuperscript{\dag}",
    "Δ": r"$\Delta$",
    "−": "--",
    BLANK: "--",
    "·": r"$\cdot$",
    "B̄": r"$\bar{B}$",
    "N̄": r"$\bar{N}$",
}


def latex_escape(text: str) -> str:
    """``text`` for LaTeX (pdflatex): special characters escaped, the symbols peftclip's tables
    use written as LaTeX."""
    escaped = "".join(_LATEX_SPECIAL.get(character, character) for character in text)
    for symbol, latex in _LATEX_UNICODE.items():
        escaped = escaped.replace(symbol, latex)
    return escaped


def _column_groups(table: TextTable) -> list[tuple[str, int]]:
    """The table's column groups in order, each with its number of adjacent columns."""
    groups: list[tuple[str, int]] = []
    for column in table.columns:
        if groups and groups[-1][0] == column.group:
            groups[-1] = (column.group, groups[-1][1] + 1)
        else:
            groups.append((column.group, 1))
    return groups


def render_latex(tables: list[TextTable], protocol: str, database: str, count: int) -> str:
    """One ``table`` environment per board (booktabs), the column groups as ``\\multicolumn``."""
    title, *paragraphs = _heading(protocol, database, count)
    out = [f"% {line}" for line in (title, *paragraphs)]
    out.append("% Needs \\usepackage{booktabs}.")
    for table in tables:
        groups = _column_groups(table)
        spec = "l" + "".join("r" * n for _, n in groups)
        out += [
            "",
            r"\begin{table}[ht]",
            r"\centering",
            r"\small",
            rf"\caption{{{latex_escape(table.title)}}}",
            rf"\begin{{tabular}}{{{spec}}}",
            r"\toprule",
        ]
        out.append(
            " & ".join(
                ["", *(rf"\multicolumn{{{n}}}{{c}}{{{latex_escape(g)}}}" for g, n in groups)]
            )
            + r" \\"
        )
        start, rules = 2, []
        for _, n in groups:
            rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
            start += n
        out.append(" ".join(rules))
        out.append(
            " & ".join(
                latex_escape(t) for t in [table.row_header, *(c.name for c in table.columns)]
            )
            + r" \\"
        )
        out.append(r"\midrule")
        for label, cells, is_average in table.rows:
            if is_average:
                out.append(r"\midrule")
            out.append(" & ".join(latex_escape(t) for t in [label, *cells]) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}"]
        if table.notes:
            out.append(r"\par\footnotesize")
            out += [latex_escape(note) + r"\par" for note in table.notes]
        out.append(r"\end{table}")
    return "\n".join(out) + "\n"
