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

A run written before ``evals.csv`` had its ``stderr`` and ``episodes`` columns gets them in its
record, from the episode returns in its newest checkpoint. A record that is already there with
the same content is kept. So is one that a rerun reproduced: the same seed and code give the
same files except ``summary.json``'s ``wall_time_s`` (and the line endings of the CSV files, which
git may have normalised); the command counts these reruns, so that rerunning a recorded run is a
check of its record. A record that differs otherwise (another run under the same name) stops the
command before anything is written (exit 2).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECORD_FILES = ("config.json", "summary.json", "metrics.json", "evals.csv", "matrix.csv")


def evals_with_stderr(run: Path) -> bytes:
    """``evals.csv`` with each evaluation's standard error and episode count: as written, or
    for an older run completed from the episode returns its newest checkpoint keeps."""
    text = (run / "evals.csv").read_text()
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or "stderr" in rows[0]:
        return text.encode()
    ckpts = sorted((run / "checkpoints").glob("*.pt"), key=lambda p: p.stat().st_mtime)
    if not ckpts:
        return text.encode()
    import torch

    evals = torch.load(ckpts[-1], map_location="cpu", weights_only=False).get("evals", [])
    returns = {(int(e["global_step"]), str(e["game"])): e.get("returns") or [] for e in evals}
    step, game = rows[0].index("global_step"), rows[0].index("game")
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow([*rows[0], "stderr", "episodes"])
    for row in rows[1:]:
        x = [float(v) for v in returns.get((int(row[step]), row[game]), [])]
        sem = f"{statistics.stdev(x) / math.sqrt(len(x)):.4f}" if len(x) > 1 else ""
        w.writerow([*row, sem, len(x)])
    return out.getvalue().encode()


def record(run: Path) -> dict[str, bytes]:
    """The record of one finished run: file name -> content."""
    files = {n: (run / n).read_bytes() for n in RECORD_FILES if (run / n).is_file()}
    if "evals.csv" in files:
        files["evals.csv"] = evals_with_stderr(run)
    return files


def _results(name: str, data: bytes) -> object:
    """What a record file says about the run's results: the bytes, without the line endings of a
    CSV file and without the wall time of ``summary.json`` (the one thing a rerun changes)."""
    if name == "summary.json":
        summary = json.loads(data)
        summary.pop("wall_time_s", None)
        return summary
    return data.replace(b"\r\n", b"\n") if name.endswith(".csv") else data


def reproduces(target: Path, files: dict[str, bytes]) -> bool:
    """Whether the record at ``target`` holds the same results as ``files`` (see ``_results``)."""
    return all(
        (target / n).is_file() and _results(n, (target / n).read_bytes()) == _results(n, data)
        for n, data in files.items()
    )


def plan(src: Path, dest: Path) -> tuple[list[tuple[Path, bytes]], int, int, list[str]]:
    """The files to write, the number of runs already recorded, how many of these a rerun
    reproduced, and the conflicts."""
    writes: list[tuple[Path, bytes]] = []
    kept = reproduced = 0
    conflicts: list[str] = []
    for summary in sorted(src.rglob("summary.json")):
        run = summary.parent
        if dest.resolve() in run.resolve().parents:
            continue  # a record inside SRC is not a run
        target = dest / run.relative_to(src)
        rec = record(run)
        files = [(target / n, data) for n, data in rec.items()]
        if all(t.is_file() and t.read_bytes() == data for t, data in files):
            kept += 1
        elif target.exists() and reproduces(target, rec):
            kept += 1
            reproduced += 1
        elif target.exists():
            conflicts.append(str(target))
        else:
            writes += files
    return writes, kept, reproduced, conflicts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="a folder of run folders (searched recursively)")
    ap.add_argument("--to", type=Path, default=HERE / "records", help="where the records go")
    args = ap.parse_args(argv)
    if not args.src.is_dir():
        print(f"error: {args.src}: no such folder of runs", file=sys.stderr)
        return 2
    writes, kept, reproduced, conflicts = plan(args.src, args.to)
    if conflicts:
        print(
            f"error: {conflicts[0]} holds another run's record"
            + (f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else "")
            + "; archive this run under another name or remove that record first",
            file=sys.stderr,
        )
        return 2
    for target, data in writes:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    runs = len({t.parent for t, _ in writes})
    again = f" ({reproduced} of them reproduced by a rerun: same results)" if reproduced else ""
    print(f"archive_runs: {runs} run(s) recorded in {args.to}, {kept} already there{again}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
