"""The game-scan table of benchmarks/forgetting/scan_games.py: which evaluation stands at a
milestone, and the commands that reproduce the table."""

from __future__ import annotations

import json
import os
from pathlib import Path

from scripts import load_script

sg = load_script("benchmarks/forgetting/scan_games.py", "forgetting_scan_games")


def _point(game: str, run_steps: int, step: int, mean: float, episodes: int) -> object:
    return sg.Point(game, 1, run_steps, step, mean, 0.5, episodes, None)


def _row(text: str, game: str) -> list[str]:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(f"| {game} |")]
    return [c.strip() for c in line.strip("|").split("|")]


def test_milestone_prefers_the_run_with_that_budget_over_a_longer_runs_midpoint() -> None:
    points = [
        _point("boxing", 200_000, 100_352, 9.0, 16),  # a longer run passing 100k, more episodes
        _point("boxing", 200_000, 200_704, 11.0, 16),
        _point("boxing", 100_000, 100_352, 2.0, 8),  # the 100k run's final evaluation
    ]
    row = _row(sg.table(points), "boxing")
    assert row[4] == "2.0 ± 0.5"  # return @100k
    # at equal budget, the evaluation with more episodes stands
    more = [
        _point("krull", 100_000, 100_352, 3000.0, 8),
        _point("krull", 100_000, 100_352, 10.0, 16),
    ]
    assert _row(sg.table(more), "krull")[4] == "10.0 ± 0.5"


def _run(
    root: Path,
    name: str,
    game: str,
    steps: int,
    seed: int,
    episodes: int,
    every: int,
    started: float,
) -> None:
    folder = root / name
    folder.mkdir()
    config = {
        "games": [game],
        "steps_per_game": steps,
        "seed": seed,
        "eval_episodes": episodes,
        "eval_every": every,
    }
    (folder / "config.json").write_text(json.dumps(config))
    os.utime(folder / "config.json", (started, started))
    (folder / "summary.json").write_text("{}")


def test_commands_list_every_group_of_runs_in_start_order(tmp_path: Path) -> None:
    _run(tmp_path, "krull-s1-100000", "krull", 100_000, 1, 8, 0, started=2.0)
    _run(tmp_path, "boxing-s1-100000", "boxing", 100_000, 1, 8, 0, started=1.0)
    _run(tmp_path, "freeway-s2-100000", "freeway", 100_000, 2, 16, 0, started=3.0)
    _run(tmp_path, "krull-s1-500000", "krull", 500_000, 1, 16, 0, started=4.0)
    _run(tmp_path, "boxing-s1-200000", "boxing", 200_000, 1, 16, 100_000, started=5.0)
    (tmp_path / "unfinished").mkdir()  # no summary.json: not in the table, not in a command
    base = "OMP_NUM_THREADS=1 python benchmarks/forgetting/scan_games.py --games"
    assert sg.commands(tmp_path) == [
        f"{base} boxing,krull --steps 100000 --seed 1 --eval-episodes 8",
        f"{base} freeway --steps 100000 --seed 2 --eval-episodes 16",
        f"{base} boxing --steps 200000 --seed 1 --eval-episodes 16",
        # a from-scratch run of run_evidence.py (final evaluation only) keeps its interval
        f"{base} krull --steps 500000 --seed 1 --eval-episodes 16 --eval-every 0",
    ]


def test_a_run_without_a_milestone_evaluation_has_no_row() -> None:
    points = [
        _point("krull", 500_000, 500_224, 5000.0, 16),
        _point("boxing", 100_000, 100_352, 2.0, 8),
    ]
    text = sg.table(points)
    assert "| boxing |" in text and "| krull |" not in text


def test_milestones_choose_the_columns() -> None:
    points = [
        _point("boxing", 200_000, 100_352, 2.0, 16),
        _point("boxing", 200_000, 200_704, 11.0, 16),
    ]
    # the default columns (100k, 300k) have no cell at 200k
    assert _row(sg.table(points), "boxing")[7] == "-"
    text = sg.table(points, (100_000, 200_000))
    assert "return @100k | norm | learned? | return @200k |" in text
    row = _row(text, "boxing")
    assert row[4] == "2.0 ± 0.5" and row[7] == "11.0 ± 0.5"
    assert len(row) == 11 and text.splitlines()[1].count("---") == 11


def test_a_relative_runs_dir_is_the_same_folder_for_the_runs_and_the_table(
    tmp_path: Path,
) -> None:
    """With ``--code`` the runs train inside the code copy; a relative ``--runs-dir`` must still
    name the folder under the caller's working directory, where the table looks for them."""
    import subprocess
    import sys

    out = tmp_path / "scan.md"
    cmd = [sys.executable, str(sg.REPO / "benchmarks/forgetting/scan_games.py"), "--code",
           str(sg.REPO), "--games", "breakout", "--steps", "64", "--eval-episodes", "1",
           "--runs-dir", "rel", "--out", str(out), "--milestones", "1024"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True)
    assert (tmp_path / "rel" / "breakout-s1-64" / "summary.json").exists()
    # the table's command names its columns and its file, so that rerunning it rebuilds this table
    line = "--games breakout --steps 64 --seed 1 --eval-episodes 1 --milestones 1024 --out"
    assert f"{line} {out.resolve()}" in out.read_text()
    assert not (sg.REPO / "rel").exists()


def test_agent_tag_names_a_whole_fine_tuning_run_on_the_blip_network_like_its_branches(
    tmp_path: Path,
) -> None:
    """run_evidence.py ``--agent-tag``: a fine-tuning run that trains game 1 itself on the BLIP
    network gets the branch runs' folder name, and the analysis groups it with them."""
    import subprocess
    import sys

    script = sg.REPO / "benchmarks/forgetting/run_evidence.py"
    cmd = [sys.executable, str(script), "--games", "breakout,pong", "--agents", "finetune",
           "--agent-tag=-blipnet", "--seeds", "1", "--steps", "64", "--eval-every", "0",
           "--eval-episodes", "1", "--no-scratch", "--runs-dir", str(tmp_path),
           "--", "--blip", "true"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True)
    (run,) = (tmp_path / "breakout-pong").iterdir()
    assert run.name == "finetune-blipnet-s1-64"
    config = json.loads((run / "config.json").read_text())
    assert config["agent"] == "finetune" and config["net"]["blip"] is True
    analyze = load_script("benchmarks/forgetting/analyze.py", "forgetting_analyze_tag")
    assert analyze.read_run(run).data.agent == "finetune@blipnet"


def test_branches_only_waits_for_the_source_and_never_trains_it(tmp_path: Path) -> None:
    """run_evidence.py ``--branches-only`` (the second core of one seed): started before the
    source exists, it waits for the source's after-game-1.pt, trains no source run itself, and
    then branches from that file; the source process (same command, no flag) skips the branch
    that is done."""
    import subprocess
    import sys
    import time

    script = sg.REPO / "benchmarks/forgetting/run_evidence.py"
    base = [sys.executable, str(script), "--games", "breakout,pong", "--agents", "blip",
            "--branch-agents", "finetune", "--branch-flags=--blip true", "--seeds", "1",
            "--steps", "64", "--eval-every", "0", "--eval-episodes", "1", "--no-scratch",
            "--runs-dir", str(tmp_path)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    waiter = subprocess.Popen(
        [*base, "--branches-only", "--poll", "0.2"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    seq = tmp_path / "breakout-pong"
    try:
        time.sleep(3)
        assert waiter.poll() is None and not (seq / "blip-s1-64").exists()
        subprocess.run([*base, "--branch-agents", ""], cwd=tmp_path, env=env, check=True,
                       capture_output=True)  # fmt: skip
        out, _ = waiter.communicate(timeout=240)
    finally:
        waiter.kill()
    assert waiter.returncode == 0, out
    assert "waiting for" in out and "blip-s1-64/checkpoints/after-game-1.pt" in out
    assert "--agent blip " not in out  # the source was trained by the other process only
    branch = seq / "finetune-s1-64"
    config = json.loads((branch / "config.json").read_text())
    assert config["agent"] == "finetune" and config["net"]["blip"] is True
    assert config["branched_from"].endswith("blip-s1-64/checkpoints/after-game-1.pt")
    assert (branch / "summary.json").exists()
    # the whole plan again: both runs are done, nothing trains
    again = subprocess.run(base, cwd=tmp_path, env=env, check=True, capture_output=True, text=True)
    assert again.stdout.count("done already") == 2


def _screen_run(root: Path, game: str, agent: str, bits: float | None, scores: list[float]) -> None:
    """A finished single-game run folder as the train CLI leaves it (the files the table reads)."""
    folder = root / f"{game}-s1-200000"
    folder.mkdir()
    after = {} if bits is None else {"mean_bits": bits}
    summary = {"games": [game], "agent": agent, "seed": 1, "steps_per_game": 200_000,
               "after_game": [after], "precision_used": "fp32", "wall_time_s": 1.0}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))
    config = {"games": [game], "agent": agent, "steps_per_game": 200_000, "seed": 1,
              "eval_episodes": 16, "eval_every": 100_000, "ppo": {"precision": "fp32"}}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    rows = ["global_step,game_index,after_game,game,return,normalized,stderr,episodes"]
    for step, score in zip((100_352, 200_704), scores, strict=True):
        rows.append(f"{step},0,,{game},{score},0,0.5,16")
    (folder / "evals.csv").write_text("\n".join(rows) + "\n")


def test_a_blip_screen_reports_the_freeze_and_which_games_have_a_small_fisher(
    tmp_path: Path,
) -> None:
    """``--agent blip``: the table adds the agent, the mean bits frozen after the game and the
    small-Fisher verdict (learned at the last milestone and under 3 bits), and its commands
    rerun BLIP at the precision that ran."""
    _screen_run(tmp_path, "freeway", "blip", 1.2, [5.0, 20.0])  # learned, small freeze
    _screen_run(tmp_path, "krull", "blip", 4.1, [3000.0, 3500.0])  # learned, large freeze
    _screen_run(tmp_path, "pong", "blip", 0.4, [-20.7, -20.7])  # small freeze, not learned
    _screen_run(tmp_path, "boxing", "blip", 2.0, [6.0, 0.1])  # learned at 100k only
    out = tmp_path / "screen.md"
    sg.write_report(tmp_path, out, (100_000, 200_000))
    text = out.read_text()
    assert "| game | agent | seed |" in text and "mean bits after the game |" in text
    verdicts = {g: (_row(text, g)[11], _row(text, g)[12]) for g in ("freeway", "krull", "pong")}
    assert verdicts == {"freeway": ("1.20", "yes"), "krull": ("4.10", "no"), "pong": ("0.40", "no")}
    assert _row(text, "boxing")[7] == "learned" and _row(text, "boxing")[12] == "no"
    assert text.splitlines()[0].startswith("# Game screen")
    assert "--eval-episodes 16 --agent blip --precision fp32 --milestones 100000,200000" in text
    # plain runs keep the plain table: no agent column, no freeze columns
    plain = tmp_path / "plain"
    plain.mkdir()
    _screen_run(plain, "krull", "finetune", None, [3000.0, 3500.0])
    sg.write_report(plain, out, (100_000, 200_000))
    text = out.read_text()
    assert "| game | seed |" in text and "mean bits" not in text
    assert "--eval-episodes 16 --precision fp32 --milestones" in text  # finetune: no --agent


def test_the_default_precision_stays_out_of_the_commands() -> None:
    from blip_rl.ppo import PPOConfig

    assert PPOConfig().precision == sg.DEFAULT_PRECISION
    assert "--precision" not in sg.scan_command(["krull"], 100, 1, 8, 0, "blip", "bf16")
    assert sg.scan_command(["krull"], 100, 1, 8, 0, "blip", "fp32").endswith(
        "--eval-episodes 8 --agent blip --precision fp32"
    )


def test_a_screen_never_reuses_another_agents_run_folder(tmp_path: Path) -> None:
    """A BLIP screen pointed at a folder of plain runs stops with exit 2 and trains nothing."""
    _screen_run(tmp_path, "krull", "finetune", None, [3000.0, 3500.0])
    before = sorted(p.name for p in (tmp_path / "krull-s1-200000").iterdir())
    assert sg.train_one("krull", 1, 200_000, tmp_path, 16, 100_000, agent="blip") == 2
    assert sorted(p.name for p in (tmp_path / "krull-s1-200000").iterdir()) == before
