"""Continual-learning metrics from the evaluation matrix.

``R[i][j]`` is the return on game ``j`` after training game ``i`` (0-based rows and columns, in
sequence order; ``n`` games). NaN marks a missing entry.

* average final performance: ``mean_j R[n-1][j]``;
* forgetting of game ``j < n-1`` (Chaudhry et al. 2018, "Riemannian Walk"):
  ``max_{j <= l < n-1} R[l][j] - R[n-1][j]``: the best return the game ever had after it was
  learned minus its final return; average over ``j < n-1``;
* backward transfer (Lopez-Paz and Ranzato 2017, GEM): ``mean_{j<n-1} (R[n-1][j] - R[j][j])``;
* forward transfer (GEM), given reference returns ``b_j`` (e.g. from single-game runs with the
  same budget, or the return before any training): ``mean_{j>0} (R[j-1][j] - b_j)``;
* area under a curve: trapezoidal area of ``(step, return)`` divided by the step range, i.e.
  the mean return over training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "average_final",
    "backward_transfer",
    "curve_auc",
    "forgetting",
    "forgetting_after",
    "forward_transfer",
]

Matrix = Sequence[Sequence[float]] | np.ndarray


def _arr(matrix: Matrix) -> np.ndarray:
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape[0] > m.shape[1]:
        raise ValueError(f"expected an evaluation matrix of shape (rows <= n, n), got {m.shape}")
    return m


def average_final(matrix: Matrix) -> float:
    """Mean return over all games after the last game that has a row."""
    m = _arr(matrix)
    return float(np.nanmean(m[-1]))


def forgetting_after(matrix: Matrix, i: int) -> dict[int, float]:
    """Forgetting of each game ``j < i`` after training game ``i``:
    ``max_{j <= l < i} R[l][j] - R[i][j]``."""
    m = _arr(matrix)
    out = {}
    for j in range(i):
        best = np.nanmax(m[j:i, j]) if not np.all(np.isnan(m[j:i, j])) else math.nan
        out[j] = float(best - m[i, j])
    return out


def forgetting(matrix: Matrix) -> tuple[dict[int, float], float]:
    """Per-game forgetting after the last row, and its mean over the games before it."""
    m = _arr(matrix)
    per = forgetting_after(m, m.shape[0] - 1)
    vals = [v for v in per.values() if not math.isnan(v)]
    return per, float(np.mean(vals)) if vals else math.nan


def backward_transfer(matrix: Matrix) -> float:
    """GEM's backward transfer: ``mean_{j < last} (R[last][j] - R[j][j])``."""
    m = _arr(matrix)
    last = m.shape[0] - 1
    if last == 0:
        return math.nan
    return float(np.nanmean([m[last, j] - m[j, j] for j in range(last)]))


def forward_transfer(matrix: Matrix, reference: Sequence[float]) -> float:
    """GEM's forward transfer: ``mean_{j >= 1} (R[j-1][j] - reference[j])``."""
    m = _arr(matrix)
    if len(reference) != m.shape[1]:
        raise ValueError(f"reference has {len(reference)} entries for {m.shape[1]} games")
    vals = [m[j - 1, j] - reference[j] for j in range(1, m.shape[0])]
    return float(np.nanmean(vals)) if vals else math.nan


def curve_auc(steps: Sequence[float], returns: Sequence[float]) -> float:
    """Mean return over a curve: trapezoidal area divided by the step range."""
    s = np.asarray(steps, dtype=float)
    r = np.asarray(returns, dtype=float)
    if len(s) == 0:
        return math.nan
    if len(s) == 1 or s[-1] == s[0]:
        return float(r.mean())
    order = np.argsort(s, kind="stable")
    s, r = s[order], r[order]
    return float(np.sum((s[1:] - s[:-1]) * (r[1:] + r[:-1]) / 2) / (s[-1] - s[0]))
