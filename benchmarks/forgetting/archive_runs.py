"""Keep the record of finished runs in the repository, so the reports can be rebuilt without them.

A run folder holds checkpoints of many MB, which are not committed, and a few KB that every
number of a report comes from: ``config.json``, ``summary.json``, ``metrics.json``,
``evals.csv`` (each evaluation's mean, standard error and episode count) and ``matrix.csv``.
This copies those files of every finished run (one with a ``summary.json``) under ``SRC`` to
the same relative path under ``--to``; ``analyze.py`` and ``scan_games.py --table-only`` read
such a record as they read the run folder. Runs of several sessions then add up to one report::

    python benchmarks/forgetting/archive_runs.py runs/forgetting \\
        --to benchmarks/forgetting/records
    python benchmarks/forgetting/analyze.py benchmarks/forgetting/records/calib500k/... \\
        --out benchmarks/forgetting/...

A record that is already there with the same content is kept; one that differs (another run
under the same name) stops the command before anything is written (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECORD_FILES = ("config.json", "summary.json", "metrics.json", "evals.csv", "matrix.csv")


def plan(src: Path, dest: Path) -> tuple[list[tuple[Path, Path]], int, list[str]]:
    """The copies to make, the number of runs already recorded, and the conflicts."""
    copies: list[tuple[Path, Path]] = []
    kept = 0
    conflicts: list[str] = []
    for summary in sorted(src.rglob("summary.json")):
        run = summary.parent
        if dest.resolve() in run.resolve().parents:
            continue  # a record inside SRC is not a run
        target = dest / run.relative_to(src)
        files = [(run / n, target / n) for n in RECORD_FILES if (run / n).is_file()]
        same = [t.is_file() and t.read_bytes() == s.read_bytes() for s, t in files]
        if all(same):
            kept += 1
        elif target.exists():
            conflicts.append(str(target))
        else:
            copies += files
    return copies, kept, conflicts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="a folder of run folders (searched recursively)")
    ap.add_argument("--to", type=Path, default=HERE / "records", help="where the records go")
    args = ap.parse_args(argv)
    if not args.src.is_dir():
        print(f"error: {args.src}: no such folder of runs", file=sys.stderr)
        return 2
    copies, kept, conflicts = plan(args.src, args.to)
    if conflicts:
        print(
            f"error: {conflicts[0]} holds another run's record"
            + (f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else "")
            + "; archive this run under another name or remove that record first",
            file=sys.stderr,
        )
        return 2
    for source, target in copies:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    runs = len({t.parent for _, t in copies})
    print(f"archive_runs: {runs} run(s) recorded in {args.to}, {kept} already there")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
