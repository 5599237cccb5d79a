"""Results: one record per evaluation in an SQLite store (docs/results.md).

Imports neither torch nor Lightning: the store is plain data, written by whatever produced it.
"""

from peftclip.results.records import ResultRecord, cell_key, harmonic_mean, top1_from_counts
from peftclip.results.store import CellStatus, ResultsStore, default_db_path

__all__ = [
    "CellStatus",
    "ResultRecord",
    "ResultsStore",
    "cell_key",
    "default_db_path",
    "harmonic_mean",
    "top1_from_counts",
]
