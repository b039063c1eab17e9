"""A ``--games`` value resolved: the games in order and the protocol that goes with them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from blip_rl.atari.config import AtariConfig
from blip_rl.atari.names import GameSpec, resolve_game
from blip_rl.atari.presets import list_presets, load_preset
from blip_rl.errors import UsageError

__all__ = ["GameSequence", "resolve_games", "resolve_sequence"]


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
