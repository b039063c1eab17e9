"""Atari games for blip-rl: names, presets, vectorised environments, reference scores.

One module per job; everything public is re-exported here, so ``from blip_rl.atari import X``
works for every name below.

:mod:`blip_rl.atari.names`
    :func:`resolve_game` maps any common spelling of a game (``pong``, ``space_invaders``,
    ``SpaceInvaders``, ``ALE/Pong-v5``, ``PongNoFrameskip-v4``) to the ROM id that ale-py
    ships; :func:`list_games` lists every single-player game with its minimal action count,
    read from the ROM and cached on disk.
:mod:`blip_rl.atari.presets`
    Game-sequence presets (``--games @NAME``, from ``envs/NAME.toml``), the random and human
    reference scores of the Atari-57 table, human normalisation, the ``--list-games`` text.
:mod:`blip_rl.atari.config`
    :class:`AtariConfig`, the protocol (sticky actions, action set, frame skip, backend, ...),
    and its command-line options.
:mod:`blip_rl.atari.sequence`
    :func:`resolve_sequence` / :func:`resolve_games`: a comma-separated ``--games`` value, with
    ``@NAME`` expanded, and the protocol that its presets carry.
:mod:`blip_rl.atari.envs`
    :func:`make_train_envs` / :func:`make_eval_envs` build an :class:`AtariVecEnv` with one
    observation and episode contract for both backends (ale-py's C++ vector env, or gymnasium's
    ``AtariPreprocessing``); the contract is spelled out in that module's docstring.
:mod:`blip_rl.atari.evaluation`
    :func:`evaluate` plays whole games with a policy and returns their true scores.
"""

from blip_rl.atari.config import (
    BACKENDS,
    GYM_VECTORIZATIONS,
    AtariConfig,
    Backend,
)
from blip_rl.atari.envs import (
    OBS_SHAPE,
    SCREEN,
    STACK,
    AtariVecEnv,
    make_eval_envs,
    make_train_envs,
)
from blip_rl.atari.evaluation import PolicyFn, evaluate
from blip_rl.atari.names import (
    FULL_ACTION_COUNT,
    MULTIPLAYER_ONLY,
    GameSpec,
    list_games,
    resolve_game,
)
from blip_rl.atari.presets import (
    Preset,
    format_game_list,
    human_normalized,
    list_presets,
    load_preset,
    reference_scores,
    reference_source,
)
from blip_rl.atari.sequence import GameSequence, resolve_games, resolve_sequence

__all__ = [
    "BACKENDS",
    "FULL_ACTION_COUNT",
    "GYM_VECTORIZATIONS",
    "MULTIPLAYER_ONLY",
    "OBS_SHAPE",
    "SCREEN",
    "STACK",
    "AtariConfig",
    "AtariVecEnv",
    "Backend",
    "GameSequence",
    "GameSpec",
    "PolicyFn",
    "Preset",
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
