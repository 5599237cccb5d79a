"""Leaderboards: a protocol's tables and plots from the results database (docs/leaderboard.md).

Imports neither torch nor Lightning; matplotlib only when a plot is drawn.
"""

from peftclip.leaderboard.aggregate import (
    PROTOCOLS,
    Board,
    Row,
    SeedStat,
    build_boards,
    harmonic_mean,
)
from peftclip.leaderboard.command import leaderboard, render_leaderboard, select_records
from peftclip.leaderboard.plots import leaderboard_plots
from peftclip.leaderboard.reference import PaperNumber, ReferenceNumbers, reference_numbers

__all__ = [
    "PROTOCOLS",
    "Board",
    "PaperNumber",
    "ReferenceNumbers",
    "Row",
    "SeedStat",
    "build_boards",
    "harmonic_mean",
    "leaderboard",
    "leaderboard_plots",
    "reference_numbers",
    "render_leaderboard",
    "select_records",
]
