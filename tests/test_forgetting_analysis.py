"""The statistics of benchmarks/forgetting/analyze.py on synthetic matrices and run folders."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scripts import load_script

az = load_script("benchmarks/forgetting/analyze.py", "forgetting_analyze")


def test_iqm_trims_a_quarter_each_side_and_ignores_nan() -> None:
    assert az.iqm(np.arange(1.0, 9.0)) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert az.iqm(np.array([1.0, 2.0, 3.0, 100.0, math.nan])) == pytest.approx(2.5)
    assert az.iqm(np.array([7.0])) == 7.0
    assert math.isnan(az.iqm(np.array([math.nan])))


def test_bootstrap_is_stratified_by_game() -> None:
    # Column 0 always 0, column 1 always 10: any per-game resampling keeps the mean at 5; a
    # pooled (unstratified) resampling would not.
    data = np.array([[0.0, 10.0]] * 4)
    assert az.stratified_bootstrap_ci(data, az.finite_mean, reps=200) == (5.0, 5.0, 5.0)


def test_bootstrap_interval_brackets_the_point_and_narrows_with_more_seeds() -> None:
    rng = np.random.default_rng(1)
    few = rng.normal(0.5, 0.2, size=(3, 1))
    many = rng.normal(0.5, 0.2, size=(60, 1))
    p, lo, hi = az.stratified_bootstrap_ci(few, az.finite_mean, reps=500)
    assert lo <= p <= hi and lo >= few.min() and hi <= few.max()
    _, lo2, hi2 = az.stratified_bootstrap_ci(many, az.finite_mean, reps=500)
    assert 0 < hi2 - lo2 < hi - lo
    assert lo2 < 0.5 < hi2
    # one seed: no interval
    assert az.stratified_bootstrap_ci(np.array([[0.3, 0.4]]), az.iqm) == pytest.approx(
        (0.35, 0.35, 0.35)
    )


def test_forgetting_is_the_fraction_of_the_gain_lost() -> None:
    m = np.array([[10.0, 0, 0], [8.0, 20, 0], [5.0, 10, 30]])
    rnd = np.zeros(3)
    g = az.gains(m, rnd)
    assert g.tolist() == [10, 20, 30]
    f = az.forgetting_fraction(m, g, np.ones(3, dtype=bool))
    assert f[:2] == pytest.approx([0.5, 0.5]) and math.isnan(f[2])
    # the best later evaluation counts (Chaudhry et al.): 12 after game 2, 5 at the end
    m[1, 0] = 12.0
    assert az.forgetting_fraction(m, g, np.ones(3, dtype=bool))[0] == pytest.approx(0.7)
    # improvement is negative forgetting
    m2 = np.array([[4.0, 0.0], [6.0, 9.0]])
    assert az.forgetting_fraction(m2, np.array([2.0, 9.0]), np.ones(2, bool))[0] == -1.0
    # unlearned game and unfinished run: undefined, never 0
    assert math.isnan(az.forgetting_fraction(m, g, np.array([False, True, True]))[0])
    assert np.isnan(az.forgetting_fraction(m[:2], g, np.ones(3, dtype=bool))).all()


def test_learned_needs_two_standard_errors_and_a_floor() -> None:
    rnd, hum = np.zeros(3), np.full(3, 100.0)
    ok = az.learned(np.array([1.0, 2.0, 1.5]), np.array([0.6, 0.6, 0.0]), rnd, hum)
    # 1 < 2 * 0.6; 2.0 is not above the floor 0.02 * 100; 1.5 (no noise) is not either
    assert ok.tolist() == [False, False, False]
    ok = az.learned(np.array([3.0, 2.5, -1.0]), np.array([1.0, math.nan, 0.0]), rnd, hum)
    assert ok.tolist() == [True, True, False]


def test_plasticity_against_from_scratch() -> None:
    gain = np.array([10.0, 15.0, 4.0])
    rnd = np.array([0.0, 1.0, 0.0])
    p = az.plasticity(gain, rnd, np.array([12.0, 21.0, 5.0]), np.array([True, True, False]))
    assert math.isnan(p[0]) and p[1] == pytest.approx(0.75) and math.isnan(p[2])


def _fake_run(
    root: Path, name: str, agent: str, seed: int, games: list[str], m: list, **extra: object
) -> Path:
    run = root / name
    run.mkdir(parents=True)
    cfg = {"games": games, "agent": agent, "method": agent, "seed": seed, "steps_per_game": 1000}
    cfg.update(extra)
    (run / "config.json").write_text(json.dumps(cfg))
    (run / "metrics.json").write_text(json.dumps({"games": games, "matrix": m}))
    rows = ["global_step,game_index,after_game,game,return,normalized"]
    for i, row in enumerate(m):
        rows += [f"{(i + 1) * 1000},{i},{i},{g},{v},," for g, v in zip(games, row, strict=True)]
    (run / "evals.csv").write_text("\n".join(rows) + "\n")
    return run


def test_analyze_run_folders_end_to_end(tmp_path: Path) -> None:
    games = ["freeway", "boxing"]  # random 0.0 and 0.1
    runs = []
    for s, (a, b) in enumerate([(20.0, 19.0), (22.0, 21.0), (21.0, 20.0)], start=1):
        runs.append(_fake_run(tmp_path, f"b{s}", "blip", s, games, [[a, 0.1], [b, 10.1]]))
    for s, (a, b) in enumerate([(20.0, 10.0), (22.0, 11.0), (21.0, 10.5)], start=1):
        runs.append(_fake_run(tmp_path, f"f{s}", "finetune", s, games, [[a, 0.1], [b, 20.1]]))
    scratch = [
        _fake_run(tmp_path, f"s{s}", "finetune", s, ["boxing"], [[v]])
        for s, v in enumerate([20.1, 19.1, 21.1], start=1)
    ]
    out = tmp_path / "report"
    res = {r.label: r for r in az.analyze(runs, scratch, out, reps=200)}
    blip, ft = res["blip"], res["finetune"]
    # freeway lost 1/20, 1/22, 1/21 of its gain under blip; ~1/2 under fine-tuning
    assert blip.forgetting[:, 0] == pytest.approx([1 / 20, 1 / 22, 1 / 21])
    assert ft.forgetting[:, 0] == pytest.approx([0.5, 0.5, 0.5])
    # plasticity on boxing: gain 10 against from-scratch mean 20.1 - 0.1 = 20
    assert blip.plasticity[:, 1] == pytest.approx([0.5] * 3)
    assert ft.plasticity[:, 1] == pytest.approx([1.0] * 3)
    assert blip.aggregates["forgetting"][2] < ft.aggregates["forgetting"][1]  # CIs separate
    # paired by seed: every seed's blip forgetting minus its fine-tuning forgetting
    mean, low, high, n = az.paired_difference(blip, ft)
    want = [1 / 20 - 0.5, 1 / 22 - 0.5, 1 / 21 - 0.5]
    assert n == 3 and mean == pytest.approx(np.mean(want))
    assert min(want) <= low < mean < high <= max(want)
    text = (out / "forgetting.md").read_text()
    assert "inconclusive" not in text and "at most 1/3 of the baseline's, CIs separate" in text
    assert "bar not met: 1000 env steps per game, below the bar's 200k" in text
    # a BLIP setting fine-tuning does not have: each BLIP group meets the one baseline
    reserve = {"method_config": {"reserve": 0.5}}
    other = [
        _fake_run(tmp_path, f"r{s}", "blip", s, games, [[a, 0.1], [a, 16.1]], **reserve)
        for s, a in enumerate([20.0, 22.0, 21.0], start=1)
    ]
    labels = {r.label for r in az.analyze([*runs, *other], scratch, out, reps=50)}
    assert {"blip (reserve=0.5)", "finetune"} <= labels
    text = (out / "forgetting.md").read_text()
    assert "`freeway,boxing`: blip (reserve=0.5) forgetting" in text
    assert "plasticity IQM 0.80" in text and "vs finetune " in text
    az.analyze(runs, scratch, out, reps=200)
    # the bar needs every condition: without from-scratch runs plasticity is not measured
    az.analyze(runs, [], out, reps=50)
    text = (out / "forgetting.md").read_text()
    assert "plasticity not measured" in text and "**bar met**" not in text
    # from-scratch runs that exist but did not learn the game: undefined, and said so
    flat = [
        _fake_run(tmp_path, f"z{s}", "finetune", s, ["boxing"], [[v]])
        for s, v in enumerate([0.1, 0.2, 0.1], start=1)
    ]
    az.analyze(runs, flat, out, reps=50)
    text = (out / "forgetting.md").read_text()
    assert "the from-scratch runs did not learn boxing" in text
    assert "plasticity not measured" not in text and "**bar met**" not in text
    for name in ("retention_plasticity.png", "heatmaps_freeway-boxing.png", "analysis.json"):
        assert (out / name).stat().st_size > 0
    assert az.main([str(tmp_path / "nope")]) == 2
    # a seed that never learned game 1 has nothing to forget: 3 runs, but 2 seeds for the bar
    unlearned = [
        _fake_run(tmp_path, f"{k}3x", agent, 3, games, [[0.0, 0.1], [0.0, 10.1]])
        for k, agent in (("b", "blip"), ("f", "finetune"))
    ]
    kept = runs[:2] + runs[3:5]  # seeds 1 and 2 of blip and of fine-tuning
    az.analyze(kept + unlearned, scratch, out, reps=50)
    text = (out / "forgetting.md").read_text()
    assert "inconclusive, 2 seed(s) with a learned game to forget" in text


def test_three_games_show_the_freeze_each_later_game_meets(tmp_path: Path) -> None:
    """A three-game sequence: forgetting of games 1-2 after game 3, plasticity of games 2-3,
    and BLIP's frozen bits after games 1 and 2 (what games 2 and 3 each met), not game 1's
    alone; a method without a freeze shows none."""
    games = ["freeway", "boxing", "pong"]  # random 0.0, 0.1, -20.7
    runs = []
    for s in (1, 2, 3):
        m = [[20.0, 0.1, -20.7], [19.0, 10.1, -20.7], [18.0, 9.1, -10.7]]
        run = _fake_run(tmp_path, f"b{s}", "blip", s, games, m)
        after = [{"mean_bits": 3.0 + s / 10}, {"mean_bits": 5.0 + s / 10}, {"mean_bits": 6.0}]
        summary = {"metrics": {"games": games, "matrix": m}, "after_game": after}
        (run / "summary.json").write_text(json.dumps(summary))
        runs.append(run)
        ft = [[20.0, 0.1, -20.7], [10.0, 20.1, -20.7], [5.0, 10.1, -0.7]]
        runs.append(_fake_run(tmp_path, f"f{s}", "finetune", s, games, ft))
    scratch = [_fake_run(tmp_path, f"sb{s}", "finetune", s, ["boxing"], [[20.1]]) for s in (1, 2)]
    scratch += [_fake_run(tmp_path, f"sp{s}", "finetune", s, ["pong"], [[-0.7]]) for s in (1, 2)]
    out = tmp_path / "report"
    res = {r.label: r for r in az.analyze(runs, scratch, out, reps=50)}
    blip, ft = res["blip"], res["finetune"]
    # freeway: best 20 -> 18 of gain 20; boxing: best 10.1 -> 9.1 of gain 10
    assert blip.forgetting[0, :2] == pytest.approx([0.1, 0.1]) and np.isnan(blip.forgetting[0, 2])
    assert ft.forgetting[0, :2] == pytest.approx([0.75, 0.5])
    # boxing 10 of from-scratch 20, pong 10 of from-scratch 20
    assert blip.plasticity[0, 1:] == pytest.approx([0.5, 0.5])
    assert blip.mean_bits_after == pytest.approx([3.2, 5.2])
    assert blip.mean_bits == pytest.approx(3.2)
    assert len(ft.mean_bits_after) == 2 and np.isnan(ft.mean_bits_after).all()
    rows = {
        line.split(" | ")[1]: line
        for line in (out / "forgetting.md").read_text().splitlines()
        if line.startswith("| freeway,boxing,pong |")
    }
    assert rows["blip"].endswith("| 3.20, 5.20 |") and rows["finetune"].endswith("| – |")
    saved = {g["label"]: g for g in json.loads((out / "analysis.json").read_text())}
    assert saved["blip"]["mean_bits_after"] == pytest.approx([3.2, 5.2])


def test_groups_keep_protocols_and_trained_game_branches_apart(tmp_path: Path) -> None:
    """Runs of two protocol versions form separate groups and the bar pairs each method with
    the baseline of its own protocol; branches from trained-game-1.pt are their own group."""
    games = ["freeway", "boxing"]
    runs = []
    for s in (1, 2, 3):
        for tag, atari in (("old", {}), ("new", {"fire_on_life_loss": True})):
            m_blip, m_ft = [[20.0, 0.1], [19.0, 10.1]], [[20.0, 0.1], [10.0, 20.1]]
            runs.append(_fake_run(tmp_path, f"b{tag}{s}", "blip", s, games, m_blip, atari=atari))
            runs.append(_fake_run(tmp_path, f"f{tag}{s}", "finetune", s, games, m_ft, atari=atari))
    source = str(tmp_path / "bold1" / "checkpoints" / "trained-game-1.pt")
    runs.append(
        _fake_run(tmp_path, "x", "blip", 1, games, [[20.0, 0.1], [20.0, 5.0]], branched_from=source)
    )
    # A setting written as none (a run of a later version) is the same as one not written;
    # a setting given is a group of its own.
    for name, seed, conv in (("y", 2, None), ("z", 1, 5e-10)):
        m = [[20.0, 0.1], [20.0, 5.0]]
        kw = {"branched_from": source, "net": {"conv_f_prior": conv}}
        runs.append(_fake_run(tmp_path, name, "blip", seed, games, m, **kw))
    out = tmp_path / "report"
    res = az.analyze(runs, [], out, reps=50)
    assert {r.label: len(r.seeds) for r in res if "@branch" in r.label} == {
        "blip@branch (conv_f_prior=-)": 2,
        "blip@branch (conv_f_prior=5e-10)": 1,
    }
    runs = runs[:-2]
    labels = sorted(r.label for r in az.analyze(runs, [], out, reps=50))
    assert labels == [
        "blip (fire_on_life_loss=-)",
        "blip (fire_on_life_loss=true)",
        "blip@branch",
        "finetune (fire_on_life_loss=-)",
        "finetune (fire_on_life_loss=true)",
    ]
    text = (out / "forgetting.md").read_text()
    for suffix in (" (fire_on_life_loss=-)", " (fire_on_life_loss=true)"):
        assert f"blip{suffix} forgetting" in text and f"vs finetune{suffix}" in text


def test_calibration_knobs_front_and_curves(tmp_path: Path) -> None:
    """Groups carry their calibrated settings; the front keeps the groups no other group of the
    sequence beats on both retention and plasticity; the knob curves are drawn when a setting
    takes several values, and not otherwise."""
    games = ["freeway", "boxing"]  # random 0.0 and 0.1
    # (f_prior, freeway after game 2 [kept of 20], boxing [gain of 20 from scratch])
    settings = [(5e-14, 12.0, 18.1), (5e-16, 16.0, 16.1), (5e-18, 19.0, 10.1), (5e-20, 15.0, 8.1)]
    runs = []
    for f_prior, kept, box in settings:
        for s in (1, 2, 3):
            runs.append(
                _fake_run(
                    tmp_path,
                    f"b{f_prior}-{s}",
                    "blip",
                    s,
                    games,
                    [[20.0, 0.1], [kept, box]],
                    net={"f_prior": f_prior},
                    method_config={"value_fisher_coef": 1.0},
                )  # fmt: skip
            )
    scratch = [_fake_run(tmp_path, f"s{s}", "finetune", s, ["boxing"], [[20.1]]) for s in (1, 2)]
    out = tmp_path / "report"
    res = az.analyze(runs, scratch, out, reps=50)
    by_prior = {r.knobs["f_prior"]: r for r in res}
    assert all(r.method == "blip" and r.knobs["value_fisher_coef"] == 1.0 for r in res)
    # 5e-20 keeps less and learns less than 5e-18: beaten; the other three trade off
    front = az.trade_off_front(res)
    assert [r.knobs["f_prior"] for r in front] == [5e-18, 5e-16, 5e-14]
    assert by_prior[5e-18].aggregates["retention"][0] == pytest.approx(0.95)
    assert by_prior[5e-14].aggregates["plasticity"][0] == pytest.approx(0.9)
    text = (out / "forgetting.md").read_text()
    line = next(x for x in text.splitlines() if x.startswith("- `freeway,boxing`: blip ("))
    assert "f_prior=5e-20" not in line and line.count("retention") == 3
    assert (out / "knobs_freeway-boxing.png").stat().st_size > 0
    # one setting only: no curve, and the front is the group itself
    out2 = tmp_path / "one"
    one = az.analyze(runs[:3], scratch, out2, reps=50)
    assert az.trade_off_front(one) == one and not (out2 / "knobs_freeway-boxing.png").exists()
    assert json.loads((out / "analysis.json").read_text())[0]["knobs"]["f_prior"] == 5e-14


def test_calibration_picks_apply_the_rule_per_sequence(tmp_path: Path) -> None:
    """Each sequence picks the best plasticity on the method's front among the settings that
    keep 0.9; sequences that pick differently are reported as such, and a setting counts as
    accepted everywhere only when it keeps 0.9 and reaches 0.8 on every sequence."""
    # (f_prior, freeway after game 2 [kept of 20], boxing [gain of 20 from scratch])
    settings = [(5e-14, 19.0, 18.1), (5e-16, 16.0, 16.1), (5e-18, 19.0, 10.1)]
    runs = [
        _fake_run(
            tmp_path,
            f"b{f}-{s}",
            "blip",
            s,
            ["freeway", "boxing"],
            [[20.0, 0.1], [kept, box]],
            net={"f_prior": f},
            method_config={"value_fisher_coef": 1.0},
        )  # fmt: skip
        for f, kept, box in settings
        for s in (1, 2, 3)
    ]
    scratch = [_fake_run(tmp_path, f"s{s}", "finetune", s, ["boxing"], [[20.1]]) for s in (1, 2)]
    res = az.analyze(runs, scratch, tmp_path / "report", reps=50)
    # 5e-14 keeps 0.95 and learns 0.9: it beats 5e-18 (0.95, 0.5) and is the pick
    (line,) = az.calibration_picks(res)
    assert "`freeway,boxing` picks f_prior=5e-14" in line
    assert "one sequence only" in line and line.endswith("f_prior=5e-14.")
    assert "## Calibration rules" in (tmp_path / "report" / "forgetting.md").read_text()

    def elsewhere(retention: dict[float, float]) -> list[Any]:  # the groups on another sequence
        return [
            replace(
                r,
                sequence=["pong", "krull"],
                aggregates={**r.aggregates, "retention": (retention[r.knobs["f_prior"]],) * 3},
            )
            for r in res
        ]

    # A second sequence where 5e-14 forgets (retention 0.5): it picks 5e-16, the picks differ,
    # and nothing is accepted everywhere.
    (line,) = az.calibration_picks([*res, *elsewhere({5e-14: 0.5, 5e-16: 0.92, 5e-18: 0.95})])
    assert "`pong,krull` picks f_prior=5e-16" in line
    assert "the picks differ" in line and line.endswith("every sequence: none.")
    # where 5e-14 keeps 0.9 there too, both pick it and it is accepted everywhere
    (line,) = az.calibration_picks([*res, *elsewhere({5e-14: 0.9, 5e-16: 0.92, 5e-18: 0.95})])
    assert "every sequence picks f_prior=5e-14" in line
    assert line.endswith("every sequence: f_prior=5e-14.")
    # one setting only: no rule to apply
    assert az.calibration_picks(res[:1]) == []
