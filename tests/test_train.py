"""The training CLI end to end on real ROMs with tiny budgets: run folder, TensorBoard, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from conftest import one_error_line
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny import TINY

from blip_rl import atari
from blip_rl.config import RunConfig
from blip_rl.continual import ContinualRun, load_checkpoint
from blip_rl.ppo import bf16_supported
from blip_rl.tblog import TBLogger
from blip_rl.train import main

BLIP = ["--fisher-states", "96"]


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_two_games_end_to_end(tmp_path: Path, capsys) -> None:
    argv = [*TINY, *BLIP, "--steps-per-game", "128", "--eval-every", "64"]
    assert main([*argv, "--runs-dir", str(tmp_path), "--run-name", "r"]) == 0
    run = tmp_path / "r"
    for name in ("config.json", "summary.json", "metrics.json", "matrix.csv", "evals.csv"):
        assert (run / name).is_file(), name
    for name in ("latest.pt", "after-game-1.pt", "after-game-2.pt"):
        assert (run / "checkpoints" / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["games"] == ["pong", "breakout"]
    assert summary["global_steps"] == 256
    assert len(summary["metrics"]["matrix"]) == 2
    assert all(len(row) == 2 for row in summary["metrics"]["matrix"])
    assert 0 < summary["memory_bytes_per_param"] <= 8
    # "bf16" (the default) is what ran only where the CPU has it; the summary says which
    assert summary["precision_used"] == ("bf16" if bf16_supported() else "fp32")

    acc = events(run)
    tags = set(acc.Tags()["scalars"])
    # Every game is evaluated at every evaluation, seen or not, at the global step.
    for game in ("pong", "breakout"):
        steps = [e.step for e in acc.Scalars(f"eval/{game}/return")]
        assert steps == [64, 128, 192, 256], (game, steps)
        assert f"eval/{game}/normalized" in tags
    assert [e.step for e in acc.Scalars("forgetting/pong")] == [256]
    for tag in ("loss/policy", "loss/value", "loss/entropy", "perf/steps_per_s"):
        assert tag in tags, tag
    assert "blip/trunk.conv1/frozen_bits" in tags
    bits = acc.Scalars("blip/trunk.conv1/frozen_bits")
    assert [e.step for e in bits] == [128, 256] and bits[-1].value >= bits[0].value > 0
    assert "matrix/eval_return" in acc.Tags()["images"]
    # The matrix written to CSV is the one in the summary.
    rows = (run / "matrix.csv").read_text().strip().splitlines()
    assert rows[0] == "after_game,pong,breakout" and len(rows) == 3

    # A branch from the after-game-1 state: fine-tuning (plain layers) continues from BLIP's
    # game 1; its run folder holds the whole matrix and curves, game 1 is not trained again.
    source = run / "checkpoints" / "after-game-1.pt"
    branch = ["--from-checkpoint", str(source), "--agent", "finetune", "--run-name", "b"]
    argv = [*TINY, "--steps-per-game", "128", "--eval-every", "64"]
    assert main([*argv, *branch, "--runs-dir", str(tmp_path)]) == 0
    b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert b["branched_from"] == str(source) and b["method"] == "finetune"
    assert b["global_steps"] == 256
    assert b["metrics"]["matrix"][0] == summary["metrics"]["matrix"][0]
    pong = [e.step for e in events(tmp_path / "b").Scalars("eval/pong/return")]
    assert pong == [64, 128, 192, 256]
    # A method that would need the source's state after game 1 cannot branch from it, and a
    # branch plays the source's games (its matrix rows are the branch's first rows).
    assert main([*argv, *branch[:2], "--agent", "ewc", "--runs-dir", str(tmp_path)]) == 2
    other = ["--games", "pong,freeway", "--agent", "finetune", "--runs-dir", str(tmp_path)]
    assert main([*argv, *branch[:2], *other]) == 2
    assert "plays the source run's games" in capsys.readouterr().err


def test_branch_from_trained_game_reruns_the_end_of_game_step(tmp_path: Path, capsys) -> None:
    """``trained-game-1.pt`` is game 1 trained but not yet frozen: branches from it freeze with
    their own prior (or run another method's end-of-game step) without training game K again."""
    argv = [*TINY, *BLIP, "--steps-per-game", "128", "--eval-every", "0"]
    assert main([*argv, "--runs-dir", str(tmp_path), "--run-name", "src"]) == 0
    ckpts = tmp_path / "src" / "checkpoints"
    trained = load_checkpoint(ckpts / "trained-game-1.pt")
    assert trained["progress"]["game_trained"] and not trained["progress"]["game_done"]
    assert trained["ppo"] is not None and trained["matrix"] == []
    bits = [k for k in trained["net"] if k.endswith("_bits")]
    assert bits and all(int(trained["net"][k].sum()) == 0 for k in bits)  # nothing frozen yet

    def branch(name: str, *flags: str, source: str = "trained-game-1.pt") -> int:
        src = ["--from-checkpoint", str(ckpts / source), "--run-name", name]
        return main([*argv, *src, *flags, "--runs-dir", str(tmp_path)])

    mean_bits = {}
    for prior in ("5e-12", "5e-24"):
        assert branch(f"p{prior}", "--f-prior", prior) == 0
        summary = json.loads((tmp_path / f"p{prior}" / "summary.json").read_text())
        assert summary["global_steps"] == 256 and len(summary["metrics"]["matrix"]) == 2
        mean_bits[prior] = summary["after_game"][0]["mean_bits"]
    assert mean_bits["5e-24"] > mean_bits["5e-12"] + 3  # each 100x of the prior: 2-3 bits
    # The convolutions' own prior frees them alone: the linear layer freezes as at the default
    # (a branch at the default plays the same Fisher states).
    assert branch("conv", "--conv-f-prior", "5e-8") == 0
    assert branch("dflt") == 0

    def frozen_bits(run: str, layer: str) -> torch.Tensor:
        net = load_checkpoint(tmp_path / run / "checkpoints" / "after-game-1.pt")["net"]
        return net[f"trunk.{layer}.weight_bits"].float()

    for layer in ("conv1", "conv2", "conv3"):
        assert frozen_bits("conv", layer).mean() < frozen_bits("dflt", layer).mean() - 3
    assert torch.equal(frozen_bits("conv", "fc"), frozen_bits("dflt", "fc"))
    assert frozen_bits("dflt", "fc").mean() > 1
    # Another method's end-of-game step on the same game-1 training (nothing protected yet),
    # here followed by other later games: game 1 trained once serves several sequences.
    assert branch("ewc", "--agent", "ewc", "--games", "pong,freeway,boxing") == 0
    ewc = json.loads((tmp_path / "ewc" / "summary.json").read_text())
    assert ewc["method"] == "ewc" and ewc["global_steps"] == 384
    assert ewc["games"] == ["pong", "freeway", "boxing"]
    assert [len(r) for r in ewc["metrics"]["matrix"]] == [3, 3, 3]
    mine = load_checkpoint(tmp_path / "ewc" / "checkpoints" / "trained-game-1.pt")["net"]
    trunk = [k for k in trained["net"] if k.startswith("trunk.") and k.endswith("weight")]
    assert trunk and all(torch.equal(mine[k], trained["net"][k]) for k in trunk)
    assert torch.equal(mine["heads.policy.0.weight"], trained["net"]["heads.policy.0.weight"])
    capsys.readouterr()
    assert branch("x0", "--games", "breakout,pong") == 2
    assert "starts with the source run's first game (pong)" in one_error_line(capsys)
    assert not (ckpts / "trained-game-2.pt").exists()  # game 1's only: 32 MB each
    # Refused: another training budget (PackNet reserves steps), a new prior once bits are
    # frozen.
    assert branch("x2", "--agent", "packnet", "--fisher-states", "0") == 2
    capsys.readouterr()
    flags = [a for a in argv if a not in BLIP]
    src = ["--from-checkpoint", str(ckpts / "trained-game-1.pt"), "--agent", "packnet"]
    assert main([*flags, *src, "--run-name", "x2", "--runs-dir", str(tmp_path)]) == 2
    assert "before its end-of-game step" in one_error_line(capsys)
    assert branch("x3", "--f-prior", "5e-12", source="after-game-1.pt") == 2
    assert "trained-game-1.pt" in one_error_line(capsys)
    assert branch("x4", "--conv-f-prior", "5e-12", source="after-game-1.pt") == 2
    assert "the convolutions' prior" in one_error_line(capsys)
    # Game 1 trained with every unit: no branch can set some apart afterwards.
    assert branch("x5", "--reserve", "0.5") == 2
    assert "--reserve 0.5 differs from the source run's (0)" in one_error_line(capsys)
    assert not any((tmp_path / n).exists() for n in ("x0", "x2", "x3", "x4", "x5"))
    # A branch killed before it trained keeps the source's PPO state in its first checkpoint,
    # so a resume does not train game 1 again.
    config = RunConfig.from_json(json.loads((tmp_path / "ewc" / "config.json").read_text()))
    run = ContinualRun(tmp_path / "y", config, progress=False, branch=trained)
    (tmp_path / "y" / "checkpoints").mkdir(parents=True)
    run.checkpoint(None)
    first = load_checkpoint(tmp_path / "y" / "checkpoints" / "latest.pt")
    assert first["ppo"]["global_step"] == 128 and first["progress"]["game_trained"]
    assert "optimizer" not in first["ppo"]  # other games, other heads: fresh Adam moments


def test_evaluation_draws_its_own_random_numbers(tmp_path: Path, monkeypatch) -> None:
    """An evaluation's sampled actions depend on its seed alone, not on the random numbers the
    training drew before it, and it draws none of the training's: a branch evaluates its
    source's network exactly as the source did, and evaluating does not change the training."""
    argv = [*TINY, *BLIP, "--steps-per-game", "64", "--eval-every", "0"]
    assert main([*argv, "--runs-dir", str(tmp_path), "--run-name", "src"]) == 0
    config = RunConfig.from_json(json.loads((tmp_path / "src" / "config.json").read_text()))
    ckpt = load_checkpoint(tmp_path / "src" / "checkpoints" / "after-game-1.pt")
    run = ContinualRun(tmp_path / "y", config, progress=False, branch=ckpt)
    run.log = TBLogger(str(tmp_path / "y"))
    played: list[np.ndarray] = []
    real = atari.evaluate

    def spy(policy_fn, *args, **kwargs):  # the real evaluation, its actions recorded
        def act(obs: np.ndarray) -> np.ndarray:
            played.append(np.asarray(policy_fn(obs)).copy())
            return played[-1]

        return real(act, *args, **kwargs)

    monkeypatch.setattr(atari, "evaluate", spy)
    rounds = len(run.history.evals)
    seen = []
    for training_draws in (1, 2):  # two different states of the training's RNG
        torch.manual_seed(training_draws)
        before = torch.get_rng_state()
        played.clear()
        run.evaluate_all(after_game=None)
        assert torch.equal(torch.get_rng_state(), before)
        seen.append(np.concatenate(played))
        del run.history.evals[rounds:]  # the same evaluation round again
    run.log.close()
    assert len(np.unique(seen[0])) > 1  # a sampling policy: the actions do depend on the draws
    assert np.array_equal(seen[0], seen[1])


def test_finetune_agent_runs_without_blip_layers(tmp_path: Path) -> None:
    argv = [*TINY, "--games", "breakout", "--agent", "finetune", "--steps-per-game", "64"]
    argv += ["--shared-head", "--eval-every", "0", "--precision", "fp32"]
    assert main([*argv, "--runs-dir", str(tmp_path), "--run-name", "f"]) == 0

    def strict(name: str) -> None:
        raise AssertionError(f"{name} in a JSON file")

    summary = json.loads((tmp_path / "f" / "summary.json").read_text(), parse_constant=strict)
    assert summary["method"] == "finetune" and summary["memory_bytes_per_param"] == 0
    assert summary["precision_used"] == "fp32"
    # One game: forgetting is undefined, and written as null (strict JSON), not NaN.
    assert summary["metrics"]["average_forgetting"] is None
    json.loads((tmp_path / "f" / "metrics.json").read_text(), parse_constant=strict)
    net = load_checkpoint(tmp_path / "f" / "checkpoints" / "latest.pt")["net"]
    # --shared-head: one pair of heads over the full 18-action set, plain (not BLIP) layers.
    assert net["heads.policy.0.weight"].shape[0] == 18 and "heads.policy.1.weight" not in net
    assert not any(k.endswith("_bits") for k in net)
    assert "blip/trunk.conv1/frozen_bits" not in events(tmp_path / "f").Tags()["scalars"]


def _wait_for(predicate, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _settled_files(run: Path) -> set[str]:
    """Names under ``run``, without the temporary files of writes still in flight."""
    return {p.name for p in run.rglob("*") if not p.name.endswith(".tmp")}


def test_sigkill_then_resume(tmp_path: Path) -> None:
    run = tmp_path / "k"
    argv = [
        *TINY,
        *BLIP,
        "--steps-per-game",
        "256",
        "--eval-every",
        "0",
        "--checkpoint-every",
        "64",
    ]
    cmd = [sys.executable, "-m", "blip_rl.train", *argv, "--runs-dir", str(tmp_path)]
    proc = subprocess.Popen([*cmd, "--run-name", "k"], stderr=subprocess.DEVNULL)
    latest = run / "checkpoints" / "latest.pt"

    def in_second_game() -> bool:
        if not latest.is_file():
            return False
        try:
            p = load_checkpoint(latest)["progress"]
        except Exception:  # noqa: BLE001 - being replaced right now
            return False
        return p["game_index"] == 1 and p["step_in_game"] > 0

    try:
        assert _wait_for(in_second_game, 240), "no mid-game checkpoint in game 2"
        # Paused (SIGSTOP: alive, lock held, writing nothing), so that it cannot finish while
        # the second trainer starts on a loaded machine: that one is refused and touches
        # nothing. A write the pause caught in flight (".name.XXXX.tmp") is left out.
        proc.send_signal(signal.SIGSTOP)
        before = _settled_files(run)
        code = subprocess.run(
            [sys.executable, "-m", "blip_rl.train", "--resume", str(run), "--no-progress"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert code.returncode == 2
        err = code.stderr.strip().splitlines()
        assert len(err) == 1 and "in use by another training process" in err[0], err
        assert proc.poll() is None
        assert before <= _settled_files(run)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (run / "summary.json").exists()
    saved = load_checkpoint(latest)
    # A resumed run has exactly the frozen bits (and all BLIP state) that were saved.
    config = RunConfig.from_json(json.loads((run / "config.json").read_text()))
    resumed = ContinualRun(run, config, resume=True, progress=False)
    state = resumed.net.state_dict()
    blip_keys = [k for k in saved["net"] if k.endswith(("_bits", "_prefix", "_fisher", "freezes"))]
    assert blip_keys and all(torch.equal(state[k], saved["net"][k]) for k in blip_keys)
    assert any(int(saved["net"][k].sum()) > 0 for k in blip_keys if k.endswith("_bits"))
    step0 = saved["progress"]["global_step"]
    assert resumed.progress.global_step == step0 > 256

    assert main(["--resume", str(run), "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_steps"] == 512 and summary["resumes"] == 1
    assert len(summary["metrics"]["matrix"]) == 2
    # TensorBoard: the step counter continues and no step is logged twice.
    steps = [e.step for e in events(run).Scalars("perf/steps_per_s")]
    assert steps == sorted(set(steps)) and steps[-1] == 512


def test_resume_before_the_first_checkpoint_starts_over(tmp_path: Path, capsys) -> None:
    """A run killed between writing config.json and its first checkpoint still resumes."""
    assert main([*TINY, "--games", "breakout", "--agent", "finetune", "--dry-run"]) == 0
    config = json.loads(capsys.readouterr().out)
    config["steps_per_game"] = 64
    run = tmp_path / "early"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config))
    assert main(["--resume", str(run), "--no-progress"]) == 0
    assert json.loads((run / "summary.json").read_text())["global_steps"] == 64


def test_bad_resume_folders(tmp_path: Path, capsys) -> None:
    assert main(["--resume", str(tmp_path / "missing")]) == 2
    assert "no such run folder" in one_error_line(capsys)
    (tmp_path / "notrun").mkdir()
    assert main(["--resume", str(tmp_path / "notrun")]) == 2
    assert "not a blip-rl run" in one_error_line(capsys)
    # A run whose checkpoint is corrupt: clear error, and nothing in it is touched.
    run = tmp_path / "corrupt"
    (run / "checkpoints").mkdir(parents=True)
    assert main([*TINY, "--dry-run"]) == 0
    config = json.loads(capsys.readouterr().out)
    (run / "config.json").write_text(json.dumps(config))
    (run / "checkpoints" / "latest.pt").write_bytes(b"not a checkpoint")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    mtimes = {p: os.stat(p).st_mtime_ns for p in before}
    assert main(["--resume", str(run)]) == 2
    assert "corrupt checkpoint" in one_error_line(capsys)
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before and all(os.stat(p).st_mtime_ns == t for p, t in mtimes.items())
    # Changing the config of a resumed run is refused.
    assert main(["--resume", str(run), "--games", "pong"]) == 2
    assert "--games" in one_error_line(capsys)


def test_existing_run_name_is_never_overwritten(tmp_path: Path, capsys) -> None:
    run = tmp_path / "taken"
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert main([*TINY, "--runs-dir", str(tmp_path), "--run-name", "taken"]) == 2
    assert "already exists" in one_error_line(capsys)
    assert (run / "config.json").read_text() == "{}"
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]
