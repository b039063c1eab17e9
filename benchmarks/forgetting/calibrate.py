"""Calibrate BLIP's end-of-game step on a calibration sequence: one game 1 per seed, many freezes.

Per seed: one BLIP run of the sequence (``blip-s<seed>``); then, from its
``checkpoints/trained-game-1.pt`` (game 1 trained, not yet frozen), one branch per variant that
freezes game 1 with its own settings and trains the rest of the sequence
(``blip-<variant>-s<seed>``; the variant ``default`` keeps the shipped settings, so every
variant compares with a branch that played its Fisher states the same way); and fine-tuning
on the BLIP network from the run's ``after-game-1.pt`` (``finetune-blipnet-s<seed>``). Game 1 is
trained once per seed whatever the number of variants. Every run uses the forgetting runs'
protocol (``scan_games.protocol_flags``); finished runs are skipped and killed ones resumed, so
the command can be stopped and rerun, and seeds or variants added::

    OMP_NUM_THREADS=1 python benchmarks/forgetting/calibrate.py \\
        --games crazy_climber,road_runner --seeds 1,2 --steps 100000 --eval-episodes 8 \\
        --variant default= --variant fprior5e-14="--f-prior 5e-14" \\
        --variant fprior5e-16="--f-prior 5e-16" --variant fprior5e-20="--f-prior 5e-20" \\
        --variant vfc0="--value-fisher-coef 0"

A variant may name another agent: ``--variant lambda1.3="--agent ewc --ewc-lambda 1.3"`` runs
EWC's end-of-game step on the same game-1 training (folder ``ewc-lambda1.3-s<seed>``).

Then ``analyze.py`` over ``<runs-dir>/<games>/*`` (the branches form ``blip@branch (...)``
groups, one per setting).
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from run_evidence import REPO, train  # same folder: one run, resumed or skipped when done
from scan_games import absolute_dir  # same folder: run folders as absolute paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--games", required=True, help="the calibration sequence, comma-separated")
    ap.add_argument("--seeds", default="1,2,3", help="comma-separated seeds")
    ap.add_argument("--steps", type=int, default=200_000, help="env steps per game")
    ap.add_argument("--eval-every", type=int, default=0, help="0: after each game only")
    ap.add_argument("--eval-episodes", type=int, default=8)
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="a branch from trained-game-1.pt with these train flags (repeatable)",
    )
    ap.add_argument("--runs-dir", type=absolute_dir, default=REPO / "runs" / "forgetting" / "calib")
    ap.add_argument("--code", type=Path, default=None, help="import blip_rl from this copy")
    ap.add_argument(
        "--only",
        default="",
        metavar="NAMES",
        help="run only these of each seed's runs (comma-separated: blip, finetune or variant "
        "names), to split one plan over several workers; a branch whose checkpoint does not "
        "exist yet waits for it",
    )
    ap.add_argument(
        "extra", nargs="*", help="more CLI flags for every run, e.g. -- --precision fp32"
    )
    args = ap.parse_args()
    games = [g.strip() for g in args.games.split(",") if g.strip()]
    variants = [v.partition("=") for v in args.variant]
    if len(games) < 2 or not variants or any(not name for name, _, _ in variants):
        ap.error("need a sequence of at least two games and at least one --variant NAME=FLAGS")
    names = {"blip", "finetune", *(name for name, _, _ in variants)}
    only = {n.strip() for n in args.only.split(",") if n.strip()} or names
    if only - names:
        ap.error(f"--only: unknown run(s) {sorted(only - names)}; accepted: {sorted(names)}")
    code = args.code.resolve() if args.code else None
    agent_flag = argparse.ArgumentParser(add_help=False)
    agent_flag.add_argument("--agent", default="blip")
    root = args.runs_dir / "-".join(games)
    failed = 0
    for seed in (int(s) for s in args.seeds.split(",")):

        def run(
            key: str, name: str, agent: str, flags: list[str], wait: Path | None = None,
            seed: int = seed,
        ) -> None:  # fmt: skip
            nonlocal failed
            if key not in only:
                return
            while wait is not None and not wait.exists():  # another worker trains game 1
                time.sleep(30)
            folder = root / f"{name}-s{seed}"
            rc = train(
                folder, games, agent, seed, args.steps, args.eval_every, args.eval_episodes,
                code, [*flags, *args.extra],
            )  # fmt: skip
            failed += rc != 0

        source = root / f"blip-s{seed}" / "checkpoints"
        run("blip", "blip", "blip", [])
        for name, _, flags in variants:
            trained = source / "trained-game-1.pt"
            tokens = shlex.split(flags)
            # A variant may run another method's end-of-game step: "--agent ewc --ewc-lambda 1.3"
            agent = agent_flag.parse_known_args(tokens)[0].agent
            branch = ["--from-checkpoint", str(trained), *tokens]
            run(name, f"{agent}-{name}", agent, branch, trained)
        after = source / "after-game-1.pt"
        run(
            "finetune",
            "finetune-blipnet",
            "finetune",
            ["--from-checkpoint", str(after), "--blip", "true"],
            after,
        )
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
