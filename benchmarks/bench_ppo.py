"""Throughput of blip-rl's PPO against stable-baselines3's PPO, in one process.

Variants (same game, 8 envs x 128 steps, 4 epochs of 4 minibatches of 256, Nature CNN):

* ``ours BLIP bf16``  - :class:`blip_rl.ppo.PPO`, BLIP net, constraint attached, bf16 autocast
* ``ours plain bf16`` - the same with ``NetConfig(blip=False)`` (the fine-tuning network)
* ``ours BLIP fp32``  - BLIP net in float32
* ``SB3 CnnPolicy``   - ``stable_baselines3.PPO("CnnPolicy")`` on SB3's own Atari envs
  (``make_atari_env`` + ``VecFrameStack(4)``), the way an SB3 user trains Atari

Each variant runs one untimed warm-up iteration, then ``--rounds`` rounds of ``--steps`` env
steps; the order of the variants rotates every round so load from other processes hits all of
them alike. Steps/s counts env steps through rollout collection and PPO update (and the BLIP
constraint after every optimizer step); steps per CPU second (process CPU time, emulator
threads included) is less sensitive to other processes' load. All variants use the same
torch thread count (``--threads``, default 1: on a small shared machine a second OpenMP thread
spins against the emulator threads and other processes; measured here it made PPO 5-20x slower
under load).

    python benchmarks/bench_ppo.py                         # breakout, 3 rounds x 4096 steps
    python benchmarks/bench_ppo.py --game pong --rounds 5 --json benchmarks/results/bench.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ale_py
import gymnasium as gym
import numpy as np
import stable_baselines3
import torch

import blip_rl
from blip_rl.atari import AtariConfig, make_train_envs, resolve_game
from blip_rl.nets import ActorCritic, NetConfig
from blip_rl.ppo import PPO, PPOConfig, bf16_supported


class Ours:
    """blip-rl PPO; ``run(steps)`` returns (collect seconds, update seconds)."""

    def __init__(self, game: str, blip: bool, precision: str, seed: int) -> None:
        cfg = PPOConfig(precision=precision)  # type: ignore[arg-type]
        self.envs = make_train_envs(game, cfg.num_envs, seed, AtariConfig(sticky_actions=0.0))
        torch.manual_seed(seed)
        self.net = ActorCritic([self.envs.num_actions], NetConfig(blip=blip))
        self.ppo = PPO(self.net, self.envs, cfg, head=0, total_steps=10_000_000)
        if blip:
            blip_rl.attach(self.ppo.optimizer, self.net)
        self.ppo.reset_envs(seed=seed)

    def run(self, steps: int) -> tuple[float, float]:
        collect = update = 0.0
        for _ in range(max(1, steps // self.ppo.config.batch_size)):
            t0 = time.perf_counter()
            self.ppo.collect()
            t1 = time.perf_counter()
            self.ppo.update()
            t2 = time.perf_counter()
            collect += t1 - t0
            update += t2 - t1
        return collect, update

    def close(self) -> None:
        self.envs.close()


class SB3:
    """stable-baselines3 PPO with CnnPolicy; ``run`` returns (total seconds, 0)."""

    def __init__(self, game: str, seed: int) -> None:
        from stable_baselines3 import PPO as SB3PPO
        from stable_baselines3.common.env_util import make_atari_env
        from stable_baselines3.common.vec_env import VecFrameStack

        from blip_rl.sb3 import ATARI_PPO_KWARGS

        gym.register_envs(ale_py)
        env_id = f"{resolve_game(game).display_name}NoFrameskip-v4"
        self.env = VecFrameStack(make_atari_env(env_id, n_envs=8, seed=seed), n_stack=4)
        self.model = SB3PPO(
            "CnnPolicy",
            self.env,
            **ATARI_PPO_KWARGS,
            batch_size=256,
            seed=seed,
            device="cpu",
            verbose=0,
        )

    def run(self, steps: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        self.model.learn(total_timesteps=steps, reset_num_timesteps=False)
        return time.perf_counter() - t0, 0.0

    def close(self) -> None:
        self.env.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--game", default="breakout")
    ap.add_argument("--steps", type=int, default=4096, help="env steps per variant per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every variant")
    ap.add_argument("--skip-sb3", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    makers: dict[str, Callable[[], Any]] = {
        "ours BLIP bf16": lambda: Ours(args.game, True, "bf16", args.seed),
        "ours plain bf16": lambda: Ours(args.game, False, "bf16", args.seed),
        "ours BLIP fp32": lambda: Ours(args.game, True, "fp32", args.seed),
    }
    if not args.skip_sb3:
        makers["SB3 CnnPolicy"] = lambda: SB3(args.game, args.seed)
    variants = {name: make() for name, make in makers.items()}
    for v in variants.values():  # warm-up: one untimed iteration each
        v.run(1024)

    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    cpu: dict[str, float] = {name: 0.0 for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            c0 = time.process_time()  # all threads of this process, emulator threads included
            times[name].append(variants[name].run(args.steps))
            cpu[name] += time.process_time() - c0
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    for v in variants.values():
        v.close()

    print(
        f"\n{args.game}, {args.rounds} x {args.steps} steps per variant, torch "
        f"{torch.__version__}, {args.threads} torch thread(s), native bf16: {bf16_supported()}, "
        f"SB3 {stable_baselines3.__version__}, {platform.processor() or platform.machine()}"
    )
    print(
        f"{'variant':<18}{'steps/s':>9}{'min':>7}{'max':>7}{'collect s':>11}{'update s':>10}"
        f"{'steps/CPU s':>13}"
    )
    sps: dict[str, float] = {}
    spc: dict[str, float] = {}
    result: dict[str, Any] = {"game": args.game, "rounds": args.rounds, "steps": args.steps}
    for name, rows in times.items():
        arr = np.array(rows)
        total = arr.sum(1)
        sps[name] = args.steps * len(rows) / float(total.sum())
        per_round = args.steps / total
        collect, update = arr[:, 0].sum(), arr[:, 1].sum()
        split = f"{collect:>11.1f}{update:>10.1f}" if update else f"{'':>11}{'':>10}"
        spc[name] = args.steps * len(rows) / max(cpu[name], 1e-9)
        print(
            f"{name:<18}{sps[name]:>9.0f}{per_round.min():>7.0f}{per_round.max():>7.0f}{split}"
            f"{spc[name]:>13.0f}"
        )
        result[name] = {
            "steps_per_s": sps[name],
            "per_round": per_round.tolist(),
            "steps_per_cpu_s": spc[name],
        }
    ratios = {
        "ours BLIP bf16 / SB3": ("ours BLIP bf16", "SB3 CnnPolicy"),
        "ours BLIP fp32 / SB3": ("ours BLIP fp32", "SB3 CnnPolicy"),
        "BLIP / plain (bf16)": ("ours BLIP bf16", "ours plain bf16"),
        "bf16 / fp32 (BLIP)": ("ours BLIP bf16", "ours BLIP fp32"),
    }
    print()
    for label, (a, b) in ratios.items():
        if a in sps and b in sps:
            ratio, cpu_ratio = sps[a] / sps[b], spc[a] / spc[b]
            result[label] = {"wall": ratio, "cpu": cpu_ratio}
            print(f"{label:<24}{ratio:6.2f}x wall   {cpu_ratio:6.2f}x per CPU second")
    # BLIP's only extra work in training is the constraint after each optimizer step; timing
    # it alone gives an overhead estimate that load from other processes barely moves.
    blip_variant = variants.get("ours BLIP bf16")
    if isinstance(blip_variant, Ours):
        net = blip_variant.net
        blip_rl.constrain_(net)
        t0 = time.perf_counter()
        for _ in range(20):
            blip_rl.constrain_(net)
        per_call = (time.perf_counter() - t0) / 20
        cfg = blip_variant.ppo.config
        per_iter = per_call * cfg.update_epochs * cfg.num_minibatches
        share = per_iter * sps["ours BLIP bf16"] / cfg.batch_size
        result["constraint_ms_per_step"] = per_call * 1e3
        result["constraint_share_of_iteration"] = share
        print(
            f"BLIP constraint: {per_call * 1e3:.1f} ms per optimizer step, "
            f"{per_iter * 1e3:.0f} ms per iteration = {share:.1%} of the BLIP bf16 iteration time"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
