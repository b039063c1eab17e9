"""Game names: spellings, ROM ids, the list of playable games, minimal action counts.

:func:`resolve_game` accepts the short and the official spellings of a game (``pong``,
``spaceinvaders``, ``space_invaders``, ``SpaceInvaders``, ``ALE/Pong-v5``,
``PongNoFrameskip-v4``) and maps them to the ROM id that ale-py ships. :func:`list_games` lists
every single-player game of the installed ale-py with its minimal action count, which is computed
from the ROM (and cached on disk), never hard-coded.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import ale_py
from ale_py import roms

from blip_rl.errors import UsageError
from blip_rl.files import atomic_write

__all__ = [
    "FULL_ACTION_COUNT",
    "MULTIPLAYER_ONLY",
    "GameSpec",
    "fire_action",
    "list_games",
    "resolve_game",
]

FULL_ACTION_COUNT = 18
"""Size of the full Atari action set (``full_action_space=True``), shared by every game."""

MULTIPLAYER_ONLY = frozenset({"combat", "joust", "maze_craze", "warlords"})
"""ROMs that ale-py ships without a single-player mode (ale-py registers no v5 env for them)."""


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
    """Best effort, atomic: a failed write only costs recomputation."""
    try:
        atomic_write(_cache_file(), json.dumps(dict(sorted(counts.items())), indent=0).encode())
    except OSError:
        pass


def _count_minimal_actions(rom: str) -> int:
    """Load the ROM in a bare ALE and count its minimal action set (about 0.1 s)."""
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    ale = ale_py.ALEInterface()
    ale.loadROM(str(_rom_path(rom)))
    return len(ale.getMinimalActionSet())


@functools.cache
def fire_action(rom: str, full_action_space: bool) -> int | None:
    """Index of FIRE in the game's action set (minimal or full), or None if it has no FIRE."""
    if full_action_space:
        return int(ale_py.Action.FIRE.value)
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    ale = ale_py.ALEInterface()
    ale.loadROM(str(_rom_path(rom)))
    actions = list(ale.getMinimalActionSet())
    return actions.index(ale_py.Action.FIRE) if ale_py.Action.FIRE in actions else None


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
