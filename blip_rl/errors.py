"""Errors a user can cause, and the one way every CLI reports them.

A :class:`UsageError` means "the input was wrong", never "the program is wrong": an unknown
game, a probability outside [0, 1], a missing checkpoint. Its message is one line that names the
bad value and says what is accepted. CLIs wrap their ``main`` with :func:`run_cli` (or the
:func:`cli` decorator), which prints ``error: <message>`` to stderr and returns exit code 2, the
same code argparse uses for its own errors. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import functools
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Protocol

__all__ = [
    "USAGE_EXIT_CODE",
    "ArgumentParser",
    "CliMain",
    "UsageError",
    "add_switches",
    "cli",
    "run_cli",
]

USAGE_EXIT_CODE = 2
"""Exit code for bad user input (argparse uses the same one)."""


class UsageError(ValueError):
    """An error the user caused; its message is one line naming the bad value and the choices."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose errors (unknown flag, missing value) are one ``error:`` line
    and exit code 2 like every other usage error, instead of a usage block."""

    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def add_switches(parser: argparse.ArgumentParser | argparse._ArgumentGroup, **helps: str) -> None:
    """Add on/off flags (``action="store_true"``), one per keyword: ``dry_run="..."`` adds
    ``--dry-run`` with that help."""
    for name, text in helps.items():
        parser.add_argument("--" + name.replace("_", "-"), action="store_true", help=text)


MainFn = Callable[[list[str] | None], int]


class CliMain(Protocol):
    """A CLI entry point: ``main()`` reads ``sys.argv``, ``main([...])`` the given arguments."""

    def __call__(self, argv: list[str] | None = None) -> int: ...


def run_cli(main_fn: MainFn, argv: Sequence[str] | None = None) -> int:
    """Call ``main_fn(argv)``; turn a :class:`UsageError` into one stderr line and exit code 2.

    Args:
        main_fn: the CLI body, ``main(argv) -> exit code``.
        argv: command-line arguments without the program name; ``None`` means ``sys.argv[1:]``.

    Returns:
        The exit code of ``main_fn``, or 2 if it raised :class:`UsageError`.
    """
    try:
        return main_fn(None if argv is None else list(argv))
    except UsageError as exc:
        message = " ".join(str(exc).split()) or "invalid usage"
        print(f"error: {message}", file=sys.stderr)
        return USAGE_EXIT_CODE


def cli(main_fn: MainFn) -> CliMain:
    """Decorator form of :func:`run_cli`: ``@cli def main(argv=None) -> int: ...``."""

    @functools.wraps(main_fn)
    def wrapper(argv: list[str] | None = None) -> int:
        return run_cli(main_fn, argv)

    return wrapper
