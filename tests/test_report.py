"""``python -m blip_rl.report``: one tiny real run, comparisons of run folders, bad input."""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import one_error_line
from tiny import TINY as BASE

from blip_rl import metrics, plots
from blip_rl.report import main as report
from blip_rl.train import main as train

TINY = [*BASE, "--num-steps", "16", "--steps-per-game", "64", "--eval-every", "32"]
TINY += ["--agent", "finetune"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One tiny real run shared by the tests of this module (read-only: copy it to change)."""
    root = tmp_path_factory.mktemp("runs")
    assert train([*TINY, "--runs-dir", str(root), "--run-name", "tiny"]) == 0
    yield root / "tiny"


def test_one_run_writes_its_report(real_run: Path, capsys) -> None:
    assert report([str(real_run)]) == 0
    out = real_run / "report"
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == [
        "curves.png",
        "matrix.png",
        "report.json",
        "summary.md",
    ]
    for name in ("matrix.png", "curves.png"):
        assert (out / name).read_bytes().startswith(PNG)
    summary = json.loads((real_run / "summary.json").read_text())
    matrix = summary["metrics"]["matrix"]
    data = json.loads((out / "report.json").read_text())
    assert data["games"] == ["pong", "breakout"] and data["matrix"] == matrix
    raw = data["metrics"]["raw"]
    assert raw["average_final"] == pytest.approx(metrics.average_final(matrix))
    assert raw["backward_transfer"] == pytest.approx(metrics.backward_transfer(matrix))
    assert raw["forgetting"][0] == pytest.approx(metrics.forgetting(matrix)[0][0])
    # AUC from evals.csv: every evaluation of the game (eval every 32 steps + after each game).
    with (real_run / "evals.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["game"] == "pong"]
    assert len(rows) == 4
    steps = [float(r["global_step"]) for r in rows]
    assert raw["auc"][0] == pytest.approx(
        metrics.curve_auc(steps, [float(r["return"]) for r in rows])
    )
    assert "normalized" in data["metrics"]  # pong and breakout have reference scores
    md = (out / "summary.md").read_text()
    assert "| after \\ on | pong | breakout |" in md
    assert "average forgetting" in md and "![curves](curves.png)" in md


def _fake_run(
    path: Path,
    games: list[str],
    matrix: list[list[float]],
    *,
    agent: str = "a",
    seed: int = 1,
    steps: int = 100,
    evals: list[dict[str, Any]] | None = None,
    finished: bool = True,
    config: dict[str, Any] | None = None,
) -> Path:
    """A run folder with the files the report reads, with chosen numbers."""
    path.mkdir(parents=True)
    cfg = {"games": games, "agent": agent, "method": agent, "seed": seed, "steps_per_game": steps}
    cfg.update(config or {})
    (path / "config.json").write_text(json.dumps(cfg))
    m = {"games": games, "matrix": matrix}
    if finished:
        summary = {"games": games, "agent": agent, "seed": seed, "metrics": m}
        summary["memory_bytes_per_param"] = 8.0
        (path / "summary.json").write_text(json.dumps(summary))
    (path / "metrics.json").write_text(json.dumps(m))
    if evals is None:  # one evaluation row per matrix entry, after each game
        evals = [
            {"global_step": (i + 1) * steps, "game_index": i, "game": g, "return": v}
            for i, row in enumerate(matrix)
            for g, v in zip(games, row, strict=True)
        ]
    with (path / "evals.csv").open("w", newline="") as f:
        fields = ["global_step", "game_index", "after_game", "game", "return", "normalized"]
        w = csv.DictWriter(f, fields)
        w.writeheader()
        for r in evals:
            w.writerow({"after_game": "", "normalized": "", **r})
    return path


def test_comparison_groups_by_agent_with_mean_and_std(tmp_path: Path, capsys) -> None:
    games = ["pong", "breakout"]
    runs = [
        _fake_run(tmp_path / "a1", games, [[10, 0], [6, 20]], agent="blip", seed=1),
        _fake_run(tmp_path / "a2", games, [[10, 0], [8, 30]], agent="blip", seed=2),
        _fake_run(tmp_path / "b1", games, [[4, 0], [0, 2]], agent="finetune", seed=1),
    ]
    out = tmp_path / "cmp"
    assert report([*map(str, runs), "--out", str(out)]) == 0
    md = (out / "comparison.md").read_text()
    data = json.loads((out / "report.json").read_text())
    blip = data["groups"]["blip"]["raw"]
    # average final: seed 1 (6+20)/2 = 13, seed 2 (8+30)/2 = 19 -> mean 16, sample std sqrt(18)
    assert blip["average_final"]["mean"] == pytest.approx(16.0)
    assert blip["average_final"]["std"] == pytest.approx(math.sqrt(18))
    assert blip["average_final"]["n"] == 2
    # forgetting of pong: 4 and 2 -> mean 3
    assert blip["average_forgetting"]["mean"] == pytest.approx(3.0)
    assert data["groups"]["finetune"]["raw"]["average_forgetting"]["mean"] == pytest.approx(4.0)
    assert data["groups"]["blip"]["seeds"] == [1, 2]
    assert "| blip | 2 | 16.00 ± 4.24 | 3.00 ± 1.41 |" in md
    assert "| finetune | 1 | 1.00 | 4.00 |" in md
    assert (out / "curves.png").read_bytes().startswith(PNG)
    # One agent with two different settings: two groups, named by the setting.
    other = _fake_run(
        tmp_path / "a3", games, [[1, 1], [1, 1]], agent="blip", config={"net": {"max_bits": 8}}
    )
    out2 = tmp_path / "cmp2"
    assert report([str(runs[0]), str(other), "--out", str(out2)]) == 0
    groups = json.loads((out2 / "report.json").read_text())["groups"]
    assert len(groups) == 2 and all(g.startswith("blip (") for g in groups)
    # Settings that change how a run is watched, not what it learns, keep seeds in one group.
    watched = {"capture_video": True, "torch_threads": 2, "branched_from": "x/after-game-1.pt"}
    seed3 = _fake_run(
        tmp_path / "a4", games, [[1, 1], [1, 1]], agent="blip", seed=3, config=watched
    )
    out3 = tmp_path / "cmp3"
    assert report([str(runs[0]), str(seed3), "--out", str(out3)]) == 0
    groups = json.loads((out3 / "report.json").read_text())["groups"]
    assert list(groups) == ["blip"] and groups["blip"]["seeds"] == [1, 3]
    # A run written before a method setting existed groups with runs at its default, and apart
    # from runs at another value.
    old = {"method_config": {"fisher_states": 4096}}
    new = {"method_config": {"fisher_states": 4096, "reserve": 0.0}}
    other = {"method_config": {"fisher_states": 4096, "reserve": 0.5}}
    cfgs = {"o1": old, "n2": new, "x3": other}
    paths = [
        _fake_run(tmp_path / k, games, [[1, 1], [1, 1]], agent="blip", seed=i, config=c)
        for i, (k, c) in enumerate(cfgs.items(), 1)
    ]
    out4 = tmp_path / "cmp4"
    assert report([*map(str, paths), "--out", str(out4)]) == 0
    groups = json.loads((out4 / "report.json").read_text())["groups"]
    assert {k: g["seeds"] for k, g in groups.items()} == {
        "blip (reserve=0.0)": [1, 2],
        "blip (reserve=0.5)": [3],
    }


def test_step_axes_labels_do_not_collide(tmp_path: Path, monkeypatch, capsys) -> None:
    """At real budgets (200k per game) the x tick labels of the curve plots stay apart."""
    games = ["pong", "breakout"]
    steps = 200_000
    evals = [
        {"global_step": k * 100_000, "game_index": (k - 1) // 2, "game": g, "return": k}
        for k in range(1, 5)
        for g in games
    ]
    runs = [
        _fake_run(tmp_path / f"r{s}", games, [[1, 1], [1, 1]], seed=s, steps=steps, evals=evals)
        for s in (1, 2)
    ]
    figures: list[Any] = []
    monkeypatch.setattr(plots, "save_png", lambda fig, path: figures.append(fig))
    assert report([*map(str, runs), "--out", str(tmp_path / "cmp")]) == 0
    assert report([str(runs[0]), "--out", str(tmp_path / "one")]) == 0
    steps_axes = [a for f in figures for a in f.axes if a.get_xlabel().startswith("global env")]
    curves = list({id(a.figure): a.figure for a in steps_axes}.values())
    assert len(curves) >= 2  # the comparison's per-game panels and the one run's curves
    assert len(steps_axes) >= 3
    for fig in curves:
        fig.canvas.draw()
    for ax in steps_axes:
        renderer = ax.figure.canvas.get_renderer()
        lo, hi = ax.get_xlim()
        boxes = [
            t.get_window_extent(renderer)
            for tick, t in zip(ax.xaxis.get_major_ticks(), ax.get_xticklabels(), strict=True)
            if lo <= tick.get_loc() <= hi and t.get_text()
        ]
        assert len(boxes) >= 3
        boxes.sort(key=lambda b: b.x0)
        # a visible gap (8 px, about half a character) between neighbours, not just no overlap
        assert all(b.x0 - a.x1 >= 8 for a, b in zip(boxes[:-1], boxes[1:], strict=True)), [
            t.get_text() for t in ax.get_xticklabels()
        ]
    for fig in curves:
        plots.pyplot().close(fig)


def test_several_runs_default_out_is_next_to_them(tmp_path: Path, capsys) -> None:
    games = ["pong"]
    a = _fake_run(tmp_path / "runs" / "x", games, [[1.0]], agent="x")
    b = _fake_run(tmp_path / "runs" / "y", games, [[2.0]], agent="y")
    assert report([str(a), str(b)]) == 0
    made = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("report-")]
    assert len(made) == 1 and (made[0] / "comparison.md").is_file()


def test_forward_transfer_against_reference_runs(tmp_path: Path, capsys) -> None:
    games = ["pong", "breakout"]
    evals = [
        {"global_step": 100, "game_index": 0, "game": "pong", "return": 5.0},
        {"global_step": 100, "game_index": 0, "game": "breakout", "return": 0.0},
        {"global_step": 150, "game_index": 1, "game": "breakout", "return": 2.0},
        {"global_step": 200, "game_index": 1, "game": "pong", "return": 5.0},
        {"global_step": 200, "game_index": 1, "game": "breakout", "return": 4.0},
    ]
    run = _fake_run(tmp_path / "seq", games, [[5, 0], [5, 4]], evals=evals)
    ref_evals = [
        {"global_step": 50, "game_index": 0, "game": "breakout", "return": 1.0},
        {"global_step": 100, "game_index": 0, "game": "breakout", "return": 1.0},
    ]
    ref = _fake_run(tmp_path / "ref", ["breakout"], [[1.0]], evals=ref_evals)
    assert report([str(run), "--reference", str(ref)]) == 0
    raw = json.loads((run / "report" / "report.json").read_text())["metrics"]["raw"]
    # breakout while trained in the sequence: x = 0.5 -> 2, x = 1 -> 4: AUC 3; reference: 1.
    assert raw["forward_transfer"][1] == pytest.approx(2.0)
    assert raw["forward_transfer"][0] is None  # no reference for pong
    assert raw["average_forward_transfer"] == pytest.approx(2.0)
    # A reference with another budget is refused.
    other = _fake_run(tmp_path / "ref2", ["breakout"], [[1.0]], steps=50)
    assert report([str(run), "--reference", str(other)]) == 2
    assert "same budget" in one_error_line(capsys)


def test_unfinished_run_is_reported_up_to_its_last_game(tmp_path: Path, capsys) -> None:
    run = _fake_run(tmp_path / "u", ["pong", "breakout"], [[3.0, 1.0]], finished=False)
    assert report([str(run)]) == 0
    assert "Incomplete run" in (run / "report" / "summary.md").read_text()
    done = _fake_run(tmp_path / "d", ["pong", "breakout"], [[3.0, 1.0], [2.0, 2.0]])
    assert report([str(run), str(done), "--out", str(tmp_path / "c")]) == 2
    assert "unfinished" in one_error_line(capsys)


def test_bad_input_is_one_line_exit_2(real_run: Path, tmp_path: Path, capsys) -> None:
    assert report([str(tmp_path / "missing")]) == 2
    assert "no such run folder" in one_error_line(capsys)
    (tmp_path / "empty").mkdir()
    assert report([str(tmp_path / "empty")]) == 2
    assert "not a blip-rl run folder" in one_error_line(capsys)
    # Runs over different game lists cannot be compared.
    other = shutil.copytree(real_run, tmp_path / "other")
    cfg = json.loads((other / "config.json").read_text())
    cfg["games"] = ["breakout", "pong"]
    (other / "config.json").write_text(json.dumps(cfg))
    before = sorted(p.name for p in tmp_path.iterdir())
    assert report([str(real_run), str(other), "--out", str(tmp_path / "never")]) == 2
    assert "different game lists" in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    # A run started but with no finished game; a corrupt config; the same run twice.
    started = _fake_run(tmp_path / "started", ["pong"], [], finished=False)
    assert report([str(started)]) == 2
    assert "no finished game" in one_error_line(capsys)
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text("{not json")
    assert report([str(tmp_path / "corrupt")]) == 2
    assert "unreadable config.json" in one_error_line(capsys)
    assert report([str(real_run), str(real_run)]) == 2
    assert "given twice" in one_error_line(capsys)
    # A multi-game run as a forward-transfer reference.
    assert report([str(real_run), "--reference", str(real_run)]) == 2
    assert "single-game run" in one_error_line(capsys)
