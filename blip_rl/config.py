"""The run configuration: one typed tree, its presets and its command-line flags.

A run is described by one :class:`RunConfig` (saved as ``config.json`` in the run folder), whose
sections are the dataclasses of the modules that use them:

* ``atari``: :class:`~blip_rl.atari.AtariConfig` (the protocol: sticky actions, action set, ...);
* ``net``: :class:`~blip_rl.nets.NetConfig` (the network and its BLIP settings);
* ``ppo``: :class:`~blip_rl.ppo.PPOConfig` (the learner);
* ``method_config``: the continual method's own config class (``METHODS[method].config_class``).

Every dataclass checks its own fields in ``__post_init__`` (raising :class:`ValueError` that names
the field as a flag, see :mod:`blip_rl.validate`), so a ``RunConfig`` that exists is valid.

Values come from three layers, later ones winning: the dataclass defaults; the presets (the game
sequence's ``[protocol]`` from ``envs/``, then the agent preset from ``agents/NAME.toml`` with its
sections ``[run]``, ``[env]``, ``[net]``, ``[ppo]``, ``[settings]``); the command line. Every field
of every section is a flag generated from the dataclasses by :func:`add_config_flags`
(``learning_rate`` -> ``--learning-rate``; the Atari options ``backend``, ``num_threads`` and
``gym_vectorization`` are ``--env-backend``, ``--env-threads`` and ``--env-vectorization``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import torch

from blip_rl.atari import AtariConfig
from blip_rl.errors import UsageError
from blip_rl.files import preset_dir, preset_names
from blip_rl.methods import METHODS
from blip_rl.nets import NetConfig
from blip_rl.ppo import PPOConfig
from blip_rl.validate import check_bool, check_int

__all__ = [
    "AgentPreset",
    "FlagTable",
    "RunConfig",
    "add_config_flags",
    "given_flags",
    "list_agents",
    "load_agent",
]

RUN_FLAG_FIELDS = (
    "steps_per_game",
    "seed",
    "eval_every",
    "eval_episodes",
    "checkpoint_every",
    "shared_head",
    "torch_threads",
    "capture_video",
    "video_max_frames",
    "track",
    "wandb_project",
    "wandb_entity",
)
"""Top-level :class:`RunConfig` fields that are flags (and may be set by an agent's ``[run]``)."""

OUTCOME_NEUTRAL_FIELDS = (
    "device",
    "torch_threads",
    "checkpoint_every",
    "capture_video",
    "video_max_frames",
    "track",
    "wandb_project",
    "wandb_entity",
    "branched_from",
)
"""Top-level fields that change where and how a run is watched, not what it learns: runs that
differ only in these (and the seed) are one group in a comparison."""

_SECTIONS: dict[str, type] = {"atari": AtariConfig, "net": NetConfig, "ppo": PPOConfig}
"""Config sections with a fixed class (the method's section depends on the method)."""

_FLAG_NAMES = {
    ("atari", "backend"): "env-backend",
    ("atari", "num_threads"): "env-threads",
    ("atari", "gym_vectorization"): "env-vectorization",
}
"""Flags whose name is not the field's (the field name alone would not say it is the env's)."""


@dataclass
class RunConfig:
    """Everything that defines a run; saved as ``config.json`` in the run folder."""

    games: list[str] = field(default_factory=list)
    """Canonical game names in learning order."""
    games_spec: str = "@demo"
    """The ``--games`` value as given (e.g. ``@demo``)."""
    agent: str = "blip"
    """Agent preset name (``agents/<agent>.toml``)."""
    method: str = "blip"
    """Continual method (from the preset)."""
    steps_per_game: int = 200_000
    """Env steps (all envs together) of training per game."""
    seed: int = 1
    """One seed for the network, the envs and the sampling (any integer >= 0)."""
    eval_every: int = 50_000
    """Evaluate every game of the sequence every this many env steps (0: only after games)."""
    eval_episodes: int = 8
    """Episodes per game per evaluation."""
    checkpoint_every: int = 50_000
    """Write a checkpoint every this many env steps (0: only after games)."""
    shared_head: bool = False
    """One pair of heads over the full 18-action set for all games."""
    torch_threads: int = 0
    """Torch CPU threads (process-wide). 0: one thread when training on a CPU with at most 4
    cores (a second thread spins against the emulator threads and was measured 3x slower on
    2 cores), torch's default otherwise."""
    capture_video: bool = False
    """After each game, record one evaluation episode of every game from the RGB screen
    (videos/after-<k>-<game>.mp4, TensorBoard video/<game>/after_<k>, a contact sheet). See
    :mod:`blip_rl.video`."""
    video_max_frames: int = 1000
    """Frames (agent steps, 15 per second) per recorded video at most, up to 10000; longer
    episodes are cut."""
    track: bool = False
    """Mirror the run (scalars, matrix, hparams, videos) to Weights & Biases; needs the extra
    blip-rl[wandb] (WANDB_MODE=offline works without a network). See :mod:`blip_rl.wandb_log`."""
    wandb_project: str = "blip-rl"
    """W&B project of --track."""
    wandb_entity: str | None = None
    """W&B entity (user or team) of --track; default: your W&B default entity."""
    device: str = "cpu"
    """Torch device the run trains on."""
    atari: AtariConfig = field(default_factory=AtariConfig)
    """The Atari protocol."""
    net: NetConfig = field(default_factory=NetConfig)
    """The network."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """The PPO learner."""
    method_config: Any = None
    """The method's settings (an instance of ``METHODS[method].config_class``)."""
    branched_from: str | None = None
    """The after-game checkpoint this run started from (``--from-checkpoint``), if any."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"invalid method {self.method!r}; expected one of {', '.join(METHODS)}"
            )
        sections = {**_SECTIONS, "method_config": METHODS[self.method].config_class}
        for name, cls in sections.items():
            value = getattr(self, name)
            if value is None:
                value = cls()
            elif isinstance(value, dict):
                check_keys(cls, value, f"[{name}]")
                value = cls(**value)
            elif not isinstance(value, cls):
                raise ValueError(f"section {name} must be a {cls.__name__}, not {value!r}")
            setattr(self, name, value)
        if not self.games:
            raise ValueError(f"invalid --games {self.games_spec!r}; expected at least one game")
        check_int(self, "steps_per_game", 1)
        check_int(self, "seed", 0)
        check_int(self, "eval_every", 0)
        check_int(self, "eval_episodes", 1)
        check_int(self, "checkpoint_every", 0)
        check_bool(self, "shared_head")
        check_int(self, "torch_threads", 0)
        check_bool(self, "capture_video")
        check_int(self, "video_max_frames", 1, 10_000)  # frames are kept in memory: 100 KB each
        check_bool(self, "track")
        _check_wandb_name(self.wandb_project, "--wandb-project")
        if self.wandb_entity is not None:
            _check_wandb_name(self.wandb_entity, "--wandb-entity")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ValueError(f"invalid --device {self.device!r}; expected cpu or cuda") from None
        if self.shared_head and not self.atari.full_action_space:
            self.atari = self.atari.replace(full_action_space=True)
        if METHODS[self.method].needs_blip_layers and not self.net.blip:
            raise ValueError(f"agent {self.agent!r} (method {self.method}) needs --blip true")
        if getattr(self.method_config, "reserve", 0.0) > 0 and self.shared_head:
            raise ValueError(
                "--reserve needs one head per game (the reserved units feed the later games' "
                "heads only); it cannot be used with --shared-head"
            )

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready data (sections as dicts)."""
        data = dataclasses.asdict(self)
        data["net"]["channels"] = list(self.net.channels)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunConfig:
        """Rebuild from :meth:`to_json` data (validates; unknown top-level keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _check_wandb_name(value: Any, flag: str) -> None:
    """A W&B project or entity name: non-empty text of at most 128 characters without
    ``/ \\ # ? % :`` (W&B refuses those)."""
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > 128
        or any(ch in value for ch in "/\\#?%:")
    ):
        raise ValueError(
            f"invalid {flag} {value!r}; expected a W&B name (1 to 128 characters, "
            "none of / \\ # ? % :)"
        )


# ------------------------------------------------------------------------------------ presets
@dataclass
class AgentPreset:
    """An agent preset (``agents/NAME.toml``): a method (``method = "..."``) and overrides of
    the run (``[run]``), the protocol (``[env]``), the network (``[net]``), PPO (``[ppo]``) and
    the method's settings (``[settings]``)."""

    name: str
    method: str
    description: str
    run: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    net: dict[str, Any] = field(default_factory=dict)
    ppo: dict[str, Any] = field(default_factory=dict)
    method_config: dict[str, Any] = field(default_factory=dict)


def list_agents() -> list[str]:
    """Names of the agent presets shipped with blip-rl."""
    return preset_names("agents")


def load_agent(name: str) -> AgentPreset:
    """Read agent preset ``name`` (``agents/<name>.toml``); UsageError if unknown or invalid."""
    known = list_agents()
    if name not in known:
        raise UsageError(f"unknown agent preset {name!r}; available: {', '.join(known)}")
    where = f"agent preset {name!r}"
    data = tomllib.loads((preset_dir("agents") / f"{name}.toml").read_text(encoding="utf-8"))
    unknown = sorted(set(data) - {"method", "description", "run", "env", "net", "ppo", "settings"})
    if unknown:
        raise UsageError(f"{where}: unknown section {unknown[0]!r}")
    method = data.get("method")
    if method not in METHODS:
        raise UsageError(f"{where} names unknown method {method!r}; known: {', '.join(METHODS)}")
    preset = AgentPreset(
        name=name,
        method=method,
        description=str(data.get("description", "")),
        run=dict(data.get("run", {})),
        env=dict(data.get("env", {})),
        net=dict(data.get("net", {})),
        ppo=dict(data.get("ppo", {})),
        method_config=dict(data.get("settings", {})),
    )
    try:
        unknown_run = sorted(set(preset.run) - set(RUN_FLAG_FIELDS))
        if unknown_run:
            raise ValueError(
                f"[run]: unknown field {unknown_run[0]!r}; known: {', '.join(RUN_FLAG_FIELDS)}"
            )
        check_keys(AtariConfig, preset.env, "[env]")
        check_keys(NetConfig, preset.net, "[net]")
        check_keys(PPOConfig, preset.ppo, "[ppo]")
        check_keys(METHODS[method].config_class, preset.method_config, "[settings]")
    except ValueError as exc:
        raise UsageError(f"{where} {exc}") from None
    return preset


def check_keys(cls: type, values: dict[str, Any], where: str) -> None:
    """ValueError if ``values`` has a key that is not a field of ``cls``."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(
            f"{where}: unknown field {unknown[0]!r}; known: {', '.join(sorted(names)) or 'none'}"
        )


# -------------------------------------------------------------------------------------- flags
@dataclass(frozen=True)
class Flag:
    """One generated flag: the section and field it sets, and the field's type."""

    section: str
    """``run``, ``atari``, ``net``, ``ppo`` or ``method`` (the agent's method)."""
    field: str
    type: Any
    flag: str
    methods: tuple[str, ...] = ()
    """For method fields: the methods whose config has this field."""


FlagTable = dict[str, Flag]
"""argparse ``dest`` -> :class:`Flag`."""


def add_config_flags(parser: argparse.ArgumentParser) -> FlagTable:
    """Add one flag per configuration field (run, protocol, network, PPO, every method's
    settings) to ``parser``; every flag defaults to None (not given). Returns the table that
    :func:`given_flags` reads back."""
    table: FlagTable = {}
    groups: list[tuple[str, str, type, tuple[str, ...] | None]] = [
        ("run", "run", RunConfig, RUN_FLAG_FIELDS),
        ("atari", "Atari protocol ([env] in an agent preset)", AtariConfig, None),
        ("net", "network ([net])", NetConfig, None),
        ("ppo", "PPO ([ppo])", PPOConfig, None),
    ]
    for section, title, cls, only in groups:
        group = parser.add_argument_group(title)
        for f in dataclasses.fields(cls):
            if only is not None and f.name not in only:
                continue
            _add_flag(group, table, section, cls, f)
    group = parser.add_argument_group("continual method ([settings]; only the agent's method)")
    for name, method_cls in METHODS.items():
        for f in dataclasses.fields(method_cls.config_class):
            dest = f"cfg_method_{f.name}"
            if dest in table:
                old = table[dest]
                table[dest] = dataclasses.replace(old, methods=(*old.methods, name))
                continue
            _add_flag(group, table, "method", method_cls.config_class, f, methods=(name,))
    return table


def _add_flag(
    group: Any,
    table: FlagTable,
    section: str,
    cls: type,
    f: dataclasses.Field[Any],
    methods: tuple[str, ...] = (),
) -> None:
    flag = "--" + _FLAG_NAMES.get((section, f.name), f.name.replace("_", "-"))
    tp = typing.get_type_hints(cls)[f.name]
    default = f.default if f.default is not dataclasses.MISSING else None
    if f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    if isinstance(default, tuple):
        default = ",".join(map(str, default))
    text = (_field_docs(cls).get(f.name, "") + f" (default {default})").strip()
    dest = f"cfg_{section}_{f.name}"
    kwargs: dict[str, Any] = {"nargs": "?", "const": "true"} if tp is bool else {}
    group.add_argument(
        flag,
        dest=dest,
        default=None,
        metavar=f.name.upper(),
        help=text.replace("%", "%%"),
        **kwargs,
    )
    table[dest] = Flag(section, f.name, tp, flag, methods)


def given_flags(args: argparse.Namespace, table: FlagTable) -> dict[str, dict[str, Any]]:
    """The flags given on the command line, parsed and grouped by section
    (``{"run": {...}, "atari": {...}, "net": {...}, "ppo": {...}, "method": {...}}``).
    UsageError for a value that does not parse as the field's type."""
    out: dict[str, dict[str, Any]] = {s: {} for s in ("run", "atari", "net", "ppo", "method")}
    for dest, spec in table.items():
        text = getattr(args, dest, None)
        if text is not None:
            out[spec.section][spec.field] = parse_value(spec.type, text, spec.flag)
    return out


def parse_value(tp: Any, text: str, flag: str) -> Any:
    """Parse the command-line ``text`` of a field of type ``tp``; UsageError if it does not
    parse (range checks are the dataclasses' job)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() == "none" and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return parse_value(inner[0], text, flag)
    if origin is typing.Literal:
        if text not in args:
            raise UsageError(
                f"invalid {flag} {text!r}; expected one of {', '.join(map(str, args))}"
            )
        return text
    if origin is tuple:
        try:
            return tuple(int(x) for x in text.split(","))
        except ValueError:
            raise UsageError(
                f"invalid {flag} {text!r}; expected comma-separated integers"
            ) from None
    if tp is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"invalid {flag} {text!r}; expected true or false")
    if tp is float:
        try:
            value = float(text)
        except ValueError:
            raise UsageError(f"invalid {flag} {text!r}; expected a number") from None
        if not math.isfinite(value):
            raise UsageError(f"invalid {flag} {text!r}; expected a finite number")
        return value
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"invalid {flag} {text!r}; expected an integer") from None
    return tp(text)


def _field_docs(cls: type) -> dict[str, str]:
    """Field docstrings (the string literal right after each field), first sentence."""
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            text = " ".join(nxt.value.value.split())
            docs[node.target.id] = text.split(". ")[0].rstrip(".")
    return docs
