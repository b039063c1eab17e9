"""The BLIP paper's setting as agent presets: ``blip-paper`` and its baselines with the same
network, PPO and protocol (``finetune-paper``, ``ewc-paper``, ``online-ewc-paper``)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch

from blip_rl.config import load_agent
from blip_rl.continual import load_checkpoint
from blip_rl.train import main

PAPER = ["blip-paper", "finetune-paper", "ewc-paper", "online-ewc-paper"]
SIX = ["kung_fu_master", "boxing", "jamesbond", "krull", "riverraid", "space_invaders"]


def _dry_run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert main([*argv, "--dry-run"]) == 0
    return json.loads(capsys.readouterr().out)


def test_blip_paper_is_the_papers_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    """``--games @blip-atari6 --agent blip-paper`` resolves to the paper's setting: the six games,
    no sticky actions, conv 32/64/128 + fc 1024 BLIP network with 20-bit codes, PPO 16 envs x 125
    steps with 8 minibatches x 4 epochs, lr 2.5e-4 annealed, clip 0.1, entropy 0.01, 10M steps
    per game, 10 evaluation episodes."""
    cfg = _dry_run(["--games", "@blip-atari6", "--agent", "blip-paper"], capsys)
    assert cfg["games"] == SIX and cfg["method"] == "blip"
    assert cfg["steps_per_game"] == 10_000_000 and cfg["eval_episodes"] == 10
    assert cfg["atari"]["sticky_actions"] == 0.0 and not cfg["atari"]["full_action_space"]
    net = cfg["net"]
    assert net["channels"] == [32, 64, 128] and net["hidden"] == 1024
    assert net["blip"] is True and net["max_bits"] == 20
    ppo = cfg["ppo"]
    expected = {
        "num_envs": 16,
        "num_steps": 125,
        "num_minibatches": 8,
        "update_epochs": 4,
        "learning_rate": 2.5e-4,
        "anneal_lr": True,
        "clip_coef": 0.1,
        "ent_coef": 0.01,
    }
    assert {k: ppo[k] for k in expected} == expected
    assert ppo["num_envs"] * ppo["num_steps"] // ppo["num_minibatches"] == 250


def test_paper_baselines_share_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    """The baselines differ from blip-paper only in the method, its settings and plain layers."""
    ref = _dry_run(["--games", "@blip-atari6", "--agent", "blip-paper"], capsys)
    methods = {}
    for agent in PAPER[1:]:
        cfg = _dry_run(["--games", "@blip-atari6", "--agent", agent], capsys)
        methods[agent] = cfg["method"]
        for key in ("games", "steps_per_game", "eval_every", "eval_episodes", "checkpoint_every"):
            assert cfg[key] == ref[key], (agent, key)
        assert cfg["atari"] == ref["atari"] and cfg["ppo"] == ref["ppo"], agent
        assert cfg["net"]["channels"] == [32, 64, 128] and cfg["net"]["hidden"] == 1024
        assert cfg["net"]["blip"] is False, agent
    assert methods == {
        "finetune-paper": "finetune",
        "ewc-paper": "ewc",
        "online-ewc-paper": "online-ewc",
    }
    # The EWC settings are the project's EWC presets' (the paper's lambda in our units).
    for agent, base in (("ewc-paper", "ewc"), ("online-ewc-paper", "online-ewc")):
        assert load_agent(agent).method_config == load_agent(base).method_config


def test_paper_presets_files_agree() -> None:
    """The shared sections of the four files are identical (TOML has no include)."""
    files = Path(__file__).parents[1] / "blip_rl" / "presets" / "agents"
    data = {a: tomllib.loads((files / f"{a}.toml").read_text()) for a in PAPER}
    for agent in PAPER[1:]:
        for section in ("run", "env", "ppo"):
            assert data[agent][section] == data["blip-paper"][section], (agent, section)


def test_flags_still_win_over_the_paper_preset(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _dry_run(
        ["--agent", "blip-paper", "--steps-per-game", "2000", "--num-envs", "8", "--hidden", "512"],
        capsys,
    )
    assert cfg["steps_per_game"] == 2000 and cfg["ppo"]["num_envs"] == 8
    assert cfg["net"]["hidden"] == 512 and cfg["ppo"]["num_steps"] == 125


def test_blip_paper_tiny_real_run(tmp_path: Path) -> None:
    """One game, one rollout of 2 envs x 125 steps with the paper's network: it trains, freezes
    and evaluates; the checkpoint holds the 32/64/128 + 1024 network."""
    argv = [
        "--agent", "blip-paper",
        "--games", "pong",
        "--num-envs", "2",
        "--steps-per-game", "250",
        "--fisher-states", "250",
        "--update-epochs", "1",
        "--eval-episodes", "1",
        "--max-episode-frames", "160",
        "--device", "cpu",
        "--no-progress",
        "--runs-dir", str(tmp_path),
        "--run-name", "paper",
    ]  # fmt: skip
    assert main(argv) == 0
    run = tmp_path / "paper"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["agent"] == "blip-paper" and summary["global_steps"] == 250
    net = load_checkpoint(run / "checkpoints" / "latest.pt")["net"]
    assert net["trunk.conv3.weight"].shape[0] == 128
    assert tuple(net["trunk.fc.weight"].shape) == (1024, 128 * 7 * 7)
    assert int((net["trunk.fc.weight_bits"] > 0).sum()) > 0  # the game froze bits
    assert net["trunk.fc.weight_bits"].dtype == torch.uint8
