"""Command line: ``python -m blip_rl.compare``: BLIP against fine-tuning, from one shared game 1.

What ``make demo`` runs. Nothing is frozen while game 1 trains, so game 1 is trained once, by
the BLIP agent; after it, the BLIP run goes on (freezing bits after each game) and a
fine-tuning run branches from the same after-game-1 state (``--from-checkpoint``; same weights,
no protection). Both see the same games, seed, budgets and evaluations. At the end both
forgetting matrices are printed side by side with the retention of each game: the fraction of
its learned gain (score after it was trained minus the random agent's) still there at the end.
Any other flag of ``blip_rl.train`` (``--num-steps``, ``--learning-rate``, ...) is given to both
runs.

The runs are ordinary run folders under ``runs/<name>/`` (``blip/`` and ``finetune/``), with a
comparison report in ``runs/<name>/report/``. Run the same command again after a kill: a
finished run is kept, an unfinished one resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from pathlib import Path
from typing import Any

from blip_rl.errors import ArgumentParser, UsageError, add_switches, cli
from blip_rl.files import read_json
from blip_rl.plots import matrix_markdown

_PASS = (
    "games",
    "seed",
    "steps_per_game",
    "eval_every",
    "eval_episodes",
    "num_envs",
    "checkpoint_every",
    "device",
)
"""Flags passed to both runs (they must be the same for the branch)."""


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m blip_rl.compare",
        description="Train BLIP on a game sequence and fine-tuning from BLIP's state after "
        "game 1; print both forgetting matrices and the retention of each game.",
    )
    parser.add_argument("--games", default=None, help="as for blip_rl.train (default @demo)")
    for name in _PASS[1:]:
        parser.add_argument("--" + name.replace("_", "-"), default=None, metavar="VALUE")
    parser.add_argument("--agent", default="blip", help="the protected agent (default blip)")
    parser.add_argument(
        "--baseline", default="finetune", help="the branch's agent (default finetune)"
    )
    parser.add_argument("--name", default=None, help="folder under --runs-dir (default: dated)")
    parser.add_argument("--runs-dir", default="runs", help="parent folder (default runs)")
    add_switches(parser, no_progress="no progress bars")
    return parser


def _train(argv: list[str]) -> None:
    from blip_rl.train import main as train_main

    code = train_main(argv)
    if code != 0:
        raise SystemExit(code)


def _check(argv: list[str]) -> int:
    """Resolve ``argv`` as ``blip_rl.train --dry-run`` does, printing nothing but its one error
    line; returns its exit code. Both runs are checked before either trains or writes."""
    from blip_rl.train import main as train_main

    with contextlib.redirect_stdout(io.StringIO()):
        return train_main([*argv, "--dry-run"])


def _applicable(argv: list[str], agent: str) -> list[str]:
    """``argv`` without the method flags (and their values) that ``agent``'s method does not
    have, e.g. ``--fisher-states 96`` for fine-tuning."""
    from blip_rl.config import load_agent
    from blip_rl.train import build_parser as train_parser

    method = load_agent(agent).method
    table = train_parser()[1]
    foreign = {f.flag for f in table.values() if f.methods and method not in f.methods}
    out, i = [], 0
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if name in foreign:
            i += 1 if "=" in argv[i] else 2
            continue
        out.append(argv[i])
        i += 1
    return out


def _run(folder: Path, argv: list[str]) -> dict[str, Any]:
    """Train into ``folder`` (or resume it, or keep it when finished); returns its summary."""
    if (folder / "summary.json").is_file():
        print(f"{folder}: finished earlier, kept", file=sys.stderr)
    elif (folder / "config.json").is_file():
        _train(["--resume", str(folder), *(a for a in argv if a == "--no-progress")])
    else:
        _train([*argv, "--runs-dir", str(folder.parent), "--run-name", folder.name])
    return read_json(folder / "summary.json")


def format_comparison(summaries: dict[str, dict[str, Any]]) -> str:
    """Each agent's forgetting matrix, then one line per game: its retention under each agent
    ("not learned" when its gain was not above noise)."""
    out: list[str] = []
    for agent, summary in summaries.items():
        m = summary["metrics"]
        out += [f"{agent}: return on each game (columns) after training each game (rows)"]
        out += [matrix_markdown(m["matrix"], m["games"]), ""]
    games = next(iter(summaries.values()))["metrics"]["games"]
    out.append("retention of what each game had learned (1 = all kept, 0 = back to random):")
    for j, game in enumerate(games[:-1]):
        cells = []
        for agent, summary in summaries.items():
            value = summary["metrics"].get("retention", {}).get(game)
            cells.append(f"{agent} {'not learned' if value is None else f'{value:.0%}'}")
        out.append(f"  {j + 1}. {game}: " + ", ".join(cells))
    return "\n".join(out)


@cli
def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 for bad input)."""
    args, extra = build_parser().parse_known_args(argv)
    if args.agent == args.baseline:
        raise UsageError(f"--agent and --baseline are both {args.agent!r}; choose two agents")
    common: list[str] = []
    for name in _PASS:
        value = getattr(args, name)
        if value is not None:
            common += ["--" + name.replace("_", "-"), value]
    if args.no_progress:
        common.append("--no-progress")
    common += extra  # any other training flag, given to both runs (checked by blip_rl.train)
    root = Path(args.runs_dir) / (args.name or f"compare__{time.strftime('%Y%m%d-%H%M%S')}")
    branch = _applicable([a for a in common if a not in ("--games", args.games)], args.baseline)
    argv_of = {a: [*_applicable(common, a), "--agent", a] for a in (args.agent, args.baseline)}
    for run_argv in argv_of.values():
        code = _check(run_argv)
        if code != 0:
            return code
    protected = _run(root / args.agent, argv_of[args.agent])
    source = root / args.agent / "checkpoints" / "after-game-1.pt"
    baseline = _run(
        root / args.baseline,
        [*branch, "--agent", args.baseline, "--from-checkpoint", str(source)],
    )
    from blip_rl.report import main as report_main

    report_main([str(root / args.agent), str(root / args.baseline), "--out", str(root / "report")])
    print()
    print(format_comparison({args.agent: protected, args.baseline: baseline}))
    print(f"\nrun folders: {root}/{{{args.agent},{args.baseline}}}; report: {root / 'report'}")
    print(f"see the curves: tensorboard --logdir {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
