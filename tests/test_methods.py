"""Baseline methods: the plain-layer Fisher, EWC / online EWC penalties, PackNet masks; each on a
tiny real run (real ROMs) including ``--resume`` from a checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import both_ll
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny import TINY as BASE
from torch import nn

from blip_rl.config import RunConfig
from blip_rl.continual import load_checkpoint
from blip_rl.methods import (
    METHODS,
    EwcMethod,
    GameContext,
    OnlineEwcConfig,
    OnlineEwcMethod,
    PackNetMethod,
    rollout_fisher,
)
from blip_rl.methods.ewc import EwcConfig, parameter_fisher, policy_fisher
from blip_rl.nets import ActorCritic, NetConfig, reserve_masks
from blip_rl.train import main

TINY = [*BASE, "--steps-per-game", "64", "--eval-every", "0"]
SMALL = NetConfig(blip=False, channels=(4, 8, 8), hidden=16)


# ------------------------------------------------------------------------- the plain Fisher
class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 5 * 5, 8)
        self.pi = nn.Linear(8, 5)
        self.v = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.fc(torch.relu(self.conv(x)).flatten(1)))
        return self.pi(h), self.v(h).squeeze(-1)


@pytest.mark.parametrize("method", ["layerwise", "vmap"])
def test_parameter_fisher_equals_a_per_sample_loop(method: str) -> None:
    torch.manual_seed(0)
    model, x, a = Tiny(), torch.randn(13, 3, 10, 10), torch.randint(0, 5, (13,))
    weights = (1.0, 0.5)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(x)):
        out = both_ll(model, x[i : i + 1], a[i : i + 1])
        for k, w in enumerate(weights):
            model.zero_grad()
            out[0, k].backward(retain_graph=True)
            for n, p in model.named_parameters():
                expected[n] += w * p.grad**2 / len(x)
    got = parameter_fisher(
        model, both_ll, (x, a), chunk_size=5, term_weights=weights, method=method
    )
    assert set(got) == set(expected)
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-4, atol=1e-9)


def test_policy_fisher_matches_blip_rollout_fisher() -> None:
    """Same weights (plain and BLIP nets built after one seed), same states and actions: the
    plain-layer Fisher equals BLIP's for every BLIP parameter, and covers the same names."""
    torch.manual_seed(3)
    blip = ActorCritic([3, 4], NetConfig(channels=(4, 8, 8), hidden=16))
    torch.manual_seed(3)
    plain = ActorCritic([3, 4], SMALL)
    states = torch.randint(0, 256, (24, 4, 84, 84), dtype=torch.uint8)
    ref = rollout_fisher(blip, 1, states, 0.7, 10, torch.Generator().manual_seed(5))
    got = policy_fisher(plain, 1, states, 0.7, 10, torch.Generator().manual_seed(5))
    assert set(got) == {n for n, _ in plain.named_parameters()}
    for n, f in ref.items():
        torch.testing.assert_close(got[n], f, rtol=2e-4, atol=1e-10)
    assert float(got["heads.policy.0.weight"].abs().sum()) == 0  # head 0 did not run
    assert float(got["trunk.conv1.weight"].sum()) > 0


# ------------------------------------------------------------------------------- EWC by hand
def fake_ctx(net: ActorCritic, states: torch.Tensor, game_index: int, head: int) -> GameContext:
    return GameContext(
        net=net,
        ppo=None,  # type: ignore[arg-type]  # EWC's after_game does not use PPO
        game=None,  # type: ignore[arg-type]
        game_index=game_index,
        head=head,
        fisher_states=lambda n: states[:n],
    )


def _perturb(net: nn.Module, scale: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def test_ewc_penalty_and_gradient_by_hand() -> None:
    torch.manual_seed(0)
    net = ActorCritic([3, 4], SMALL)
    states = torch.randint(0, 256, (16, 4, 84, 84), dtype=torch.uint8)
    ewc = EwcMethod(EwcConfig(ewc_lambda=300.0, fisher_states=16, fisher_chunk=8))
    ewc.setup(net)
    assert float(ewc.extra_loss()) == 0.0  # nothing learned yet
    scalars = ewc.after_game(fake_ctx(net, states, 0, 0))
    assert scalars["fisher_states"] == 16
    fisher = policy_fisher(net, 0, states, 1.0, 8, torch.Generator().manual_seed(1_000_003))
    anchor = {n: p.detach().clone() for n, p in net.named_parameters()}
    assert float(ewc.extra_loss().detach()) == 0.0  # at the anchor
    _perturb(net, 0.01, 1)
    expected = sum(
        (fisher[n] * (p.detach() - anchor[n]) ** 2).sum() for n, p in net.named_parameters()
    )
    loss = ewc.extra_loss()
    assert float(loss.detach()) == pytest.approx(0.5 * 300.0 * float(expected), rel=1e-4)
    assert float(loss.detach()) > 0
    net.zero_grad()
    loss.backward()
    for n, p in net.named_parameters():
        want = 300.0 * fisher[n] * (p.detach() - anchor[n])
        got = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-12)
    # Parameters the game never ran (head 1) are not stored at all.
    assert "heads.policy.1.weight" not in ewc.terms[0][0]


def test_ewc_keeps_one_term_per_game_online_folds_them() -> None:
    torch.manual_seed(1)
    net = ActorCritic([3, 4], SMALL)
    states = torch.randint(0, 256, (12, 4, 84, 84), dtype=torch.uint8)
    ewc = EwcMethod(EwcConfig(fisher_states=12))
    online = OnlineEwcMethod(OnlineEwcConfig(fisher_states=12, ewc_gamma=0.25))
    for m in (ewc, online):
        m.setup(net)
    total = sum(p.numel() for p in net.parameters())
    for k, head in enumerate((0, 1)):
        for m in (ewc, online):
            m.after_game(fake_ctx(net, states, k, head))
        _perturb(net, 0.01, k)
    assert len(ewc.terms) == 2 and ewc.game_indices == [0, 1]
    assert len(online.terms) == 1 and online.game_indices == [0, 1]
    (f1, a1), (f2, a2) = ewc.terms
    running, anchor = online.terms[0]
    for n in running:
        want = 0.25 * f1.get(n, 0) + f2.get(n, 0)
        torch.testing.assert_close(running[n], want + torch.zeros_like(running[n]))
        # The anchor is the latest game's weights (a2 where the second game stored one).
        if n in a2:
            torch.testing.assert_close(anchor[n], a2[n])
    assert set(running) == set(f1) | set(f2)
    # Memory: the actual stored bytes; EWC grows with games, online EWC does not.
    ewc_bytes = sum(8 * f.numel() for f, _ in ((f1, 0), (f2, 0)) for f in f.values())
    assert ewc.memory_bytes_per_param(net) == pytest.approx(ewc_bytes / total)
    assert online.memory_bytes_per_param(net) == pytest.approx(
        8 * sum(f.numel() for f in running.values()) / total
    )
    assert 8 < ewc.memory_bytes_per_param(net) <= 16
    assert 4 < online.memory_bytes_per_param(net) <= 8
    # state_dict round trip
    again = OnlineEwcMethod(OnlineEwcConfig())
    again.setup(net)
    again.load_state_dict(online.state_dict())
    assert again.game_indices == [0, 1]
    for n, f in running.items():
        assert torch.equal(again.terms[0][0][n], f)
    with pytest.raises(ValueError):
        again.load_state_dict(ewc.state_dict())  # another method's state


# --------------------------------------------------------------------------- tiny real runs
def _run(tmp: Path, agent: str, extra: list[str] | None = None) -> Path:
    argv = [*TINY, "--agent", agent, "--runs-dir", str(tmp), "--run-name", agent]
    if "ewc" in agent:
        argv += ["--fisher-states", "64"]
    assert main(argv + (extra or [])) == 0
    return tmp / agent


def _resume_from_game_1(run: Path) -> dict[str, Any]:
    """Make the run look killed right after game 1, resume it; returns the game-1 checkpoint."""
    ckpt = run / "checkpoints"
    shutil.copy(ckpt / "after-game-1.pt", ckpt / "latest.pt")
    (run / "summary.json").unlink()
    saved = load_checkpoint(ckpt / "after-game-1.pt")
    assert main(["--resume", str(run), "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumes"] == 1 and len(summary["metrics"]["matrix"]) == 2
    return saved


def _extra_losses(run: Path) -> dict[int, float]:
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars("loss/extra")}


@pytest.mark.parametrize("agent", ["ewc", "online-ewc"])
def test_ewc_tiny_real_run_and_resume(tmp_path: Path, agent: str) -> None:
    run = _run(tmp_path, agent)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == agent
    total = sum(p.numel() for p in _net(run).parameters())
    final = load_checkpoint(run / "checkpoints" / "latest.pt")["method"]
    n_terms = 2 if agent == "ewc" else 1
    assert len(final["terms"]) == n_terms and final["game_indices"] == [0, 1]
    stored = sum(8 * f.numel() for t in final["terms"] for f in t["fisher"].values())
    assert summary["memory_bytes_per_param"] == pytest.approx(stored / total)
    assert [round(a["memory_bytes_per_param"]) for a in summary["after_game"]] == (
        [8, 16] if agent == "ewc" else [8, 8]
    )
    # The penalty is 0 while the first game trains and acts during the second.
    extra = _extra_losses(run)
    assert extra[64] == 0 and extra[128] > 0
    # Game 1's anchor is the network right after game 1.
    after1 = load_checkpoint(run / "checkpoints" / "after-game-1.pt")
    anchor = after1["method"]["terms"][0]["anchor"]
    for n, a in anchor.items():
        assert torch.equal(a, after1["net"][n].float())

    saved = _resume_from_game_1(run)
    resumed = load_checkpoint(run / "checkpoints" / "latest.pt")["method"]
    assert resumed["game_indices"] == [0, 1] and len(resumed["terms"]) == n_terms
    if agent == "ewc":  # game 1's term came back from the checkpoint unchanged
        for n, f in saved["method"]["terms"][0]["fisher"].items():
            assert torch.equal(resumed["terms"][0]["fisher"][n], f)
    assert _extra_losses(run)[128] > 0


def _net(run: Path) -> ActorCritic:
    config = RunConfig.from_json(json.loads((run / "config.json").read_text()))
    return ActorCritic([6, 4], config.net)


def test_packnet_tiny_real_run_and_resume(tmp_path: Path) -> None:
    # 4 rollouts of 64 steps per game: 3 of main training, then 1 of retraining (a quarter)
    extra = ["--steps-per-game", "256", "--packnet-prune", "0.75", "--packnet-retrain-frac", "0.25"]
    run = _run(tmp_path, "packnet", extra)
    summary = json.loads((run / "summary.json").read_text())
    after1 = load_checkpoint(run / "checkpoints" / "after-game-1.pt")
    final = load_checkpoint(run / "checkpoints" / "latest.pt")
    owner1 = after1["method"]["owner"]
    owner = final["method"]["owner"]
    # Game 1 kept a quarter of the trunk weights it trained and zeroed the rest.
    w1 = after1["net"]["trunk.fc.weight"]
    kept1 = owner1["trunk.fc"] == 1
    assert float(kept1.float().mean()) == pytest.approx(0.25, abs=1e-3)
    assert float(w1[~kept1].abs().sum()) == 0
    # Weights kept by game 1 are bit-for-bit unchanged by game 2; game 2 kept part of the rest.
    for name, o in owner1.items():
        mask = o == 1
        assert torch.equal(
            final["net"][name + ".weight"][mask], after1["net"][name + ".weight"][mask]
        )
        assert torch.equal(owner[name][mask], o[mask])
    assert int((owner["trunk.fc"] == 2).sum()) > 0
    # Trunk biases learn in game 1 only.
    assert torch.equal(final["net"]["trunk.fc.bias"], after1["net"]["trunk.fc.bias"])
    # The game's own heads are not pruned: game 1 kept every weight of heads 0.
    for kind in ("policy", "value"):
        assert bool((owner1[f"heads.{kind}.0"] == 1).all())
        assert bool((owner[f"heads.{kind}.1"] == 2).all())
        assert float(after1["net"][f"heads.{kind}.0.weight"].abs().min()) > 0
    # Game 1's retraining left game 2's (untrained) heads at their initial weights.
    assert float(after1["net"]["heads.policy.1.weight"].abs().min()) > 0
    # The retraining came out of the game's budget: every game took 256 env steps in all.
    assert [g["retrain_steps"] for g in summary["after_game"]] == [64, 64]
    assert summary["global_steps"] == 512
    total = sum(v.numel() for k, v in final["net"].items())
    assert summary["memory_bytes_per_param"] == pytest.approx(
        sum(o.numel() for o in owner.values()) / total
    )
    assert 0.9 < summary["memory_bytes_per_param"] <= 1.0

    # Evaluating game 1 uses only game 1's weights; game 2 (the last) uses all of them.
    config = RunConfig.from_json(json.loads((run / "config.json").read_text()))
    net = ActorCritic([6, 4], config.net)
    net.load_state_dict(final["net"])
    method = PackNetMethod(METHODS["packnet"].config_class())
    method.setup(net)
    method.load_state_dict(final["method"])
    plain = ActorCritic([6, 4], config.net)
    plain.load_state_dict(final["net"])
    with torch.no_grad():
        for name, o in owner.items():
            plain.get_submodule(name).weight.mul_(o <= 1)
    obs = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        got, want = net(obs, 0), plain(obs, 0)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        unmasked = ActorCritic([6, 4], config.net)
        unmasked.load_state_dict(final["net"])
        torch.testing.assert_close(net(obs, 1)[0], unmasked(obs, 1)[0])
        assert not torch.equal(net(obs, 0)[1], unmasked(obs, 0)[1])  # game 2 weights matter
    assert torch.equal(net.trunk.fc.weight, unmasked.trunk.fc.weight)  # restored after use

    saved = _resume_from_game_1(run)
    resumed = load_checkpoint(run / "checkpoints" / "latest.pt")
    for name, o in saved["method"]["owner"].items():
        mask = o == 1
        assert torch.equal(resumed["method"]["owner"][name][mask], o[mask])
        key = name + ".weight"
        assert torch.equal(resumed["net"][key][mask], saved["net"][key][mask])


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--agent", "ewc", "--ewc-lambda", "-1"], "--ewc-lambda"),
        (["--agent", "online-ewc", "--ewc-gamma", "2"], "--ewc-gamma"),
        (["--agent", "packnet", "--packnet-prune", "1"], "--packnet-prune"),
        (["--agent", "packnet", "--fisher-states", "5"], "--fisher-states"),
        (["--agent", "ewc", "--packnet-prune", "0.5"], "--packnet-prune"),
        (["--reserve", "0.95"], "--reserve"),
        (["--reserve", "0.5", "--shared-head"], "--shared-head"),
        (["--agent", "ewc", "--reserve", "0.5"], "--reserve"),
    ],
)
def test_bad_method_settings_exit_2(argv: list[str], needle: str, capsys, tmp_path) -> None:
    assert main([*argv, "--runs-dir", str(tmp_path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0]


# ------------------------------------------------------------------------- BLIP's reserve
def _column(net: ActorCritic, fraction: float) -> dict[str, slice]:
    """Per trunk layer, the output units set apart (the last ``round(fraction * width)``)."""
    out = {}
    for name in ("conv1", "conv2", "conv3", "fc"):
        width = net.trunk.get_submodule(name).get_parameter("weight").shape[0]
        out[name] = slice(width - round(fraction * width), width)
    return out


def test_reserve_masks_cut_every_path_from_the_column_into_game_1() -> None:
    torch.manual_seed(0)
    net = ActorCritic([6, 4], NetConfig(channels=(8, 16, 16), hidden=32))
    masks = reserve_masks(net, 0.25, heads=[0])
    assert set(masks) == {
        "trunk.conv2.weight",
        "trunk.conv3.weight",
        "trunk.fc.weight",
        "heads.policy.0.weight",
        "heads.value.0.weight",
    }
    # conv2: 12 units outside the column x 2 column inputs x 4x4; fc: 24 x (4 channels x 49)
    assert int((~masks["trunk.conv2.weight"]).sum()) == 12 * 2 * 16
    assert int((~masks["trunk.fc.weight"]).sum()) == 24 * 4 * 49
    assert int((~masks["heads.policy.0.weight"]).sum()) == 6 * 8
    params = dict(net.named_parameters())
    with torch.no_grad():
        for name, keep in masks.items():
            params[name].masked_fill_(~keep, 0.0)
    obs = torch.randint(0, 256, (5, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        before = [net(obs, h) for h in (0, 1)]
        # Anything the later games may do to the column: its weights, its biases, its reads.
        for name, units in _column(net, 0.25).items():
            layer = net.trunk.get_submodule(name)
            layer.get_parameter("weight")[units] = torch.randn_like(layer.weight[units])
            layer.get_parameter("bias")[units] = torch.rand_like(layer.bias[units])
        for kind in ("policy", "value"):
            net.heads.get_submodule(f"{kind}.1").weight.normal_()
        after = [net(obs, h) for h in (0, 1)]
    assert torch.equal(before[0][0], after[0][0]) and torch.equal(before[0][1], after[0][1])
    assert not torch.equal(before[1][1], after[1][1])  # game 2's head reads the column
    with pytest.raises(ValueError, match="at least one unit"):
        reserve_masks(net, 0.01, heads=[0])  # round(0.01 * 8) = 0 units of conv1


def test_reserve_tiny_real_run_game_1_never_reads_the_column(tmp_path: Path) -> None:
    fraction = 0.25
    run = _run(tmp_path, "blip", ["--steps-per-game", "128", "--reserve", str(fraction)])
    after1 = load_checkpoint(run / "checkpoints" / "after-game-1.pt")["net"]
    final = load_checkpoint(run / "checkpoints" / "latest.pt")["net"]
    first = load_checkpoint(run / "checkpoints" / "trained-game-1.pt")["net"]
    net = _net(run)
    masks = reserve_masks(net, fraction, heads=[0])
    # The cut weights are exactly 0 through both games.
    for name, keep in masks.items():
        for state in (first, after1, final):
            assert float(state[name][~keep].abs().max()) == 0.0, name
    column = _column(net, fraction)
    for name, units in column.items():
        bits = after1[f"trunk.{name}.weight_bits"]
        outside = torch.ones(bits.shape[0], dtype=torch.bool)
        outside[units] = False
        # Game 1's freeze left the column free and froze bits of game 1's own units.
        assert int(bits[units].sum()) == 0, name
        assert float(bits[outside].float().mean()) > 0.5, name
        # Game 2 trained the column.
        key = f"trunk.{name}.weight"
        assert not torch.equal(final[key][units], after1[key][units]), name
    # The cut weights froze nothing (the Fisher of a weight held at 0 is dropped).
    for name, keep in masks.items():
        assert int(after1[name.replace("weight", "weight_bits")][~keep].sum()) == 0, name
    # Game 2's heads read the column.
    assert float(final["heads.policy.1.weight"][:, column["fc"]].abs().max()) > 0
    # A resume from game 1 keeps the cut at 0.
    _resume_from_game_1(run)
    resumed = load_checkpoint(run / "checkpoints" / "latest.pt")["net"]
    for name, keep in masks.items():
        assert float(resumed[name][~keep].abs().max()) == 0.0, name
