"""The Atari protocol (:class:`AtariConfig`) and its command-line options."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from blip_rl.validate import check_bool, check_choice, check_int, check_number

__all__ = [
    "BACKENDS",
    "GYM_VECTORIZATIONS",
    "AtariConfig",
    "Backend",
]

Backend = Literal["native", "gymnasium"]
BACKENDS: tuple[str, ...] = ("native", "gymnasium")
GYM_VECTORIZATIONS: tuple[str, ...] = ("sync", "async")


_FLAGS = {
    "backend": "--env-backend",
    "num_threads": "--env-threads",
    "gym_vectorization": "--env-vectorization",
}
"""Fields whose command-line flag is not the field's name (see :mod:`blip_rl.config`)."""


@dataclass(frozen=True)
class AtariConfig:
    """The Atari protocol and how to run it. Invalid values raise :class:`ValueError`."""

    sticky_actions: float = 0.25
    """Probability that the emulator repeats the previous action instead of the new one, per
    frame (ALE ``repeat_action_probability``). 0.25 is the ALE v5 recommendation (Machado et al.
    2018); the BLIP paper's preset uses 0."""

    full_action_space: bool = False
    """Use the full 18-action set for every game (needed for a head shared across games)
    instead of each game's minimal action set."""

    max_episode_frames: int = 108_000
    """Truncate an episode after this many emulator frames (108000 = 30 minutes of play)."""

    noop_max: int = 30
    """Upper bound on the random number of no-op frames after each reset; 0 disables them."""

    frame_skip: int = 4
    """Emulator frames per agent step; the action is repeated and the last two frames are
    max-pooled."""

    fire_reset: bool = True
    """Press FIRE once after each reset in games whose action set contains FIRE (some games
    do not start without it)."""

    fire_on_life_loss: bool = True
    """After a lost life, the next action is FIRE (in games whose action set has FIRE), as
    stable-baselines3's ``FireResetEnv`` serves after each life in its Atari wrapper; the step
    is reported as ``info["forced_action"]`` and PPO leaves it out of its update. Without it, a
    policy must learn to serve before it can learn anything else, and a policy that stopped
    pressing FIRE can stall a whole evaluation episode."""

    episodic_life: bool = True
    """Training envs only: a life loss sets ``terminated`` (the game goes on). Evaluation
    envs always play whole games."""

    clip_rewards: bool = True
    """Training envs only: rewards are replaced by their sign. Evaluation envs always give the
    raw game reward."""

    backend: Backend = "native"
    """``"native"``: ale-py's C++ vector env (fast, default). ``"gymnasium"``: gymnasium's
    ``AtariPreprocessing`` + ``FrameStackObservation`` in a gymnasium vector env (fallback)."""

    num_threads: int = 0
    """Native backend: C++ worker threads; 0 means ``min(num_envs, usable CPU cores)``."""

    gym_vectorization: Literal["sync", "async"] = "sync"
    """Gymnasium backend: ``"sync"`` steps the envs one after the other in this process,
    ``"async"`` runs one subprocess per env."""

    def __post_init__(self) -> None:
        check_number(self, "sticky_actions", 0.0, 1.0)
        for name in (
            "full_action_space",
            "fire_reset",
            "fire_on_life_loss",
            "episodic_life",
            "clip_rewards",
        ):
            check_bool(self, name)
        for name, low in (("max_episode_frames", 1), ("frame_skip", 1), ("noop_max", 0)):
            check_int(self, name, low)
        check_int(self, "num_threads", 0, flag=_FLAGS["num_threads"])
        check_choice(self, "backend", BACKENDS, flag=_FLAGS["backend"])
        check_choice(
            self, "gym_vectorization", GYM_VECTORIZATIONS, flag=_FLAGS["gym_vectorization"]
        )

    def replace(self, **changes: Any) -> AtariConfig:
        """A copy with some fields changed (validated); unknown field names raise ValueError."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(
                f"unknown Atari option {unknown[0]!r}; known options: {', '.join(sorted(names))}"
            )
        return dataclasses.replace(self, **changes)
