"""Game scan: which Atari games does plain PPO learn within 100k-300k env steps on this protocol?

Runs one single-game training run per game with the plain network (``--agent finetune``,
sticky actions off as in Gymnasium's ``v4`` envs, the CLI's other defaults), one after the other,
in its own run folder ``<runs-dir>/<game>-s<seed>-<steps>``. A game whose run folder already has
a ``summary.json`` is not trained again, so the scan can be stopped and restarted at any time,
and a longer scan (e.g. ``--steps 300000``) can be added later. After each game the table
``game_scan.md`` is rewritten from every run folder found under ``--runs-dir``.

The table reports, per game, the evaluation return at 100k and at 300k env steps (or at the
steps ``--milestones`` names; mean over the evaluation episodes, with its standard error),
the published random and human scores (``blip_rl.atari.reference_scores``), the
human-normalized score and a verdict:

* ``learned``: the return is above random by more than 2 standard errors and by at least 10% of
  the random-to-human gap (the bar for a game on which forgetting can be measured);
* ``weak``: above random by more than 2 standard errors, but by less than 10% of the gap;
* ``no``: within 2 standard errors of random (or below).

With ``--agent blip`` the same runs screen first games for a sequence: the table then adds
the mean number of bits the BLIP freeze locked per parameter after the game (``summary.json``'s
``after_game[0].mean_bits``, the freeze a sequence would make after this game as its first) and
whether the game is a **small-Fisher first game**: learned at the last milestone with under
``SMALL_FREEZE_BITS`` (3) mean bits (``benchmarks/forgetting/README.md``, "What is missing",
item 2).

Usage (one core, one thread)::

    OMP_NUM_THREADS=1 python benchmarks/forgetting/scan_games.py \\
        --games boxing,krull,road_runner --steps 100000 --seed 1

    python benchmarks/forgetting/scan_games.py --table-only   # rebuild the table

    # the small-Fisher screen: BLIP runs, fp32, their own folder and table
    OMP_NUM_THREADS=1 python benchmarks/forgetting/scan_games.py --agent blip --precision fp32 \\
        --games double_dunk --steps 200000 --eval-episodes 16 --milestones 100000,200000 \\
        --runs-dir runs/forgetting/screen-small --out benchmarks/forgetting/screen_small.md

On a working tree that others edit while the scan runs, train from a frozen copy of the code:
``git archive HEAD | tar -x -C /tmp/blip_snap`` and ``--code /tmp/blip_snap`` (every training
run and the table then import ``blip_rl`` from there).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_GAMES = (
    "boxing,krull,road_runner,kangaroo,crazy_climber,atlantis,freeway,enduro,breakout,pong"
)
#: Fraction of the random-to-human gap a game must gain to count as learned.
LEARNED_FRACTION = 0.10
#: The train CLI's ``--precision`` (``PPOConfig.precision``): commands name only another one.
DEFAULT_PRECISION = "bf16"
#: A learned first game whose freeze locks fewer mean bits than this has a small Fisher.
SMALL_FREEZE_BITS = 3.0


@dataclass
class Point:
    """One evaluation of one run: mean return, standard error, number of episodes."""

    game: str
    seed: int
    run_steps: int
    step: int
    mean: float
    sem: float
    episodes: int
    wall_s: float | None
    agent: str = "finetune"
    bits: float | None = None  # mean bits frozen after the game (BLIP runs only)


def absolute_dir(path: str) -> Path:
    """An argparse type for run folders: absolute, because the runs train with the code copy as
    their working directory (``--code``), and a relative folder must name the same place for
    them and for the script that checks on them."""
    return Path(path).resolve()


def protocol_flags(seed: int, steps: int, eval_every: int, eval_episodes: int) -> list[str]:
    """The train flags every forgetting run here shares: sticky actions off, 8 envs, one
    emulator thread, the CPU, no progress bar (the scan and the evidence runs use them alike)."""
    return [
        "--sticky-actions=0",
        f"--steps-per-game={steps}",
        f"--seed={seed}",
        "--num-envs=8",
        f"--eval-every={eval_every}",
        f"--eval-episodes={eval_episodes}",
        "--env-threads=1",
        "--device=cpu",
        "--no-progress",
    ]


def run_folder(runs_dir: Path, game: str, seed: int, steps: int) -> Path:
    """The run folder of one scan run."""
    return runs_dir / f"{game}-s{seed}-{steps}"


def train_one(
    game: str,
    seed: int,
    steps: int,
    runs_dir: Path,
    eval_episodes: int,
    eval_every: int,
    code: Path | None = None,
    agent: str = "finetune",
    precision: str | None = None,
) -> int:
    """Train ``game`` alone with ``agent`` (the plain network by default); returns the CLI's
    exit code."""
    folder = run_folder(runs_dir, game, seed, steps)
    config = folder / "config.json"
    if config.exists() and (other := json.loads(config.read_text()).get("agent", agent)) != agent:
        print(
            f"scan_games.py: error: {folder} holds a run of --agent {other}, not {agent}; "
            "give this screen its own --runs-dir",
            file=sys.stderr,
        )
        return 2
    if (folder / "summary.json").exists():
        return 0
    cmd = [
        sys.executable,
        "-m",
        "blip_rl.train",
        "--games",
        game,
        "--agent",
        agent,
        *protocol_flags(seed, steps, eval_every, eval_episodes),
        *(["--precision", precision] if precision else []),
        "--runs-dir",
        str(runs_dir),
        "--run-name",
        folder.name,
    ]
    if folder.exists():  # killed earlier: continue it
        cmd = [*cmd[:3], "--resume", str(folder), "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    if code is not None:
        env["PYTHONPATH"] = str(code)
    print(f"[scan] {time.strftime('%H:%M:%S')} {' '.join(cmd)}", flush=True)
    return subprocess.call(cmd, cwd=code or REPO, env=env)


def episode_returns(folder: Path) -> dict[int, list[float]]:
    """Per-evaluation episode returns (keyed by global step) from the run's last checkpoint.

    ``evals.csv`` holds only the mean; the episode returns (for the standard error) are kept in
    the checkpoint's evaluation history.
    """
    ckpts = sorted((folder / "checkpoints").glob("*.pt"), key=lambda p: p.stat().st_mtime)
    if not ckpts:
        return {}
    import torch

    state = torch.load(ckpts[-1], map_location="cpu", weights_only=False)
    out: dict[int, list[float]] = {}
    for e in state.get("evals", []):
        if e.get("returns"):
            out[int(e["global_step"])] = [float(r) for r in e["returns"]]
    return out


def read_points(runs_dir: Path) -> list[Point]:
    """Every finished evaluation of every single-game scan run under ``runs_dir``."""
    points: list[Point] = []
    for summary_path in sorted(runs_dir.glob("*/summary.json")):
        folder = summary_path.parent
        summary = json.loads(summary_path.read_text())
        if len(summary["games"]) != 1:
            continue
        game = summary["games"][0]
        after = (summary.get("after_game") or [{}])[0]
        bits = float(after["mean_bits"]) if "mean_bits" in after else None
        with open(folder / "evals.csv") as f:
            rows = list(csv.DictReader(f))
        # evals.csv has each evaluation's standard error; older runs keep it in a checkpoint
        returns = {} if rows and rows[0].get("stderr") is not None else episode_returns(folder)
        for row in rows:
            step = int(row["global_step"])
            mean = float(row["return"])
            if step in returns:
                n, sem = len(returns[step]), _sem(returns[step])
            else:
                n = int(row.get("episodes") or 0)
                sem = float(row["stderr"]) if row.get("stderr") else math.nan
            points.append(
                Point(
                    game=game,
                    seed=int(summary["seed"]),
                    run_steps=int(summary["steps_per_game"]),
                    step=step,
                    mean=mean,
                    sem=sem,
                    episodes=n,
                    wall_s=float(summary.get("wall_time_s", math.nan)),
                    agent=str(summary.get("agent", "finetune")),
                    bits=bits,
                )
            )
    return points


def _sem(values: list[float]) -> float:
    if len(values) < 2:
        return math.nan
    m = sum(values) / len(values)
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    return math.sqrt(var / len(values))


def verdict(mean: float, sem: float, ref: tuple[float, float] | None) -> str:
    """``learned``, ``weak`` or ``no`` (see the module docstring); ``?`` without references."""
    if ref is None:
        return "?"
    rnd, human = ref
    margin = 2 * (sem if not math.isnan(sem) else 0.0)
    if mean - rnd <= margin:
        return "no"
    return "learned" if (mean - rnd) >= LEARNED_FRACTION * (human - rnd) else "weak"


def at_milestone(evals: dict[int, Point], milestone: int) -> Point | None:
    """The evaluation nearest to ``milestone`` env steps, if within 5% of it (training runs in
    whole rollouts, so a 100k-step game ends at e.g. 100352)."""
    near = [s for s in evals if abs(s - milestone) <= 0.05 * milestone]
    return evals[min(near, key=lambda s: abs(s - milestone))] if near else None


#: The table's default columns (env steps); ``--milestones`` chooses others.
MILESTONES = (100_000, 300_000)


def _k(steps: int) -> str:
    return f"{steps // 1000}k" if steps % 1000 == 0 else str(steps)


def table(points: list[Point], milestones: tuple[int, ...] = MILESTONES) -> str:
    """The markdown table: one row per game, agent and seed, one column group per milestone (env
    steps; by default 100k and 300k). Runs with a freeze (BLIP) add the agent, the mean bits
    frozen after the game and the small-Fisher verdict (see the module docstring)."""
    from blip_rl.atari import reference_scores

    freeze = any(p.bits is not None for p in points)
    show_agent = any(p.agent != "finetune" for p in points)
    by_key: dict[tuple[str, str, int], dict[int, Point]] = {}
    for p in points:
        cur = by_key.setdefault((p.game, p.agent, p.seed), {})
        # at equal step, prefer the shorter run (at a milestone, the run with that budget, whose
        # learning rate has annealed, over an intermediate point of a longer run), then the
        # evaluation with more episodes
        old = cur.get(p.step)
        if old is None or (-p.run_steps, p.episodes) > (-old.run_steps, old.episodes):
            cur[p.step] = p

    def cell(p: Point | None, ref: tuple[float, float] | None) -> tuple[str, str, str]:
        if p is None:
            return "-", "-", "-"
        score = f"{p.mean:.1f} ± {p.sem:.1f}" if not math.isnan(p.sem) else f"{p.mean:.1f}"
        norm = "-" if ref is None else f"{(p.mean - ref[0]) / (ref[1] - ref[0]):.2f}"
        return score, norm, verdict(p.mean, p.sem, ref)

    extra = (
        f"mean bits after the game | learned, under {SMALL_FREEZE_BITS:g} bits? | "
        if freeze
        else ""
    )
    lines = [
        f"| game | {'agent | ' if show_agent else ''}seed | random | human | "
        + "".join(f"return @{_k(m)} | norm | learned? | " for m in milestones)
        + extra
        + "episodes |",
        "|" + "---|" * (5 + 3 * len(milestones) + show_agent + 2 * freeze),
    ]
    for (game, agent, seed), evals in sorted(by_key.items()):
        ref = reference_scores(game)
        rnd, hum = ("-", "-") if ref is None else (f"{ref[0]:g}", f"{ref[1]:g}")
        at = [at_milestone(evals, m) for m in milestones]
        if all(p is None for p in at):
            continue  # e.g. a 500k from-scratch run of the evidence, evaluated only at its end
        eps = sorted({p.episodes for p in evals.values()})
        cells = [cell(p, ref) for p in at]
        small = ""
        if freeze:  # the freeze of the run that gives the last milestone, judged with its verdict
            bits = at[-1].bits if at[-1] is not None else None
            ok = bits is not None and cells[-1][2] == "learned" and bits < SMALL_FREEZE_BITS
            small = "- | - | " if bits is None else f"{bits:.2f} | {'yes' if ok else 'no'} | "
        lines.append(
            f"| {game} | {f'{agent} | ' if show_agent else ''}{seed} | {rnd} | {hum} | "
            + "".join(" | ".join(c) + " | " for c in cells)
            + small
            + f"{','.join(map(str, eps))} |"
        )
    return "\n".join(lines)


def default_eval_every(steps: int) -> int:
    """The scan's evaluation interval when ``--eval-every`` is not given."""
    return 100_000 if steps > 100_000 else 0


def scan_command(
    games: list[str],
    steps: int,
    seed: int,
    episodes: int,
    every: int,
    agent: str = "finetune",
    precision: str | None = None,
) -> str:
    """The command line that runs (or resumes) these scan runs."""
    flag = "" if every == default_eval_every(steps) else f" --eval-every {every}"
    if agent != "finetune":
        flag += f" --agent {agent}"
    if precision and precision != DEFAULT_PRECISION:
        flag += f" --precision {precision}"
    return (
        "OMP_NUM_THREADS=1 python benchmarks/forgetting/scan_games.py "
        f"--games {','.join(games)} --steps {steps} --seed {seed} --eval-episodes {episodes}" + flag
    )


def commands(runs_dir: Path) -> list[str]:
    """One scan command per (budget, seed, episodes, interval) among the finished single-game
    runs under ``runs_dir``, games in the order they were started: together they reproduce the
    table (a from-scratch run of ``run_evidence.py`` is the same run as this command's)."""
    groups: dict[tuple[int, int, int, int, str, str | None], list[tuple[float, str]]] = {}
    for summary_path in runs_dir.glob("*/summary.json"):
        config_path = summary_path.parent / "config.json"
        if not config_path.exists():
            continue
        c = json.loads(config_path.read_text())
        if len(c["games"]) != 1:
            continue
        key = (
            int(c["steps_per_game"]),
            int(c["seed"]),
            int(c["eval_episodes"]),
            int(c["eval_every"]),
            str(c.get("agent", "finetune")),
            (c.get("ppo") or {}).get("precision"),
        )
        groups.setdefault(key, []).append((config_path.stat().st_mtime, c["games"][0]))
    return [
        scan_command([g for _, g in sorted(started)], *key)
        for key, started in sorted(groups.items(), key=lambda kv: (*kv[0][:5], kv[0][5] or ""))
    ]


def write_report(runs_dir: Path, out: Path, milestones: tuple[int, ...] = MILESTONES) -> None:
    """Rewrite ``out`` (markdown) from every scan run under ``runs_dir``."""
    points = read_points(runs_dir)
    more = ""  # a table with other columns names them (and itself) in its commands
    if milestones != MILESTONES:
        where = out.resolve()
        shown = where.relative_to(REPO) if where.is_relative_to(REPO) else where
        more = f" --milestones {','.join(map(str, milestones))} --out {shown}"
    command_lines = "\n".join(f"    {c}{more}" for c in commands(runs_dir))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    ran: dict[str, int] = {}  # bf16 falls back to fp32 on a CPU without it; older runs: unknown
    for path in runs_dir.glob("*/summary.json"):
        key = json.loads(path.read_text()).get("precision_used", "not recorded")
        ran[key] = ran.get(key, 0) + 1
    precision = ", ".join(f"{k} in {n} run(s)" for k, n in sorted(ran.items()))
    agents = sorted({p.agent for p in points})
    title = "Game scan: which games plain PPO learns within 100k-300k env steps"
    network = "plain network (`--agent finetune`)"
    if agents and agents != ["finetune"]:  # the table's condition for its agent column
        title = "Game screen: which games PPO learns, and how much the BLIP freeze locks after each"
        network = f"the agent in each row's `agent` column (`--agent`: {', '.join(agents)})"
    freeze = ""
    if any(p.bits is not None for p in points):  # the table's condition for its bits columns
        freeze = f"""
`mean bits after the game`: the mean number of leading bits the BLIP freeze locked per
parameter after the game (`summary.json`'s `after_game[0].mean_bits`), the freeze a sequence
would make after this game as its first. `learned, under {SMALL_FREEZE_BITS:g} bits?`: **yes** when
the game is learned at the last column's milestone and its freeze locks under
{SMALL_FREEZE_BITS:g} mean bits: a small-Fisher first game (`benchmarks/forgetting/README.md`,
"What is missing", item 2).
"""
    text = f"""# {title}

Generated by `benchmarks/forgetting/scan_games.py` (rewritten after each game). Protocol: one
game alone, {network}, sticky actions off (`--sticky-actions 0`, as
Gymnasium's `v4` envs and SB3's Atari benchmarks), 8 envs, the CLI's PPO defaults, one run per
game and seed, evaluation on whole games (all lives, sampled actions) with the episode count
in the last column. Score: mean ± standard error over the evaluation episodes. `norm`:
(score - random) / (human - random) with the published random and human scores
(`blip_rl/presets/envs/scores.toml`).

`learned?`: **learned** when the score is above random by more than 2 standard errors and by at
least {LEARNED_FRACTION:.0%} of the random-to-human gap; **weak** when above random by more than
2 standard errors but by less; **no** otherwise. One or two seeds per game: a screening, not a
result (seeds decide a lot at these budgets, see issue 9).
{freeze}
Machine: {platform.machine()} {platform.system()}, {os.cpu_count()} cores shared with other work
(one torch thread, one emulator thread). Commit at table time: `{commit}`. Precision that
ran (`summary.json`): {precision}.
Commands (one per budget, seed, episode count and interval; each skips the finished runs; a
run with no evaluation near {" or ".join(_k(m) for m in milestones)} steps is listed here but has
no row in the table):

{command_lines}

{table(points, milestones)}
"""
    out.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--games", default=DEFAULT_GAMES, help="comma-separated games, in order")
    ap.add_argument("--steps", type=int, default=100_000, help="env steps per game")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--eval-episodes", type=int, default=8)
    ap.add_argument(
        "--eval-every",
        type=int,
        default=None,
        help="evaluate every N env steps (default: 100000 if the run is longer, else at the end)",
    )
    ap.add_argument("--runs-dir", type=absolute_dir, default=REPO / "runs" / "forgetting" / "scan")
    ap.add_argument("--out", type=Path, default=HERE / "game_scan.md")
    ap.add_argument("--table-only", action="store_true", help="only rebuild the table")
    ap.add_argument(
        "--milestones",
        default=",".join(map(str, MILESTONES)),
        help="the table's columns: comma-separated env steps (default: 100000,300000)",
    )
    ap.add_argument(
        "--code", type=Path, default=None, help="import blip_rl from this copy of the repository"
    )
    ap.add_argument(
        "--agent",
        default="finetune",
        help="agent preset of every run (default: finetune, the plain network; blip adds the "
        "freeze's bits to the table)",
    )
    ap.add_argument(
        "--precision", default=None, help="--precision of every run (default: the CLI's)"
    )
    args = ap.parse_args()
    if args.code is not None:
        args.code = args.code.resolve()
        sys.path.insert(0, str(args.code))
    try:
        milestones = tuple(int(m) for m in args.milestones.split(","))
        if not milestones or min(milestones) <= 0:
            raise ValueError
    except ValueError:
        ap.exit(
            2,
            f"scan_games.py: error: --milestones {args.milestones!r}: expected positive "
            "env-step counts separated by commas, e.g. 100000,200000\n",
        )
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    if args.table_only:
        write_report(args.runs_dir, args.out, milestones)
        return
    every = default_eval_every(args.steps) if args.eval_every is None else args.eval_every
    for game in [g.strip() for g in args.games.split(",") if g.strip()]:
        t0 = time.perf_counter()
        rc = train_one(
            game,
            args.seed,
            args.steps,
            args.runs_dir,
            args.eval_episodes,
            every,
            args.code,
            agent=args.agent,
            precision=args.precision,
        )
        print(f"[scan] {game}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        try:
            write_report(args.runs_dir, args.out, milestones)
        except Exception as exc:  # a broken table must not stop the scan
            print(f"[scan] table not written: {type(exc).__name__}: {exc}", flush=True)


if __name__ == "__main__":
    main()
