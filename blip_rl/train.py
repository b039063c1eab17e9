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
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from blip_rl import atari
from blip_rl.config import (
    FlagTable,
    RunConfig,
    add_config_flags,
    given_flags,
    list_agents,
    load_agent,
)
from blip_rl.errors import ArgumentParser, UsageError, add_switches, cli
from blip_rl.files import RunLock
from blip_rl.nets import NetConfig
from blip_rl.ppo import PPOConfig


def build_parser() -> tuple[argparse.ArgumentParser, FlagTable]:
    """The parser, and the table of the flags generated from the configuration dataclasses."""
    parser = ArgumentParser(
        prog="python -m blip_rl.train",
        description="Learn a sequence of Atari games with one continual-learning PPO agent.",
    )
    parser.add_argument(
        "--games",
        default=None,
        metavar="LIST",
        help="comma-separated games in learning order, or @PRESET (e.g. pong,breakout or "
        "@blip-atari6; default @demo: crazy_climber then road_runner)",
    )
    parser.add_argument(
        "--agent",
        default=None,
        metavar="NAME",
        help=f"agent preset from agents/ (default blip; available: {', '.join(list_agents())})",
    )
    parser.add_argument(
        "--device", default=None, help="cpu, cuda or auto (default auto: cuda when available)"
    )
    parser.add_argument("--run-name", default=None, help="run folder name (default: generated)")
    parser.add_argument("--runs-dir", default="runs", help="parent folder of runs (default runs)")
    parser.add_argument(
        "--resume", default=None, metavar="RUN_DIR", help="continue a killed run from its folder"
    )
    parser.add_argument(
        "--from-checkpoint",
        default=None,
        metavar="CKPT",
        help="start a new run from another run's checkpoint: after-game-K.pt (it trains from "
        "game K+1 on, e.g. to compare methods from one shared state) or trained-game-1.pt "
        "(game 1 trained, before the method's end-of-game step: BLIP's freeze with other "
        "settings, another method, other later games)",
    )
    add_switches(
        parser,
        no_progress="no progress bars",
        dry_run="resolve and print the full configuration, then exit without training",
        list_games="print every game that ale-py ships and exit",
        list_agents="print the agent presets and exit",
    )
    table = add_config_flags(parser)
    return parser, table


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


def resolve_config(args: argparse.Namespace, table: FlagTable) -> RunConfig:
    """Defaults, then presets, then flags: the run's full, validated configuration.

    UsageError (one line) on any bad value; nothing is written."""
    agent = args.agent or "blip"
    preset = load_agent(agent)
    flags = given_flags(args, table)
    for name in flags["method"]:
        spec = table[f"cfg_method_{name}"]
        if preset.method not in spec.methods:
            raise UsageError(
                f"{spec.flag} does not apply to agent {agent!r} (method {preset.method})"
            )
    games_spec = args.games if args.games is not None else "@demo"
    try:
        sequence = atari.resolve_sequence(games_spec, {**preset.env, **flags["atari"]})
        return RunConfig(
            games=[g.name for g in sequence.games],
            games_spec=games_spec,
            agent=agent,
            method=preset.method,
            device=_device(args.device),
            atari=sequence.config,
            net=NetConfig(**{**preset.net, **flags["net"]}),
            ppo=PPOConfig(**{**preset.ppo, **flags["ppo"]}),
            method_config={**preset.method_config, **flags["method"]},
            **{**preset.run, **flags["run"]},
        )
    except (TypeError, ValueError) as exc:  # the dataclasses validate their own fields
        raise UsageError(" ".join(str(exc).split())) from None


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


def _resume_config(args: argparse.Namespace, table: FlagTable) -> tuple[Path, RunConfig]:
    run_dir = Path(args.resume)
    if not run_dir.is_dir():
        raise UsageError(f"--resume {run_dir}: no such run folder")
    cfg_file = run_dir / "config.json"
    if not cfg_file.is_file():
        raise UsageError(f"--resume {run_dir}: not a blip-rl run folder (no config.json)")
    allowed = {"resume", "runs_dir", "no_progress", "device", "list_games", "list_agents"}
    allowed.add("cfg_run_torch_threads")
    given = [k for k, v in vars(args).items() if v not in (None, False) and k not in allowed]
    if given:
        flag = table[given[0]].flag if given[0] in table else "--" + given[0].replace("_", "-")
        raise UsageError(f"{flag} cannot change a resumed run: --resume uses the run's own config")
    try:
        config = RunConfig.from_json(json.loads(cfg_file.read_text()))
    except (ValueError, TypeError) as exc:
        first = " ".join(str(exc).split())[:200]
        raise UsageError(f"--resume {run_dir}: unreadable config.json ({first})") from None
    if args.device is not None:
        config.device = _device(args.device)
    if args.cfg_run_torch_threads is not None:  # a setting of this process, not of the run
        threads = given_flags(args, table)["run"]["torch_threads"]
        try:
            config = dataclasses.replace(config, torch_threads=threads)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if (run_dir / "summary.json").is_file():
        raise UsageError(f"--resume {run_dir}: this run is already complete (summary.json exists)")
    return run_dir, config


def set_threads(config: RunConfig) -> None:
    """Apply ``config.torch_threads`` (process-wide; see :class:`RunConfig`)."""
    threads = config.torch_threads
    if threads == 0 and torch.device(config.device).type == "cpu" and (os.cpu_count() or 1) <= 4:
        threads = 1
    if threads > 0:
        torch.set_num_threads(threads)


def _lock(run_dir: Path) -> RunLock:
    lock = RunLock(run_dir)
    if not lock.acquire():
        raise UsageError(
            f"run folder {run_dir} is in use by another training process; wait for it to end "
            "(or stop it) before resuming"
        )
    return lock


def _branch_source(args: argparse.Namespace) -> dict[str, Any]:
    """The checkpoint of ``--from-checkpoint``; its run's games become the default ``--games``."""
    from blip_rl.continual import is_trained_point, load_checkpoint

    if args.resume:
        raise UsageError("--from-checkpoint starts a new run; it cannot be combined with --resume")
    ckpt = load_checkpoint(Path(args.from_checkpoint))
    if not ckpt["progress"].get("game_done") and not is_trained_point(ckpt):
        raise UsageError(
            f"--from-checkpoint {args.from_checkpoint}: not a branch point; use "
            "RUN/checkpoints/after-game-K.pt or RUN/checkpoints/trained-game-1.pt"
        )
    if args.games is None:
        args.games = ckpt["config"]["games_spec"]
    return ckpt


def _check_track(config: RunConfig) -> None:
    """``--track`` without the wandb extra: one error line before any folder or training."""
    if config.track:
        from blip_rl.wandb_log import require

        require()


@cli
def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 for bad input)."""
    from blip_rl.continual import ContinualRun, check_branch
    from blip_rl.files import write_json

    parser, table = build_parser()
    args = parser.parse_args(argv)
    if args.list_games:
        print(atari.format_game_list())
        return 0
    if args.list_agents:
        names = list_agents()
        width = max(map(len, names)) + 2
        for name in names:
            print(f"{name:<{width}}{load_agent(name).description}")
        return 0
    if args.resume:
        run_dir, config = _resume_config(args, table)
        _check_track(config)
        lock = _lock(run_dir)
        set_threads(config)
        run = ContinualRun(run_dir, config, resume=True, progress=not args.no_progress)
        print(f"resuming {run_dir} at env step {run.progress.global_step}", file=sys.stderr)
    else:
        source = _branch_source(args) if args.from_checkpoint else None
        config = resolve_config(args, table)
        if source is not None:
            config.branched_from = str(args.from_checkpoint)
            check_branch(config, source)
        if args.dry_run:
            print(json.dumps(config.to_json(), indent=2))
            return 0
        _check_track(config)
        run_dir = _new_run_dir(args, config)
        lock = _lock(run_dir)
        set_threads(config)
        write_json(run_dir / "config.json", config.to_json())
        run = ContinualRun(run_dir, config, progress=not args.no_progress, branch=source)
        first = run.progress.game_index + (1 if run.progress.game_done else 0)
        print(
            f"run {run_dir}: {len(config.games)} games ({', '.join(config.games)}), "
            f"agent {config.agent}, {config.steps_per_game} steps per game"
            + (f", from game {first + 1} ({config.branched_from})" if source else ""),
            file=sys.stderr,
        )
    try:
        summary = run.run()
    finally:
        lock.release()
    m = summary["metrics"]
    print(f"\nrun folder: {run_dir}")
    if "matrix" in m:
        from blip_rl.plots import matrix_markdown

        print(matrix_markdown(m["matrix"], m["games"]))
    for key in ("average_final_return", "average_forgetting", "backward_transfer"):
        if summary["scalars"].get(key) is not None:
            print(f"{key.replace('_', ' ')}: {summary['scalars'][key]:.2f}")
    print(f"\nsee the curves: tensorboard --logdir {run_dir.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
