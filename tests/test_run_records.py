"""A finished run's few KB of record (benchmarks/forgetting/archive_runs.py) carry every number
the forgetting analysis and the game scan take from it, without the checkpoints."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import one_error_line
from scripts import load_script
from tiny import TINY

from blip_rl.continual import load_checkpoint
from blip_rl.ppo import bf16_supported
from blip_rl.train import main as train

az = load_script("benchmarks/forgetting/analyze.py", "forgetting_analyze")
sg = load_script("benchmarks/forgetting/scan_games.py", "forgetting_scan_games")
ar = load_script("benchmarks/forgetting/archive_runs.py", "forgetting_archive_runs")


def _text(path: Path) -> str:
    return path.read_text().replace("\r\n", "\n")


def test_records_rebuild_the_analysis_and_refuse_another_run(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    argv = [*TINY, "--eval-episodes", "3", "--eval-every", "64", "--steps-per-game", "128"]
    seq = [*argv, "--fisher-states", "64", "--runs-dir", str(runs / "seq")]
    assert train([*seq, "--run-name", "blip-s1"]) == 0
    single = [*argv, "--games", "freeway", "--agent", "finetune"]
    assert train([*single, "--runs-dir", str(runs / "scan"), "--run-name", "freeway-s1"]) == 0
    run = runs / "seq" / "blip-s1"

    # evals.csv: each evaluation's standard error and episode count, from its episode returns
    evals = load_checkpoint(run / "checkpoints" / "latest.pt")["evals"]
    with (run / "evals.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(evals) > 2
    for row, e in zip(rows, evals, strict=True):
        x = np.asarray(e["returns"], dtype=float)
        assert int(row["episodes"]) == len(x) == 3
        assert float(row["stderr"]) == pytest.approx(x.std(ddof=1) / math.sqrt(3), abs=1e-4)

    # A run from before evals.csv had those columns: its record gets them from its checkpoint.
    old = runs / "old" / "blip-s1"
    shutil.copytree(run, old)
    with (old / "evals.csv").open("w", newline="") as f:
        csv.writer(f).writerows(r[:6] for r in csv.reader(io.StringIO(_text(run / "evals.csv"))))
    assert "stderr" not in _text(old / "evals.csv")

    records = tmp_path / "records"
    assert ar.main([str(runs), "--to", str(records)]) == 0
    assert _text(records / "old" / "blip-s1" / "evals.csv") == _text(run / "evals.csv")
    record = records / "seq" / "blip-s1"
    assert sorted(p.name for p in record.iterdir()) == sorted(ar.RECORD_FILES)
    # The record gives the analysis the same matrix and standard errors as the run folder,
    # whose after-game checkpoint holds the episode returns.
    full, kept = az.read_run(run), az.read_run(record)
    assert np.array_equal(full.matrix, kept.matrix)
    rets = az.episode_returns(run)
    want = np.array([[az._sem(rets[(i, g)]) for g in full.games] for i in range(2)])
    assert np.isfinite(want).all()
    assert kept.se == pytest.approx(want, abs=1e-4) and full.se == pytest.approx(want, abs=1e-4)
    # The scan reads the single-game record as it reads the run.
    points = sg.read_points(records / "scan")
    assert [(p.step, p.episodes) for p in points] == [(64, 3), (128, 3)]
    assert [p.sem for p in points] == pytest.approx(
        [p.sem for p in sg.read_points(runs / "scan")], abs=1e-4
    )
    sg.write_report(records / "scan", tmp_path / "scan.md")
    ran = "bf16" if bf16_supported() else "fp32"
    text = _text(tmp_path / "scan.md")
    assert f"Precision that\nran (`summary.json`): {ran} in 1 run(s)." in text

    # Again: nothing to copy. Another run under a recorded name: one line, exit 2, nothing
    # written (the other run's record is unchanged).
    assert ar.main([str(runs), "--to", str(records)]) == 0
    assert "0 run(s) recorded" in capsys.readouterr().out
    before = (record / "evals.csv").read_bytes()
    # A rerun that reproduced the record (another wall time, CSV line endings as git may leave
    # them) keeps it and says so; any other difference in the summary is another run.
    summary_file = run / "summary.json"
    summary = json.loads(summary_file.read_text())
    summary["wall_time_s"] += 123.0
    summary_file.write_text(json.dumps(summary))
    (record / "evals.csv").write_bytes(before.replace(b"\r\n", b"\n"))
    assert ar.main([str(runs), "--to", str(records)]) == 0
    assert "1 of them reproduced by a rerun" in capsys.readouterr().out
    assert (record / "summary.json").read_bytes() != summary_file.read_bytes()
    summary["resumes"] += 1
    summary_file.write_text(json.dumps(summary))
    assert ar.main([str(runs), "--to", str(records)]) == 2
    assert str(record) in one_error_line(capsys)
    summary["resumes"] -= 1
    summary_file.write_text(json.dumps(summary))
    (record / "evals.csv").write_bytes(before)
    (run / "evals.csv").write_text((run / "evals.csv").read_text().replace(",3\n", ",4\n"))
    assert ar.main([str(runs), "--to", str(records)]) == 2
    assert str(record) in one_error_line(capsys)
    assert (record / "evals.csv").read_bytes() == before
