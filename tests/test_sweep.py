"""python -m blip_rl.sweep: a real local Ray sweep of tiny trials (2 agents x 2 seeds), one trial
SIGKILLed mid-game and resumed, a rerun that starts nothing, bad grids, no Ray; and the grid
expansion, the progress parser and the confidence intervals without Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from blip_rl import sweep
from blip_rl.sweep_grid import GridSpec, expand, load_grid_file, parse_seeds, parse_set
from blip_rl.sweep_report import confidence_interval

STEPS = 384
TINY_SWEEP = [
    "--games", "pong",
    "--agents", "blip,finetune",
    "--seeds", "1,2",
    "--steps-per-game", str(STEPS),
    "--set", "num_envs=2",
    "--set", "num_steps=16",
    "--set", "num_minibatches=2",
    "--set", "update_epochs=1",
    "--set", "eval_episodes=1",
    "--set", "max_episode_frames=160",
    "--set", "eval_every=0",
    "--set", "checkpoint_every=64",
    "--set", "fisher_states=32",
    "--num-cpus", "2",
    "--cpus-per-run", "1",
    "--name", "tiny",
]  # fmt: skip
TRIALS = ["blip__s1", "blip__s2", "finetune__s1", "finetune__s2"]


def _train_pid(sweep_dir: Path, trial: str) -> int | None:
    """The pid of the train process of ``trial`` of the sweep in ``sweep_dir`` (its first
    attempt: ``--runs-dir sweep_dir --run-name trial``). The folder matters: under
    pytest-xdist each worker that runs tests of this module builds its own sweep, with the
    same trial names."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            b"blip_rl.train" in cmd
            and b"--run-name" in cmd
            and trial.encode() in cmd
            and str(sweep_dir).encode() in cmd
        ):
            return int(proc.name)
    return None


def _kill_first_mid_game(sweep_dir: Path, killed: dict[str, Any], stop: threading.Event) -> None:
    """Watch the trials' checkpoints; SIGKILL the first trial whose latest.pt is rewritten
    (a mid-game checkpoint after the one written at the start) before its game ends."""
    first: dict[str, tuple[int, int]] = {}
    while not stop.is_set() and not killed:
        for trial in TRIALS:
            ckpt = sweep_dir / trial / "checkpoints"
            try:
                st = (ckpt / "latest.pt").stat()
            except OSError:
                continue
            seen = first.setdefault(trial, (st.st_ino, st.st_mtime_ns))
            if (st.st_ino, st.st_mtime_ns) != seen and not (ckpt / "after-game-1.pt").exists():
                pid = _train_pid(sweep_dir, trial)
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    killed.update(trial=trial, pid=pid)
                    return
        time.sleep(0.05)


def _sweep_cmd(runs: Path) -> list[str]:
    return [sys.executable, "-m", "blip_rl.sweep", *TINY_SWEEP, "--runs-dir", str(runs)]


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real sweep, shared by the tests below; one trial is killed mid-game."""
    runs = tmp_path_factory.mktemp("sweep") / "runs"
    killed: dict[str, Any] = {}
    stop = threading.Event()
    watcher = threading.Thread(
        target=_kill_first_mid_game, args=(runs / "tiny", killed, stop), daemon=True
    )
    watcher.start()
    started = time.monotonic()
    proc = subprocess.run(_sweep_cmd(runs), capture_output=True, text=True, timeout=600)
    stop.set()
    watcher.join()
    return {
        "runs": runs,
        "dir": runs / "tiny",
        "proc": proc,
        "killed": killed,
        "seconds": time.monotonic() - started,
    }


def _status(sweep_dir: Path) -> dict[str, Any]:
    return json.loads((sweep_dir / "status.json").read_text())["trials"]


def test_sweep_writes_run_folders_status_and_report(tiny_sweep: dict[str, Any]) -> None:
    proc, sweep_dir = tiny_sweep["proc"], tiny_sweep["dir"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((sweep_dir / "sweep.json").read_text())
    assert [t["name"] for t in meta["trials"]] == TRIALS
    for trial in TRIALS:
        run = sweep_dir / trial
        config = json.loads((run / "config.json").read_text())
        summary = json.loads((run / "summary.json").read_text())
        assert config["agent"] == trial.split("__")[0]
        assert config["seed"] == int(trial[-1])
        assert config["steps_per_game"] == STEPS
        assert summary["global_steps"] == STEPS
        assert (run / "checkpoints" / "after-game-1.pt").is_file()
        assert any(run.glob("events.out.tfevents.*"))
        assert (sweep_dir / "logs" / f"{trial}.log").is_file()
    status = _status(sweep_dir)
    assert {s["state"] for s in status.values()} == {"done"}
    # The method's setting went to BLIP only (finetune has no Fisher): 4 trials, not more.
    assert (
        json.loads((sweep_dir / "blip__s1" / "config.json").read_text())["method_config"][
            "fisher_states"
        ]
        == 32
    )
    comparison = (sweep_dir / "report" / "comparison.md").read_text()
    assert "blip" in comparison and "finetune" in comparison
    grid = json.loads((sweep_dir / "report" / "grid.json").read_text())
    groups = grid["sequences"]["pong"]
    assert set(groups) == {"blip", "finetune"}
    for g in groups.values():
        assert g["seeds"] == [1, 2]
        assert g["metrics"]["average_final_return"]["n"] == 2
        assert g["metrics"]["average_final_return"]["low"] is not None
    assert "| blip | 2/2 |" in (sweep_dir / "report" / "grid.md").read_text()
    assert "| blip | 2/2 |" in proc.stdout


def test_killed_trial_resumes_from_its_checkpoint(tiny_sweep: dict[str, Any]) -> None:
    killed, sweep_dir = tiny_sweep["killed"], tiny_sweep["dir"]
    assert killed, "no trial reached a mid-game checkpoint to kill"
    trial = killed["trial"]
    st = _status(sweep_dir)[trial]
    assert st["attempts"] == 2
    assert st["exit_codes"] == [-signal.SIGKILL, 0]
    summary = json.loads((sweep_dir / trial / "summary.json").read_text())
    assert summary["resumes"] == 1  # one resume, not a restart
    assert summary["global_steps"] == STEPS
    log = (sweep_dir / "logs" / f"{trial}.log").read_text()
    assert "attempt 2 (resume)" in log
    resumed_at = [line for line in log.splitlines() if line.startswith("resuming")]
    assert resumed_at and int(resumed_at[0].split()[-1]) > 0, resumed_at
    assert f"retry   {trial}: killed by signal 9" in tiny_sweep["proc"].stderr
    for other in set(TRIALS) - {trial}:
        assert _status(sweep_dir)[other]["attempts"] == 1


def test_rerun_of_a_finished_sweep_starts_nothing_and_rebuilds_the_report(
    tiny_sweep: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    sweep_dir = tiny_sweep["dir"]
    before = _status(sweep_dir)
    grid_md = sweep_dir / "report" / "grid.md"
    stamp = grid_md.stat().st_mtime_ns
    rc = sweep.main([*TINY_SWEEP, "--runs-dir", str(tiny_sweep["runs"])])
    out, err = capsys.readouterr()
    assert rc == 0, err[-3000:]
    assert "4 finished, 0 to run" in err
    assert "on Ray" not in err  # Ray is not even started
    assert "| finetune | 2/2 |" in out
    after = _status(sweep_dir)
    for t in TRIALS:
        assert after[t]["attempts"] == before[t]["attempts"]
        assert after[t]["exit_codes"] == before[t]["exit_codes"]
    assert grid_md.stat().st_mtime_ns > stamp
    assert (sweep_dir / "report" / "comparison.md").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--agents", "blip,nope"], "unknown agent preset 'nope'"),
        (["--games", "pong,nogame"], "unknown game 'nogame'"),
        (["--set", "f_priorr=1e-20"], "unknown setting 'f_priorr'"),
        (["--set", "f_prior=5e-18,abc"], "trial blip__f_prior=abc__s1: invalid --f-prior 'abc'"),
        (["--set", "ewc_lambda=1"], "applies to none of the agents"),
        (["--seeds", "1,x"], "invalid --seeds 'x'"),
        (["--cpus-per-run", "64"], "--cpus-per-run 64 is more than the"),
        (["--address", "127.0.0.1:1"], "--address 127.0.0.1:1: no Ray cluster answers at"),
    ],
)
def test_bad_grid_is_one_line_and_exit_2_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    runs = tmp_path / "runs"
    rc = sweep.main(["--games", "pong", "--runs-dir", str(runs), *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not runs.exists()


def test_without_ray_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    rc = sweep.main(["--games", "pong", "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "pip install 'blip-rl[ray]'" in err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------ without Ray
def test_grid_expansion_drops_settings_an_agent_does_not_read() -> None:
    grid = GridSpec(
        games=["pong", "@demo"],
        agents=["blip", "finetune", "ewc"],
        seeds=parse_seeds("1-2"),
        settings=parse_set(["f_prior=5e-18,1e-20", "ewc_lambda=1.3,13", "num_envs=2"]),
    )
    trials = expand(grid)
    names = [t.name for t in trials]
    # 2 sequences x (blip 2 priors + finetune 1 + ewc 2 lambdas) x 2 seeds
    assert len(trials) == 2 * 5 * 2 == len(set(names))
    assert "pong__blip__f_prior=1e-20__s2" in names
    assert "demo__finetune__s1" in names
    assert "pong__ewc__ewc_lambda=13__s1" in names
    ewc = next(t for t in trials if t.name == "pong__ewc__ewc_lambda=13__s1")
    assert "--ewc-lambda=13" in ewc.argv and "--num-envs=2" in ewc.argv
    assert not any(a.startswith("--f-prior") for a in ewc.argv)  # plain layers: no prior
    assert ewc.group == "pong__ewc__ewc_lambda=13"


def test_shipped_grid_files_expand() -> None:
    for name in sweep.list_grids():
        grid = load_grid_file(f"@{name}")
        assert expand(grid), name
    prior = expand(load_grid_file("@demo-prior"))
    assert len(prior) == 3 * 3 + 3  # fine-tuning is not multiplied by the BLIP prior


def test_progress_line_of_a_trial() -> None:
    tail = (
        "run x\ngame 1/2 pong:  40%|####      | 64/160 [00:01<00:02, 50.1step/s, ret=0.0]"
        "\rgame 2/2 breakout:  25%|##5       | 40/160 [00:01<00:03, 40.0step/s, ret=0.0, sps=41]"
    )
    p = sweep.trial_progress(tail)
    assert p is not None
    assert (p["game_index"], p["games"], p["game"], p["step"], p["total"]) == (
        2,
        2,
        "breakout",
        40,
        160,
    )
    assert p["steps_per_s"] == 41.0
    assert p["fraction"] == pytest.approx((1 + 40 / 160) / 2)
    assert sweep.trial_progress("resuming runs/x at env step 64\n") is None


def test_confidence_interval_is_students_t() -> None:
    ci = confidence_interval([1.0, 2.0, 3.0, float("nan")])
    assert ci["n"] == 3 and ci["mean"] == pytest.approx(2.0)
    # t(0.975, 2) = 4.303; std 1; half width 4.303 / sqrt(3)
    assert ci["high"] == pytest.approx(2.0 + 4.303 / 3**0.5, rel=1e-4)
    assert confidence_interval([5.0])["low"] is None


class _FakeTask:
    """Stands in for the Ray task: records what would be submitted."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def remote(self, *args: Any) -> object:
        self.calls.append(args)
        return object()


class _FakeRay:
    def __init__(self) -> None:
        self.task = _FakeTask()

    def remote(self, fn: Any) -> _FakeRay:
        return self

    def options(self, **kwargs: Any) -> _FakeTask:
        return self.task


def test_exit_2_fails_once_and_a_killed_trial_is_resumed_until_the_retries_run_out(
    tmp_path: Path,
) -> None:
    import argparse

    trials = expand(GridSpec(games=["pong"], agents=["finetune"], seeds=[1, 2]))
    bad, killed = trials[0].name, trials[1].name
    status = sweep._Status(tmp_path / "status.json", "s", trials)
    args = argparse.Namespace(cpus_per_run=1.0, gpus_per_run=0.0, max_retries=1)
    ray = _FakeRay()
    runner = sweep._Runner(ray, args, tmp_path, trials, status, sweep._Display(2, 0, 1, False))
    runner.submit(bad)
    argv = ray.task.calls[-1][0]
    assert argv[-4:] == ["--run-name", bad, "--runs-dir", str(tmp_path)]
    assert ray.task.calls[-1][1]["OMP_NUM_THREADS"] == "1"
    runner.log(bad).parent.mkdir(parents=True, exist_ok=True)
    runner.log(bad).write_text("resuming\nerror: corrupt checkpoint x: bad\n=== exit code 2 ===\n")
    runner.finish(bad, 2, {"seconds": 3.0, "node": "n1"}, "")
    st = status.trials[bad]
    assert (st.state, st.attempts, st.exit_codes) == ("failed", 1, [2])
    assert st.message == "error: corrupt checkpoint x: bad"
    assert len(ray.task.calls) == 1  # not retried

    (tmp_path / killed).mkdir()
    (tmp_path / killed / "config.json").write_text("{}")
    runner.submit(killed)
    runner.finish(killed, -9, {"seconds": 1.0, "node": "n1"}, "")
    assert ray.task.calls[-1][0] == ["--resume", str(tmp_path / killed)]
    assert "attempt 2 (resume)" in ray.task.calls[-1][3]
    assert status.trials[killed].state == "pending"
    runner.finish(killed, None, None, "its Ray task was lost (NodeDiedError)")
    st = status.trials[killed]
    assert (st.state, st.attempts, st.exit_codes) == ("failed", 2, [-9, None])
    assert "NodeDiedError" in st.message and len(ray.task.calls) == 3
