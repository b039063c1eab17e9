"""Throughput of SB3 PPO with the BLIP CNN policy against SB3's stock ``CnnPolicy``.

Both models train on the same Atari game with the same PPO config, in one process, alternating
which goes first in each round (so load from other processes hits both alike). Steps/s counts
env steps through ``model.learn`` (rollout collection + PPO updates + the BLIP constraint after
every optimizer step). One warm-up rollout per model is not timed. Each round times one
``learn(steps)`` per model, the order alternating (AB, BA, AB, ...); the report gives the ratio of
total steps/s and the median of the per-round ratios (robust to a burst of load in one round).

    python benchmarks/bench_sb3.py                      # breakout, 8 envs, 8 x 1024 steps each
    python benchmarks/bench_sb3.py --steps 2048 --rounds 4 --game pong

Target: BLIP >= 85% of the stock steps/s.
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any

import stable_baselines3
import torch
from stable_baselines3 import PPO

from blip_rl.sb3 import BlipActorCriticCnnPolicy, make_sb3_atari_env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--game", default="breakout")
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--n-steps", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--n-epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1024, help="timed env steps per round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    config: dict[str, Any] = {
        "n_steps": args.n_steps,
        "batch_size": args.batch_size,
        "n_epochs": args.n_epochs,
        "learning_rate": 2.5e-4,
        "clip_range": 0.1,
        "ent_coef": 0.01,
        "seed": args.seed,
        "verbose": 0,
    }
    policies: dict[str, Any] = {
        "stock CnnPolicy": "CnnPolicy",
        "BLIP CNN": BlipActorCriticCnnPolicy,
    }
    models = {
        name: PPO(
            policy,
            make_sb3_atari_env(args.game, args.n_envs, seed=args.seed, sticky_actions=0.0),
            **config,
        )
        for name, policy in policies.items()
    }
    rollout = args.n_envs * args.n_steps
    for model in models.values():  # warm-up: one rollout and one update each, not timed
        model.learn(rollout)

    seconds = dict.fromkeys(models, 0.0)
    cpu_seconds = dict.fromkeys(models, 0.0)
    round_sps: dict[str, list[float]] = {name: [] for name in models}
    steps = dict.fromkeys(models, 0)
    names = list(models)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            model = models[name]
            start_steps = model.num_timesteps
            t0, c0 = time.perf_counter(), time.process_time()
            model.learn(args.steps, reset_num_timesteps=False)
            dt = time.perf_counter() - t0
            cpu_seconds[name] += time.process_time() - c0
            done = model.num_timesteps - start_steps
            seconds[name] += dt
            steps[name] += done
            round_sps[name].append(done / dt)
            print(f"round {r + 1}/{args.rounds}  {name:<16} {done / dt:8.1f} steps/s", flush=True)

    sps = {name: steps[name] / seconds[name] for name in names}
    ratio = sps["BLIP CNN"] / sps["stock CnnPolicy"]
    pair = sorted(b / a for a, b in zip(*round_sps.values(), strict=True))
    median = pair[len(pair) // 2] if len(pair) % 2 else 0.5 * sum(pair[len(pair) // 2 - 1 :][:2])
    print()
    print(
        f"SB3 {stable_baselines3.__version__}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.machine()}; {args.game}, "
        f"{args.n_envs} envs x {args.n_steps} steps, batch {args.batch_size}, "
        f"{args.n_epochs} epochs; {args.rounds} rounds x {args.steps} steps per policy"
    )
    print("| policy | env steps | wall s | steps/s | CPU s | steps per CPU s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        print(
            f"| {name} | {steps[name]} | {seconds[name]:.1f} | {sps[name]:.0f} "
            f"| {cpu_seconds[name]:.1f} | {steps[name] / cpu_seconds[name]:.0f} |"
        )
    print(f"\nratio BLIP / stock = {ratio:.3f} (total steps / total seconds; target >= 0.85)")
    print(f"median of the per-round ratios = {median:.3f}")
    cpu_ratio = (steps["BLIP CNN"] / cpu_seconds["BLIP CNN"]) / (
        steps["stock CnnPolicy"] / cpu_seconds["stock CnnPolicy"]
    )
    print(f"ratio of steps per CPU second (less sensitive to other load) = {cpu_ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
