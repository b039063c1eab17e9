"""Run the forgetting evidence: agents x seeds on one game sequence, plus from-scratch runs.

One command runs (or continues) every run of the plan, one after the other, each in its own
folder; a run whose folder has a ``summary.json`` is skipped and a killed one is resumed, so the
command can be stopped and restarted at any time and later seeds can be added::

    OMP_NUM_THREADS=1 python benchmarks/forgetting/run_evidence.py \\
        --games freeway,krull --agents blip,finetune --seeds 1,2,3 --steps 100000

Sequence runs go to ``<runs-dir>/<game1>-<game2>.../<agent>-s<seed>-<steps>``; the from-scratch
single-game runs of every game after the first (the denominators of plasticity) go to
``<scratch-dir>/<game>-s<seed>-<steps>``, the folder layout of ``scan_games.py`` (so a scan run
with the same budget and seed is reused). Order: for each seed, every agent, then the branch
agents (``--branch-agents``: they start at game 2 from the first agent's
``after-game-1.pt``, so game 1 is trained once per seed and both methods share it), then that
seed's from-scratch runs, so that a partial plan still holds whole seeds. Every run uses the same
protocol: sticky actions off, the CLI's PPO defaults, ``--num-envs 8``, one emulator thread,
evaluation every ``--eval-every`` env steps with ``--eval-episodes`` episodes.

Two cores, one seed: a branch needs only its source's ``after-game-1.pt``, not the finished
source, so the command with ``--branches-only`` in a second process runs the branches while
the first, the same command without ``--branch-agents`` (else it would resume a branch still
training in the second), trains the source's later games. It runs no ``--agents`` run (not even a
killed one) and no from-scratch run, and waits, polling every ``--poll`` seconds, until each
branch's checkpoint exists. Then::

    python benchmarks/forgetting/analyze.py runs/forgetting/evidence/freeway-krull/* \\
        --scratch runs/forgetting/scan/krull-s* --out benchmarks/forgetting/report
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from scan_games import absolute_dir, protocol_flags  # same folder: the shared run protocol

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def train(
    folder: Path,
    games: list[str],
    agent: str,
    seed: int,
    steps: int,
    eval_every: int,
    eval_episodes: int,
    code: Path | None,
    extra: list[str],
) -> int:
    """Run (or resume, or skip when finished) one training run; returns the exit code."""
    if (folder / "summary.json").exists():
        print(f"[evidence] done already: {folder}", flush=True)
        return 0
    if folder.exists() and (folder / "checkpoints" / "latest.pt").exists():
        cmd = [sys.executable, "-m", "blip_rl.train", "--resume", str(folder), "--no-progress"]
    else:
        cmd = [
            sys.executable,
            "-m",
            "blip_rl.train",
            "--games",
            ",".join(games),
            "--agent",
            agent,
            *protocol_flags(seed, steps, eval_every, eval_episodes),
            "--runs-dir",
            str(folder.parent),
            "--run-name",
            folder.name,
            *extra,
        ]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    if code is not None:
        env["PYTHONPATH"] = str(code)
    print(f"[evidence] {time.strftime('%H:%M:%S')} {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, cwd=code or REPO, env=env)
    print(f"[evidence] exit {rc} after {time.perf_counter() - t0:.0f} s: {folder}", flush=True)
    return rc


def wait_for(path: Path, poll: float) -> None:
    """Block until ``path`` exists (a checkpoint that another process writes atomically)."""
    if not path.exists():
        print(f"[evidence] {time.strftime('%H:%M:%S')} waiting for {path}", flush=True)
    while not path.exists():
        time.sleep(poll)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--games", required=True, help="comma-separated sequence")
    ap.add_argument("--agents", default="blip,finetune")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--steps", type=int, default=200_000, help="env steps per game")
    ap.add_argument("--eval-every", type=int, default=50_000)
    ap.add_argument("--eval-episodes", type=int, default=16)
    ap.add_argument(
        "--runs-dir", type=absolute_dir, default=REPO / "runs" / "forgetting" / "evidence"
    )
    ap.add_argument(
        "--scratch-dir", type=absolute_dir, default=REPO / "runs" / "forgetting" / "scan"
    )
    ap.add_argument("--no-scratch", action="store_true", help="skip the from-scratch runs")
    ap.add_argument("--code", type=Path, default=None, help="import blip_rl from this copy")
    ap.add_argument(
        "--branch-agents",
        default="",
        help="agents that start from the first agent's after-game-1 checkpoint "
        "(--from-checkpoint): game 1 is trained once, by the first agent, per seed",
    )
    ap.add_argument(
        "--branch-flags",
        default="",
        help="more CLI flags for the branch runs, e.g. '--blip true' (fine-tuning on the BLIP "
        "network, so that the branch differs from the source only by the freezing)",
    )
    ap.add_argument(
        "--game1-from",
        default="",
        help="a run folder template with {seed}, e.g. "
        "'runs/forgetting/evidence/krull-boxing/blip-s{seed}-100000': every agent of that seed "
        "branches from its trained-game-1.pt (game 1 trained, not yet frozen) and runs its own "
        "end-of-game step, so one game 1 serves every agent and every sequence with that first "
        "game (the analysis groups these runs as '@branch'); a seed without it trains game 1 "
        "as usual",
    )
    ap.add_argument(
        "--branches-only",
        action="store_true",
        help="run only the --branch-agents runs, each once its source's after-game-1.pt "
        "exists: another process (the same command without --branch-agents) trains the "
        "sources and the from-scratch runs",
    )
    ap.add_argument(
        "--poll", type=float, default=30.0, help="seconds between checks for --branches-only"
    )
    ap.add_argument("--tag", default="", help="suffix of the branch runs' folder names")
    ap.add_argument(
        "--agent-tag",
        default="",
        help="suffix of the --agents runs' folder names, e.g. '-blipnet' for a whole "
        "fine-tuning run on the BLIP network (game 1 included) named like the branches",
    )
    ap.add_argument("extra", nargs="*", help="more CLI flags for every sequence run (after --)")
    args = ap.parse_args()
    games = [g.strip() for g in args.games.split(",") if g.strip()]
    if len(games) < 2:
        ap.error(f"--games {args.games!r}: a sequence needs at least two games")
    if args.branches_only and not args.branch_agents.strip():
        ap.error("--branches-only: name the branch runs with --branch-agents")
    seeds = [int(s) for s in args.seeds.split(",")]
    agents = [a.strip() for a in args.agents.split(",") if a.strip()]
    code = args.code.resolve() if args.code else None
    seq_dir = args.runs_dir / "-".join(games)
    failed = 0
    branches = [a.strip() for a in args.branch_agents.split(",") if a.strip()]
    for seed in seeds:
        source: Path | None = None
        shared = (
            Path(args.game1_from.format(seed=seed)).resolve() / "checkpoints" / "trained-game-1.pt"
            if args.game1_from
            else None
        )
        if shared is not None and not shared.exists():
            print(f"[evidence] no {shared}: seed {seed} trains its own game 1", flush=True)
            shared = None
        # (run folder, agent, extra flags, a checkpoint to wait for)
        plan: list[tuple[Path, str, list[str], Path | None]] = []
        for agent in agents:
            folder = seq_dir / f"{agent}{args.agent_tag}-s{seed}-{args.steps}"
            source = source or folder
            start = ["--from-checkpoint", str(shared)] if shared is not None else []
            if not args.branches_only:
                plan.append((folder, agent, [*start, *args.extra], None))
        for agent in branches:
            assert source is not None
            ckpt = shared or source / "checkpoints" / "after-game-1.pt"
            folder = seq_dir / f"{agent}{args.tag}-s{seed}-{args.steps}"
            flags = ["--from-checkpoint", str(ckpt), *args.branch_flags.split(), *args.extra]
            plan.append((folder, agent, flags, ckpt if args.branches_only else None))
        for folder, agent, flags, needs in plan:
            if needs is not None and not (folder / "summary.json").exists():
                wait_for(needs, args.poll)
            rc = train(
                folder,
                games,
                agent,
                seed,
                args.steps,
                args.eval_every,
                args.eval_episodes,
                code,
                flags,
            )
            failed += rc != 0
        if args.no_scratch or args.branches_only:
            continue
        for game in games[1:]:
            folder = args.scratch_dir / f"{game}-s{seed}-{args.steps}"
            failed += (
                train(folder, [game], "finetune", seed, args.steps, 0, args.eval_episodes, code, [])
                != 0
            )
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
