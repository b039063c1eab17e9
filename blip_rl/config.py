"""Run configuration: agent presets (TOML in ``agents/``), flags generated from dataclasses.

An agent preset names a continual method and sets fields of three dataclasses: ``[net]``
(:class:`~blip_rl.nets.NetConfig`), ``[method]`` (the method's own config class) and ``[ppo]``
(:class:`~blip_rl.ppo.PPOConfig`). Every one of those fields is also a command-line flag
(``learning_rate`` -> ``--learning-rate``); a flag given on the command line wins over the preset.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import tomllib
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from blip_rl.errors import UsageError
from blip_rl.methods import METHODS
from blip_rl.nets import NetConfig
from blip_rl.ppo import PPOConfig

__all__ = [
    "AgentPreset",
    "RunConfig",
    "add_dataclass_flags",
    "list_agents",
    "load_agent",
]

# PPOConfig fields that have a dedicated top-level flag instead of a generated one.
_TOP_LEVEL = {"num_envs"}


@dataclass
class AgentPreset:
    """An agent preset: a method (``method = "..."``) and overrides of the net (``[net]``), the
    method's settings (``[settings]``) and PPO (``[ppo]``)."""

    name: str
    method: str
    description: str
    net: dict[str, Any] = field(default_factory=dict)
    method_config: dict[str, Any] = field(default_factory=dict)
    ppo: dict[str, Any] = field(default_factory=dict)


def _agents_dir() -> Any:
    return importlib.resources.files("blip_rl") / "presets" / "agents"


def list_agents() -> list[str]:
    """Names of the agent presets shipped with blip-rl."""
    return sorted(
        p.name.removesuffix(".toml") for p in _agents_dir().iterdir() if p.name.endswith(".toml")
    )


def load_agent(name: str) -> AgentPreset:
    """Read agent preset ``name`` (``agents/<name>.toml``); UsageError if unknown or invalid."""
    known = list_agents()
    if name not in known:
        raise UsageError(f"unknown agent preset {name!r}; available: {', '.join(known)}")
    data = tomllib.loads((_agents_dir() / f"{name}.toml").read_text(encoding="utf-8"))
    method = data.get("method")
    if method not in METHODS:
        raise UsageError(
            f"agent preset {name!r} names unknown method {method!r}; known: {', '.join(METHODS)}"
        )
    preset = AgentPreset(
        name=name,
        method=method,
        description=str(data.get("description", "")),
        net=dict(data.get("net", {})),
        method_config=dict(data.get("settings", {})),
        ppo=dict(data.get("ppo", {})),
    )
    cls = METHODS[method].config_class
    check_section(NetConfig, preset.net, f"agent preset {name!r} [net]")
    check_section(PPOConfig, preset.ppo, f"agent preset {name!r} [ppo]")
    check_section(cls, preset.method_config, f"agent preset {name!r} [settings]")
    return preset


@dataclass
class RunConfig:
    """Everything that defines a run; saved as ``config.json`` in the run folder."""

    games: list[str]
    """Canonical game names in learning order."""
    games_spec: str
    """The ``--games`` value as given (e.g. ``@demo``)."""
    agent: str
    """Agent preset name (``agents/<agent>.toml``)."""
    method: str
    """Continual method (from the preset)."""
    steps_per_game: int = 200_000
    """Env steps (all envs) of training per game."""
    seed: int = 1
    """One seed for the network, the envs and the sampling: a run is reproducible with it."""
    eval_every: int = 50_000
    """Evaluate every game of the sequence every this many env steps (0: only after games)."""
    eval_episodes: int = 8
    """Episodes per game per evaluation."""
    checkpoint_every: int = 50_000
    """Write a checkpoint every this many env steps (and always after each game)."""
    shared_head: bool = False
    """One pair of heads with the full 18-action set for all games."""
    device: str = "cpu"
    """Torch device the run trains on."""
    atari: dict[str, Any] = field(default_factory=dict)
    """:class:`~blip_rl.atari.AtariConfig` fields."""
    net: dict[str, Any] = field(default_factory=dict)
    """:class:`~blip_rl.nets.NetConfig` fields."""
    ppo: dict[str, Any] = field(default_factory=dict)
    """:class:`~blip_rl.ppo.PPOConfig` fields."""
    method_config: dict[str, Any] = field(default_factory=dict)
    """Fields of the method's config class."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def net_config(self) -> NetConfig:
        d = dict(self.net)
        if "channels" in d:
            d["channels"] = tuple(d["channels"])
        return NetConfig(**d)

    def ppo_config(self) -> PPOConfig:
        return PPOConfig(**self.ppo)

    def method_config_object(self) -> Any:
        return METHODS[self.method].config_class(**self.method_config)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_value(tp: Any, text: str, flag: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() == "none" and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _parse_value(inner[0], text, flag)
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
    try:
        return tp(text)
    except (TypeError, ValueError):
        raise UsageError(f"invalid {flag} {text!r}; expected {tp.__name__}") from None


def add_dataclass_flags(
    parser: argparse.ArgumentParser, cls: type, title: str, seen: set[str]
) -> list[tuple[str, Any]]:
    """Add one flag per field of ``cls`` (skipping names in ``seen``); returns (field, type)."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    added = []
    for f in dataclasses.fields(cls):
        if f.name in seen or f.name in _TOP_LEVEL:
            continue
        seen.add(f.name)
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = (docs.get(f.name, "") + f" (default {default!r})").strip()
        group.add_argument(
            _flag(f.name),
            dest=f"cfg_{f.name}",
            default=None,
            metavar=f.name.upper(),
            help=help_text.replace("%", "%%"),
        )
        added.append((f.name, tp))
    return added


def _field_docs(cls: type) -> dict[str, str]:
    """Field docstrings (the string literal right after each field), first sentence."""
    import ast
    import inspect

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


def parse_field(cls: type, name: str, text: str) -> Any:
    """Parse the command-line text of field ``name`` of ``cls``."""
    return _parse_value(typing.get_type_hints(cls)[name], text, _flag(name))


def check_section(cls: type, values: dict[str, Any], where: str) -> None:
    """UsageError if ``values`` has a key that is not a field of ``cls``."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UsageError(
            f"{where}: unknown field {unknown[0]!r}; known: {', '.join(sorted(names)) or 'none'}"
        )
