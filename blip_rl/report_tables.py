"""The numbers and tables of a report: run folders read, metrics per run, runs grouped by agent
with their mean and standard deviation across seeds, and the Markdown tables (no plotting).

:func:`load_run` reads a run folder (``config.json``, ``summary.json`` / ``metrics.json``,
``evals.csv``); :func:`run_metrics` derives every metric of one run through
:mod:`blip_rl.metrics`; :func:`summary_markdown` and :func:`comparison_tables` turn them into the
``summary.md`` and ``comparison.md`` text. :mod:`blip_rl.report` writes the files.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from blip_rl import metrics
from blip_rl.config import OUTCOME_NEUTRAL_FIELDS
from blip_rl.errors import UsageError
from blip_rl.methods import METHODS
from blip_rl.plots import matrix_markdown

__all__ = [
    "RunData",
    "attach_references",
    "comparison_tables",
    "group_runs",
    "load_run",
    "run_metrics",
    "summary_markdown",
]

_RUN_SPECIFIC = ("seed", "games_spec", *OUTCOME_NEUTRAL_FIELDS)
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
    _fill_method_defaults(config)
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


def _fill_method_defaults(config: dict[str, Any]) -> None:
    """A method setting added after a run was written takes its default (the behaviour the run
    had), so old and new runs at the same settings group together."""
    method = METHODS.get(str(config.get("method")))
    if method is None:
        return
    settings = config.setdefault("method_config", {})
    if not isinstance(settings, dict):
        return
    for f in dataclasses.fields(method.config_class):
        if f.default is not dataclasses.MISSING:
            settings.setdefault(f.name, f.default)


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
            # standard error over the episodes and their number (absent in older runs: NaN, 0)
            r["stderr"] = _float(r.get("stderr"))
            r["episodes"] = int(r.get("episodes") or 0)
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


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}"


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


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``section.key -> JSON``; a setting that is none counts as not set, so
    runs written before a setting existed group with runs that leave it unset."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{k}."))
        elif v is None:
            continue
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


def comparison_tables(
    runs: Sequence[RunData], groups: dict[str, list[RunData]]
) -> tuple[str, dict[str, Any]]:
    """The ``comparison.md`` text and the numbers of ``report.json`` for finished runs over the
    same games, grouped as by :func:`group_runs` (mean and sample std across each group's seeds).
    """
    games = runs[0].games
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
    return "\n".join(lines), summary
