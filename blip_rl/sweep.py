"""Command line: ``python -m blip_rl.sweep``: a grid of runs on Ray, resumable, one report.

    python -m blip_rl.sweep --games @demo --agents blip,finetune,ewc --seeds 1,2,3 \\
        --set f_prior=5e-18,1e-20,1.3e-21
    python -m blip_rl.sweep --grid @demo-prior          # a grid file (blip_rl/presets/sweeps)
    python -m blip_rl.sweep --grid my.toml --address auto   # on the Ray cluster of this node

Every trial of the grid (:mod:`blip_rl.sweep_grid`) is a normal ``python -m blip_rl.train`` run
folder ``runs/<sweep>/<trial>/``, started as a subprocess by a Ray task that reserves
``--cpus-per-run`` CPUs (and ``--gpus-per-run`` GPUs, a fraction shares a GPU). Without
``--address`` Ray starts on this machine only and as many trials run at once as its cores allow.

* A trial whose process dies (SIGKILL, out of memory, a lost node) is started again with
  ``--resume`` on its folder: it continues from its last checkpoint (``--max-retries`` times).
  A trial that exits with code 2 (bad input) is reported once and not retried.
* The sweep folder holds ``sweep.json`` (the grid and its trials), ``status.json`` (per trial:
  state, attempts, exit codes) and ``logs/<trial>.log`` (the trial's output, every attempt).
  Running the same command again skips the finished trials (their folder holds
  ``summary.json``) and resumes the others: a sweep killed at any moment completes that way.
* At the end, the report (:mod:`blip_rl.sweep_report`) over the finished trials is written into
  ``runs/<sweep>/report/``.

Bad input (an unknown agent, game, setting or value anywhere in the grid) is refused before
anything is written or started: one ``error:`` line, exit code 2. Exit code 1: some trial failed.
See ``docs/sweep.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blip_rl.errors import ArgumentParser, UsageError, add_switches, cli
from blip_rl.files import atomic_write
from blip_rl.sweep_grid import (
    GridSpec,
    Trial,
    expand,
    list_grids,
    load_grid_file,
    parse_seeds,
    parse_set,
    validate,
)

__all__ = ["SWEEP_FORMAT", "TrialStatus", "build_parser", "main", "trial_progress"]

SWEEP_FORMAT = "blip-rl-sweep-1"
INSTALL_HINT = "pip install 'blip-rl[ray]'"

_BAR = re.compile(r"game (\d+)/(\d+) (\S+?):\s*\d+%.*?\s(\d+)/(\d+) \[([^\]]*)\]")
"""The train CLI's progress bar: ``game 1/2 pong:  45%|...| 1152/2560 [00:10<00:12, ...]``."""


# --------------------------------------------------------------------------------- the CLI
def build_parser() -> argparse.ArgumentParser:
    """The sweep's argument parser."""
    p = ArgumentParser(
        prog="python -m blip_rl.sweep",
        description="Run a grid of game sequences x agents x settings x seeds as blip_rl.train "
        "runs on Ray (this machine, or a cluster with --address), resumably, and end with one "
        "comparison report. Rerun the same command to resume a killed sweep.",
    )
    g = p.add_argument_group("the grid (flags replace the same keys of a --grid file)")
    g.add_argument(
        "--grid",
        metavar="FILE",
        help="a TOML grid file, or @NAME for a shipped one (--list-grids)",
    )
    g.add_argument(
        "--games",
        action="append",
        metavar="LIST",
        help="a game sequence (pong,breakout or @PRESET); repeat the flag for several "
        "sequences (default @demo)",
    )
    g.add_argument("--agents", metavar="LIST", help="comma-separated agent presets (default blip)")
    g.add_argument("--seeds", metavar="LIST", help="seeds: 1,2,3 or 1-5 (default 1)")
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=V1,V2",
        help="a setting of python -m blip_rl.train by its name (f_prior for --f-prior); one "
        "value fixes it, several make a grid dimension; split on ';' instead of ',' when a "
        "value holds commas; repeat the flag for several settings",
    )
    g.add_argument(
        "--steps-per-game", metavar="N", help="short for --set steps_per_game=N (default 200000)"
    )
    r = p.add_argument_group("where and how it runs")
    r.add_argument("--name", help="the sweep's folder name (default: the grid file's name, or "
                   "sweep-<hash of the grid>, the same for the same grid)")  # fmt: skip
    r.add_argument("--runs-dir", default="runs", help="parent of the sweep folder (default runs)")
    r.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join: auto (the cluster of this node) or HOST:PORT; default: "
        "RAY_ADDRESS if set (as in a Ray Job), else Ray on this machine only",
    )
    r.add_argument(
        "--num-cpus",
        type=float,
        default=None,
        metavar="N",
        help="CPUs Ray may use on this machine without --address (default all cores)",
    )
    r.add_argument(
        "--cpus-per-run",
        type=float,
        default=1.0,
        metavar="N",
        help="CPUs reserved per trial, also its torch threads (default 1)",
    )
    r.add_argument(
        "--gpus-per-run",
        type=float,
        default=0.0,
        metavar="F",
        help="GPUs per trial, a fraction shares one (default 0: trials see no GPU)",
    )
    r.add_argument(
        "--max-retries",
        type=int,
        default=3,
        metavar="N",
        help="restarts (with --resume) of a trial whose process died, per sweep command "
        "(default 3)",
    )
    add_switches(
        r,
        no_progress="no live progress lines",
        dry_run="check the grid and list its trials, then exit without writing or running anything",
        list_grids="list the shipped grid files",
    )
    return p


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError(f"python -m blip_rl.sweep needs Ray: {INSTALL_HINT}") from None
    return ray


def grid_from_args(args: argparse.Namespace) -> GridSpec:
    """The grid given by ``--grid`` and the grid flags (a flag replaces the file's key)."""
    spec = load_grid_file(args.grid) if args.grid else GridSpec()
    if args.games:
        spec.games = list(dict.fromkeys(args.games))
    if args.agents is not None:
        spec.agents = [a for a in dict.fromkeys(x.strip() for x in args.agents.split(",")) if a]
        if not spec.agents:
            raise UsageError(f"invalid --agents {args.agents!r}; expected agent names")
        spec.agent_settings = {
            a: s for a, s in spec.agent_settings.items() if a in set(spec.agents)
        }
    if args.seeds is not None:
        spec.seeds = parse_seeds(args.seeds)
    spec.settings.update(parse_set(args.set))
    if args.steps_per_game is not None:
        spec.settings.update(parse_set([f"steps_per_game={args.steps_per_game}"]))
    return spec


def _check_numbers(args: argparse.Namespace) -> None:
    if not (args.cpus_per_run > 0 and math.isfinite(args.cpus_per_run)):
        raise UsageError(f"invalid --cpus-per-run {args.cpus_per_run:g}; expected a number > 0")
    if not (args.gpus_per_run >= 0 and math.isfinite(args.gpus_per_run)):
        raise UsageError(f"invalid --gpus-per-run {args.gpus_per_run:g}; expected a number >= 0")
    if args.gpus_per_run > 1 and args.gpus_per_run != int(args.gpus_per_run):
        raise UsageError(
            f"invalid --gpus-per-run {args.gpus_per_run:g}; above 1 it must be a whole number"
        )
    if args.num_cpus is not None and not (args.num_cpus >= 1):
        raise UsageError(f"invalid --num-cpus {args.num_cpus:g}; expected a number >= 1")
    if args.max_retries < 0:
        raise UsageError(f"invalid --max-retries {args.max_retries}; expected an integer >= 0")
    if args.name is not None and ("/" in args.name or args.name in ("", ".", "..")):
        raise UsageError(f"invalid --name {args.name!r}; expected a plain folder name")


def _sweep_name(args: argparse.Namespace, spec: GridSpec, trials: Sequence[Trial]) -> str:
    if args.name:
        return str(args.name)
    if spec.name:
        return re.sub(r"[^A-Za-z0-9._=+-]", "_", spec.name)
    digest = hashlib.sha1(json.dumps([t.argv for t in trials]).encode()).hexdigest()
    return f"sweep-{digest[:8]}"


def _check_existing(sweep_dir: Path, trials: Sequence[Trial]) -> None:
    """A sweep folder may be run again with the same trials (or more): never with a trial
    whose name now means other settings."""
    if not sweep_dir.exists():
        return
    if not sweep_dir.is_dir():
        raise UsageError(f"{sweep_dir} exists and is not a folder; choose another --name")
    meta = sweep_dir / "sweep.json"
    if not meta.is_file():
        if any(sweep_dir.iterdir()):
            raise UsageError(
                f"{sweep_dir} exists and is not a sweep folder (no sweep.json); choose another "
                "--name"
            )
        return
    try:
        old = {t["name"]: t["argv"] for t in json.loads(meta.read_text())["trials"]}
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{meta} is unreadable; choose another --name") from None
    for t in trials:
        if t.name in old and old[t.name] != t.argv:
            raise UsageError(
                f"sweep {sweep_dir} already has a trial {t.name} with other settings "
                f"({' '.join(old[t.name])}); choose another --name for this grid"
            )


# ------------------------------------------------------------------------------- the status
@dataclass
class TrialStatus:
    """One trial's line in ``status.json``."""

    state: str = "pending"
    """pending, running, done or failed."""
    attempts: int = 0
    """Processes started for it, over every sweep command."""
    exit_codes: list[int | None] = field(default_factory=list)
    """One per finished attempt (negative: killed by that signal; null: the Ray task was lost)."""
    message: str = ""
    node: str = ""
    seconds: float = 0.0
    """Wall time of its attempts together."""


class _Status:
    def __init__(self, path: Path, name: str, trials: Sequence[Trial]):
        self.path = path
        self.name = name
        old: dict[str, Any] = {}
        if path.is_file():
            try:
                old = json.loads(path.read_text()).get("trials", {})
            except (OSError, ValueError, AttributeError):
                old = {}
        fields_ = {f.name for f in dataclasses.fields(TrialStatus)}
        self.trials: dict[str, TrialStatus] = {}
        for t in trials:
            entry = old.get(t.name)
            st = (
                TrialStatus(**{k: v for k, v in entry.items() if k in fields_})
                if isinstance(entry, dict)
                else TrialStatus()
            )
            self.trials[t.name] = st

    def states(self) -> dict[str, str]:
        return {n: s.state for n, s in self.trials.items()}

    def save(self) -> None:
        counts: dict[str, int] = {}
        for s in self.trials.values():
            counts[s.state] = counts.get(s.state, 0) + 1
        data = {
            "sweep": self.name,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "counts": counts,
            "trials": {n: dataclasses.asdict(s) for n, s in self.trials.items()},
        }
        atomic_write(self.path, (json.dumps(data, indent=2) + "\n").encode())


# ----------------------------------------------------------------------------- progress
def _tail(path: Path, size: int = 4096) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def trial_progress(log_tail: str) -> dict[str, Any] | None:
    """The last progress bar of a trial's output: game k of n, steps and steps/s, and the
    fraction of the trial done; None if its output holds no bar yet."""
    for line in reversed(re.split(r"[\r\n]", log_tail)):
        m = _BAR.search(line)
        if not m:
            continue
        k, n_games, game, step, total, inside = m.groups()
        rate = re.search(r"sps=(\d+)", inside) or re.search(r"([\d.]+)step/s", inside)
        k_, n_, step_, total_ = int(k), int(n_games), int(step), max(int(total), 1)
        return {
            "game_index": k_,
            "games": n_,
            "game": game,
            "step": step_,
            "total": total_,
            "steps_per_s": float(rate.group(1)) if rate else None,
            "fraction": min(1.0, ((k_ - 1) + min(step_ / total_, 1.0)) / max(n_, 1)),
        }
    return None


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class _Display:
    """The sweep's progress: a grid bar and one line per running trial on a terminal; event
    lines (and a status line every 30 s) otherwise."""

    def __init__(self, total: int, settled: int, slots: int, enabled: bool):
        from tqdm import tqdm

        self.tqdm = tqdm
        self.live = enabled and sys.stderr.isatty()
        self.enabled = enabled
        self.total = total
        self.start = time.monotonic()
        self.start_fraction = float(settled)
        self.last_print = self.start
        self.bars: list[Any] = []
        if self.live:
            self.bars.append(
                tqdm(
                    total=total,
                    initial=settled,
                    file=sys.stderr,
                    bar_format="grid {percentage:3.0f}%|{bar:20}| {desc}",
                    dynamic_ncols=True,
                )
            )
            for i in range(slots):
                self.bars.append(
                    tqdm(
                        total=1,
                        position=i + 1,
                        file=sys.stderr,
                        bar_format="  {desc}",
                        leave=False,
                        dynamic_ncols=True,
                    )
                )

    def event(self, text: str) -> None:
        self.tqdm.write(text, file=sys.stderr)

    def update(self, fraction: float, counts: str, lines: list[str]) -> None:
        now = time.monotonic()
        gained = fraction - self.start_fraction
        eta = (self.total - fraction) * (now - self.start) / gained if gained > 1e-6 else None
        summary = (
            f"{fraction:.1f}/{self.total} trials ({counts}) elapsed {_duration(now - self.start)}"
            + (f" ETA {_duration(eta)}" if eta is not None else "")
        )
        if self.live:
            self.bars[0].n = fraction
            self.bars[0].set_description_str(summary, refresh=False)
            self.bars[0].refresh()
            for i, bar in enumerate(self.bars[1:]):
                bar.set_description_str(lines[i] if i < len(lines) else "", refresh=True)
        elif self.enabled and now - self.last_print >= 30:
            self.last_print = now
            self.event(f"[{time.strftime('%H:%M:%S')}] {summary}")
            for line in lines:
                self.event("  " + line)

    def close(self) -> None:
        for bar in reversed(self.bars):
            bar.close()
        self.bars = []


# ---------------------------------------------------------------------------------- Ray
def _trial_task() -> Callable[..., dict[str, Any]]:
    """The Ray task of one attempt. A closure, so that Ray ships it by value: a worker runs it
    without importing blip_rl (or torch); only the subprocess it starts does."""

    def run_trial(
        args: list[str], env: dict[str, str], log_path: str, header: str, cwd: str
    ) -> dict[str, Any]:
        import os
        import socket
        import subprocess
        import sys
        import time

        started = time.time()
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        host = socket.gethostname()
        with open(log_path, "ab", buffering=0) as log:
            log.write(
                f"\n=== {header} on {host} {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode()
            )
            proc = subprocess.Popen(
                [sys.executable, "-m", "blip_rl.train", *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                cwd=cwd if os.path.isdir(cwd) else None,
            )
            try:
                rc = proc.wait()
            finally:  # cancelled or interrupted: the run must not outlive its task
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            seconds = time.time() - started
            log.write(f"\n=== exit code {rc} after {seconds:.0f}s ===\n".encode())
        return {"rc": rc, "seconds": seconds, "node": host}

    return run_trial


def _probe(address: str) -> None:
    """UsageError at once when no Ray cluster answers at ``address`` (``ray.init`` would keep
    retrying for minutes, e.g. at the stale address a stopped ``ray start`` leaves behind)."""
    if "://" in address:  # ray:// client addresses: let Ray report
        return
    target: str | None = address
    try:  # "auto": where Ray itself would look (RAY_ADDRESS, the last `ray start`)
        from ray._private.services import canonicalize_bootstrap_address

        target = canonicalize_bootstrap_address(address)
    except ConnectionError:
        target = None
    except Exception:  # noqa: BLE001 - a private helper; without it, probe what was given
        target = None if address == "auto" else address
    if target is None:
        raise UsageError(
            f"--address {address}: no Ray cluster found on this node (start one with "
            "ray start --head, or leave --address out to run on this machine)"
        )
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            pass
    except (OSError, ValueError):
        raise UsageError(
            f"--address {address}: no Ray cluster answers at {target} (start one with "
            "ray start --head, or leave --address out to run on this machine)"
        ) from None


def _check_machine(args: argparse.Namespace) -> None:
    """Without a cluster: one trial must fit on this machine."""
    cpus = args.num_cpus or float(len(os.sched_getaffinity(0)))
    if args.cpus_per_run > cpus:
        raise UsageError(
            f"--cpus-per-run {args.cpus_per_run:g} is more than the {cpus:g} CPUs Ray may use "
            "on this machine"
        )
    if args.gpus_per_run > 0:
        import torch

        gpus = torch.cuda.device_count()
        if args.gpus_per_run > gpus:
            raise UsageError(
                f"--gpus-per-run {args.gpus_per_run:g} is more than the {gpus} GPUs of this machine"
            )


def _start_ray(ray: Any, args: argparse.Namespace) -> tuple[str, bool]:
    """Start or join Ray; returns (a description, whether Ray runs embedded in this process)."""
    address = args.address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.ERROR,
    }
    local = address == "local"
    if local:
        cpus = args.num_cpus or float(len(os.sched_getaffinity(0)))
        kwargs.update(num_cpus=cpus, object_store_memory=80 * 2**20)  # Ray's minimum: 75 MiB
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(
            f"cannot join Ray at --address {address}: {first} (start a cluster with "
            "ray start --head, or leave --address out to run on this machine)"
        ) from None
    if local:
        return f"Ray on this machine ({kwargs['num_cpus']:g} CPUs)", True
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return f"the Ray cluster at {address} ({len(nodes)} nodes)", False


def _slots(ray: Any, args: argparse.Namespace, embedded: bool) -> int:
    """How many trials fit at once on the nodes there are now. None fits: UsageError on this
    machine; on a cluster a warning (an autoscaler may still add nodes), and 1."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    slots = 0
    for res in nodes:
        fit = math.floor(res.get("CPU", 0) / args.cpus_per_run + 1e-9)
        if args.gpus_per_run > 0:
            fit = min(fit, math.floor(res.get("GPU", 0) / args.gpus_per_run + 1e-9))
        slots += fit
    if slots == 0:
        cpus = max((r.get("CPU", 0) for r in nodes), default=0)
        gpus = max((r.get("GPU", 0) for r in nodes), default=0)
        text = (
            f"no Ray node has --cpus-per-run {args.cpus_per_run:g} CPUs and --gpus-per-run "
            f"{args.gpus_per_run:g} GPUs (the largest node: {cpus:g} CPUs, {gpus:g} GPUs)"
        )
        if embedded:
            raise UsageError(text)
        print(f"warning: {text}; the trials wait for such a node", file=sys.stderr)
        return 1
    return slots


def _error_line(log: Path) -> str:
    lines = [ln for ln in re.split(r"[\r\n]", _tail(log, 16384)) if ln.startswith("error:")]
    return lines[-1] if lines else ""


class _Runner:
    """Submits the trials as Ray tasks, retries the dead ones with --resume, keeps status."""

    def __init__(
        self,
        ray: Any,
        args: argparse.Namespace,
        sweep_dir: Path,
        trials: Sequence[Trial],
        status: _Status,
        display: _Display,
    ):
        self.ray = ray
        self.args = args
        self.sweep_dir = sweep_dir
        self.trials = {t.name: t for t in trials}
        self.status = status
        self.display = display
        threads = max(1, int(args.cpus_per_run))
        self.env = {
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "PYTHONUNBUFFERED": "1",
            "TQDM_MININTERVAL": "2",
        }
        if args.gpus_per_run == 0:
            self.env["CUDA_VISIBLE_DEVICES"] = ""
        self.task = ray.remote(_trial_task()).options(
            num_cpus=args.cpus_per_run, num_gpus=args.gpus_per_run, max_retries=0
        )
        self.refs: dict[Any, str] = {}
        self.log_size: dict[str, int] = {}
        self.retries: dict[str, int] = {}

    def log(self, name: str) -> Path:
        return self.sweep_dir / "logs" / f"{name}.log"

    def submit(self, name: str) -> None:
        run_dir = self.sweep_dir / name
        st = self.status.trials[name]
        if (run_dir / "config.json").is_file():
            args, kind = ["--resume", str(run_dir)], "resume"
        else:
            if run_dir.exists():  # killed before its config.json: nothing to resume there
                shutil.rmtree(run_dir)
            trial = self.trials[name]
            args = [*trial.argv, "--run-name", name, "--runs-dir", str(self.sweep_dir)]
            kind = "new run"
        st.attempts += 1
        st.state = "pending"
        log = self.log(name)
        self.log_size[name] = log.stat().st_size if log.exists() else 0
        header = f"{name}: attempt {st.attempts} ({kind})"
        ref = self.task.remote(args, self.env, str(log), header, os.getcwd())
        self.refs[ref] = name

    def finish(self, name: str, rc: int | None, result: dict[str, Any] | None, lost: str) -> None:
        st = self.status.trials[name]
        st.exit_codes.append(rc)
        if result is not None:
            st.seconds += float(result.get("seconds", 0.0))
            st.node = str(result.get("node", ""))
        summary = self.sweep_dir / name / "summary.json"
        if rc == 0 and summary.is_file():
            st.state, st.message = "done", ""
            self.display.event(f"done    {name} ({_duration(st.seconds)}, attempts: {st.attempts})")
            return
        if rc == 2:
            st.state = "failed"
            st.message = _error_line(self.log(name)) or "exit code 2 (bad input)"
            self.display.event(f"failed  {name}: {st.message} (not retried)")
            return
        if rc == 0:
            st.state, st.message = "failed", "exit code 0 without summary.json"
            self.display.event(f"failed  {name}: {st.message}")
            return
        why = lost or (f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit {rc}")
        done = self.retries.get(name, 0)
        if done < self.args.max_retries:
            self.retries[name] = done + 1
            self.display.event(f"retry   {name}: {why}; resuming from its last checkpoint")
            self.submit(name)
            return
        st.state = "failed"
        st.message = f"{why} ({self.retries.get(name, 0) + 1} times in this sweep command)"
        self.display.event(f"failed  {name}: {st.message}; see {self.log(name)}")

    def poll_running(self) -> bool:
        changed = False
        for name in self.refs.values():
            st = self.status.trials[name]
            if st.state == "pending":
                log = self.log(name)
                if log.exists() and log.stat().st_size > self.log_size.get(name, 0):
                    st.state = "running"
                    changed = True
                    self.display.event(f"start   {name} (attempt {st.attempts})")
        return changed

    def progress(self) -> tuple[float, str, list[str]]:
        fraction = 0.0
        lines = []
        counts: dict[str, int] = {}
        for name, st in self.status.trials.items():
            counts[st.state] = counts.get(st.state, 0) + 1
            if st.state in ("done", "failed"):
                fraction += 1.0
            elif st.state == "running":
                p = trial_progress(_tail(self.log(name)))
                line = f"{name}: "
                if p is None:
                    line += "starting"
                else:
                    fraction += p["fraction"]
                    line += f"game {p['game_index']}/{p['games']} {p['game']} "
                    line += f"{p['step']}/{p['total']} steps"
                    if p["steps_per_s"]:
                        line += f" {p['steps_per_s']:.0f} steps/s"
                if st.attempts > 1:
                    line += f" (attempt {st.attempts})"
                lines.append(line)
        text = ", ".join(f"{v} {k}" for k, v in counts.items())
        return fraction, text, lines

    def run(self, names: Sequence[str]) -> None:
        for name in names:
            self.submit(name)
        self.status.save()
        while self.refs:
            ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=1.0)
            for ref in ready:
                name = self.refs.pop(ref)
                try:
                    result = self.ray.get(ref)
                    self.finish(name, int(result["rc"]), result, "")
                except self.ray.exceptions.RayError as exc:
                    lost = f"its Ray task was lost ({type(exc).__name__})"
                    self.finish(name, None, None, lost)
            changed = self.poll_running()
            if ready or changed:
                self.status.save()
            self.display.update(*self.progress())

    def stop(self) -> None:
        """Cancel what still runs (the trials keep their last checkpoints)."""
        for ref, name in list(self.refs.items()):
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)
            st = self.status.trials[name]
            st.state = "pending"
        self.refs.clear()
        self.status.save()


# --------------------------------------------------------------------------------- main
def _lock(sweep_dir: Path) -> Any:
    f = open(sweep_dir / ".lock", "a+")  # noqa: SIM115 - held open until the process ends
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise UsageError(
            f"sweep {sweep_dir} is running in another python -m blip_rl.sweep; wait for it or "
            "stop it first"
        ) from None
    return f


def _print_trials(trials: Sequence[Trial], sweep_dir: Path) -> None:
    print(f"sweep {sweep_dir}: {len(trials)} trials")
    for t in trials:
        print(f"  {t.name:<40} python -m blip_rl.train {' '.join(t.argv)}")


@cli
def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 bad input, 1 some trial failed)."""
    args = build_parser().parse_args(argv)
    if args.list_grids:
        for name in list_grids():
            spec = load_grid_file(f"@{name}")
            print(f"@{name:<16}{spec.description}")
        return 0
    _check_numbers(args)
    ray = None if args.dry_run else _import_ray()
    spec = grid_from_args(args)
    trials = expand(spec)
    if args.gpus_per_run == 0:
        for t in trials:
            if t.settings.get("device", "").lower().startswith("cuda"):
                raise UsageError(f"trial {t.name} sets device {t.settings['device']}: give it "
                                 "GPUs with --gpus-per-run")  # fmt: skip
    validate(trials)
    runs_dir = Path(args.runs_dir).absolute()
    sweep_dir = runs_dir / _sweep_name(args, spec, trials)
    _check_existing(sweep_dir, trials)
    if args.dry_run:
        _print_trials(trials, sweep_dir)
        return 0
    address = args.address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        _probe(address)
    else:
        _check_machine(args)
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the sweep folder {sweep_dir}: {exc.strerror}") from None
    lock = _lock(sweep_dir)
    try:
        return _run(ray, args, spec, trials, sweep_dir)
    finally:
        lock.close()


def _run(
    ray: Any, args: argparse.Namespace, spec: GridSpec, trials: Sequence[Trial], sweep_dir: Path
) -> int:
    meta = {
        "format": SWEEP_FORMAT,
        "name": sweep_dir.name,
        "grid": spec.to_json(),
        "resources": {"cpus_per_run": args.cpus_per_run, "gpus_per_run": args.gpus_per_run},
        "trials": [t.to_json() for t in trials],
    }
    atomic_write(sweep_dir / "sweep.json", (json.dumps(meta, indent=2) + "\n").encode())
    status = _Status(sweep_dir / "status.json", sweep_dir.name, trials)
    todo = []
    for t in trials:
        st = status.trials[t.name]
        if (sweep_dir / t.name / "summary.json").is_file():
            st.state = "done"
        else:
            st.state = "pending"
            todo.append(t.name)
    status.save()
    done = len(trials) - len(todo)
    print(
        f"sweep {sweep_dir}: {len(trials)} trials, {done} finished, {len(todo)} to run "
        "(rerun the same command to resume it)",
        file=sys.stderr,
    )
    if todo:
        where, embedded = _start_ray(ray, args)
        try:
            slots = _slots(ray, args, embedded)
            print(f"on {where}: up to {slots} trials at once", file=sys.stderr)
            display = _Display(len(trials), done, min(slots, len(todo)), not args.no_progress)
            runner = _Runner(ray, args, sweep_dir, trials, status, display)
            try:
                runner.run(todo)
            except KeyboardInterrupt:
                runner.stop()
                display.close()
                print(
                    f"\ninterrupted: rerun the same command to resume {sweep_dir}",
                    file=sys.stderr,
                )
                return 130
            finally:
                display.close()
        finally:
            if embedded or ray.is_initialized():
                ray.shutdown()
    states = status.states()
    if any(s == "done" for s in states.values()):
        files, warnings = _report(trials, sweep_dir, states)
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        print((sweep_dir / "report" / "grid.md").read_text())
        print("report: " + ", ".join(str(f) for f in files if f.suffix == ".md"))
    failed = [n for n, s in states.items() if s == "failed"]
    if failed:
        print(
            f"{len(failed)} trials failed ({', '.join(failed)}); see {sweep_dir / 'status.json'} "
            "and the logs in " + str(sweep_dir / "logs"),
            file=sys.stderr,
        )
        return 1
    return 0


def _report(
    trials: Sequence[Trial], sweep_dir: Path, states: dict[str, str]
) -> tuple[list[Path], list[str]]:
    from blip_rl.sweep_report import write_report

    return write_report(trials, sweep_dir, sweep_dir.name, states)


if __name__ == "__main__":
    sys.exit(main())
