"""Command line: ``python -m blip_rl.train --games pong,breakout,...``.

Learns the games in order with one PPO agent (``--agent blip`` by default), evaluates every game
of the sequence as it goes and writes a run folder under ``runs/``. Every field of the agent
preset (``agents/<name>.toml``: ``[net]``, ``[settings]``, ``[ppo]``) is also a flag here.
``--resume runs/<name>`` continues a killed run from its last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from blip_rl import atari
from blip_rl.config import RunConfig, add_dataclass_flags, list_agents, load_agent, parse_field
from blip_rl.errors import UsageError, cli
from blip_rl.methods import METHODS
from blip_rl.nets import NetConfig
from blip_rl.ppo import PPOConfig

_RUN_FLAGS: dict[str, tuple[type, Any, str]] = {
    "steps_per_game": (int, 200_000, "env steps of training per game (all envs together)"),
    "seed": (int, 1, "one seed for network, envs and sampling"),
    "num_envs": (int, 8, "parallel environments"),
    "eval_every": (int, 50_000, "evaluate every game every N global env steps (0: after games)"),
    "eval_episodes": (int, 8, "episodes per game per evaluation"),
    "checkpoint_every": (int, 50_000, "checkpoint every N env steps (always after each game)"),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, list[tuple[str, Any]]]]:
    """The parser, and per config section the generated (field, type) flags."""
    parser = argparse.ArgumentParser(
        prog="python -m blip_rl.train",
        description="Learn a sequence of Atari games with one continual-learning PPO agent.",
    )
    parser.add_argument(
        "--games",
        default=None,
        metavar="LIST",
        help="comma-separated games in learning order, or @PRESET (e.g. pong,breakout or "
        "@blip-atari6; default @demo: breakout then pong)",
    )
    parser.add_argument(
        "--agent",
        default=None,
        metavar="NAME",
        help=f"agent preset from agents/ (default blip; available: {', '.join(list_agents())})",
    )
    for name, (_, default, text) in _RUN_FLAGS.items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=str,
            default=None,
            metavar="N",
            help=f"{text} (default {default})",
        )
    parser.add_argument(
        "--shared-head",
        action="store_true",
        default=None,
        help="one pair of heads with the full 18-action set for all games",
    )
    parser.add_argument(
        "--device", default=None, help="cpu, cuda or auto (default auto: cuda when available)"
    )
    parser.add_argument("--run-name", default=None, help="run folder name (default: generated)")
    parser.add_argument("--runs-dir", default="runs", help="parent folder of runs (default runs)")
    parser.add_argument(
        "--resume", default=None, metavar="RUN_DIR", help="continue a killed run from its folder"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="resolve and print the full configuration, then exit without training",
    )
    parser.add_argument(
        "--list-games", action="store_true", help="print every game that ale-py ships and exit"
    )
    parser.add_argument(
        "--list-agents", action="store_true", help="print the agent presets and exit"
    )
    atari.add_env_arguments(parser)
    generated: dict[str, list[tuple[str, Any]]] = {}
    seen: set[str] = set()
    generated["net"] = add_dataclass_flags(parser, NetConfig, "network ([net])", seen)
    generated["ppo"] = add_dataclass_flags(parser, PPOConfig, "PPO ([ppo])", seen)
    for name, cls in METHODS.items():
        generated[f"method:{name}"] = add_dataclass_flags(
            parser, cls.config_class, f"method {name} ([settings])", seen
        )
    return parser, generated


def _int_flag(name: str, text: str | None, default: int, low: int) -> int:
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise UsageError(
            f"invalid --{name.replace('_', '-')} {text!r}; expected an integer"
        ) from None
    if value < low:
        raise UsageError(
            f"invalid --{name.replace('_', '-')} {value}; expected an integer >= {low}"
        )
    return value


def _device(text: str | None) -> str:
    choice = (text or "auto").lower()
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cpu":
        return "cpu"
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: CUDA is not available here; use cpu or auto")
        return choice
    raise UsageError(f"invalid --device {text!r}; expected cpu, cuda or auto")


def resolve_config(
    args: argparse.Namespace, generated: dict[str, list[tuple[str, Any]]]
) -> RunConfig:
    """Preset, then flags: the run's full configuration. UsageError on any bad value."""
    agent = args.agent or "blip"
    preset = load_agent(agent)
    sequence = atari.resolve_sequence(args.games or "@demo", atari.config_overrides_from_args(args))
    atari_cfg = sequence.config
    if args.shared_head:
        atari_cfg = atari_cfg.replace(full_action_space=True)
    values = {
        name: _int_flag(name, getattr(args, name), default, 0 if "every" in name else 1)
        for name, (_, default, _) in _RUN_FLAGS.items()
    }
    sections: dict[str, dict[str, Any]] = {
        "net": dict(preset.net),
        "ppo": dict(preset.ppo),
        "settings": dict(preset.method_config),
    }
    method_cls = METHODS[preset.method]
    for key, fields in generated.items():
        target = {"net": "net", "ppo": "ppo"}.get(key, "settings")
        cls = {"net": NetConfig, "ppo": PPOConfig}.get(key)
        for name, _ in fields:
            text = getattr(args, f"cfg_{name}")
            if text is None:
                continue
            if key.startswith("method:"):
                own = {f.name for f in dataclasses.fields(method_cls.config_class)}
                if name not in own:
                    raise UsageError(
                        f"--{name.replace('_', '-')} does not apply to agent {agent!r} "
                        f"(method {preset.method})"
                    )
                cls = method_cls.config_class
            assert cls is not None
            sections[target][name] = parse_field(cls, name, text)
    sections["ppo"]["num_envs"] = values.pop("num_envs")
    if "channels" in sections["net"]:
        sections["net"]["channels"] = list(sections["net"]["channels"])
    if method_cls.needs_blip_layers and not sections["net"].get("blip", True):
        raise UsageError(f"agent {agent!r} (method {preset.method}) needs --blip true")
    config = RunConfig(
        games=[g.name for g in sequence.games],
        games_spec=args.games or "@demo",
        agent=agent,
        method=preset.method,
        shared_head=bool(args.shared_head),
        device=_device(args.device),
        atari=_atari_dict(atari_cfg),
        net=sections["net"],
        ppo=sections["ppo"],
        method_config=sections["settings"],
        **values,
    )
    try:  # the dataclasses validate their own fields
        config.ppo_config().validate()
        config.method_config_object()
        NetConfig(
            **{**sections["net"], "channels": tuple(sections["net"].get("channels", (32, 64, 64)))}
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(" ".join(str(exc).split())) from None
    return config


def _atari_dict(cfg: atari.AtariConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _run_name(config: RunConfig) -> str:
    games = config.games_spec[1:] if config.games_spec.startswith("@") else "-".join(config.games)
    if len(games) > 60:
        games = f"{len(config.games)}games"
    return f"{games}__{config.agent}__s{config.seed}__{time.strftime('%Y%m%d-%H%M%S')}"


def _new_run_dir(args: argparse.Namespace, config: RunConfig) -> Path:
    root = Path(args.runs_dir)
    name = args.run_name or _run_name(config)
    if "/" in name or name in ("", ".", ".."):
        raise UsageError(f"invalid --run-name {name!r}; expected a plain folder name")
    run_dir = root / name
    if run_dir.exists():
        if args.run_name:
            raise UsageError(
                f"run folder {run_dir} already exists; continue it with --resume {run_dir} "
                "or choose another --run-name"
            )
        suffix = 2
        while (root / f"{name}-{suffix}").exists():
            suffix += 1
        run_dir = root / f"{name}-{suffix}"
    try:
        run_dir.mkdir(parents=True)
    except OSError as exc:
        raise UsageError(f"cannot create run folder {run_dir}: {exc.strerror}") from None
    return run_dir


def _resume_config(
    args: argparse.Namespace, generated: dict[str, list[tuple[str, Any]]]
) -> tuple[Path, RunConfig]:
    run_dir = Path(args.resume)
    if not run_dir.is_dir():
        raise UsageError(f"--resume {run_dir}: no such run folder")
    cfg_file = run_dir / "config.json"
    if not cfg_file.is_file():
        raise UsageError(f"--resume {run_dir}: not a blip-rl run folder (no config.json)")
    given = [
        k
        for k, v in vars(args).items()
        if v is not None
        and v is not False
        and k
        not in (
            "resume",
            "runs_dir",
            "no_progress",
            "device",
            "list_games",
            "list_agents",
            "dry_run",
        )
    ]
    if given:
        flag = "--" + given[0].removeprefix("cfg_").replace("_", "-")
        raise UsageError(f"{flag} cannot change a resumed run: --resume uses the run's own config")
    try:
        config = RunConfig.from_json(json.loads(cfg_file.read_text()))
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--resume {run_dir}: unreadable config.json ({exc})") from None
    if args.device is not None:
        config.device = _device(args.device)
    if (run_dir / "summary.json").is_file():
        raise UsageError(f"--resume {run_dir}: this run is already complete (summary.json exists)")
    return run_dir, config


@cli
def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 for bad input)."""
    from blip_rl.continual import ContinualRun
    from blip_rl.files import atomic_write

    parser, generated = build_parser()
    args = parser.parse_args(argv)
    if args.list_games:
        print(atari.format_game_list())
        return 0
    if args.list_agents:
        for name in list_agents():
            print(f"{name:<14}{load_agent(name).description}")
        return 0
    if args.resume:
        run_dir, config = _resume_config(args, generated)
        run = ContinualRun(run_dir, config, resume=True, progress=not args.no_progress)
        print(f"resuming {run_dir} at env step {run.progress.global_step}", file=sys.stderr)
    else:
        config = resolve_config(args, generated)
        if args.dry_run:
            print(json.dumps(config.to_json(), indent=2))
            return 0
        run_dir = _new_run_dir(args, config)
        atomic_write(
            run_dir / "config.json", (json.dumps(config.to_json(), indent=2) + "\n").encode()
        )
        run = ContinualRun(run_dir, config, progress=not args.no_progress)
        print(
            f"run {run_dir}: {len(config.games)} games ({', '.join(config.games)}), "
            f"agent {config.agent}, {config.steps_per_game} steps per game",
            file=sys.stderr,
        )
    summary = run.run()
    m = summary["metrics"]
    print(f"\nrun folder: {run_dir}")
    if "matrix" in m:
        from blip_rl.plots import matrix_markdown

        print(matrix_markdown(m["matrix"], m["games"]))
    for key in ("average_final_return", "average_forgetting", "backward_transfer"):
        if key in summary["scalars"]:
            print(f"{key.replace('_', ' ')}: {summary['scalars'][key]:.2f}")
    print(f"\nsee the curves: tensorboard --logdir {run_dir.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
