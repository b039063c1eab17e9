"""Atari games for blip-rl: names, presets, vectorised environments, reference scores.

Game names
    :func:`resolve_game` accepts the short and the official spellings of a game (``pong``,
    ``spaceinvaders``, ``space_invaders``, ``SpaceInvaders``, ``ALE/Pong-v5``,
    ``PongNoFrameskip-v4``) and maps them to the ROM id that ale-py ships. :func:`resolve_games`
    reads a comma-separated list in which ``@NAME`` expands a preset from ``envs/NAME.toml``.
    :func:`list_games` lists every single-player game of the installed ale-py with its minimal
    action count, which is computed from the ROM (and cached on disk), never hard-coded.

Environments
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

Reference scores
    :func:`reference_scores` and :func:`human_normalized` use the random and human scores of the
    Atari-57 table (Badia et al. 2020, Agent57 appendix; see ``envs/scores.toml``). A game that
    is not in the table has no reference pair and these functions return ``None``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import os
import re
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import ale_py
import gymnasium as gym
import numpy as np
from ale_py import roms
from gymnasium.spaces import Box, Discrete
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from blip_rl.errors import UsageError

__all__ = [
    "FULL_ACTION_COUNT",
    "OBS_SHAPE",
    "AtariConfig",
    "AtariVecEnv",
    "GameSequence",
    "GameSpec",
    "Preset",
    "add_env_arguments",
    "config_overrides_from_args",
    "evaluate",
    "format_game_list",
    "human_normalized",
    "list_games",
    "list_presets",
    "load_preset",
    "make_eval_envs",
    "make_train_envs",
    "reference_scores",
    "reference_source",
    "resolve_game",
    "resolve_games",
    "resolve_sequence",
]

FULL_ACTION_COUNT = 18
"""Size of the full Atari action set (``full_action_space=True``), shared by every game."""

STACK = 4
SCREEN = 84
OBS_SHAPE = (STACK, SCREEN, SCREEN)
"""Shape of one observation: 4 stacked grayscale 84x84 frames."""

MULTIPLAYER_ONLY = frozenset({"combat", "joust", "maze_craze", "warlords"})
"""ROMs that ale-py ships without a single-player mode (ale-py registers no v5 env for them)."""

Backend = Literal["native", "gymnasium"]
BACKENDS: tuple[str, ...] = ("native", "gymnasium")
GYM_VECTORIZATIONS: tuple[str, ...] = ("sync", "async")

_PRESET_PACKAGE = "blip_rl"
_PRESET_DIR = ("presets", "envs")
_SCORES_FILE = "scores.toml"


# --------------------------------------------------------------------------------------------
# Game names
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GameSpec:
    """One Atari game as ale-py ships it.

    Attributes:
        name: canonical blip-rl name, the ale-py ROM id in snake_case (``"space_invaders"``);
            used in run folders, TensorBoard tags and checkpoints.
        rom: ale-py ROM id, the argument of ``ale_py.roms.get_rom_path`` and
            ``AtariVectorEnv`` (equal to ``name`` today; kept apart so names may change).
        display_name: the PascalCase name of the ALE env ids (``"SpaceInvaders"``).
        minimal_actions: size of the game's minimal action set, read from the ROM.
    """

    name: str
    rom: str
    display_name: str
    minimal_actions: int

    @property
    def gym_id(self) -> str:
        """The ALE v5 environment id, e.g. ``"ALE/SpaceInvaders-v5"``."""
        return f"ALE/{self.display_name}-v5"


def _display_name(rom: str) -> str:
    # Same rule as ale-py's registration (rom_id_to_name): "space_invaders" -> "SpaceInvaders".
    return rom.title().replace("_", "")


_VERSION_SUFFIX = re.compile(r"-v\d+$")
_VARIANT_SUFFIXES = ("noframeskip", "deterministic")


def _name_key(name: str) -> str:
    """Normalise a user-typed game name to a lookup key: lowercase letters and digits only."""
    key = name.strip().lower()
    if key.startswith("ale/"):
        key = key[4:]
    key = _VERSION_SUFFIX.sub("", key)
    for suffix in _VARIANT_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            key = key[: -len(suffix)]
    return re.sub(r"[^a-z0-9]", "", key)


@functools.cache
def _all_rom_ids() -> tuple[str, ...]:
    """Every ROM id that the installed ale-py ships, sorted."""
    return tuple(sorted(roms.get_all_rom_ids()))


@functools.cache
def _single_player_rom_ids() -> tuple[str, ...]:
    return tuple(r for r in _all_rom_ids() if r not in MULTIPLAYER_ONLY)


@functools.cache
def _key_index() -> dict[str, str]:
    """Lookup key -> ROM id, for every ROM including the multiplayer-only ones."""
    return {_name_key(rom): rom for rom in _all_rom_ids()}


def _rom_path(rom: str) -> Path:
    path = roms.get_rom_path(rom)
    if path is None:  # pragma: no cover - only if ale-py's ROM list and files disagree
        raise RuntimeError(f"ale-py lists ROM {rom!r} but has no file for it")
    return Path(path)


def _cache_file() -> Path:
    """Disk cache of minimal action counts, one file per ale-py version."""
    root = os.environ.get("BLIP_RL_CACHE_DIR")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "blip-rl"
    return base / f"ale-minimal-actions-{ale_py.__version__}.json"


def _read_action_cache() -> dict[str, int]:
    try:
        data = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, int)}


def _write_action_cache(counts: Mapping[str, int]) -> None:
    """Best effort, atomic (temp file + rename): a failed write only costs recomputation."""
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(dict(sorted(counts.items())), f, indent=0)
        os.replace(tmp, path)
    except OSError:
        pass


def _count_minimal_actions(rom: str) -> int:
    """Load the ROM in a bare ALE and count its minimal action set (about 0.1 s)."""
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    ale = ale_py.ALEInterface()
    ale.loadROM(str(_rom_path(rom)))
    return len(ale.getMinimalActionSet())


_action_counts: dict[str, int] = {}


def _minimal_action_counts(rom_ids: Iterable[str]) -> dict[str, int]:
    """Minimal action counts of the given ROMs: memory cache, then disk cache, then the ROM."""
    wanted = list(rom_ids)
    missing = [r for r in wanted if r not in _action_counts]
    if missing:
        _action_counts.update(_read_action_cache())
        missing = [r for r in wanted if r not in _action_counts]
        if missing:
            for rom in missing:
                _action_counts[rom] = _count_minimal_actions(rom)
            _write_action_cache(_action_counts)
    return {r: _action_counts[r] for r in wanted}


def _spec(rom: str) -> GameSpec:
    count = _minimal_action_counts([rom])[rom]
    return GameSpec(name=rom, rom=rom, display_name=_display_name(rom), minimal_actions=count)


def _suggest(key: str) -> list[str]:
    index = _key_index()
    close = difflib.get_close_matches(key, list(index), n=3, cutoff=0.6)
    if not close:  # substring matches help with short forms such as "invaders"
        close = [k for k in index if key and key in k][:3]
    return [index[k] for k in close if index[k] not in MULTIPLAYER_ONLY]


def resolve_game(name: str | GameSpec) -> GameSpec:
    """Map a game name in any common spelling to its :class:`GameSpec`.

    Args:
        name: ``pong``, ``space_invaders``, ``SpaceInvaders``, ``spaceinvaders``,
            ``ALE/SpaceInvaders-v5``, ``SpaceInvadersNoFrameskip-v4`` ...; case, ``_``, ``-`` and
            spaces are ignored. A :class:`GameSpec` is returned unchanged.

    Raises:
        UsageError: the name matches no single-player ROM of the installed ale-py; the message
            names it and suggests the closest games.
    """
    if isinstance(name, GameSpec):
        return name
    key = _name_key(name)
    rom = _key_index().get(key)
    if rom is None:
        hint = ", ".join(_suggest(key))
        hint = f"did you mean: {hint}? " if hint else ""
        raise UsageError(
            f"unknown game {name.strip()!r}; {hint}"
            "run `python -m blip_rl.train --list-games` to see every game"
        )
    if rom in MULTIPLAYER_ONLY:
        raise UsageError(
            f"game {name.strip()!r} ships with ale-py but has no single-player mode; "
            "run `python -m blip_rl.train --list-games` to see the playable games"
        )
    return _spec(rom)


def list_games() -> list[GameSpec]:
    """Every single-player game of the installed ale-py, sorted by name.

    The first call loads each ROM once to count its minimal actions (a few seconds); the counts
    are then cached per ale-py version in ``$BLIP_RL_CACHE_DIR`` or ``~/.cache/blip-rl``.
    """
    counts = _minimal_action_counts(_single_player_rom_ids())
    return [
        GameSpec(name=r, rom=r, display_name=_display_name(r), minimal_actions=counts[r])
        for r in _single_player_rom_ids()
    ]


def format_game_list() -> str:
    """The text of ``--list-games``: every game ale-py ships, its action count, presets."""
    games = list_games()
    width = max(len(g.name) for g in games)
    dwidth = max(len(g.display_name) for g in games)
    lines = [
        f"{len(games)} Atari games in ale-py {ale_py.__version__} "
        f"(full action set: {FULL_ACTION_COUNT} actions for every game)",
        f"{'name':<{width}}  {'official':<{dwidth}}  {'actions':>7}  random / human score",
    ]
    for g in games:
        ref = reference_scores(g)
        ref_text = f"{ref[0]:g} / {ref[1]:g}" if ref else "no published pair"
        lines.append(
            f"{g.name:<{width}}  {g.display_name:<{dwidth}}  {g.minimal_actions:>7}  {ref_text}"
        )
    skipped = sorted(r for r in _all_rom_ids() if r in MULTIPLAYER_ONLY)
    if skipped:
        lines.append(
            f"not playable (no single-player mode): {', '.join(skipped)}",
        )
    lines.append(f"reference scores: {reference_source()}")
    lines.append("presets (use as --games @NAME):")
    for preset_name in list_presets():
        preset = load_preset(preset_name)
        lines.append(f"  @{preset_name}: {preset.description}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Presets and reference scores (package data, read through importlib.resources)
# --------------------------------------------------------------------------------------------


def _preset_dir() -> Any:
    return resources.files(_PRESET_PACKAGE).joinpath(*_PRESET_DIR)


def _read_toml(filename: str) -> dict[str, Any]:
    text = _preset_dir().joinpath(filename).read_text(encoding="utf-8")
    return tomllib.loads(text)


@functools.cache
def list_presets() -> list[str]:
    """Names of the game-sequence presets shipped in ``envs/`` (without ``.toml``)."""
    names = [
        entry.name[: -len(".toml")]
        for entry in _preset_dir().iterdir()
        if entry.name.endswith(".toml") and entry.name != _SCORES_FILE
    ]
    return sorted(names)


@dataclass(frozen=True)
class Preset:
    """A game-sequence preset from ``envs/<name>.toml``.

    Attributes:
        name: preset name, as in ``--games @name``.
        description: one line for humans.
        games: the games in learning order.
        protocol: overrides of :class:`AtariConfig` fields (e.g. ``{"sticky_actions": 0.0}``);
            explicit command-line options win over them.
    """

    name: str
    description: str
    games: tuple[GameSpec, ...]
    protocol: Mapping[str, Any] = field(default_factory=dict)


def load_preset(name: str) -> Preset:
    """Load a preset by name (a leading ``@`` is allowed).

    Raises:
        UsageError: no such preset; the message lists the presets.
    """
    bare = name.strip().removeprefix("@")
    if bare not in list_presets():
        known = ", ".join(f"@{p}" for p in list_presets())
        close = difflib.get_close_matches(bare, list_presets(), n=1)
        close = close or [p for p in list_presets() if bare and p.startswith(bare)][:1]
        hint = f"did you mean @{close[0]}? " if close else ""
        raise UsageError(f"unknown preset '@{bare}'; {hint}known presets: {known}")
    data = _read_toml(f"{bare}.toml")
    protocol = dict(data.get("protocol", {}))
    unknown = sorted(set(protocol) - {f.name for f in dataclasses.fields(AtariConfig)})
    if unknown:  # a broken shipped file is a bug, not a usage error
        raise ValueError(f"preset {bare}: unknown protocol fields {unknown}")
    return Preset(
        name=bare,
        description=str(data.get("description", "")),
        games=tuple(resolve_game(g) for g in data["games"]),
        protocol=protocol,
    )


@functools.cache
def _scores() -> tuple[str, dict[str, tuple[float, float]]]:
    data = _read_toml(_SCORES_FILE)
    table = {
        game: (float(pair["random"]), float(pair["human"])) for game, pair in data["games"].items()
    }
    return str(data["source"]), table


def reference_source() -> str:
    """The publication the reference scores come from."""
    return _scores()[0]


def reference_scores(game: str | GameSpec) -> tuple[float, float] | None:
    """Published ``(random, human)`` scores of a game, or ``None`` if there is no such pair.

    Args:
        game: a game name in any spelling accepted by :func:`resolve_game`, or a GameSpec.
    """
    return _scores()[1].get(resolve_game(game).name)


def human_normalized(game: str | GameSpec, score: float) -> float | None:
    """``(score - random) / (human - random)``: 0 is random play, 1 is human play.

    Returns ``None`` for a game without a published random/human pair.
    """
    ref = reference_scores(game)
    if ref is None:
        return None
    random_score, human_score = ref
    return (float(score) - random_score) / (human_score - random_score)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class GameSequence:
    """A resolved ``--games`` value: the games in order and the protocol to play them with.

    Attributes:
        games: the games, in learning order (a game may appear more than once).
        config: :class:`AtariConfig` defaults, then preset protocol overrides, then explicit
            overrides.
        presets: names of the presets that were expanded.
    """

    games: tuple[GameSpec, ...]
    config: AtariConfig
    presets: tuple[str, ...] = ()


def _split_items(spec: str | Sequence[str]) -> list[str]:
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    return [p.strip() for p in parts if p.strip()]


def resolve_sequence(
    spec: str | Sequence[str],
    overrides: Mapping[str, Any] | None = None,
    base: AtariConfig | None = None,
) -> GameSequence:
    """Resolve a ``--games`` value and the protocol that goes with it.

    Args:
        spec: comma-separated game names and ``@preset`` names, e.g. ``"pong,breakout"``,
            ``"@blip-atari6"`` or ``"@demo,space_invaders"``; or a list of such items.
        overrides: explicit :class:`AtariConfig` field values (from the command line); ``None``
            values are ignored. They win over preset protocols.
        base: configuration to start from (default ``AtariConfig()``).

    Raises:
        UsageError: empty list, unknown game or preset, invalid option, or two presets that
            ask for different values of the same option.
    """
    items = _split_items(spec)
    if not items:
        raise UsageError(
            f"empty game list {spec!r}; give games such as 'pong,breakout' or a preset "
            f"such as '@demo' ({', '.join('@' + p for p in list_presets())})"
        )
    games: list[GameSpec] = []
    presets: list[str] = []
    protocol: dict[str, Any] = {}
    for item in items:
        if item.startswith("@"):
            preset = load_preset(item)
            presets.append(preset.name)
            games.extend(preset.games)
            for key, value in preset.protocol.items():
                if key in protocol and protocol[key] != value:
                    raise UsageError(
                        f"presets disagree on {key} ({protocol[key]!r} vs {value!r} in "
                        f"@{preset.name}); set it explicitly"
                    )
                protocol[key] = value
        else:
            games.append(resolve_game(item))
    explicit = {k: v for k, v in (overrides or {}).items() if v is not None}
    config = (base or AtariConfig()).replace(**{**protocol, **explicit})
    return GameSequence(games=tuple(games), config=config, presets=tuple(presets))


def resolve_games(spec: str | Sequence[str]) -> list[GameSpec]:
    """The games of a ``--games`` value, in order, with ``@preset`` expanded.

    See :func:`resolve_sequence` for the protocol that presets carry.

    Raises:
        UsageError: empty list, unknown game or unknown preset.
    """
    return list(resolve_sequence(spec).games)


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


# --------------------------------------------------------------------------------------------
# Vector environments
# --------------------------------------------------------------------------------------------


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
        out = self._extend_info(info, life_lost)
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
