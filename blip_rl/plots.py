"""Every figure of blip-rl (matplotlib on the Agg backend, imported on first use).

The evaluation matrix as a heatmap and as a Markdown table, shared by TensorBoard logging and
the report; and the report's figures: the matrix of one run, every game's evaluation curve over
a run, and the per-game mean curves of several runs grouped by agent.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from blip_rl import metrics
from blip_rl.files import atomic_write

if TYPE_CHECKING:  # the report's tables import this module for matrix_markdown
    from blip_rl.report_tables import RunData

__all__ = [
    "heatmap",
    "matrix_markdown",
    "matrix_png",
    "plot_comparison",
    "plot_curves",
    "plot_matrix",
    "pyplot",
    "save_png",
]


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def matrix_markdown(
    matrix: Sequence[Sequence[float]], games: Sequence[str], digits: int = 1, missing: str = ""
) -> str:
    """The evaluation matrix as a Markdown table (row i: after training game i)."""
    lines = ["| after \\ on | " + " | ".join(games) + " |", "|---" * (len(games) + 1) + "|"]
    for i, row in enumerate(matrix):
        cells = " | ".join(missing if math.isnan(v) else f"{v:.{digits}f}" for v in row)
        lines.append(f"| {i + 1}. {games[i]} | {cells} |")
    return "\n".join(lines)


def heatmap(
    ax: Any, matrix: Sequence[Sequence[float]], games: Sequence[str], title: str, digits: int = 1
) -> Any:
    """Draw the matrix on ``ax`` with its values written in; returns the image for a colorbar."""
    m = np.asarray(matrix, dtype=float)
    im = ax.imshow(np.ma.masked_invalid(m), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(games)), games, rotation=45, ha="right")
    ax.set_yticks(
        range(m.shape[0]), [f"after {i + 1}. {g}" for i, g in enumerate(games[: m.shape[0]])]
    )
    ax.set_xlabel("evaluated on")
    finite = m[np.isfinite(m)]
    mid = float(finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if np.isfinite(m[i, j]):
                color = "black" if m[i, j] > mid else "white"
                ax.text(
                    j, i, f"{m[i, j]:.{digits}f}", ha="center", va="center", color=color, fontsize=8
                )
    ax.set_title(title)
    return im


def matrix_png(matrix: Sequence[Sequence[float]], games: Sequence[str], title: str) -> bytes:
    """A heatmap of the evaluation matrix as PNG bytes."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(games), 1.0 + 0.9 * len(games)))
    fig.colorbar(heatmap(ax, matrix, games, title), ax=ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def save_png(fig: Any, path: Path) -> None:
    """Render ``fig`` as PNG, close it and write it atomically to ``path``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    pyplot().close(fig)
    atomic_write(path, buf.getvalue())


def plot_matrix(run: RunData, path: Path) -> None:
    """The evaluation matrix (and its human-normalized version when available) as PNG."""
    plt = pyplot()
    panels = [("return", run.matrix, 1)]
    if run.matrix_normalized is not None and np.isfinite(np.asarray(run.matrix_normalized)).any():
        panels.append(("human-normalized", run.matrix_normalized, 2))
    n = len(run.games)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(len(panels) * (2.5 + 1.0 * n), 1.6 + 0.8 * n), squeeze=False
    )
    for ax, (title, matrix, digits) in zip(axes[0], panels, strict=True):
        im = heatmap(ax, matrix, run.games, title, digits)
        fig.colorbar(im, ax=ax)
    fig.suptitle(f"{run.path.name}: R[i][j] = {panels[0][0]} on game j after training game i")
    fig.tight_layout()
    save_png(fig, path)


def _shade_games(ax: Any, run: RunData) -> None:
    spg = run.steps_per_game
    for i, g in enumerate(run.games):
        if i % 2 == 0:
            ax.axvspan(i * spg, (i + 1) * spg, color="0.93", zorder=0)
        ax.text(
            (i + 0.5) * spg,
            1.0,
            g,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=8,
        )


def _steps_axis(ax: Any, label: str) -> None:
    """Env steps on the x axis, written short ("150k", "1.2M") so that ticks never collide."""
    from matplotlib.ticker import EngFormatter

    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_xlabel(label)


def plot_curves(run: RunData, path: Path) -> None:
    """Every game's evaluation return over the run (global steps), one line per game."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    _shade_games(ax, run)
    for g, (steps, values) in metrics.curves_by_game(run.evals).items():
        ax.plot(steps, values, marker="o", markersize=3, label=g)
    _steps_axis(ax, "global env steps (shaded: the game being trained)")
    ax.set_ylabel("evaluation return")
    ax.legend(fontsize=8)
    ax.set_title(f"{run.path.name}: every game, evaluated along the sequence", pad=16)
    fig.tight_layout()
    save_png(fig, path)


def plot_comparison(groups: dict[str, list[RunData]], games: list[str], path: Path) -> None:
    """Per game, each group's mean evaluation curve across seeds with a +-1 std band."""
    plt = pyplot()
    cols = min(3, len(games))
    rows = math.ceil(len(games) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.3 * rows), squeeze=False)
    first = next(iter(groups.values()))[0]
    for j, game in enumerate(games):
        ax = axes[j // cols][j % cols]
        spg = first.steps_per_game
        ax.axvspan(j * spg, (j + 1) * spg, color="0.93", zorder=0)
        for label, members in groups.items():
            curves = [metrics.curves_by_game(r.evals).get(game, ([], [])) for r in members]
            curves = [c for c in curves if c[0]]
            if not curves:
                continue
            grid = np.unique(np.concatenate([np.asarray(c[0]) for c in curves]))
            ys = np.stack(
                [
                    np.where(
                        (grid >= c[0][0]) & (grid <= c[0][-1]), np.interp(grid, c[0], c[1]), np.nan
                    )
                    for c in curves
                ]
            )
            count = np.sum(np.isfinite(ys), axis=0)
            mean = np.nansum(ys, axis=0) / np.maximum(count, 1)
            mean[count == 0] = np.nan
            (line,) = ax.plot(grid, mean, label=label)
            if len(curves) > 1:
                dev = np.sqrt(np.nansum((ys - mean) ** 2, axis=0) / np.maximum(count - 1, 1))
                ax.fill_between(grid, mean - dev, mean + dev, color=line.get_color(), alpha=0.2)
        ax.set_title(f"{j + 1}. {game}")
        _steps_axis(ax, "global env steps")
        ax.set_ylabel("evaluation return")
    for k in range(len(games), rows * cols):
        axes[k // cols][k % cols].axis("off")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("mean over seeds, band: ±1 std; shaded: the game's own training")
    fig.tight_layout()
    save_png(fig, path)
