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
  the mean return over training; :func:`auc_per_game` applies it to each game's curve over the
  whole run (every evaluation of the game, at global steps);
* forward transfer against single-game reference runs (as Continual World, Wolczyk et al.
  2021, but as a difference of mean returns, since Atari returns are unbounded):
  :func:`forward_transfer_auc` ``= AUC(game j's curve while it trains in the sequence) -
  AUC(its curve in a single-game run)``, both on the game's own training steps scaled to
  ``(0, 1]``; :func:`training_curve` extracts those curves from the evaluation rows.

* retention of game ``j`` (this project's headline measure, ``docs/forgetting.md``): the
  learned gain ``G_j = R[j][j] - random_j`` and the fraction of it kept at the end,
  ``1 - (max_{j <= l < n-1} R[l][j] - R[n-1][j]) / G_j``; undefined (None) for a game whose
  gain is not above noise (:func:`retention`).

Every function works the same on raw returns and on human-normalized ones
(:func:`normalize`: ``(R - random) / (human - random)``, NaN for a game without reference
scores); :func:`matrix_metrics` computes the matrix metrics in one call.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "auc_per_game",
    "average_final",
    "backward_transfer",
    "curve_auc",
    "curves_by_game",
    "forgetting",
    "forgetting_after",
    "forward_transfer",
    "forward_transfer_auc",
    "matrix_metrics",
    "normalize",
    "retention",
    "training_curve",
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


def retention(
    matrix: Matrix,
    random_scores: Sequence[float | None],
    stderr: Sequence[float] | None = None,
    z: float = 2.0,
) -> dict[int, float | None]:
    """Retention of each game ``j`` followed by another game, after the last row: the fraction
    of its learned gain ``G_j = R[j][j] - random_j`` still there, ``1 - (best - final) / G_j``
    with ``best = max_{j <= l < last} R[l][j]``. None when the game was not learned: no random
    score, or ``G_j <= z * stderr[j]`` (the standard error of ``R[j][j]``; 0 if not given)."""
    m = _arr(matrix)
    last = m.shape[0] - 1
    out: dict[int, float | None] = {}
    for j in range(last):
        r = random_scores[j]
        gain = m[j, j] - r if r is not None else math.nan
        noise = z * (stderr[j] if stderr is not None else 0.0)
        if not (gain > 0 and gain > noise):
            out[j] = None
            continue
        best = float(np.nanmax(m[j:last, j]))
        out[j] = float(1.0 - (best - m[last, j]) / gain)
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


def normalize(matrix: Matrix, scores: Sequence[tuple[float, float] | None]) -> list[list[float]]:
    """Human-normalized matrix: ``(R[i][j] - random_j) / (human_j - random_j)``.

    ``scores[j]`` is game ``j``'s ``(random, human)`` pair, or None (its column becomes NaN).
    """
    m = _arr(matrix)
    if len(scores) != m.shape[1]:
        raise ValueError(f"scores has {len(scores)} entries for {m.shape[1]} games")
    out = np.full(m.shape, math.nan)
    for j, pair in enumerate(scores):
        if pair is not None:
            rand, human = pair
            out[:, j] = (m[:, j] - rand) / (human - rand)
    return out.tolist()


def matrix_metrics(matrix: Matrix) -> dict[str, Any]:
    """The matrix metrics in one dict: ``average_final``, ``forgetting`` (one entry per game;
    NaN for the last trained game and the games after it), ``average_forgetting`` and
    ``backward_transfer``."""
    m = _arr(matrix)
    per, avg = forgetting(m)
    return {
        "average_final": average_final(m),
        "forgetting": [per.get(j, math.nan) for j in range(m.shape[1])],
        "average_forgetting": avg,
        "backward_transfer": backward_transfer(m),
    }


Row = Mapping[str, Any]


def _value(row: Row, key: str) -> float:
    v = row.get(key)
    if v is None or v == "":
        return math.nan
    return float(v)


def curves_by_game(rows: Iterable[Row], key: str = "return") -> dict[str, tuple[list, list]]:
    """Each game's curve ``(global steps, values)`` from evaluation rows (dicts with
    ``global_step``, ``game`` and ``key``, as in ``evals.csv``), in step order; rows whose value
    is missing are skipped."""
    out: dict[str, tuple[list, list]] = {}
    for row in sorted(rows, key=lambda r: float(r["global_step"])):
        v = _value(row, key)
        if math.isnan(v):
            continue
        steps, values = out.setdefault(str(row["game"]), ([], []))
        steps.append(float(row["global_step"]))
        values.append(v)
    return out


def auc_per_game(rows: Iterable[Row], key: str = "return") -> dict[str, float]:
    """Area under each game's curve over the whole run (:func:`curve_auc`: the mean value of
    the game over the run's evaluations, trapezoidal in global steps)."""
    return {g: curve_auc(s, v) for g, (s, v) in curves_by_game(rows, key).items()}


def training_curve(
    rows: Iterable[Row], game: str, position: int, steps_per_game: int, key: str = "return"
) -> tuple[list[float], list[float]]:
    """Game ``game``'s curve while it trains at sequence position ``position``: its evaluations
    made during that game (``game_index == position``, including the one after it), with x the
    game's own progress ``(global_step - position * steps_per_game) / steps_per_game`` in
    ``(0, 1]``."""
    xs, ys = [], []
    for row in sorted(rows, key=lambda r: float(r["global_step"])):
        if str(row["game"]) != game or int(row["game_index"]) != position:
            continue
        v = _value(row, key)
        if not math.isnan(v):
            xs.append((float(row["global_step"]) - position * steps_per_game) / steps_per_game)
            ys.append(v)
    return xs, ys


def forward_transfer_auc(
    curve: tuple[Sequence[float], Sequence[float]],
    reference: tuple[Sequence[float], Sequence[float]],
) -> float:
    """``curve_auc(curve) - curve_auc(reference)``: how much better (on average over its
    training) a game is learned after the earlier games than from scratch. NaN if either curve
    is empty."""
    if not len(curve[0]) or not len(reference[0]):
        return math.nan
    return curve_auc(*curve) - curve_auc(*reference)
