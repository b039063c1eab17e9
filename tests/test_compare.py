"""``python -m blip_rl.compare`` (what ``make demo`` runs): BLIP, then fine-tuning branched from
BLIP's after-game-1 state, both matrices and the retention of each game; a rerun keeps them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import one_error_line
from tiny import TINY

from blip_rl.compare import main


def test_compare_branches_prints_both_and_reruns_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*TINY, "--steps-per-game", "64", "--eval-every", "0", "--fisher-states", "64"]
    argv += ["--runs-dir", str(tmp_path), "--name", "c"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "blip: return on each game" in out and "finetune: return on each game" in out
    assert "retention of what each game had learned" in out and "1. pong: blip" in out
    root = tmp_path / "c"
    blip = json.loads((root / "blip" / "summary.json").read_text())
    ft = json.loads((root / "finetune" / "summary.json").read_text())
    # One shared game 1: the branch's first row is BLIP's, and it trained game 2 only.
    assert ft["metrics"]["matrix"][0] == blip["metrics"]["matrix"][0]
    assert ft["branched_from"].endswith("after-game-1.pt") and ft["global_steps"] == 128
    assert (root / "report" / "comparison.md").is_file()
    # A rerun keeps both finished runs (no training) and prints the comparison again.
    mtime = (root / "finetune" / "summary.json").stat().st_mtime_ns
    assert main(argv) == 0
    assert "retention of what each game had learned" in capsys.readouterr().out
    assert (root / "finetune" / "summary.json").stat().st_mtime_ns == mtime


def test_compare_refuses_the_same_agent_twice(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--agent", "blip", "--baseline", "blip"]) == 2
    assert "both 'blip'" in one_error_line(capsys)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--baseline", "nosuchagent"], "unknown agent preset 'nosuchagent'"),
        (["--f-prior", "-1"], "--f-prior -1"),
        (["--no-such-flag"], "--no-such-flag"),
    ],
)
def test_compare_checks_both_runs_before_training(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad flag of either run (the baseline's included, which trains second) is one line and
    exit 2 before the first run trains or writes anything."""
    assert main([*TINY, *argv, "--runs-dir", str(tmp_path), "--name", "c"]) == 2
    assert needle in one_error_line(capsys)
    assert not any(tmp_path.iterdir())
