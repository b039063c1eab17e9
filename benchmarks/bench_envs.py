"""Env throughput: blip-rl's native (ale-py C++) vector path vs the gymnasium fallback.

blip-rl's two backends are measured through ``blip_rl.atari.make_train_envs``, the objects
training uses (uint8 (n, 4, 84, 84), frame skip 4, no-op starts, episodic life, reward clipping,
true-score tracking), with the same game, the same number of envs and random actions drawn in
advance. Rounds of the paths alternate so that load from other processes hits them alike; the
median round is reported. Also measured: the stock gymnasium recipe (``gym.make_vec`` of the RGB
``ALE/<Game>-v5`` env with ``AtariPreprocessing`` and ``FrameStackObservation``), and the raw
``ale_py.vector_env.AtariVectorEnv``, to show what blip-rl's numpy layer costs on top of it.

    python benchmarks/bench_envs.py [--game pong] [--num-envs 8] [--steps 1500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import ale_py
import gymnasium
import numpy as np
from ale_py.vector_env import AtariVectorEnv
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

from blip_rl.atari import AtariConfig, make_train_envs, resolve_game


def _timed(env_step: Callable[[np.ndarray], object], actions: np.ndarray) -> tuple[float, float]:
    """(env steps per wall-clock second, env steps per CPU second of this process)."""
    start, cpu = time.perf_counter(), time.process_time()
    for a in actions:
        env_step(a)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return actions.size / wall, actions.size / cpu


def _cpu_jiffies() -> tuple[int, int]:
    """(idle, total) jiffies of the whole machine, to report how busy it was (Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0, 0
    return fields[3] + fields[4], sum(fields[:8])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", default="pong")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1500, help="vector steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    game = resolve_game(args.game)
    n = args.num_envs
    rng = np.random.default_rng(args.seed)
    actions = rng.integers(0, game.minimal_actions, size=(args.steps, n), dtype=np.int64)
    threads = min(n, len(os.sched_getaffinity(0)))

    configs = {
        "native (blip-rl, ale-py C++ vector env)": AtariConfig(backend="native"),
        "native, 1 thread (per-core efficiency)": AtariConfig(backend="native", num_threads=1),
        "gymnasium SyncVectorEnv + AtariPreprocessing": AtariConfig(
            backend="gymnasium", gym_vectorization="sync"
        ),
        "gymnasium AsyncVectorEnv + AtariPreprocessing": AtariConfig(
            backend="gymnasium", gym_vectorization="async"
        ),
    }
    envs: dict[str, Callable[[np.ndarray], object]] = {}
    closers = []
    for label, config in configs.items():
        env = make_train_envs(game, n, seed=args.seed, config=config)
        env.reset()
        env.step(actions[0])  # warm-up (subprocess start-up, caches)
        envs[label] = env.step
        closers.append(env.close)
    # The plain gymnasium recipe a user would write (RGB ALE v5 env, AtariPreprocessing,
    # FrameStackObservation, SyncVectorEnv), without blip-rl's layer.
    stock = gymnasium.make_vec(
        game.gym_id,
        num_envs=n,
        vectorization_mode="sync",
        frameskip=1,
        wrappers=[AtariPreprocessing, lambda e: FrameStackObservation(e, 4)],
    )
    stock.reset(seed=args.seed)
    stock.step(actions[0])
    envs["stock gymnasium make_vec + AtariPreprocessing"] = stock.step
    closers.append(stock.close)
    raw = AtariVectorEnv(
        game.rom,
        n,
        num_threads=threads,
        repeat_action_probability=0.25,
        autoreset_mode=AutoresetMode.SAME_STEP,
    )
    raw.reset(seed=args.seed)
    raw.step(actions[0])
    envs["raw ale_py AtariVectorEnv (reference)"] = raw.step
    closers.append(raw.close)

    results: dict[str, list[float]] = {label: [] for label in envs}
    cpu_rates: dict[str, list[float]] = {label: [] for label in envs}
    idle0, total0 = _cpu_jiffies()
    for _ in range(args.rounds):
        for label, step in envs.items():
            wall_rate, cpu_rate = _timed(step, actions)
            results[label].append(wall_rate)
            cpu_rates[label].append(cpu_rate)
    idle1, total1 = _cpu_jiffies()
    for close in closers:
        close()
    busy = 1 - (idle1 - idle0) / max(total1 - total0, 1)

    print(
        f"game={game.name} num_envs={n} steps/round={args.steps} rounds={args.rounds} "
        f"native threads={threads} cores={len(os.sched_getaffinity(0))}"
    )
    print(
        f"python {platform.python_version()}, ale-py {ale_py.__version__}, "
        f"gymnasium {gymnasium.__version__}, numpy {np.__version__}"
    )
    print(
        f"machine CPU busy during the run: {100 * busy:.0f}% of {os.cpu_count()} cores "
        "(this benchmark included; other processes compete for the cores if it is near 100%)"
    )
    median = {label: statistics.median(v) for label, v in results.items()}
    print(f"{'path':<46} {'steps/s':>8}  {'per CPU-s':>9}  rounds (steps/s)")
    for label, v in results.items():
        rounds = ", ".join(f"{x:.0f}" for x in v)
        per_cpu = (
            "n/a"  # the work happens in subprocesses, not counted by process_time
            if "Async" in label
            else f"{statistics.median(cpu_rates[label]):.0f}"
        )
        print(f"{label:<46} {median[label]:8.0f}  {per_cpu:>9}  {rounds}")
    native = median["native (blip-rl, ale-py C++ vector env)"]
    sync = median["gymnasium SyncVectorEnv + AtariPreprocessing"]
    best_gym = max(sync, median["gymnasium AsyncVectorEnv + AtariPreprocessing"])
    one = median["native, 1 thread (per-core efficiency)"]
    print(f"ratio native 1 thread / gymnasium sync (both one core): {one / sync:.2f}x")
    print(f"ratio native / gymnasium sync : {native / sync:.2f}x")
    print(f"ratio native / best gymnasium : {native / best_gym:.2f}x (target >= 2x)")
    cpu_native = statistics.median(cpu_rates["native (blip-rl, ale-py C++ vector env)"])
    cpu_sync = statistics.median(cpu_rates["gymnasium SyncVectorEnv + AtariPreprocessing"])
    print(f"ratio of steps per CPU-second, native / gymnasium sync: {cpu_native / cpu_sync:.2f}x")
    stock_rate = median["stock gymnasium make_vec + AtariPreprocessing"]
    print(f"ratio native / stock gymnasium recipe: {native / stock_rate:.2f}x")


if __name__ == "__main__":
    main()
