"""What running trials through ``python -m blip_rl.sweep`` (Ray) costs and gains on one machine.

Two identical trials (the same game sequence, agent and budget; seeds 1 and 2), built by
:func:`blip_rl.sweep_grid.expand` exactly as the sweep builds them, are run four ways:

* ``by hand, sequential, 2 threads``: ``python -m blip_rl.train`` twice, one after the other,
  each with 2 torch threads and 2 env threads (``OMP_NUM_THREADS`` and, where the train CLI
  has it, ``--torch-threads``; ``--env-threads``): the baseline.
* ``sweep, sequential, 2 threads``: the same two runs through the sweep with
  ``--cpus-per-run 2`` on 2 CPUs, so one at a time: the sweep's overhead over the baseline
  (validating the grid, starting Ray, the Ray tasks, the status and logs, the report).
* ``sweep, concurrent, 1 thread``: ``--cpus-per-run 1``: both at once, 1 thread each.
* ``by hand, concurrent, 1 thread``: both started together by hand, 1 thread each.
* ``by hand, sequential, 1 thread``: one after the other, 1 thread each: separates what
  running two trials at once gains from what one thread instead of two gains (on a loaded
  machine a 2-thread OpenMP process loses much to spin-waiting).

Wall time is measured around the whole command (for the sweep: from its start to its exit,
report included); the sweep's own event lines give when the first trial started and when the
last ended. The variants run in the order above, ``--repeats`` times; the machine's load average
is recorded around each. Results: ``benchmarks/results/bench_sweep.txt`` (``--out``).

    python benchmarks/bench_sweep.py                       # ~2x1 min trials
    python benchmarks/bench_sweep.py --steps-per-game 16384 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from blip_rl.sweep_grid import GridSpec, expand, parse_set, train_flags

RESULTS = Path(__file__).parent / "results"


def _settings(args: argparse.Namespace, threads: int) -> list[str]:
    out = [
        f"steps_per_game={args.steps_per_game}",
        "num_envs=8",
        "eval_every=0",
        f"eval_episodes={args.eval_episodes}",
        "max_episode_frames=4000",
        f"fisher_states={args.fisher_states}",
        f"env_threads={threads}",
    ]
    if "torch_threads" in train_flags():  # else OMP_NUM_THREADS alone sets them
        out.append(f"torch_threads={threads}")
    return out


def _trials(args: argparse.Namespace, threads: int) -> list[Any]:
    grid = GridSpec(
        games=[args.games],
        agents=[args.agent],
        seeds=[1, 2],
        settings=parse_set(_settings(args, threads)),
    )
    return expand(grid)


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def by_hand(args: argparse.Namespace, root: Path, threads: int, concurrent: bool) -> dict[str, Any]:
    """The two trials as plain train commands (one after the other, or both at once)."""
    runs = root / "hand"
    cmds = [
        [sys.executable, "-m", "blip_rl.train", *t.argv, "--runs-dir", str(runs), "--run-name",
         t.name, "--no-progress"]
        for t in _trials(args, threads)
    ]  # fmt: skip
    load = os.getloadavg()[0]
    start = time.perf_counter()
    if concurrent:
        procs = [subprocess.Popen(c, env=_env(threads), stdout=subprocess.DEVNULL) for c in cmds]
        codes = [p.wait() for p in procs]
    else:
        codes = [
            subprocess.run(c, env=_env(threads), stdout=subprocess.DEVNULL, check=False).returncode
            for c in cmds
        ]
    wall = time.perf_counter() - start
    shutil.rmtree(runs, ignore_errors=True)
    if any(codes):
        raise SystemExit(f"a train command failed: exit codes {codes}")
    return {"wall_s": wall, "load_before": load, "load_after": os.getloadavg()[0]}


def via_sweep(args: argparse.Namespace, root: Path, cpus_per_run: int) -> dict[str, Any]:
    """The two trials through python -m blip_rl.sweep on 2 CPUs."""
    settings = [x for s in _settings(args, cpus_per_run) for x in ("--set", s)]
    cmd = [
        sys.executable, "-m", "blip_rl.sweep", "--games", args.games, "--agents", args.agent,
        "--seeds", "1,2", *settings, "--num-cpus", "2", "--cpus-per-run", str(cpus_per_run),
        "--runs-dir", str(root / "sweep"), "--name", f"bench-c{cpus_per_run}", "--no-progress",
    ]  # fmt: skip
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    events: list[tuple[float, str]] = []
    for line in proc.stderr:
        events.append((time.perf_counter() - start, line.rstrip()))
    rc = proc.wait()
    wall = time.perf_counter() - start
    shutil.rmtree(root / "sweep", ignore_errors=True)
    if rc != 0:
        tail = "\n".join(text for _, text in events[-10:])
        raise SystemExit(f"the sweep failed (exit {rc}):\n{tail}")
    starts = [t for t, text in events if text.startswith("start ")]
    dones = [t for t, text in events if text.startswith("done ")]
    return {
        "wall_s": wall,
        "first_start_s": min(starts),
        "trials_s": max(dones) - min(starts),
        "after_last_s": wall - max(dones),
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--games", default="pong,breakout")
    p.add_argument("--agent", default="blip")
    p.add_argument("--steps-per-game", type=int, default=8192)
    p.add_argument("--eval-episodes", type=int, default=2)
    p.add_argument("--fisher-states", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS / "bench_sweep.txt"))
    args = p.parse_args()
    import ray
    import torch

    variants = {
        "by hand, sequential, 2 threads": lambda root: by_hand(args, root, 2, False),
        "sweep, sequential, 2 threads": lambda root: via_sweep(args, root, 2),
        "sweep, concurrent, 1 thread": lambda root: via_sweep(args, root, 1),
        "by hand, concurrent, 1 thread": lambda root: by_hand(args, root, 1, True),
        "by hand, sequential, 1 thread": lambda root: by_hand(args, root, 1, False),
    }
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        for r in range(args.repeats):
            for name, fn in variants.items():
                res = fn(Path(tmp))
                results[name].append(res)
                load = f"load {res['load_before']:.1f} -> {res['load_after']:.1f}"
                wall = f"{res['wall_s']:.1f} s"
                print(f"[{r + 1}/{args.repeats}] {name}: {wall} ({load})", flush=True)

    def med(name: str, key: str = "wall_s") -> float:
        return statistics.median(x[key] for x in results[name])

    hand_seq = med("by hand, sequential, 2 threads")
    sweep_seq = med("sweep, sequential, 2 threads")
    sweep_conc = med("sweep, concurrent, 1 thread")
    hand_conc = med("by hand, concurrent, 1 thread")
    hand_seq1 = med("by hand, sequential, 1 thread")
    fixed = med("sweep, sequential, 2 threads", "first_start_s") + med(
        "sweep, sequential, 2 threads", "after_last_s"
    )
    loads = [x[k] for v in results.values() for x in v for k in ("load_before", "load_after")]
    lines = [
        f"# bench_sweep: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"machine: {os.cpu_count()} cores, {platform.python_version()}, torch {torch.__version__}, "
        f"ray {ray.__version__}; load average during the runs {min(loads):.1f}-{max(loads):.1f}",
        f"trials: 2 x (--games {args.games} --agent {args.agent} --steps-per-game "
        f"{args.steps_per_game} --num-envs 8 --eval-episodes {args.eval_episodes} "
        f"--fisher-states {args.fisher_states}), seeds 1 and 2; median of {args.repeats}",
        "",
        "| variant | wall s |",
        "|---|---:|",
        *(f"| {name} | {med(name):.1f} |" for name in variants),
        "",
        f"sweep overhead (sequential, 2 threads): {sweep_seq - hand_seq:+.1f} s = "
        f"{100 * (sweep_seq - hand_seq) / hand_seq:+.1f}% of the by-hand wall time",
        f"  sweep start to its first trial (grid check + Ray start): "
        f"{med('sweep, sequential, 2 threads', 'first_start_s'):.1f} s; last trial's end to exit "
        f"(report + Ray shutdown): {med('sweep, sequential, 2 threads', 'after_last_s'):.1f} s",
        f"  fixed cost {fixed:.1f} s as a share of 2 sequential trials of 3 min each: "
        f"{100 * fixed / 360:.1f}%; of 5 min each: {100 * fixed / 600:.1f}%",
        f"speedup, 2 concurrent 1-thread trials over 2 sequential 2-thread trials: "
        f"{sweep_seq / sweep_conc:.2f}x through the sweep, {hand_seq / hand_conc:.2f}x by hand, "
        f"{hand_seq / sweep_conc:.2f}x sweep-concurrent over by-hand sequential",
        f"  of which one thread instead of two (by hand, sequential 2 / 1 thread): "
        f"{hand_seq / hand_seq1:.2f}x; two trials at once instead of one after the other "
        f"(1 thread each): {hand_seq1 / hand_conc:.2f}x by hand, {hand_seq1 / sweep_conc:.2f}x "
        "through the sweep",
    ]
    lines += ["", "every run:"]
    lines += [f"  {name}: {json.dumps(runs)}" for name, runs in results.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
