"""The end of a sweep: one report over its finished trials, grouped by agent and setting.

Two parts, both written into ``<sweep>/report/`` (``report/<games>/`` per game sequence when the
grid has several):

* the comparison of ``python -m blip_rl.report`` over the sequence's finished run folders (its
  command line, called in-process: ``comparison.md``, ``curves.png``, ``report.json``);
* ``grid.md`` / ``grid.json`` in ``report/``: per group of the grid (a sequence, an agent and its
  swept settings; the trials of a group differ only by their seed) the mean over seeds and a 95%
  confidence interval of each summary scalar of the runs (``summary.json``). The interval is
  Student's t: ``mean +- t(0.975, n-1) * std / sqrt(n)``; one seed gives no interval.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from blip_rl.files import atomic_write
from blip_rl.sweep_grid import Trial

__all__ = ["METRICS", "confidence_interval", "grid_table", "write_report"]

METRICS = (
    ("average_final_return", "final return"),
    ("average_forgetting", "forgetting"),
    ("backward_transfer", "backward transfer"),
    ("average_final_normalized", "final (human-normalized)"),
)
"""``summary.json`` scalars in the table: key, column title."""

_T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
    10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
    18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060,
    26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980,
}  # fmt: skip
"""Two-sided 95% quantiles of Student's t by degrees of freedom."""


def _t975(df: int) -> float:
    if df in _T975:
        return _T975[df]
    larger = [d for d in _T975 if d > df]
    return _T975[min(larger)] if larger else 1.960


def confidence_interval(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean, sample std, n and the 95% t interval of ``values`` (NaN and None left out)."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(vals)
    if n == 0:
        return {"mean": None, "std": None, "n": 0, "low": None, "high": None}
    mean = sum(vals) / n
    if n == 1:
        return {"mean": mean, "std": None, "n": 1, "low": None, "high": None}
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = _t975(n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "low": mean - half, "high": mean + half}


def _cell(ci: dict[str, Any]) -> str:
    if ci["mean"] is None:
        return "–"
    if ci["low"] is None:
        return f"{ci['mean']:.3g}"
    return f"{ci['mean']:.3g} [{ci['low']:.3g}, {ci['high']:.3g}]"


def _summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def grid_table(
    trials: Sequence[Trial], sweep_dir: Path, name: str, states: dict[str, str]
) -> tuple[str, dict[str, Any]]:
    """The Markdown table and JSON of the grid's groups (mean and 95% CI over seeds)."""
    lines = [f"# Sweep {name}", ""]
    done = sum(1 for t in trials if states.get(t.name) == "done")
    lines += [
        f"{done} of {len(trials)} trials finished. Per group (an agent and its swept settings), "
        "the mean over seeds and its 95% confidence interval [low, high] (Student's t); "
        "one seed gives no interval.",
        "",
    ]
    data: dict[str, Any] = {"sweep": name, "trials": len(trials), "done": done, "sequences": {}}
    for games in dict.fromkeys(t.games for t in trials):
        members = [t for t in trials if t.games == games]
        groups: dict[str, list[Trial]] = {}
        for t in members:
            groups.setdefault(t.group, []).append(t)
        keys = list(dict.fromkeys(k for t in members for k in t.swept))
        lines += [f"## games {games}", ""]
        header = ["agent", *keys, "seeds", *(title for _, title in METRICS)]
        lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        seq: dict[str, Any] = {}
        for group, ts in groups.items():
            summaries = [
                s
                for t in ts
                if states.get(t.name) == "done" and (s := _summary(sweep_dir / t.name))
            ]
            stats = {
                key: confidence_interval(
                    [s.get("scalars", {}).get(key, math.nan) for s in summaries]
                )
                for key, _ in METRICS
            }
            first = ts[0]
            seeds = [t.seed for t in ts if states.get(t.name) == "done"]
            cells = [first.agent, *(first.swept.get(k, "–") for k in keys)]
            cells += [f"{len(seeds)}/{len(ts)}", *(_cell(stats[k]) for k, _ in METRICS)]
            lines.append("| " + " | ".join(cells) + " |")
            seq[group] = {
                "agent": first.agent,
                "settings": first.swept,
                "seeds": seeds,
                "runs": [t.name for t in ts if states.get(t.name) == "done"],
                "metrics": stats,
            }
        data["sequences"][games] = seq
        lines.append("")
    missing = [t.name for t in trials if states.get(t.name) != "done"]
    if missing:
        lines += ["Not finished (left out): " + ", ".join(f"`{n}`" for n in missing), ""]
    return "\n".join(lines), data


def _report_cli(argv: list[str]) -> tuple[int, str, str]:
    """``python -m blip_rl.report ARGV`` in this process: (exit code, stdout, stderr)."""
    from blip_rl import report

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = report.main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 2
    return int(rc or 0), out.getvalue(), err.getvalue()


def write_report(
    trials: Sequence[Trial], sweep_dir: Path, name: str, states: dict[str, str]
) -> tuple[list[Path], list[str]]:
    """Write the sweep's report; returns (the files written, warnings for the user)."""
    out = sweep_dir / "report"
    files: list[Path] = []
    warnings: list[str] = []
    sequences = list(dict.fromkeys(t.games for t in trials))
    for games in sequences:
        done = [t for t in trials if t.games == games and states.get(t.name) == "done"]
        if not done:
            continue
        target = out
        if len(sequences) > 1:
            target = out / done[0].name.split("__")[0]
        rc, stdout, stderr = _report_cli(
            [str(sweep_dir / t.name) for t in done] + ["--out", str(target)]
        )
        if rc != 0:
            last = (stderr.strip().splitlines() or ["failed"])[-1]
            warnings.append(f"python -m blip_rl.report over {games} failed: {last}")
        else:
            files += [Path(line) for line in stdout.split() if line.strip()]
    text, data = grid_table(trials, sweep_dir, name, states)
    atomic_write(out / "grid.md", (text + "\n").encode())
    atomic_write(out / "grid.json", (json.dumps(data, indent=2) + "\n").encode())
    files += [out / "grid.md", out / "grid.json"]
    return files, warnings
