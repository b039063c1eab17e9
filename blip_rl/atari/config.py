"""The Atari protocol (:class:`AtariConfig`) and its command-line options."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from blip_rl.errors import UsageError

__all__ = [
    "BACKENDS",
    "GYM_VECTORIZATIONS",
    "AtariConfig",
    "Backend",
    "add_env_arguments",
    "config_overrides_from_args",
]

Backend = Literal["native", "gymnasium"]
BACKENDS: tuple[str, ...] = ("native", "gymnasium")
GYM_VECTORIZATIONS: tuple[str, ...] = ("sync", "async")


_CLI_FLAGS = {
    "sticky_actions": "--sticky-actions",
    "full_action_space": "--full-action-space",
    "max_episode_frames": "--max-episode-frames",
    "backend": "--env-backend",
    "num_threads": "--env-threads",
}
"""AtariConfig fields set by :func:`add_env_arguments`, named in error messages."""


@dataclass(frozen=True)
class AtariConfig:
    """The Atari protocol and how to run it. Invalid values raise :class:`UsageError`."""

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
        def bad(name: str, value: object, accepted: str) -> UsageError:
            flag = _CLI_FLAGS.get(name)
            where = f" ({flag})" if flag else ""
            return UsageError(f"invalid {name}{where} {value!r}; expected {accepted}")

        p = self.sticky_actions
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
            raise bad("sticky_actions", p, "a probability in [0, 1]")
        for name in ("full_action_space", "fire_reset", "episodic_life", "clip_rewards"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, getattr(self, name), "true or false")
        for name, low in (("max_episode_frames", 1), ("frame_skip", 1), ("noop_max", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise bad(name, value, f"an integer >= {low}")
        n = self.num_threads
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise bad("num_threads", n, "an integer >= 0 (0 = automatic)")
        if self.backend not in BACKENDS:
            raise bad("backend", self.backend, " or ".join(BACKENDS))
        if self.gym_vectorization not in GYM_VECTORIZATIONS:
            raise bad("gym_vectorization", self.gym_vectorization, " or ".join(GYM_VECTORIZATIONS))

    def replace(self, **changes: Any) -> AtariConfig:
        """A copy with some fields changed (validated); unknown field names raise UsageError."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise UsageError(
                f"unknown Atari option {unknown[0]!r}; known options: {', '.join(sorted(names))}"
            )
        return dataclasses.replace(self, **changes)


def add_env_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the Atari protocol options to a CLI parser (all default to ``None`` = not given).

    Pass ``config_overrides_from_args(args)`` to :func:`resolve_sequence` to build the config.
    """
    group = parser.add_argument_group("Atari protocol")
    group.add_argument(
        "--sticky-actions",
        type=float,
        metavar="P",
        help="sticky-action probability in [0, 1] (default 0.25; the @blip-atari6 preset uses 0)",
    )
    group.add_argument(
        "--full-action-space",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use all 18 Atari actions for every game (default: each game's minimal set)",
    )
    group.add_argument(
        "--max-episode-frames",
        type=int,
        metavar="N",
        help="truncate episodes after N emulator frames (default 108000)",
    )
    group.add_argument(
        "--env-backend",
        choices=BACKENDS,
        help="native: ale-py's C++ vector env (default); gymnasium: AtariPreprocessing fallback",
    )
    group.add_argument(
        "--env-threads",
        type=int,
        metavar="N",
        help="native backend: C++ threads (default 0 = one per core, at most one per env)",
    )


def config_overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`AtariConfig` overrides given on the command line by :func:`add_env_arguments`."""
    return {
        "sticky_actions": args.sticky_actions,
        "full_action_space": args.full_action_space,
        "max_episode_frames": args.max_episode_frames,
        "backend": args.env_backend,
        "num_threads": args.env_threads,
    }
