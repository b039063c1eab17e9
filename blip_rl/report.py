"""Command line: ``python -m blip_rl.report RUN [RUN ...]``: plots and tables from run folders.

Reads run folders only (``config.json``, ``metrics.json`` / ``summary.json``, ``evals.csv``); it
never trains.

* **One run**: writes ``<run>/report/`` (or ``--out DIR``): ``matrix.png`` (the evaluation
  matrix ``R[i][j]``, return on game ``j`` after training game ``i``, as a heatmap; raw and
  human-normalized side by side when the games have reference scores), ``curves.png`` (every
  game's evaluation return over the whole run, the training period of each game shaded),
  ``summary.md`` (the matrix and the metrics table) and ``report.json`` (the same numbers);
  for a run trained with ``--capture-video``, ``contact-sheet.png`` (one frame of every video,
  :mod:`blip_rl.video`) and a Videos section in ``summary.md`` linking every video.
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

This module is the command line and the two writers (:func:`build_report`,
:func:`compare_runs`); the numbers and tables come from :mod:`blip_rl.report_tables`, the
figures from :mod:`blip_rl.plots`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from blip_rl.errors import ArgumentParser, UsageError, cli
from blip_rl.files import atomic_write, write_json
from blip_rl.plots import plot_comparison, plot_curves, plot_matrix
from blip_rl.report_tables import (
    RunData,
    attach_references,
    comparison_tables,
    group_runs,
    load_run,
    run_metrics,
    summary_markdown,
)
from blip_rl.video import videos_markdown, write_contact_sheet

__all__ = [
    "RunData",
    "attach_references",
    "build_report",
    "compare_runs",
    "group_runs",
    "load_run",
    "main",
    "plot_comparison",
    "run_metrics",
]


def build_report(run: RunData, out: Path) -> list[Path]:
    """Write the one-run report into ``out``; returns the written files."""
    m = run_metrics(run)
    files = [out / "matrix.png", out / "curves.png", out / "summary.md", out / "report.json"]
    plot_matrix(run, files[0])
    plot_curves(run, files[1])
    text = summary_markdown(run, m)
    sheet = write_contact_sheet(run.path, out / "contact-sheet.png")  # runs with --capture-video
    if sheet is not None:
        files.append(sheet)
        text += videos_markdown(run.path, out, sheet)
    atomic_write(files[2], text.encode())
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
    write_json(files[3], data)
    return files


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
    text, summary = comparison_tables(runs, groups)
    files = [out / "comparison.md", out / "curves.png", out / "report.json"]
    atomic_write(files[0], text.encode())
    plot_comparison(groups, games, files[1])
    write_json(files[2], summary)
    return files


# ------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
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
