"""Continual Atari with stable-baselines3 and BLIP: one PPO model learns several games in turn.

    python examples/sb3_continual.py --games pong,breakout,space_invaders --steps-per-game 1000000
    tensorboard --logdir runs/sb3_continual

The recipe, in SB3 terms:

1. every game uses the full 18-action set, so all envs have the same spaces and
   ``model.set_env`` accepts each of them;
2. one ``PPO(BlipActorCriticCnnPolicy, ...)`` model; per game,
   ``model.learn(steps, callback=BlipFreezeCallback(), reset_num_timesteps=False)``: the callback
   estimates the Fisher from the last rollout buffer when ``learn`` ends and freezes bits, and the
   BLIP constraint keeps every frozen bit through SB3's later updates;
3. after each game, every game of the sequence is evaluated.

TensorBoard tags follow the project's scheme, with the global step = env steps over the whole
sequence: ``eval/<game>/return`` (raw game score, whole games), ``eval/<game>/normalized``
(human-normalized, for games with reference scores), ``forgetting/<game>`` (the best raw
score the game had since it was learned minus its raw score now,
:func:`blip_rl.metrics.forgetting_after`, exactly as ``python -m blip_rl.train`` logs it; for games
learned before the current one), ``train/<game>/episode_return``, ``loss/<name>``,
``blip/<layer>/frozen_bits``, ``blip/<layer>/frac_frozen``, ``perf/steps_per_s``. A checkpoint
``after_<k>_<game>.zip`` is written after each game (``PPO.load`` restores the frozen bits).

``--capture-video``: after each game, one episode of every game is recorded from the emulator's
RGB screen by the same helper as ``python -m blip_rl.train --capture-video``
(:mod:`blip_rl.video`, with ``model.predict`` as the policy): ``videos/after-<k>-<game>.mp4``,
``videos/contact-sheet.png`` and TensorBoard ``video/<game>/after_<k>``.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.evaluation import evaluate_policy

from blip_rl import metrics
from blip_rl.atari import AtariConfig, GameSpec, human_normalized, resolve_game
from blip_rl.errors import UsageError, cli
from blip_rl.files import atomic_write
from blip_rl.sb3 import (
    BlipActorCriticCnnPolicy,
    BlipFreezeCallback,
    TagSchemeLogger,
    make_sb3_atari_env,
)
from blip_rl.tblog import TBLogger
from blip_rl.video import VideoCapture


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--games", default="pong,breakout,space_invaders", help="comma-separated")
    p.add_argument("--steps-per-game", type=positive, default=1_000_000, help="env steps")
    p.add_argument("--n-envs", type=positive, default=8)
    p.add_argument("--n-steps", type=positive, default=128, help="PPO rollout length per env")
    p.add_argument("--batch-size", type=positive, default=256)
    p.add_argument("--n-epochs", type=positive, default=4)
    p.add_argument("--lr", type=float, default=2.5e-4)
    p.add_argument("--sticky-actions", type=float, default=0.25, help="0 = the paper's protocol")
    p.add_argument("--max-bits", type=positive, default=20)
    p.add_argument("--f-prior", type=float, default=5e-18, help="in the reference's units")
    p.add_argument("--value-fisher-coef", type=float, default=1.0)
    p.add_argument("--fisher-states", type=positive, default=None, help="default: last rollout")
    p.add_argument("--eval-episodes", type=positive, default=5)
    p.add_argument("--eval-max-frames", type=positive, default=108_000)
    p.add_argument("--logdir", default="runs/sb3_continual")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--capture-video",
        action="store_true",
        help="after each game, record one episode of every game (videos/ in the logdir)",
    )
    p.add_argument("--video-max-frames", type=positive, default=1000, help="frames per video")
    return p.parse_args(argv)


def evaluate(model: PPO, game: GameSpec, args: argparse.Namespace) -> float:
    """Mean raw score over whole games (stochastic policy, as during training)."""
    env = make_sb3_atari_env(
        game.name,
        1,
        seed=args.seed + 10_000,
        sticky_actions=args.sticky_actions,
        max_episode_frames=args.eval_max_frames,
        evaluation=True,
    )
    try:
        rewards, _ = evaluate_policy(
            model,
            env,
            n_eval_episodes=args.eval_episodes,
            deterministic=False,
            return_episode_rewards=True,
        )
    finally:
        env.close()
    return float(np.mean(rewards))


def save_atomically(model: PPO, path: Path) -> None:
    """``model.save`` into memory, then one atomic write (a kill never leaves a torn zip)."""
    buf = io.BytesIO()
    model.save(buf)
    atomic_write(path, buf.getvalue())


@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    games = [resolve_game(g) for g in args.games.split(",") if g.strip()]
    if not games:
        raise UsageError(f"--games {args.games!r} names no game; e.g. --games pong,breakout")
    run = Path(args.logdir)
    run.mkdir(parents=True, exist_ok=True)

    def env_for(game: GameSpec) -> Any:
        return make_sb3_atari_env(
            game.name, args.n_envs, seed=args.seed, sticky_actions=args.sticky_actions
        )

    logger = TagSchemeLogger(str(run), formats=("stdout", "tensorboard"), game=games[0].name)
    model = PPO(
        BlipActorCriticCnnPolicy,
        env_for(games[0]),
        n_steps=args.n_steps,
        batch_size=args.batch_size,
        n_epochs=args.n_epochs,
        learning_rate=args.lr,
        clip_range=0.1,
        ent_coef=0.01,
        seed=args.seed,
        policy_kwargs={"max_bits": args.max_bits, "f_prior": args.f_prior},
        verbose=1,
    )
    model.set_logger(logger)  # one TensorBoard run for the whole sequence
    capture = None
    if args.capture_video:  # the SB3 env's protocol, on an env whose screen can be read
        protocol = AtariConfig(
            sticky_actions=args.sticky_actions,
            full_action_space=True,
            max_episode_frames=args.eval_max_frames,
        )
        capture = VideoCapture(run, protocol, args.video_max_frames, args.seed)
        videos_log = TBLogger(str(run))  # a second event file in the same TensorBoard run
        distinct = list({g.name: g for g in games}.values())

        def act(obs: np.ndarray) -> np.ndarray:
            return model.predict(obs, deterministic=False)[0]

    matrix: list[list[float]] = []  # R[k][j]: raw score on game j after learning game k
    for k, game in enumerate(games):
        if k > 0:
            model.set_env(env_for(game))  # same spaces: full action set everywhere
            model.ep_info_buffer = None  # episode statistics per game, not mixed with the last
        logger.game = game.name
        print(f"game {k + 1}/{len(games)}: {game.name}")
        model.learn(
            args.steps_per_game,
            callback=BlipFreezeCallback(
                n_states=args.fisher_states, value_fisher_coef=args.value_fisher_coef
            ),
            reset_num_timesteps=False,
        )
        row = []
        for other in games:
            ret = evaluate(model, other, args)
            row.append(ret)
            norm = human_normalized(other, ret)
            logger.record(f"eval/{other.name}/return", ret)
            if norm is not None:
                logger.record(f"eval/{other.name}/normalized", norm)
        matrix.append(row)
        for j, forgot in metrics.forgetting_after(matrix, k).items():
            logger.record(f"forgetting/{games[j].name}", forgot)
        logger.dump(model.num_timesteps)
        if capture is not None:
            capture.after_game(
                k, game.name, model.num_timesteps, [(g, act) for g in distinct], videos_log
            )
            videos_log.flush()
        save_atomically(model, run / f"after_{k + 1}_{game.name}.zip")
    if capture is not None:
        videos_log.close()
    print(f"done: TensorBoard logs and checkpoints in {run}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
