"""Command line: ``python -m blip_rl.report RUN [RUN ...]``: plots and tables from run folders.

Reads run folders only (``config.json``, ``metrics.json`` / ``summary.json``, ``evals.csv``); it
never trains.

* **One run**: writes ``<run>/report/`` (or ``--out DIR``): ``matrix.png`` (the evaluation
  matrix ``R[i][j]``, return on game ``j`` after training game ``i``, as a heatmap; raw and
  human-normalized side by side when the games have reference scores), ``curves.png`` (every
  game's evaluation return over the whole run, the training period of each game shaded),
  ``summary.md`` (the matrix and the metrics table) and ``report.json`` (the same numbers).
  An unfinished run is reported up to its last finished game.
* **Several runs** (e.g. blip, ewc and finetune over the same games with several seeds): the
  runs are grouped by agent (runs of one agent whose settings differ besides the seed form
  separate groups, labelled with the differing settings); writes ``comparison.md`` (one table
  with the mean and the standard deviation across seeds of every metric, per agent, and
  per-game tables), ``curves.png`` (per game, each agent's mean curve with a +-1 std band) and
  ``report.json`` into ``--out DIR``, by default ``report-<YYYYmmdd-HHMMSS>/`` next to the
  first run (i.e. in ``runs/``). All runs must cover the same games in the same order and be
  finished.

Metrics (:mod:`blip_rl.metrics`), raw and human-normalized: average final performance,
forgetting per game and on average (Chaudhry et al. 2018: the best evaluation after learning
the game minus the final one), backward transfer (GEM), the area under each game's curve over
the run (its mean evaluation return), and with ``--reference RUN`` (a single-game run with the
same ``steps_per_game``; repeat the flag) forward transfer: the AUC of each game's curve while
it trains in the sequence minus the AUC of its curve in the reference run, averaged over the
games after the first.

Bad input (not a run folder, runs over different game lists, ...) ends in one ``error:`` line
and exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from blip_rl import metrics
from blip_rl.errors import UsageError, cli
from blip_rl.files import atomic_write
from blip_rl.plots import heatmap, matrix_markdown, pyplot

__all__ = ["RunData", "build_report", "compare_runs", "load_run", "main", "run_metrics"]

_RUN_SPECIFIC = ("seed", "device", "games_spec")
"""Config keys that may differ between seeds of one agent."""


# ------------------------------------------------------------------------------------ reading
@dataclass
class RunData:
    """What the report reads from one run folder."""

    path: Path
    config: dict[str, Any]
    games: list[str]
    matrix: list[list[float]]
    matrix_normalized: list[list[float]] | None
    evals: list[dict[str, Any]]
    summary: dict[str, Any] | None = None
    references: dict[str, list[RunData]] = field(default_factory=dict)
    """Game -> single-game reference runs (``--reference``), for forward transfer."""

    @property
    def agent(self) -> str:
        return str(self.config.get("agent", "?"))

    @property
    def method(self) -> str:
        return str(self.config.get("method", "?"))

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def steps_per_game(self) -> int:
        return int(self.config.get("steps_per_game", 0))

    @property
    def complete(self) -> bool:
        return len(self.matrix) == len(self.games)

    @property
    def memory_bytes_per_param(self) -> float:
        if self.summary is None:
            return math.nan
        return float(self.summary.get("memory_bytes_per_param", math.nan))


def _read_json(path: Path, run: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{run}: unreadable {path.name} ({type(exc).__name__})") from None


def load_run(path: str | Path) -> RunData:
    """Read a run folder; UsageError (one line) if it is not one or holds no finished game."""
    run = Path(path)
    if not run.is_dir():
        raise UsageError(f"{run}: no such run folder")
    if not (run / "config.json").is_file():
        raise UsageError(f"{run}: not a blip-rl run folder (no config.json)")
    config = _read_json(run / "config.json", run)
    if not isinstance(config, dict) or not isinstance(config.get("games"), list):
        raise UsageError(f"{run}: not a blip-rl run folder (config.json has no games)")
    summary = None
    source = None
    if (run / "summary.json").is_file():
        summary = _read_json(run / "summary.json", run)
        source = summary.get("metrics") if isinstance(summary, dict) else None
    if source is None and (run / "metrics.json").is_file():
        source = _read_json(run / "metrics.json", run)
    if not isinstance(source, dict) or not source.get("matrix"):
        raise UsageError(f"{run}: no finished game yet (no evaluation matrix in metrics.json)")
    games = [str(g) for g in config["games"]]
    matrix = [[_float(v) for v in row] for row in source["matrix"]]
    if len(matrix) > len(games) or any(len(row) != len(games) for row in matrix):
        raise UsageError(
            f"{run}: the evaluation matrix does not match the run's {len(games)} games"
        )
    norm = source.get("matrix_normalized")
    norm_m = [[_float(v) for v in row] for row in norm] if norm else None
    return RunData(
        path=run,
        config=config,
        games=games,
        matrix=matrix,
        matrix_normalized=norm_m,
        evals=_read_evals(run),
        summary=summary if isinstance(summary, dict) else None,
    )


def _float(v: Any) -> float:
    return math.nan if v is None or v == "" else float(v)


def _read_evals(run: Path) -> list[dict[str, Any]]:
    path = run / "evals.csv"
    if not path.is_file():
        return []
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            r["global_step"] = int(r["global_step"])
            r["game_index"] = int(r["game_index"])
            r["return"] = _float(r["return"])
            r["normalized"] = _float(r.get("normalized"))
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise UsageError(f"{run}: unreadable evals.csv ({type(exc).__name__})") from None
    return rows


def attach_references(runs: Sequence[RunData], reference_paths: Sequence[str]) -> None:
    """Load single-game reference runs and attach them to ``runs`` by game name."""
    refs: dict[str, list[RunData]] = {}
    for p in reference_paths:
        ref = load_run(p)
        if len(ref.games) != 1:
            raise UsageError(
                f"--reference {ref.path}: a reference must be a single-game run, this one has "
                f"{len(ref.games)} games"
            )
        game = ref.games[0]
        for run in runs:
            if ref.steps_per_game != run.steps_per_game:
                raise UsageError(
                    f"--reference {ref.path}: {ref.steps_per_game} steps per game, but "
                    f"{run.path} has {run.steps_per_game}; use references with the same budget"
                )
        refs.setdefault(game, []).append(ref)
    games = set(runs[0].games) if runs else set()
    unknown = sorted(set(refs) - games)
    if unknown:
        raise UsageError(
            f"--reference: game {unknown[0]!r} is not in the runs' games "
            f"({', '.join(runs[0].games)})"
        )
    for run in runs:
        run.references = refs


# ------------------------------------------------------------------------------------ metrics
def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    return x


def run_metrics(run: RunData) -> dict[str, Any]:
    """All metrics of one run, raw (``"raw"``) and human-normalized (``"normalized"``).

    Each has ``average_final``, ``forgetting`` (per game), ``average_forgetting``,
    ``backward_transfer``, ``auc`` (per game), ``average_auc`` and, with references,
    ``forward_transfer`` (per game) and ``average_forward_transfer``.
    """
    out: dict[str, Any] = {}
    refs = run.references
    for kind, matrix, key in (
        ("raw", run.matrix, "return"),
        ("normalized", run.matrix_normalized, "normalized"),
    ):
        if matrix is None:
            continue
        m = metrics.matrix_metrics(matrix)
        aucs = metrics.auc_per_game(run.evals, key)
        m["auc"] = [aucs.get(g, math.nan) for g in run.games]
        m["average_auc"] = _nanmean(m["auc"])
        if refs:
            ft = []
            for j, g in enumerate(run.games):
                if g not in refs or j >= len(run.matrix):
                    ft.append(math.nan)
                    continue
                pos = run.games.index(g)
                curve = metrics.training_curve(run.evals, g, pos, run.steps_per_game, key)
                per_ref = [
                    metrics.forward_transfer_auc(
                        curve, metrics.training_curve(r.evals, g, 0, r.steps_per_game, key)
                    )
                    for r in refs[g]
                ]
                ft.append(_nanmean(per_ref))
            m["forward_transfer"] = ft
            m["average_forward_transfer"] = _nanmean(ft[1:])
        out[kind] = m
    return out


def _nanmean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


# ------------------------------------------------------------------------------------ writing
def _save(fig: Any, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    pyplot().close(fig)
    atomic_write(path, buf.getvalue())


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}"


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
    _save(fig, path)


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


def plot_curves(run: RunData, path: Path) -> None:
    """Every game's evaluation return over the run (global steps), one line per game."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    _shade_games(ax, run)
    for g, (steps, values) in metrics.curves_by_game(run.evals).items():
        ax.plot(steps, values, marker="o", markersize=3, label=g)
    ax.set_xlabel("global env steps (shaded: the game being trained)")
    ax.set_ylabel("evaluation return")
    ax.legend(fontsize=8)
    ax.set_title(f"{run.path.name}: every game, evaluated along the sequence", pad=16)
    fig.tight_layout()
    _save(fig, path)


_SCALARS = [
    ("average_final", "average final"),
    ("average_forgetting", "average forgetting"),
    ("backward_transfer", "backward transfer"),
    ("average_auc", "average AUC"),
    ("average_forward_transfer", "forward transfer"),
]


def summary_markdown(run: RunData, m: dict[str, Any]) -> str:
    """The Markdown summary of one run: its settings, the matrix and the metrics tables."""
    lines = [f"# Report: {run.path.name}", ""]
    lines.append(
        f"agent **{run.agent}** (method {run.method}), seed {run.seed}, "
        f"{len(run.games)} games, {run.steps_per_game} env steps per game"
    )
    if not run.complete:
        lines.append(f"\n**Incomplete run**: {len(run.matrix)} of {len(run.games)} games finished.")
    if not math.isnan(run.memory_bytes_per_param):
        lines.append(f"\nmethod memory: {run.memory_bytes_per_param:.2f} bytes per parameter")
    lines += [
        "",
        "## Evaluation matrix (return)",
        "",
        matrix_markdown(run.matrix, run.games, 1, "–"),
    ]
    if run.matrix_normalized is not None:
        lines += ["", "## Evaluation matrix (human-normalized)", ""]
        lines.append(matrix_markdown(run.matrix_normalized, run.games, 3, "–"))
    lines += ["", "## Metrics", "", "| metric | return | human-normalized |", "|---|---|---|"]
    raw, norm = m.get("raw", {}), m.get("normalized", {})
    for key, label in _SCALARS:
        if key in raw:
            lines.append(f"| {label} | {_fmt(raw[key])} | {_fmt(norm.get(key), 3)} |")
    lines += ["", "## Per game", ""]
    head = "| game | final | forgetting | AUC | final (norm.) | forgetting (norm.) | AUC (norm.) |"
    cols = 7
    if "forward_transfer" in raw:
        head = head[:-1] + "| forward transfer | forward transfer (norm.) |"
        cols = 9
    lines += [head, "|---" * cols + "|"]
    last = run.matrix[-1]
    nlast = run.matrix_normalized[-1] if run.matrix_normalized else [math.nan] * len(run.games)
    for j, g in enumerate(run.games):
        cells = [
            g,
            _fmt(last[j]),
            _fmt(raw["forgetting"][j]),
            _fmt(raw["auc"][j]),
            _fmt(nlast[j], 3),
            _fmt(norm.get("forgetting", [math.nan] * len(run.games))[j], 3),
            _fmt(norm.get("auc", [math.nan] * len(run.games))[j], 3),
        ]
        if "forward_transfer" in raw:
            cells += [
                _fmt(raw["forward_transfer"][j]),
                _fmt(norm.get("forward_transfer", [math.nan] * len(run.games))[j], 3),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Final: return after the last finished game. Forgetting: best return after the game was "
        "learned minus the final one (Chaudhry et al. 2018). Backward transfer: mean of final "
        "minus just-learned returns (GEM). AUC: mean evaluation return over the whole run. "
        "Forward transfer: AUC while the game trains minus AUC in its single-game reference run.",
        "",
        "![matrix](matrix.png)",
        "",
        "![curves](curves.png)",
        "",
    ]
    return "\n".join(lines)


def build_report(run: RunData, out: Path) -> list[Path]:
    """Write the one-run report into ``out``; returns the written files."""
    m = run_metrics(run)
    files = [out / "matrix.png", out / "curves.png", out / "summary.md", out / "report.json"]
    plot_matrix(run, files[0])
    plot_curves(run, files[1])
    atomic_write(files[2], summary_markdown(run, m).encode())
    data = {
        "run": str(run.path),
        "agent": run.agent,
        "method": run.method,
        "seed": run.seed,
        "games": run.games,
        "complete": run.complete,
        "memory_bytes_per_param": run.memory_bytes_per_param,
        "matrix": run.matrix,
        "matrix_normalized": run.matrix_normalized,
        "metrics": m,
    }
    atomic_write(files[3], (json.dumps(_nan_to_none(data), indent=2) + "\n").encode())
    return files


# ------------------------------------------------------------------------------ comparison
def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{k}."))
        else:
            out[prefix + k] = json.dumps(v, sort_keys=True)
    return out


def group_runs(runs: Sequence[RunData]) -> dict[str, list[RunData]]:
    """Runs grouped by agent; one agent's runs with different settings (besides the seed)
    form separate groups labelled ``agent (setting=value, ...)``."""
    by_agent: dict[str, dict[str, list[RunData]]] = {}
    flats: dict[int, dict[str, Any]] = {}
    for r in runs:
        cfg = {k: v for k, v in r.config.items() if k not in _RUN_SPECIFIC}
        flats[id(r)] = _flat(cfg)
        key = json.dumps(flats[id(r)], sort_keys=True)
        by_agent.setdefault(r.agent, {}).setdefault(key, []).append(r)
    groups: dict[str, list[RunData]] = {}
    for agent, variants in by_agent.items():
        if len(variants) == 1:
            groups[agent] = next(iter(variants.values()))
            continue
        dicts = [flats[id(v[0])] for v in variants.values()]
        keys = sorted({k for d in dicts for k in d})
        differing = [k for k in keys if len({d.get(k) for d in dicts}) > 1]
        for members in variants.values():
            d = flats[id(members[0])]
            label = ", ".join(f"{k.split('.')[-1]}={d.get(k, '-')}" for k in differing[:3])
            groups[f"{agent} ({label})"] = members
    return groups


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    vals = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if vals.size == 0:
        return math.nan, math.nan, 0
    std = float(vals.std(ddof=1)) if vals.size > 1 else math.nan
    return float(vals.mean()), std, int(vals.size)


def _ms(values: Sequence[float], digits: int = 2) -> str:
    mean, std, n = _mean_std(values)
    if n == 0:
        return "–"
    return f"{mean:.{digits}f}" if n == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def compare_runs(runs: Sequence[RunData], out: Path) -> list[Path]:
    """Write the comparison of several runs into ``out``; returns the written files."""
    games = runs[0].games
    for r in runs[1:]:
        if r.games != games:
            raise UsageError(
                f"runs cover different game lists: {runs[0].path} has {','.join(games)}, "
                f"{r.path} has {','.join(r.games)}; compare runs over the same games"
            )
    for r in runs:
        if not r.complete:
            raise UsageError(
                f"{r.path} is unfinished ({len(r.matrix)} of {len(games)} games); finish it "
                "with python -m blip_rl.train --resume, or leave it out of the comparison"
            )
    groups = group_runs(runs)
    per_run = {id(r): run_metrics(r) for r in runs}
    lines = ["# Comparison", "", f"games: {', '.join(games)}", ""]
    summary: dict[str, Any] = {"games": games, "groups": {}}
    for kind, digits, title in (("raw", 2, "return"), ("normalized", 3, "human-normalized")):
        if not all(kind in per_run[id(r)] for r in runs):
            continue
        lines += [f"## Metrics ({title}; mean ± std across seeds)", ""]
        header = "| agent | seeds | " + " | ".join(label for _, label in _SCALARS) + " |"
        if kind == "raw":
            header += " memory (bytes/param) |"
        lines += [header, "|---" * (header.count("|") - 1) + "|"]
        for label, members in groups.items():
            ms = [per_run[id(r)][kind] for r in members]
            cells = [label, str(len(members))]
            cells += [_ms([m.get(k, math.nan) for m in ms], digits) for k, _ in _SCALARS]
            if kind == "raw":
                cells.append(_ms([r.memory_bytes_per_param for r in members]))
            lines.append("| " + " | ".join(cells) + " |")
            entry = summary["groups"].setdefault(
                label, {"runs": [str(r.path) for r in members], "seeds": [r.seed for r in members]}
            )
            entry[kind] = {
                k: dict(
                    zip(
                        ("mean", "std", "n"),
                        _mean_std([m.get(k, math.nan) for m in ms]),
                        strict=True,
                    )
                )
                for k, _ in _SCALARS
            }
        lines.append("")
    for key, title in (("final", "Final return per game"), ("forgetting", "Forgetting per game")):
        lines += [f"## {title} (mean ± std across seeds)", ""]
        lines += ["| agent | " + " | ".join(games) + " |", "|---" * (len(games) + 1) + "|"]
        for label, members in groups.items():
            cells = []
            for j in range(len(games)):
                if key == "final":
                    vals = [r.matrix[-1][j] for r in members]
                else:
                    vals = [per_run[id(r)]["raw"]["forgetting"][j] for r in members]
                cells.append(_ms(vals))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Runs:", ""]
    lines += [
        f"- {label}: " + ", ".join(f"`{r.path}` (seed {r.seed})" for r in members)
        for label, members in groups.items()
    ]
    lines += ["", "![curves](curves.png)", ""]
    files = [out / "comparison.md", out / "curves.png", out / "report.json"]
    atomic_write(files[0], "\n".join(lines).encode())
    plot_comparison(groups, games, files[1])
    atomic_write(files[2], (json.dumps(_nan_to_none(summary), indent=2) + "\n").encode())
    return files


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
        ax.set_xlabel("global env steps")
        ax.set_ylabel("evaluation return")
    for k in range(len(games), rows * cols):
        axes[k // cols][k % cols].axis("off")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("mean over seeds, band: ±1 std; shaded: the game's own training")
    fig.tight_layout()
    _save(fig, path)


# ------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m blip_rl.report",
        description="Plots and tables from run folders (never trains). One run: matrix "
        "heatmap, curves and a Markdown summary in RUN/report/. Several runs: one comparison "
        "grouped by agent, mean and std across seeds.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders (runs/<name>)")
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder (default: RUN/report for one run, report-<time> next to the "
        "first run for several)",
    )
    parser.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="RUN",
        help="a single-game run with the same steps per game, for forward transfer "
        "(repeat the flag for several games or seeds)",
    )
    return parser


@cli
def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 for bad input)."""
    args = build_parser().parse_args(argv)
    paths = [Path(p) for p in args.runs]
    seen: set[Path] = set()
    for p in paths:
        if p.resolve() in seen:
            raise UsageError(f"{p}: run given twice")
        seen.add(p.resolve())
    runs = [load_run(p) for p in paths]
    if args.reference:
        attach_references(runs, args.reference)
    if args.out:
        out = Path(args.out)
    elif len(runs) == 1:
        out = runs[0].path / "report"
    else:
        base = runs[0].path.parent / f"report-{time.strftime('%Y%m%d-%H%M%S')}"
        out, k = base, 2
        while out.exists():
            out, k = Path(f"{base}-{k}"), k + 1
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    try:
        files = build_report(runs[0], out) if len(runs) == 1 else compare_runs(runs, out)
    except OSError as exc:
        raise UsageError(f"cannot write the report to {out}: {exc.strerror or exc}") from None
    for f in files:
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
