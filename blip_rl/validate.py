"""Field checks shared by the configuration dataclasses.

Every configuration dataclass of blip-rl (:class:`~blip_rl.config.RunConfig` and its sections:
the Atari protocol, the network, PPO, the continual method) checks its own fields in
``__post_init__`` with these helpers. A bad value raises :class:`ValueError` with one line that
names the field the way the command line spells it (``learning_rate`` -> ``--learning-rate``),
the value, and what is accepted::

    invalid --max-bits 40; expected an integer in [1, 32]

The library raises; only the command-line tools turn the error into ``error: ...`` and exit 2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = ["check_bool", "check_choice", "check_int", "check_number", "flag_name"]


def flag_name(field: str) -> str:
    """The command-line spelling of a field: ``max_bits`` -> ``--max-bits``."""
    return "--" + field.replace("_", "-")


def _fail(field: str, value: Any, accepted: str, flag: str | None) -> ValueError:
    return ValueError(f"invalid {flag or flag_name(field)} {value!r}; expected {accepted}")


def _range_text(kind: str, low: float | None, high: float | None, low_open: bool) -> str:
    if low is not None and high is not None:
        return f"{kind} in {'(' if low_open else '['}{low:g}, {high:g}]"
    if low is not None:
        return f"{kind} {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{kind} <= {high:g}"
    return kind


def check_int(
    obj: Any,
    field: str,
    low: int | None = None,
    high: int | None = None,
    *,
    flag: str | None = None,
) -> None:
    """``obj.<field>`` must be an int (not a bool) in ``[low, high]``."""
    value = getattr(obj, field)
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok and ((low is not None and value < low) or (high is not None and value > high)):
        ok = False
    if not ok:
        raise _fail(field, value, _range_text("an integer", low, high, False), flag)


def check_number(
    obj: Any,
    field: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    allow_none: bool = False,
    flag: str | None = None,
) -> None:
    """``obj.<field>`` must be a finite real number in ``[low, high]`` (``(low, high]`` with
    ``low_open``); ints are accepted and stored as float. NaN and infinities are refused."""
    value = getattr(obj, field)
    if value is None and allow_none:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        if low is not None and (value <= low if low_open else value < low):
            ok = False
        if high is not None and value > high:
            ok = False
    if not ok:
        text = _range_text("a finite number", low, high, low_open)
        raise _fail(field, value, text + (" or none" if allow_none else ""), flag)
    if isinstance(value, int):
        object.__setattr__(obj, field, float(value))


def check_bool(obj: Any, field: str, *, flag: str | None = None) -> None:
    """``obj.<field>`` must be ``True`` or ``False``."""
    value = getattr(obj, field)
    if not isinstance(value, bool):
        raise _fail(field, value, "true or false", flag)


def check_choice(obj: Any, field: str, choices: Iterable[str], *, flag: str | None = None) -> None:
    """``obj.<field>`` must be one of ``choices``."""
    value = getattr(obj, field)
    options = tuple(choices)
    if value not in options:
        raise _fail(field, value, "one of " + ", ".join(options), flag)
