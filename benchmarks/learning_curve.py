"""Single-game PPO learning curve with the BLIP network: does the learner really learn?

Trains :class:`blip_rl.ppo.PPO` on one game (one head, BLIP constraint attached, nothing frozen)
and evaluates every ``--eval-every`` env steps on whole games (raw score, all lives, sampled
actions) with :func:`blip_rl.atari.evaluate`. Prints one line per evaluation and writes the
curve to a JSON file (rewritten atomically after each evaluation, so a killed run keeps its
curve so far).

    python benchmarks/learning_curve.py --game breakout --steps 300000 --precision bf16
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import blip_rl
from blip_rl.atari import evaluate, make_train_envs, reference_scores
from blip_rl.files import write_json
from blip_rl.nets import ActorCritic, NetConfig
from blip_rl.ppo import PPO, IterationResult, PPOConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--game", default="breakout")
    ap.add_argument("--steps", type=int, default=300_000, help="env steps (all envs)")
    ap.add_argument("--eval-every", type=int, default=50_000)
    ap.add_argument("--eval-episodes", type=int, default=8)
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--no-blip", action="store_true", help="plain layers (finetune network)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared box)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tag = f"{args.game}_{args.precision}{'_plain' if args.no_blip else ''}_s{args.seed}"
    out = args.out or Path(__file__).parent / "results" / f"learning_curve_{tag}.json"

    cfg = PPOConfig(precision=args.precision)
    envs = make_train_envs(args.game, cfg.num_envs, seed=args.seed)
    net = ActorCritic([envs.num_actions], NetConfig(blip=not args.no_blip))
    ppo = PPO(net, envs, cfg, head=0, total_steps=args.steps)
    if not args.no_blip:
        blip_rl.attach(ppo.optimizer, net)
    ppo.reset_envs(seed=args.seed)

    def policy(obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), ppo._autocast():
            action, _, _, _ = net.get_action_and_value(ppo._prep(torch.as_tensor(obs)), 0)
        return action.numpy()

    ref = reference_scores(envs.game)
    curve: list[dict[str, Any]] = []
    recent: list[float] = []
    start = time.perf_counter()
    train_time = 0.0

    def do_eval() -> None:
        scores = evaluate(policy, args.game, args.eval_episodes, seed=10_000 + args.seed)
        point = {
            "step": ppo.global_step,
            "eval_mean": float(np.mean(scores)),
            "eval_std": float(np.std(scores)),
            "eval_scores": scores,
            "train_recent_mean": float(np.mean(recent[-20:])) if recent else None,
            "train_steps_per_s": ppo.global_step / train_time if train_time else None,
            "wall_s": time.perf_counter() - start,
        }
        curve.append(point)
        train_mean = point["train_recent_mean"]
        train_text = f"{train_mean:7.1f}" if train_mean is not None else "    n/a"
        print(
            f"step {ppo.global_step:>8}  eval {point['eval_mean']:7.1f} +- "
            f"{point['eval_std']:5.1f}  train(last 20) {train_text}  "
            f"{point['train_steps_per_s'] or 0:5.0f} steps/s  wall {point['wall_s']:5.0f}s",
            flush=True,
        )
        write_json(
            out,
            {
                "game": args.game,
                "precision": args.precision,
                "blip": not args.no_blip,
                "seed": args.seed,
                "steps": args.steps,
                "random_human_reference": ref,
                "ppo_config": {**vars(cfg)},
                "curve": curve,
            },
        )

    next_eval = 0

    def callback(p: PPO, result: IterationResult) -> None:
        nonlocal next_eval, train_time
        train_time += p.config.batch_size / result.steps_per_s
        recent.extend(e.score for e in result.episodes)
        if p.global_step >= next_eval:
            do_eval()
            next_eval += args.eval_every

    do_eval()
    next_eval = args.eval_every
    ppo.train(callback=callback)
    if curve[-1]["step"] != ppo.global_step:
        do_eval()
    envs.close()


if __name__ == "__main__":
    main()
