"""Leaderboard plots as PNG: few-shot curves, and grouped bars for the other protocols.

Drawn with matplotlib's object-oriented API on its Agg canvas: no display, no pyplot state, so
plots can be made from any process (a runner, a test, a server without a screen).
"""

from __future__ import annotations

import io

from peftclip.leaderboard.aggregate import ZERO_SHOTS, Board, column_name
from peftclip.leaderboard.render import row_label

#: Bars of base-to-new: one panel per column.
_BAR_PANELS = {"base2new": ("base", "new", "hm"), "dg": ("top1",), "xd": ("top1",)}


def board_label(board: Board, boards: list[Board]) -> str:
    """A board's name in a legend: the method and profile, plus what tells it from the others
    (backbone, shots, source) where the plotted boards differ in it."""
    parts = [board.method, board.profile or "profile not recorded"]
    for name in ("backbone", "shots", "source"):
        if len({getattr(b, name) for b in boards}) > 1:
            parts.append(f"{name} {getattr(board, name)}")
    return f"{parts[0]} ({', '.join(parts[1:])})"


def _png(figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _labels_in_order(boards: list[Board]) -> list[tuple[str, str]]:
    """``(row label, display label)`` over all boards, in the order they appear."""
    seen: dict[str, str] = {}
    for board in boards:
        for row in board.rows:
            seen.setdefault(row.label, row_label(row))
    averages = [
        label
        for label in seen
        if any(b.row(label) and b.row(label).kind == "average" for b in boards)
    ]
    return [(label, seen[label]) for label in seen if label not in averages] + [
        (label, seen[label]) for label in averages
    ]


def few_shot_curves(boards: list[Board]) -> dict[str, bytes]:
    """``few_shot_<dataset>.png`` per dataset and ``few_shot_average.png``: accuracy vs shots,
    one line per board (± std as error bars); zero-shot as a dashed horizontal line."""
    from matplotlib.figure import Figure

    plots = {}
    for label, shown in _labels_in_order(boards):
        figure = Figure(figsize=(6, 4))
        axes = figure.add_subplot()
        ticks = set()
        for board in boards:
            row = board.row(label)
            if row is None:
                continue
            name = board_label(board, boards)
            shots = [k for k in board.columns if k != ZERO_SHOTS and k in row.stats]
            if shots:
                means = [row.stats[k].mean for k in shots]
                stds = [row.stats[k].std or 0.0 for k in shots]
                axes.errorbar(shots, means, yerr=stds, marker="o", capsize=3, label=name)
                ticks.update(shots)
            if ZERO_SHOTS in row.stats:
                axes.axhline(row.stats[ZERO_SHOTS].mean, linestyle="--", color="gray", label=name)
        if ticks:
            axes.set_xscale("log", base=2)
            axes.set_xticks(sorted(ticks), [str(k) for k in sorted(ticks)])
        axes.set_xlabel("shots per class (K)")
        axes.set_ylabel("top-1 accuracy (%)")
        axes.set_title(f"few-shot: {shown}")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        plots[f"few_shot_{label}.png"] = _png(figure)
    return plots


def grouped_bars(boards: list[Board], protocol: str) -> dict[str, bytes]:
    """``<protocol>.png``: one panel per column (Base, New, HM; top-1), a group of bars per
    dataset (and the average), one bar per board with its std."""
    from matplotlib.figure import Figure

    labels = _labels_in_order(boards)
    panels = _BAR_PANELS[protocol]
    width = 0.8 / max(len(boards), 1)
    figure = Figure(
        figsize=(
            max(6.0, 0.6 * len(labels) * max(1, len(boards)) ** 0.5 + 2),
            2.4 * len(panels) + 1,
        ),
        layout="constrained",
    )
    axes_list = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for axes, column in zip(axes_list, panels, strict=True):
        for number, board in enumerate(boards):
            xs, heights, errors = [], [], []
            for position, (label, _) in enumerate(labels):
                row = board.row(label)
                value = None if row is None else row.value(column)
                if value is None:
                    continue
                stat = row.stats.get(column)
                xs.append(position + (number - (len(boards) - 1) / 2) * width)
                heights.append(value)
                errors.append(0.0 if stat is None else (stat.std or 0.0))
            axes.bar(xs, heights, width, yerr=errors, capsize=2, label=board_label(board, boards))
        axes.set_ylabel(f"{column_name(column)} (%)")
        axes.grid(axis="y", alpha=0.3)
    bottom = axes_list[-1]
    bottom.set_xticks(
        range(len(labels)),
        [shown for _, shown in labels],
        rotation=30,
        ha="right",
        fontsize="small",
    )
    title = {"base2new": "base-to-new", "dg": "domain generalization", "xd": "cross-dataset"}
    figure.legend(
        *axes_list[0].get_legend_handles_labels(),
        loc="outside upper center",
        ncols=min(len(boards), 3),
        fontsize="small",
        title=title[protocol],
    )
    return {f"{protocol}.png": _png(figure)}


def leaderboard_plots(boards: list[Board], protocol: str) -> dict[str, bytes]:
    """The plots of a protocol's boards, ``file name → PNG bytes`` (empty without boards)."""
    if not boards:
        return {}
    if protocol == "few_shot":
        return few_shot_curves(boards)
    return grouped_bars(boards, protocol)
