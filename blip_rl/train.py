"""Command line: ``python -m blip_rl.train --games pong,breakout,...``.

For now this CLI lists the games (``--list-games``) and validates a game sequence and its Atari
protocol options; the training loop plugs in here later.
"""

from __future__ import annotations

import argparse
import sys

from blip_rl import atari
from blip_rl.errors import cli


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m blip_rl.train``."""
    parser = argparse.ArgumentParser(
        prog="python -m blip_rl.train",
        description="Learn a sequence of Atari games with a continual-learning agent.",
    )
    parser.add_argument(
        "--games",
        default="@demo",
        metavar="LIST",
        help="comma-separated games in learning order, or @PRESET "
        "(e.g. pong,breakout or @blip-atari6; default @demo)",
    )
    parser.add_argument(
        "--list-games",
        action="store_true",
        help="print every game that ale-py ships with its action count, and the presets",
    )
    atari.add_env_arguments(parser)
    return parser


@cli
def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 for bad input)."""
    args = build_parser().parse_args(argv)
    if args.list_games:
        print(atari.format_game_list())
        return 0
    sequence = atari.resolve_sequence(args.games, atari.config_overrides_from_args(args))
    names = ", ".join(g.name for g in sequence.games)
    print(f"games ({len(sequence.games)}): {names}")
    print(f"protocol: {sequence.config}")
    print("training is not implemented yet: the game sequence and options are valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
