"""Game-sequence presets, reference scores and human normalisation (package data).

Presets (``--games @NAME``) and the score table are TOML files under ``blip_rl/presets/envs``,
read through :mod:`importlib.resources` so that they work from a wheel as well as a checkout.

:func:`reference_scores` and :func:`human_normalized` use the random and human scores of the
Atari-57 table (Badia et al. 2020, Agent57 appendix; see ``envs/scores.toml``). A game that is not
in the table has no reference pair and these functions return ``None``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import ale_py

from blip_rl.atari.config import AtariConfig
from blip_rl.atari.names import (
    FULL_ACTION_COUNT,
    MULTIPLAYER_ONLY,
    GameSpec,
    _all_rom_ids,
    list_games,
    resolve_game,
)
from blip_rl.errors import UsageError
from blip_rl.files import preset_dir, preset_names

__all__ = [
    "Preset",
    "format_game_list",
    "human_normalized",
    "list_presets",
    "load_preset",
    "reference_scores",
    "reference_source",
]

_SCORES_FILE = "scores.toml"


def _read_toml(filename: str) -> dict[str, Any]:
    text = preset_dir("envs").joinpath(filename).read_text(encoding="utf-8")
    return tomllib.loads(text)


@functools.cache
def list_presets() -> list[str]:
    """Names of the game-sequence presets shipped in ``envs/`` (without ``.toml``)."""
    return preset_names("envs", exclude=(_SCORES_FILE,))


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
