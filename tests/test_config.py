"""The configuration tree: every bad value is refused before any work, in one line, exit 2.

The cases run in a subprocess (as a user's shell would run them), all in one interpreter so the
test stays fast: each case calls the CLI's ``main`` and reports its exit code, its stderr and
whether anything appeared in the runs folder.
"""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest

from blip_rl.config import RunConfig, add_config_flags
from blip_rl.files import json_safe, write_json
from blip_rl.nets import NetConfig
from blip_rl.ppo import PPOConfig

# (argv, text the error line must contain). Each case adds --dry-run only where noted: a
# case must be refused before a run folder exists, whether or not it would train.
BAD = [
    # The rows of issue 12's table.
    (["--channels", "0,64,64"], "--channels"),
    (["--max-bits", "40"], "--max-bits 40"),
    (["--f-prior", "-1"], "--f-prior -1"),
    (["--f-prior", "nan"], "--f-prior 'nan'"),
    (["--conv-f-prior=-1e-9"], "--conv-f-prior -1e-09"),
    (["--fisher-states", "0"], "--fisher-states 0"),
    (["--games", ""], "empty game list"),
    # Every numeric field's bounds (the completeness test below checks the list is whole).
    (["--steps-per-game", "0"], "--steps-per-game 0"),
    (["--seed", "-1"], "--seed -1"),
    (["--eval-every", "-1"], "--eval-every -1"),
    (["--torch-threads", "-1"], "--torch-threads -1"),
    (["--eval-episodes", "0"], "--eval-episodes 0"),
    (["--checkpoint-every", "-5"], "--checkpoint-every -5"),
    (["--sticky-actions", "1.5"], "--sticky-actions 1.5"),
    (["--max-episode-frames", "0"], "--max-episode-frames 0"),
    (["--noop-max", "-1"], "--noop-max -1"),
    (["--frame-skip", "0"], "--frame-skip 0"),
    (["--env-threads", "-1"], "--env-threads -1"),
    (["--hidden", "0"], "--hidden 0"),
    (["--max-bits", "0"], "--max-bits 0"),
    (["--f-prior", "inf"], "--f-prior 'inf'"),
    (["--num-envs", "0"], "--num-envs 0"),
    (["--num-steps", "0"], "--num-steps 0"),
    (["--update-epochs", "0"], "--update-epochs 0"),
    (["--num-minibatches", "0"], "--num-minibatches 0"),
    (["--num-minibatches", "2048"], "--num-minibatches 2048"),
    (["--learning-rate", "-0.0001"], "--learning-rate -0.0001"),
    (["--learning-rate", "-1e-4"], "argument --learning-rate: expected one argument"),
    (["--no-such-flag", "1"], "unrecognized arguments: --no-such-flag 1"),
    (["--gamma", "1.5"], "--gamma 1.5"),
    (["--gae-lambda", "-0.1"], "--gae-lambda -0.1"),
    (["--clip-coef", "-0.1"], "--clip-coef -0.1"),
    (["--ent-coef", "-1"], "--ent-coef -1"),
    (["--vf-coef", "-1"], "--vf-coef -1"),
    (["--max-grad-norm", "-1"], "--max-grad-norm -1"),
    (["--adam-eps", "0"], "--adam-eps 0"),
    (["--target-kl", "0"], "--target-kl 0"),
    (["--value-fisher-coef", "-1"], "--value-fisher-coef -1"),
    (["--fisher-chunk", "0"], "--fisher-chunk 0"),
    (["--reserve", "0.95"], "--reserve 0.95"),
    (["--agent", "ewc", "--ewc-lambda", "-1"], "--ewc-lambda -1"),
    (["--agent", "online-ewc", "--ewc-gamma", "1.5"], "--ewc-gamma 1.5"),
    (["--agent", "packnet", "--packnet-prune", "1"], "--packnet-prune 1"),
    (["--agent", "packnet", "--packnet-retrain-frac", "-1"], "--packnet-retrain-frac -1"),
    (["--agent", "packnet", "--packnet-retrain-lr", "0"], "--packnet-retrain-lr 0"),
    (["--video-max-frames", "0"], "--video-max-frames 0"),
    (["--video-max-frames", "10001"], "--video-max-frames 10001"),
    (["--wandb-project", "a/b"], "--wandb-project 'a/b'"),
    # Types and names.
    (["--games", "pong,notagame"], "unknown game 'notagame'"),
    (["--agent", "nosuchagent"], "unknown agent preset 'nosuchagent'"),
    (["--num-envs", "x"], "--num-envs 'x'"),
    (["--learning-rate", "fast"], "--learning-rate 'fast'"),
    (["--agent", "finetune", "--fisher-states", "10"], "--fisher-states does not apply"),
    (["--device", "tpu"], "--device 'tpu'"),
    (["--seed", "one"], "--seed 'one'"),
    (["--blip", "maybe"], "--blip 'maybe'"),
    (["--precision", "fp8"], "--precision 'fp8'"),
    (["--agent", "finetune", "--blip", "false", "--max-bits", "8", "--f-prior", "x"], "--f-prior"),
    (["--agent", "blip", "--blip", "false"], "needs --blip true"),
]

_DRIVER = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from pathlib import Path
    from blip_rl.train import main
    cases, runs = json.loads(sys.argv[1]), Path(sys.argv[2])
    out = []
    for argv in cases:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main([*argv, "--runs-dir", str(runs), "--no-progress"])
            except SystemExit as exc:
                code = f"SystemExit {exc.code}"
        made = sorted(p.name for p in runs.iterdir()) if runs.exists() else []
        out.append({"code": code, "err": err.getvalue(), "runs": made})
    print(json.dumps(out))
    """
)


def _run_cases(cases: list[list[str]], runs: Path) -> list[dict[str, typing.Any]]:
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, json.dumps(cases), str(runs)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_bad_value_is_one_line_exit_2_before_any_folder(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    results = _run_cases([argv for argv, _ in BAD], runs)
    for (argv, needle), res in zip(BAD, results, strict=True):
        lines = res["err"].strip().splitlines()
        assert res["code"] == 2, (argv, res)
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, lines)
        assert needle in lines[0], (argv, lines[0])
        assert "Traceback" not in res["err"]
        assert res["runs"] == [], (argv, res["runs"])  # nothing written


def test_bad_cases_cover_every_numeric_field() -> None:
    """A new numeric field without a bounds case here fails this test."""
    import argparse

    table = add_config_flags(argparse.ArgumentParser())
    numeric = {
        spec.flag
        for spec in table.values()
        if typing.get_origin(spec.type) is None
        and spec.type in (int, float)
        or spec.type == (float | None)
    }
    covered = {arg.split("=")[0] for argv, _ in BAD for arg in argv if arg.startswith("--")}
    assert numeric - covered == set()


def test_seed_zero_is_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    from blip_rl.train import main

    assert main(["--seed", "0", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] == 0


def test_flags_presets_and_defaults_layer(capsys: pytest.CaptureFixture[str]) -> None:
    from blip_rl.train import main

    # Preset (@blip-atari6: no sticky actions) < flag; agent preset < flag.
    argv = ["--games", "@blip-atari6", "--agent", "ewc", "--ewc-lambda", "3", "--dry-run"]
    assert main([*argv, "--gamma", "0.98", "--shared-head"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["atari"]["sticky_actions"] == 0.0 and cfg["atari"]["full_action_space"] is True
    assert cfg["method_config"]["ewc_lambda"] == 3.0 and cfg["ppo"]["gamma"] == 0.98
    assert cfg["shared_head"] is True and cfg["net"]["blip"] is False
    # The JSON round-trips into the same typed tree.
    again = RunConfig.from_json(cfg)
    assert isinstance(again.net, NetConfig) and isinstance(again.ppo, PPOConfig)
    assert again.to_json() == cfg


def test_blip_column_is_the_measured_arm(capsys: pytest.CaptureFixture[str]) -> None:
    """``--agent blip-column`` resolves to exactly the arm measured in benchmarks/forgetting
    (section 3j): the blip preset plus ``--reserve 0.5 --channels 64,128,128 --hidden 1024``."""
    from blip_rl.train import main

    cfgs = []
    for flags in (
        ["--agent", "blip-column"],
        ["--agent", "blip", "--reserve", "0.5", "--channels", "64,128,128", "--hidden", "1024"],
    ):
        assert main(["--games", "tutankham,assault", *flags, "--dry-run"]) == 0
        cfgs.append(json.loads(capsys.readouterr().out))
    column, arm = cfgs
    assert column["method_config"]["reserve"] == 0.5 and column["net"]["hidden"] == 1024
    assert {k: v for k, v in column.items() if k != "agent"} == {
        k: v for k, v in arm.items() if k != "agent"
    }


def test_library_raises_value_error_naming_the_field() -> None:
    with pytest.raises(ValueError, match="--max-bits 40"):
        NetConfig(max_bits=40)
    with pytest.raises(ValueError, match="--seed -1"):
        RunConfig(games=["pong"], seed=-1)
    with pytest.raises(ValueError, match=r"\[net\]: unknown field 'width'"):
        RunConfig(games=["pong"], net={"width": 3})  # type: ignore[arg-type]


def test_strict_json_has_null_for_nan(tmp_path: Path) -> None:
    write_json(tmp_path / "m.json", {"a": math.nan, "b": [1.0, math.inf], "c": {"d": -math.inf}})

    def refuse(name: str) -> None:
        raise AssertionError(f"non-strict JSON constant {name}")

    data = json.loads((tmp_path / "m.json").read_text(), parse_constant=refuse)
    assert data == {"a": None, "b": [1.0, None], "c": {"d": None}}
    assert json_safe((1.0, "x")) == [1.0, "x"]


@pytest.mark.parametrize("module", ["train", "compare", "sweep", "report", "demo"])
def test_every_cli_reports_a_bad_flag_in_one_line(
    module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse's own errors (an unknown flag) are one ``error:`` line and exit 2 in every CLI,
    not argparse's usage block."""
    main = importlib.import_module(f"blip_rl.{module}").main
    extra = ["RUN"] if module == "report" else []  # its one required argument
    assert main([*extra, "--no-such-flag"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "--no-such-flag" in lines[0] and "--help" in lines[0], lines
