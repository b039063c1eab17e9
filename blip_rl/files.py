"""Files of a run folder: atomic writes, strict JSON, and the lock of a folder being trained in.

Every file a run or a report writes goes through :func:`atomic_write` (or :func:`write_json`).
"""

from __future__ import annotations

import importlib.resources
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

try:  # POSIX; on other systems the lock is a no-op
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "RunLock",
    "atomic_write",
    "json_safe",
    "preset_dir",
    "preset_names",
    "read_json",
    "write_json",
]


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync and rename:
    a kill at any moment leaves either the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def preset_dir(kind: str) -> Any:
    """The shipped preset folder ``blip_rl/presets/<kind>`` (``agents``, ``envs``, ``sweeps``),
    read through importlib.resources so that it works from a wheel too."""
    return importlib.resources.files("blip_rl") / "presets" / kind


def preset_names(kind: str, exclude: tuple[str, ...] = ()) -> list[str]:
    """Names (without ``.toml``) of the presets in ``blip_rl/presets/<kind>``, sorted."""
    return sorted(
        p.name.removesuffix(".toml")
        for p in preset_dir(kind).iterdir()
        if p.name.endswith(".toml") and p.name not in exclude
    )


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (JSON ``null``), recursively
    through dicts, lists and tuples: strict JSON readers (jq, browsers) reject ``NaN``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON (NaN and infinities as ``null``), atomically."""
    text = json.dumps(json_safe(obj), indent=2, allow_nan=False)
    atomic_write(path, (text + "\n").encode())


def read_json(path: Path) -> Any:
    """Read a JSON file a run wrote; UsageError (one line) when it is missing or unreadable."""
    from blip_rl.errors import UsageError

    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: unreadable JSON ({type(exc).__name__})") from None


class RunLock:
    """An exclusive OS lock on a run folder, held while a process trains in it.

    ``flock`` on the folder itself (no file is created in it): the kernel releases the lock
    when the process exits, however it exits, so a SIGKILLed run can be resumed at once.
    :meth:`acquire` returns False while another process holds it.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir)
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock without waiting; False if another process holds it."""
        fd = os.open(self.path, os.O_RDONLY)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
        self._fd = fd
        return True

    def release(self) -> None:
        """Give the lock back."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
