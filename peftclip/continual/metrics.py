"""Transfer, Avg, Last and BWT of a continual run's accuracy matrix (docs/continual.md#metrics).

``A`` is T×T: row ``t`` is the model after learning task ``t``, column ``d`` the ``d``-th
dataset **in learning order** (ZSCL's ``results.ipynb``; CoDyRA's ``main.py`` uses the same):

* Transfer = mean over d = 2…T of [mean over t < d of A[t, d]] — the strict upper triangle,
  datasets not learned yet;
* Avg = mean over d of [mean over t of A[t, d]] — all rows;
* Last = mean over d of A[T, d];
* BWT (not a ZSCL metric) = mean over d < T of (A[T, d] − A[d, d]).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean


@dataclass(frozen=True)
class ContinualMetrics:
    """The headline numbers of a matrix and their per-dataset parts (in %).

    Attributes:
        transfer: Mean of ``transfer_per_dataset``.
        avg: Mean of ``avg_per_dataset``.
        last: Mean of ``last_per_dataset``.
        bwt: Backward transfer (``None`` for a one-task stream).
        transfer_per_dataset: Transfer_d for d = 2…T (the first dataset has none).
        avg_per_dataset: Avg_d for every dataset.
        last_per_dataset: Last_d for every dataset.
    """

    transfer: float | None
    avg: float
    last: float
    bwt: float | None
    transfer_per_dataset: list[float]
    avg_per_dataset: list[float]
    last_per_dataset: list[float]


def continual_metrics(matrix: Sequence[Sequence[float]]) -> ContinualMetrics:
    """The metrics of a square accuracy matrix whose columns are in learning order.

    Raises:
        ValueError: The matrix is empty or not square.
    """
    size = len(matrix)
    if size == 0 or any(len(row) != size for row in matrix):
        raise ValueError(
            f"an accuracy matrix is T×T (row t: after task t; column d: dataset d in learning "
            f"order); got {size} rows of lengths {[len(row) for row in matrix]}"
        )
    columns = [[matrix[t][d] for t in range(size)] for d in range(size)]
    transfer = [fmean(columns[d][:d]) for d in range(1, size)]
    avg = [fmean(column) for column in columns]
    last = list(matrix[-1])
    bwt = [matrix[-1][d] - matrix[d][d] for d in range(size - 1)]
    return ContinualMetrics(
        transfer=fmean(transfer) if transfer else None,
        avg=fmean(avg),
        last=fmean(last),
        bwt=fmean(bwt) if bwt else None,
        transfer_per_dataset=transfer,
        avg_per_dataset=avg,
        last_per_dataset=last,
    )
