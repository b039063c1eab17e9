"""The grid of a sweep: games sequences x agents x settings x seeds, as a list of trials.

A grid comes from flags (``--games @demo --agents blip,finetune --seeds 1,2,3 --set
f_prior=5e-18,1e-20``) or from a TOML file (``--grid FILE`` or ``--grid @NAME`` for a file shipped
in ``blip_rl/presets/sweeps/``). A setting is any flag of ``python -m blip_rl.train`` spelled as
its field name (``f_prior`` -> ``--f-prior``); one value fixes it for every trial, several values
make a dimension of the grid (cartesian product).

A setting that means nothing for an agent is left out of that agent's trials instead of
multiplying them: a continual method's own setting (``ewc_lambda``) applies only to the agents of
that method, and the BLIP layer settings (``f_prior``, ``max_bits``) only to agents whose network
has BLIP layers. So ``--agents blip,finetune --set f_prior=5e-18,1e-20`` gives two BLIP trials per
seed and one fine-tuning trial per seed. A setting that applies to no agent of the grid is an
error.

Every trial is checked before anything runs by the train CLI itself (``--dry-run`` in-process):
an unknown agent, game, setting or value anywhere in the grid is one :class:`UsageError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import io
import itertools
import json
import re
import tomllib
from collections.abc import Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blip_rl.errors import UsageError
from blip_rl.files import preset_dir, preset_names
from blip_rl.nets import BLIP_ONLY_FIELDS

__all__ = [
    "GridSpec",
    "Trial",
    "TrainFlag",
    "expand",
    "list_grids",
    "load_grid_file",
    "parse_seeds",
    "parse_set",
    "train_flags",
    "validate",
]

_OWN_FLAGS = {
    "games": "give the games with --games",
    "agent": "give the agents with --agents",
    "seed": "give the seeds with --seeds",
}
_RESERVED = {
    "run_name",
    "runs_dir",
    "resume",
    "no_progress",
    "dry_run",
    "list_games",
    "list_agents",
}
"""Train flags the sweep sets itself (or that do not make a run)."""

_FALSE = ("0", "false", "no", "off")


# ------------------------------------------------------------------------- the train flags
@dataclass(frozen=True)
class TrainFlag:
    """One flag of ``python -m blip_rl.train`` that a grid may set."""

    key: str
    """The setting's name in a grid: the flag without dashes (``--f-prior`` -> ``f_prior``)."""
    flag: str
    """The flag as the train CLI spells it."""

    def render(self, text: str) -> list[str]:
        """The command-line arguments that give this setting the value ``text`` (every
        setting flag of the train CLI takes a value; booleans take ``true``/``false``)."""
        return [f"{self.flag}={text}"]


def train_flags() -> dict[str, TrainFlag]:
    """Every setting a grid may give, read from the train CLI's own parser (name -> flag)."""
    from blip_rl import train

    parser = train.build_parser()[0]
    flags: dict[str, TrainFlag] = {}
    for action in parser._actions:
        longs = [s for s in action.option_strings if s.startswith("--")]
        if not longs or action.nargs == 0:  # --help and the CLI's own switches
            continue
        key = longs[0][2:].replace("-", "_")
        if key not in _OWN_FLAGS and key not in _RESERVED:
            flags[key] = TrainFlag(key, longs[0])
    return flags


def _method_fields() -> dict[str, set[str]]:
    """Continual method name -> the names of its own settings."""
    from blip_rl.methods import METHODS

    return {m: {f.name for f in dataclasses.fields(cls.config_class)} for m, cls in METHODS.items()}


# ------------------------------------------------------------------------------- the spec
@dataclass
class GridSpec:
    """A grid as the user wrote it (flags or TOML), before expansion."""

    games: list[str] = field(default_factory=lambda: ["@demo"])
    """One ``--games`` value per game sequence."""
    agents: list[str] = field(default_factory=lambda: ["blip"])
    seeds: list[int] = field(default_factory=lambda: [1])
    settings: dict[str, list[str]] = field(default_factory=dict)
    """Setting -> its values as command-line text; one value fixes it, several sweep it."""
    agent_settings: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    """Agent -> settings for that agent only (a TOML ``[agents.NAME]`` table); they replace
    the same keys of :attr:`settings`."""
    name: str | None = None
    """The sweep's name (a TOML file's ``name``, else its file name)."""
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _key(raw: str, where: str) -> str:
    key = raw.strip().replace("-", "_")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", key):
        raise UsageError(f"invalid setting name {raw!r} in {where}; expected a field name")
    return key


def parse_set(items: Sequence[str]) -> dict[str, list[str]]:
    """``--set NAME=V1,V2`` flags -> {name: values}. Values are split on commas, or on ``;``
    when the text holds one (for values that contain commas: ``channels=32,64,64;16,32,64``)."""
    out: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"invalid --set {item!r}; expected NAME=VALUE[,VALUE...]")
        raw, text = item.split("=", 1)
        key = _key(raw, "--set")
        values = [v.strip() for v in text.split(";" if ";" in text else ",")]
        if not text.strip() or any(v == "" for v in values):
            raise UsageError(f"invalid --set {item!r}; a value is empty")
        out[key] = values
    return out


def parse_seeds(text: str | Sequence[Any] | int, where: str = "--seeds") -> list[int]:
    """``1,2,3`` or ``1-5`` (or a TOML list / int) -> distinct seeds in order."""
    parts: list[Any]
    if isinstance(text, bool):
        raise UsageError(f"invalid {where} {text!r}; expected integers such as 1,2,3 or 1-5")
    if isinstance(text, int):
        parts = [text]
    elif isinstance(text, str):
        parts = [p.strip() for p in text.split(",")]
    else:
        parts = list(text)
    seeds: list[int] = []
    for p in parts:
        if isinstance(p, int) and not isinstance(p, bool):
            seeds.append(p)
            continue
        m = re.fullmatch(r"(-?\d+)(?:-(-?\d+))?", str(p))
        if not m:
            raise UsageError(f"invalid {where} {p!r}; expected integers such as 1,2,3 or 1-5")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise UsageError(f"invalid {where} range {p!r}; expected LOW-HIGH with LOW <= HIGH")
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise UsageError(f"invalid {where}: no seed given")
    return list(dict.fromkeys(seeds))


def _names(text: str, where: str) -> list[str]:
    names = [n.strip() for n in text.split(",")]
    if not text.strip() or any(not n for n in names):
        raise UsageError(f"invalid {where} {text!r}; expected a comma-separated list")
    return list(dict.fromkeys(names))


def _text(value: Any, key: str, where: str) -> str:
    """A TOML value as the command-line text of the setting."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list) and all(isinstance(v, int | float | str) for v in value):
        return ",".join(_text(v, key, where) for v in value)
    raise UsageError(f"{where}: invalid value {value!r} for {key}")


def _values(value: Any, key: str, where: str) -> list[str]:
    """A TOML setting: a list is a dimension (a list of lists: tuple-valued settings)."""
    if isinstance(value, list):
        if not value:
            raise UsageError(f"{where}: {key} = [] has no value")
        return [_text(v, key, where) for v in value]
    return [_text(value, key, where)]


def _settings_table(table: Any, where: str) -> dict[str, list[str]]:
    if not isinstance(table, dict):
        raise UsageError(f"{where}: expected a table of settings")
    return {_key(k, where): _values(v, k, where) for k, v in table.items()}


def list_grids() -> list[str]:
    """Names of the grid files shipped in ``blip_rl/presets/sweeps`` (``--grid @NAME``)."""
    return preset_names("sweeps")


def load_grid_file(spec: str) -> GridSpec:
    """Read a grid file (a path, or ``@NAME`` for a shipped one); UsageError if invalid."""
    if spec.startswith("@"):
        known = list_grids()
        if spec[1:] not in known:
            raise UsageError(f"unknown grid {spec!r}; shipped grids: @{', @'.join(known)}")
        text = (preset_dir("sweeps") / f"{spec[1:]}.toml").read_text(encoding="utf-8")
        stem = spec[1:]
    else:
        path = Path(spec)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--grid {spec}: cannot read it ({exc.strerror or exc})") from None
        stem = path.stem
    where = f"grid {spec}"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{where}: invalid TOML ({exc})") from None
    known_keys = {"name", "description", "games", "agents", "seeds", "set"}
    unknown = sorted(set(data) - known_keys)
    if unknown:
        raise UsageError(
            f"{where}: unknown key {unknown[0]!r}; known: {', '.join(sorted(known_keys))}"
        )
    grid = GridSpec(name=str(data.get("name", stem)), description=str(data.get("description", "")))
    if "games" in data:
        games = data["games"]
        games = [games] if isinstance(games, str) else games
        if not isinstance(games, list) or not games or not all(isinstance(g, str) for g in games):
            raise UsageError(f"{where}: games must be a string or a list of strings")
        grid.games = list(dict.fromkeys(games))
    if "agents" in data:
        agents = data["agents"]
        if isinstance(agents, str):
            grid.agents = _names(agents, f"{where} agents")
        elif isinstance(agents, list) and agents and all(isinstance(a, str) for a in agents):
            grid.agents = list(dict.fromkeys(agents))
        elif isinstance(agents, dict) and agents:
            grid.agents = list(agents)
            grid.agent_settings = {
                a: _settings_table(t, f"{where} [agents.{a}]") for a, t in agents.items()
            }
        else:
            raise UsageError(f"{where}: agents must be a list of names or [agents.NAME] tables")
    if "seeds" in data:
        grid.seeds = parse_seeds(data["seeds"], f"{where} seeds")
    if "set" in data:
        grid.settings = _settings_table(data["set"], f"{where} [set]")
    return grid


# ------------------------------------------------------------------------------ the trials
@dataclass(frozen=True)
class Trial:
    """One run of the grid: a ``python -m blip_rl.train`` command and its run folder name."""

    name: str
    """The run folder's name (``runs/<sweep>/<name>``): ``[games__]agent[__k=v...]__s<seed>``."""
    group: str
    """The name without the seed: trials of one group differ only by their seed."""
    games: str
    agent: str
    seed: int
    settings: dict[str, str]
    """Every setting this trial gives (fixed and swept), as command-line text."""
    swept: dict[str, str]
    """The settings that vary among this agent's trials (they name the trial)."""
    argv: list[str]
    """Arguments of ``python -m blip_rl.train`` for a new run (without the folder flags)."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", text.replace(",", "-"))


def _games_label(games: str) -> str:
    label = games[1:] if games.startswith("@") else games
    label = _safe(label)
    if len(label) > 40:
        label = f"{len(games.split(','))}games-{hashlib.sha1(games.encode()).hexdigest()[:6]}"
    return label


def expand(grid: GridSpec, flags: dict[str, TrainFlag] | None = None) -> list[Trial]:
    """The trials of ``grid``: sequences x agents x (applicable) settings x seeds.

    UsageError for an unknown agent or setting name, a setting reserved to the sweep, or a
    setting that applies to no agent of the grid. Values are checked by :func:`validate`."""
    from blip_rl.config import load_agent

    flags = train_flags() if flags is None else flags
    method_fields = _method_fields()
    method_keys = set().union(*method_fields.values())
    for key in [*grid.settings, *(k for t in grid.agent_settings.values() for k in t)]:
        if key in _OWN_FLAGS:
            raise UsageError(f"--set {key}: {_OWN_FLAGS[key]}")
        if key in _RESERVED:
            raise UsageError(f"--set {key}: the sweep sets it for each trial")
        if key not in flags:
            close = difflib.get_close_matches(key, list(flags), n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise UsageError(
                f"unknown setting {key!r}: a setting is a flag of python -m blip_rl.train "
                f"without dashes (f_prior, learning_rate, steps_per_game, ...){hint}"
            )
    used: set[str] = set()
    trials: dict[tuple[Any, ...], Trial] = {}
    for games in grid.games:
        for agent in grid.agents:
            preset = load_agent(agent)
            own = grid.agent_settings.get(agent, {})
            settings = {**grid.settings, **own}
            applicable: dict[str, list[str]] = {}
            for key, values in settings.items():
                if key in method_keys and key not in method_fields[preset.method]:
                    if key in own:
                        owners = sorted(m for m, f in method_fields.items() if key in f)
                        raise UsageError(
                            f"setting {key!r} does not apply to agent {agent!r} (method "
                            f"{preset.method}); it is a setting of {', '.join(owners)}"
                        )
                    continue
                applicable[key] = values
            combos: list[dict[str, str]] = []
            for choice in itertools.product(*applicable.values()):
                combo = dict(zip(applicable, choice, strict=True))
                blip = combo.get("blip", str(preset.net.get("blip", True)))
                if blip.lower() in _FALSE:
                    combo = {k: v for k, v in combo.items() if k not in BLIP_ONLY_FIELDS}
                if combo not in combos:
                    combos.append(combo)
            swept = [k for k in applicable if len({c.get(k) for c in combos}) > 1]
            for combo in combos:
                used.update(combo)
                tag = {k: combo[k] for k in swept if k in combo}
                parts = [_games_label(games)] if len(grid.games) > 1 else []
                parts += [_safe(agent)] + [f"{k}={_safe(v)}" for k, v in tag.items()]
                group = "__".join(parts)
                if len(group) > 120:
                    digest = hashlib.sha1(json.dumps(tag, sort_keys=True).encode()).hexdigest()
                    group = "__".join([*parts[: 2 if len(grid.games) > 1 else 1], digest[:10]])
                argv = ["--games", games, "--agent", agent]
                for key, text in combo.items():
                    argv += flags[key].render(text)
                for seed in grid.seeds:
                    ident = (games, agent, tuple(sorted(combo.items())), seed)
                    trials[ident] = Trial(
                        name=f"{group}__s{seed}",
                        group=group,
                        games=games,
                        agent=agent,
                        seed=seed,
                        settings=dict(combo),
                        swept=tag,
                        argv=[*argv, f"--seed={seed}"],
                    )
    unused = [k for k in grid.settings if k not in used]
    if unused:
        owners = sorted(m for m, f in method_fields.items() if unused[0] in f)
        what = f"a setting of {', '.join(owners)}" if owners else "a BLIP layer setting"
        raise UsageError(
            f"setting {unused[0]!r} applies to none of the agents {', '.join(grid.agents)} "
            f"(it is {what})"
        )
    out = list(trials.values())
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UsageError(f"two trials would share the folder name {dup!r}; rename a value")
    return out


# ----------------------------------------------------------------------------- validation
def _dry_run(argv: list[str]) -> tuple[int, str]:
    """Run the train CLI's own resolution in-process; (exit code, its error line)."""
    from blip_rl import train

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = train.main([*argv, "--dry-run"])
        except SystemExit as exc:  # argparse's own errors
            rc = exc.code if isinstance(exc.code, int) else 2
    lines = [ln.strip() for ln in err.getvalue().splitlines() if "error:" in ln]
    message = lines[-1] if lines else (err.getvalue().strip().splitlines() or ["failed"])[-1]
    return int(rc or 0), re.sub(r"^.*?error:\s*", "", message)


def validate(trials: Sequence[Trial]) -> None:
    """Resolve every trial's configuration with the train CLI (nothing is written); the first
    bad one raises UsageError naming the trial. Trials that differ only by their seed are
    resolved once, and every seed once."""
    checked: set[tuple[str, ...]] = set()
    seeds: set[int] = set()
    for t in trials:
        for key, text in t.settings.items():
            if key == "device" and not re.fullmatch(r"cpu|auto|cuda(:\d+)?", text.lower()):
                raise UsageError(f"trial {t.name}: invalid device {text!r}; expected cpu, cuda")
        argv = [a for a in t.argv if not a.startswith("--seed=") and not a.startswith("--device=")]
        todo = []
        if tuple(argv) not in checked:
            checked.add(tuple(argv))
            todo.append([*argv, f"--seed={t.seed}"])
        if t.seed not in seeds:
            seeds.add(t.seed)
            todo.append(["--games", t.games, "--agent", t.agent, f"--seed={t.seed}"])
        for args in todo:
            rc, message = _dry_run(args)
            if rc != 0:
                raise UsageError(f"trial {t.name}: {message}")
