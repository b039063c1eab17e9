"""Learning parity: blip-rl's plain PPO against stable-baselines3's PPO on one game, per seed.

Both learn the game alone for ``--steps`` env steps, with the same protocol and evaluation:

* **ours**: ``python -m blip_rl.train --games GAME --agent finetune`` (the plain Nature-CNN
  actor-critic, the CLI's PPO defaults, bf16 autocast) with the forgetting runs' protocol
  (sticky actions off, minimal action set, 8 envs, one emulator thread, CPU), evaluated every
  ``--eval-every`` steps by the CLI;
* **ours-fp32**: the same in float32 (``--precision fp32``), to settle bf16 against fp32;
* **ours-noclipv**: an ablation towards SB3, the value loss not clipped (``--clip-vloss
  false``, as SB3's default ``clip_range_vf=None``). The frames need no ablation: both env
  backends and SB3's ``AtariWrapper`` give the same frames and rewards
  (``tests/test_atari.py::test_frames_match_gymnasium_and_sb3_preprocessing``);
* **ours-sb3v**: SB3's value loss as a whole: not clipped, and weighted as SB3 weights it. SB3
  adds ``vf_coef * mse(returns, values)`` to the loss, CleanRL (and ours)
  ``vf_coef * 0.5 * mse``, so at the same ``vf_coef`` 0.5 SB3's value gradient is twice ours,
  and both clip the whole gradient's norm at 0.5 (``--clip-vloss false --vf-coef 1.0``), in
  float32, so that it is compared with **ours-fp32** (its first seeds ran on a CPU without
  bf16, where bf16 falls back to fp32);
* **sb3-constclip**: the other ablation, SB3 with the clip range kept at 0.1 (as ours) instead
  of rl-zoo's linear annealing to 0;
* **SB3**: ``PPO("CnnPolicy")`` with rl-baselines3-zoo's Atari hyper-parameters (8 envs x 128
  steps, 4 epochs, minibatch 256, learning rate 2.5e-4 and clip range 0.1 both annealed
  linearly, entropy 0.01, value 0.5), on :func:`blip_rl.sb3.make_sb3_atari_env` with the same
  protocol (SB3's ``AtariWrapper``: FIRE on reset, life loss ends a training episode, clipped
  rewards), evaluated at the same steps.
* **Evaluation** (both): whole games, all lives, raw score, sampled actions, ``--eval-episodes``
  episodes (SB3: ``evaluate_policy`` on an evaluation env whose ``Monitor`` sees whole games).

Each run writes ``<out>/<game>-<impl>-s<seed>.json`` (the curve, rewritten after each
evaluation; a finished run is skipped on a rerun), then ``<out>/<game>.md`` tabulates both
curves: mean over seeds with a 95% percentile bootstrap CI of the mean (``analyze.py``'s
bootstrap, 2000 resamples); a rerun with every curve present only rewrites the table::

    OMP_NUM_THREADS=1 python benchmarks/forgetting/parity.py --game breakout --steps 200000
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from analyze import finite_mean, stratified_bootstrap_ci  # same folder: one bootstrap
from scan_games import protocol_flags  # same folder: the forgetting runs' protocol

from blip_rl.files import atomic_write, read_json, write_json

REPO = Path(__file__).resolve().parent.parent.parent
OURS = {
    # name: (label, extra CLI flags); each variant changes one thing against "ours"
    "ours": ("ours (plain PPO, bf16)", []),
    "ours-fp32": ("ours (fp32)", ["--precision=fp32"]),
    "ours-noclipv": ("ours, value loss not clipped", ["--clip-vloss=false"]),
    "ours-sb3v": (
        "ours, SB3's value loss",
        ["--clip-vloss=false", "--vf-coef=1.0", "--precision=fp32"],
    ),
}
SB3 = {"sb3": "SB3 PPO", "sb3-constclip": "SB3, clip range not annealed"}
IMPLS = (*OURS, *SB3)
LABELS = {**{k: v[0] for k, v in OURS.items()}, **SB3}


def run_ours(
    game: str, seed: int, args: argparse.Namespace, impl: str = "ours"
) -> tuple[list[dict[str, float]], str]:
    """Train with the CLI in a temporary run folder; the curve from its ``evals.csv`` and the
    precision that ran (bf16 falls back to fp32 on a CPU without it)."""
    with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
        cmd = [sys.executable, "-m", "blip_rl.train", f"--games={game}", "--agent=finetune"]
        cmd += protocol_flags(seed, args.steps, args.eval_every, args.eval_episodes)
        cmd += OURS[impl][1]
        cmd += [f"--runs-dir={tmp}", "--run-name=run"]
        subprocess.run(cmd, check=True, cwd=REPO)
        with open(Path(tmp) / "run" / "evals.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        precision = read_json(Path(tmp) / "run" / "summary.json")["precision_used"]
    curve = [{"step": float(r["global_step"]), "return": float(r["return"])} for r in rows]
    return curve, precision


def run_sb3(
    game: str, seed: int, args: argparse.Namespace, impl: str = "sb3"
) -> list[dict[str, float]]:
    """rl-zoo's PPO on the same protocol, evaluated every ``eval_every`` env steps
    (``sb3-constclip``: the clip range stays 0.1, as ours)."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.evaluation import evaluate_policy

    from blip_rl.sb3 import make_sb3_atari_env

    torch.set_num_threads(1)
    env_kw: dict[str, Any] = {"full_action_space": False, "sticky_actions": 0.0}
    env = make_sb3_atari_env(game, 8, seed=seed, **env_kw)
    eval_env = make_sb3_atari_env(game, 8, seed=seed + 10_000, evaluation=True, **env_kw)
    curve: list[dict[str, float]] = []

    def evaluate(step: int, model: Any) -> None:
        returns, _ = evaluate_policy(
            model, eval_env, n_eval_episodes=args.eval_episodes, deterministic=False,
            return_episode_rewards=True,
        )  # fmt: skip
        curve.append({"step": float(step), "return": float(np.mean(returns))})
        print(f"[parity] sb3 {game} s{seed} {step}: {curve[-1]['return']:.2f}", flush=True)

    class Every(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.next = args.eval_every

        def _on_step(self) -> bool:
            if args.eval_every and self.num_timesteps >= self.next:
                evaluate(self.num_timesteps, self.model)
                self.next += args.eval_every
            return True

    model = PPO(
        "CnnPolicy",
        env,
        n_steps=128,
        batch_size=256,
        n_epochs=4,
        learning_rate=lambda f: 2.5e-4 * f,
        clip_range=0.1 if impl == "sb3-constclip" else (lambda f: 0.1 * f),
        ent_coef=0.01,
        vf_coef=0.5,
        seed=seed,
        device="cpu",
        verbose=0,
    )
    model.learn(args.steps, callback=Every())
    if not curve or curve[-1]["step"] < model.num_timesteps:
        evaluate(model.num_timesteps, model)
    return curve


def table(game: str, out: Path, seeds: list[int], eval_every: int) -> str:
    """Every curve present at the evaluation points: mean [95% CI] over seeds, and each seed."""
    curves: dict[str, dict[int, list[dict[str, float]]]] = {}
    ran: dict[str, set[str]] = {}  # the precision each run recorded (runs before it: none)
    for impl in IMPLS:
        for s in seeds:
            path = out / f"{game}-{impl}-s{s}.json"
            if path.is_file():
                data = read_json(path)
                curves.setdefault(impl, {})[s] = data["curve"]
                if "precision_used" in data:
                    ran.setdefault(impl, set()).add(data["precision_used"])
    impls = list(curves)
    lines = [
        f"# Learning parity on {game}",
        "",
        "Generated by `benchmarks/forgetting/parity.py` "
        f"(seeds {', '.join(map(str, seeds))}). Return of whole games (raw score, sampled "
        "actions); mean over seeds [95% bootstrap CI]; the "
        "evaluation nearest each step (within 5%).",
        "",
        "| env steps | "
        + " | ".join(LABELS[i] for i in impls)
        + " | "
        + " | ".join(f"{LABELS[i]} per seed" for i in impls)
        + " |",
        "|---" * (1 + 2 * len(impls)) + "|",
    ]
    steps = [c["step"] for cs in curves.values() for v in cs.values() for c in v]
    points = sorted({round(x / eval_every) * eval_every for x in steps})
    for step in points:
        cells, per_seed = [], []
        for impl in impls:
            vals = []
            for s, curve in curves[impl].items():
                near = [c["return"] for c in curve if abs(c["step"] - step) <= 0.05 * step]
                if near:
                    vals.append((s, near[0]))
            arr = np.array([v for _, v in vals])
            if len(arr):
                mean, lo, hi = stratified_bootstrap_ci(arr, finite_mean)
                cells.append(f"{mean:.2f} [{lo:.2f}, {hi:.2f}] (n={len(arr)})")
            else:
                cells.append("-")
            per_seed.append(", ".join(f"s{s} {v:.1f}" for s, v in vals) or "-")
        lines.append(f"| {step} | " + " | ".join(cells + per_seed) + " |")
    if ran:
        lines += [
            "",
            "Precision that ran, where the run recorded it: "
            + "; ".join(f"{LABELS[i]}: {', '.join(sorted(p))}" for i, p in ran.items())
            + ".",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--game", default="breakout", help="one game (default breakout)")
    ap.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    ap.add_argument("--steps", type=int, default=200_000, help="env steps per run")
    ap.add_argument("--eval-every", type=int, default=50_000, help="env steps between evaluations")
    ap.add_argument("--eval-episodes", type=int, default=16, help="episodes per evaluation")
    ap.add_argument(
        "--impls", default="ours,sb3", help="which to run, comma-separated: " + ", ".join(IMPLS)
    )
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "parity")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    impls = args.impls.split(",")
    for impl in impls:
        if impl not in IMPLS:
            ap.error(f"--impls: {impl!r} is not one of {', '.join(IMPLS)}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for seed in seeds:
        for impl in impls:
            path = args.out / f"{args.game}-{impl}-s{seed}.json"
            if path.is_file():
                continue
            t0 = time.perf_counter()
            if impl in SB3:
                curve, precision = run_sb3(args.game, seed, args, impl), "fp32"
            else:
                curve, precision = run_ours(args.game, seed, args, impl)
            seconds = time.perf_counter() - t0
            write_json(path, {"game": args.game, "impl": impl, "seed": seed, "curve": curve,
                              "steps": args.steps, "seconds": seconds,
                              "precision_used": precision})  # fmt: skip
            print(f"[parity] {impl} {args.game} s{seed}: {seconds:.0f} s, {curve}", flush=True)
            write_table(args, seeds)
    print(write_table(args, seeds))


def write_table(args: argparse.Namespace, seeds: list[int]) -> str:
    """Rewrite ``<out>/<game>.md`` from the curves there; returns its text."""
    md = table(args.game, args.out, seeds, args.eval_every)
    atomic_write(args.out / f"{args.game}.md", md.encode())
    return md


if __name__ == "__main__":
    main()
