"""Vectorised Atari environments: two backends behind one contract.

:func:`make_train_envs` and :func:`make_eval_envs` build an :class:`AtariVecEnv`, a gymnasium
``VectorEnv`` with one contract whatever the backend:

* observations: ``uint8`` array of shape ``(num_envs, 4, 84, 84)``: four stacked grayscale
  84x84 frames, oldest first; right after a reset the older frames are zeros;
* every step is ``frame_skip`` (4) emulator frames with max-pooling of the last two;
* a reset is followed by a random number of no-op frames (at most ``noop_max``, 30) and, for
  games whose action set has FIRE, one FIRE press;
* sticky actions with probability ``sticky_actions`` (ALE v5 default 0.25), minimal or full
  (18) action set, episodes truncated after ``max_episode_frames`` (108000) frames;
* sub-environments reset themselves in the same step that ends their episode
  (``AutoresetMode.SAME_STEP``): when ``terminated | truncated`` is true for env ``i``, the
  returned ``obs[i]`` is already the first observation of its next episode;
* training envs only: a life loss sets ``terminated`` (the game itself goes on, it is not
  reset) and rewards are clipped to their sign; evaluation envs give the raw game reward and
  end episodes only at game over or truncation;
* ``info["episode_return"]`` / ``info["_episode_return"]``: the true game score (sum of
  unclipped rewards over all lives) of every episode that ended in this step, with its mask;
  ``info["episode_length"]`` holds its length in agent steps, ``info["life_lost"]`` flags life
  losses, ``info["lives"]`` the current lives.

The ``native`` backend (default) runs ale-py's C++ vector environment
(:class:`ale_py.vector_env.AtariVectorEnv`): preprocessing and stepping happen in C++
threads, and the Python side only does a few numpy operations on whole batches (no Python
loop over environments). The ``gymnasium`` backend is a fallback built from gymnasium's
``AtariPreprocessing`` and ``FrameStackObservation`` in a gymnasium vector env; it follows the
same contract but its random streams differ from the native ones, and it adds one no-op
frame at most (1 to 30 no-ops instead of 0 to 29).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ale_py
import gymnasium as gym
import numpy as np
from gymnasium.spaces import Box, Discrete
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from blip_rl.atari.config import AtariConfig
from blip_rl.atari.names import FULL_ACTION_COUNT, GameSpec, fire_action, resolve_game
from blip_rl.errors import UsageError

__all__ = ["OBS_SHAPE", "SCREEN", "STACK", "AtariVecEnv", "make_eval_envs", "make_train_envs"]

STACK = 4
SCREEN = 84
OBS_SHAPE = (STACK, SCREEN, SCREEN)
"""Shape of one observation: 4 stacked grayscale 84x84 frames."""


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _make_native(rom: str, num_envs: int, config: AtariConfig) -> VectorEnv:
    from ale_py.vector_env import AtariVectorEnv

    threads = config.num_threads or min(num_envs, _usable_cores())
    return AtariVectorEnv(
        rom,
        num_envs,
        num_threads=threads,
        max_num_frames_per_episode=config.max_episode_frames,
        repeat_action_probability=float(config.sticky_actions),
        full_action_space=config.full_action_space,
        autoreset_mode=AutoresetMode.SAME_STEP,
        img_height=SCREEN,
        img_width=SCREEN,
        grayscale=True,
        stack_num=STACK,
        frameskip=config.frame_skip,
        maxpool=True,
        noop_max=config.noop_max,
        # Life loss and clipping are done on the whole batch in AtariVecEnv: the C++
        # episodic_life option resets the game at every life loss, and its clipped reward
        # would hide the true score.
        episodic_life=False,
        life_loss_info=False,
        reward_clipping=False,
        use_fire_reset=config.fire_reset,
    )


class _FireOnReset(gym.Wrapper):
    """Press FIRE once after each reset, in games whose action set has FIRE (like ale-py's
    native ``use_fire_reset``)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        meanings = env.unwrapped.get_action_meanings()  # type: ignore[attr-defined]
        self._fire = meanings.index("FIRE") if "FIRE" in meanings else None

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        if self._fire is not None:
            obs, _, terminated, truncated, step_info = self.env.step(self._fire)
            info.update(step_info)
            if terminated or truncated:
                obs, info = self.env.reset()
        return obs, info


def _make_gym_single(rom: str, config: AtariConfig) -> gym.Env:
    """One gymnasium env: raw ALE (frameskip 1) -> fire on reset -> AtariPreprocessing ->
    time limit -> frame stack."""
    from ale_py.env import AtariEnv
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation, TimeLimit

    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)  # no banner per subprocess
    env: gym.Env = AtariEnv(
        game=rom,
        obs_type="grayscale",
        frameskip=1,
        repeat_action_probability=float(config.sticky_actions),
        full_action_space=config.full_action_space,
    )
    if config.fire_reset:
        env = _FireOnReset(env)
    env = AtariPreprocessing(
        env,
        noop_max=config.noop_max,
        frame_skip=config.frame_skip,
        screen_size=SCREEN,
        terminal_on_life_loss=False,
        grayscale_obs=True,
        scale_obs=False,
    )
    # Count the cap in agent frames after the no-op start, as the native backend does (ALE's
    # own max_num_frames_per_episode would also count the no-op frames).
    env = TimeLimit(env, max_episode_steps=-(-config.max_episode_frames // config.frame_skip))
    return FrameStackObservation(env, STACK, padding_type="zero")


def _make_gymnasium(rom: str, num_envs: int, config: AtariConfig) -> VectorEnv:
    fns = [functools.partial(_make_gym_single, rom, config) for _ in range(num_envs)]
    if config.gym_vectorization == "async":
        return gym.vector.AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)


class AtariVecEnv(VectorEnv):
    """A batch of one Atari game with blip-rl's observation and episode contract.

    Built by :func:`make_train_envs` / :func:`make_eval_envs`; see the module docstring for the
    contract. ``step`` returns ``(obs, reward, terminated, truncated, info)`` with ``obs`` uint8
    ``(n, 4, 84, 84)``, ``reward`` float32 ``(n,)`` (clipped to its sign in training),
    ``terminated``/``truncated`` bool ``(n,)``. ``info`` holds (all arrays of shape ``(n,)``):

    * ``episode_return`` (float64) and its mask ``_episode_return`` (bool): the true game score
      of each episode that ended in this step (zero where the mask is false);
    * ``episode_length`` (int64): agent steps of those episodes (zero elsewhere);
    * ``life_lost`` (bool): a life was lost in this step and the game goes on;
    * ``forced_action`` (bool): this step played FIRE instead of the given action (the step after
      a lost life, with ``config.fire_on_life_loss``);
    * ``lives`` (int64): lives left (after an automatic reset: of the new game);
    * ``final_obs`` (uint8 ``(n, 4, 84, 84)``) and its mask ``_final_obs``, only in steps where
      an episode ended: the last observation of each ended episode (``obs`` already holds the
      first observation of the next one), e.g. to bootstrap values of truncated episodes;
    * the backend's own keys (e.g. ``episode_frame_number``).

    Attributes:
        game: the game played.
        num_actions: size of the action set (minimal set of the game, or 18).
        config: the protocol used.
        training: ``True`` for training envs (episodic life, clipped rewards if configured).
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        game: str | GameSpec,
        num_envs: int,
        seed: int | None,
        config: AtariConfig,
        training: bool,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise UsageError(f"invalid num_envs {num_envs!r}; expected an integer >= 1")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise UsageError(f"invalid seed {seed!r}; expected an integer >= 0 or None")
        if not isinstance(config, AtariConfig):
            raise TypeError(f"config must be an AtariConfig, got {type(config).__name__}")
        self.game = resolve_game(game)
        self.config = config
        self.training = training
        self.num_envs = num_envs
        self._seed = seed
        self._episodic_life = training and config.episodic_life
        self._clip = training and config.clip_rewards
        if config.backend == "native":
            self.env = _make_native(self.game.rom, num_envs, config)
        else:
            self.env = _make_gymnasium(self.game.rom, num_envs, config)
        n_actions = FULL_ACTION_COUNT if config.full_action_space else self.game.minimal_actions
        self.single_observation_space = Box(0, 255, OBS_SHAPE, np.uint8)
        self.num_actions = n_actions
        self.single_action_space = Discrete(n_actions)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        inner_n = getattr(self.env.single_action_space, "n", None)
        if inner_n != n_actions:  # pragma: no cover - would mean ale-py changed its contract
            raise RuntimeError(f"{self.game.name}: backend has {inner_n} actions, not {n_actions}")
        self._returns = np.zeros(num_envs, dtype=np.float64)
        self._lengths = np.zeros(num_envs, dtype=np.int64)
        self._lives = np.zeros(num_envs, dtype=np.int64)
        self._was_reset = False
        self._fire = (
            fire_action(self.game.rom, config.full_action_space)
            if config.fire_on_life_loss
            else None
        )
        self._fire_next = np.zeros(num_envs, dtype=bool)

    def reset(
        self,
        *,
        seed: int | Sequence[int] | np.ndarray | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset all sub-environments (or those in ``options["reset_mask"]``).

        Args:
            seed: ``int`` seeds env ``i`` with ``seed + i``; a sequence gives one seed per env
                being reset. ``None`` on the first reset uses the seed given at construction,
                later ``None`` continues the current random streams.
            options: may hold ``reset_mask``, a bool array ``(num_envs,)``.
        """
        if seed is None and not self._was_reset:
            seed = self._seed
        if seed is not None and not isinstance(seed, int):
            seed = np.asarray(seed, dtype=np.int64)
            if self.config.backend == "gymnasium":
                seed = [int(s) for s in seed]
        obs, info = self.env.reset(seed=seed, options=options)  # type: ignore[arg-type]
        mask = np.ones(self.num_envs, dtype=bool)
        if options is not None and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"], dtype=bool)
        self._returns[mask] = 0.0
        self._lengths[mask] = 0
        self._fire_next[mask] = False
        self._lives = self._lives_from(info, self._lives)
        self._was_reset = True
        return obs, self._extend_info(info, np.zeros(self.num_envs, dtype=bool))

    def step(
        self, actions: np.ndarray | Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every sub-environment with one action each (ints in ``[0, n_actions)``)."""
        acts = np.asarray(actions)
        if acts.dtype != np.int64 and acts.dtype != np.int32:
            acts = acts.astype(np.int64)
        forced = self._fire_next
        if self._fire is not None and forced.any():
            acts = np.where(forced, self._fire, acts)
        obs, rewards, terminated, truncated, info = self.env.step(acts)
        raw = np.asarray(rewards, dtype=np.float64)
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        # The backends end episodes only at game over or truncation, and autoreset at once.
        done = terminated | truncated
        self._returns += raw
        self._lengths += 1
        lives = self._lives_from(info, self._lives)
        life_lost = (lives < self._lives) & ~done
        self._lives = lives
        self._fire_next = life_lost.copy() if self._fire is not None else self._fire_next
        out = self._extend_info(info, life_lost)
        out["forced_action"] = forced
        if "final_obs" in info:
            out["final_obs"] = self._final_obs(info, obs, done)
            out["_final_obs"] = done
        out["episode_return"] = np.where(done, self._returns, 0.0)
        out["_episode_return"] = done
        out["episode_length"] = np.where(done, self._lengths, 0)
        self._returns[done] = 0.0
        self._lengths[done] = 0
        if self._episodic_life:
            terminated = terminated | life_lost
        reward = np.sign(raw) if self._clip else raw
        return obs, reward.astype(np.float32), terminated, truncated, out

    @staticmethod
    def _final_obs(info: Mapping[str, Any], obs: np.ndarray, done: np.ndarray) -> np.ndarray:
        """Last observations of the ended episodes as one uint8 batch (rows valid where done).

        The native backend gives this batch already; gymnasium gives an object array.
        """
        final = info["final_obs"]
        if final.dtype != object:
            return np.asarray(final)
        batch = obs.copy()
        mask = np.asarray(info.get("_final_obs", done), dtype=bool)
        if mask.any():
            batch[mask] = np.stack(list(final[mask]))
        return batch

    def _lives_from(self, info: Mapping[str, Any], previous: np.ndarray) -> np.ndarray:
        lives = info.get("lives")
        if lives is None:  # pragma: no cover - both backends report lives
            return previous
        return np.asarray(lives, dtype=np.int64)

    def _extend_info(self, info: Mapping[str, Any], life_lost: np.ndarray) -> dict[str, Any]:
        out = dict(info)
        out["lives"] = self._lives.copy()
        out["life_lost"] = life_lost
        out["forced_action"] = np.zeros(self.num_envs, dtype=bool)
        out.setdefault("episode_return", np.zeros(self.num_envs, dtype=np.float64))
        out.setdefault("_episode_return", np.zeros(self.num_envs, dtype=bool))
        out.setdefault("episode_length", np.zeros(self.num_envs, dtype=np.int64))
        return out

    def close_extras(self, **kwargs: Any) -> None:
        """Close the backend (threads or subprocesses); ``close()`` calls this once."""
        self.env.close()

    def __repr__(self) -> str:
        kind = "train" if self.training else "eval"
        return (
            f"AtariVecEnv({self.game.name}, num_envs={self.num_envs}, {kind}, "
            f"backend={self.config.backend})"
        )


def make_train_envs(
    game: str | GameSpec,
    num_envs: int,
    seed: int | None = None,
    config: AtariConfig | None = None,
) -> AtariVecEnv:
    """Training envs: episodic life and reward clipping (as configured), true scores in info.

    Args:
        game: game name in any accepted spelling, or a GameSpec.
        num_envs: number of parallel envs (>= 1).
        seed: env ``i`` is seeded with ``seed + i`` at the first ``reset()``; ``None`` draws
            fresh entropy (not reproducible).
        config: protocol; default ``AtariConfig()``.

    Raises:
        UsageError: unknown game, ``num_envs < 1`` or negative seed.
    """
    return AtariVecEnv(game, num_envs, seed, config or AtariConfig(), training=True)


def make_eval_envs(
    game: str | GameSpec,
    num_envs: int,
    seed: int | None = None,
    config: AtariConfig | None = None,
) -> AtariVecEnv:
    """Evaluation envs: whole games (no life-loss termination), raw rewards.

    Arguments as for :func:`make_train_envs`; ``config.episodic_life`` and
    ``config.clip_rewards`` are ignored here.
    """
    return AtariVecEnv(game, num_envs, seed, config or AtariConfig(), training=False)
