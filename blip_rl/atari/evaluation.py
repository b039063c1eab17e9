"""Evaluation: play whole games with a policy and return their true scores."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from blip_rl.atari.config import AtariConfig
from blip_rl.atari.envs import make_eval_envs
from blip_rl.atari.names import GameSpec
from blip_rl.errors import UsageError

__all__ = ["PolicyFn", "evaluate"]

PolicyFn = Callable[[np.ndarray], Any]


def evaluate(
    policy_fn: PolicyFn,
    game: str | GameSpec,
    episodes: int,
    seed: int = 0,
    config: AtariConfig | None = None,
    num_envs: int | None = None,
) -> list[float]:
    """Play ``episodes`` whole games with a policy and return their true scores.

    Args:
        policy_fn: maps a uint8 observation batch ``(n, 4, 84, 84)`` to ``n`` integer actions
            (numpy array, list or CPU tensor).
        game: game name or GameSpec.
        episodes: number of finished episodes to return (>= 1).
        seed: seed of the evaluation envs (env ``i`` gets ``seed + i``).
        config: protocol; default ``AtariConfig()``.
        num_envs: parallel envs, default ``min(episodes, 8)``.

    Returns:
        ``episodes`` scores, grouped by env in env order, each env's in play order.

    To avoid favouring short episodes, each env gets a fixed quota of episodes up front
    (``episodes`` split as evenly as possible) and only its first quota episodes count; an env
    that has met its quota keeps stepping until the others have met theirs, but its further
    episodes are ignored. Taking the first ``episodes`` episodes to finish across envs would
    instead over-represent short (often bad) games.
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise UsageError(f"invalid number of evaluation episodes {episodes!r}; expected >= 1")
    n = num_envs if num_envs is not None else min(episodes, 8)
    env = make_eval_envs(game, n, seed, config)
    try:
        quota = np.full(n, episodes // n, dtype=np.int64)
        quota[: episodes % n] += 1
        counts = np.zeros(n, dtype=np.int64)
        scores: list[list[float]] = [[] for _ in range(n)]
        obs, _ = env.reset(seed=seed)
        while (counts < quota).any():
            actions = np.asarray(policy_fn(obs))
            obs, _, _, _, info = env.step(actions)
            counted = info["_episode_return"] & (counts < quota)
            if counted.any():
                for i in np.flatnonzero(counted):  # only at episode ends, not per step
                    scores[i].append(float(info["episode_return"][i]))
                counts += counted
        return [s for per_env in scores for s in per_env]
    finally:
        env.close()
