"""Rendering the evaluation matrix, shared by TensorBoard logging and the report (numpy and
matplotlib only)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["heatmap", "matrix_markdown", "matrix_png", "pyplot"]


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
