"""PPO learner: GAE, learning-rate schedule, autoreset modes, checkpoints, BLIP constraint,
one iteration on a real ROM."""

from __future__ import annotations

import copy
import io
import math
from typing import Any

import numpy as np
import pytest
import torch
from conftest import frozen_prefixes
from gymnasium.spaces import Box, Discrete

import blip_rl
from blip_rl.atari import make_train_envs
from blip_rl.nets import ActorCritic, NetConfig
from blip_rl.ppo import PPO, Episode, PPOConfig, compute_gae, finished_episodes

TINY = PPOConfig(num_envs=2, num_steps=16, num_minibatches=2, update_epochs=2)


class FakeEnv:
    """A vector env with random frames; env ``i`` ends an episode every ``period + i`` steps
    with score ``10 * (i + 1)``."""

    def __init__(self, num_envs: int = 2, actions: int = 4, mode: str = "SameStep") -> None:
        self.num_envs = num_envs
        self.single_action_space = Discrete(actions)
        self.single_observation_space = Box(0, 255, (4, 84, 84), np.uint8)
        self.metadata: dict[str, Any] = {"autoreset_mode": mode}
        self.rng = np.random.default_rng(0)
        self.t = np.zeros(num_envs, dtype=np.int64)
        self.period = 5

    def _obs(self) -> np.ndarray:
        return self.rng.integers(0, 256, (self.num_envs, 4, 84, 84), dtype=np.uint8)

    def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.t[:] = 0
        return self._obs(), {}

    def step(self, actions: np.ndarray) -> Any:
        assert actions.shape == (self.num_envs,)
        self.t += 1
        done = self.t % (self.period + np.arange(self.num_envs)) == 0
        info = {
            "episode_return": np.where(done, 10.0 * (np.arange(self.num_envs) + 1), 0.0),
            "_episode_return": done,
            "episode_length": np.where(done, self.t, 0),
        }
        reward = np.ones(self.num_envs, dtype=np.float32)
        return self._obs(), reward, done, np.zeros_like(done), info


def _ppo(
    config: PPOConfig = TINY, total_steps: int = 10_000, env: Any = None, blip: bool = True
) -> PPO:
    torch.manual_seed(0)
    env = env if env is not None else FakeEnv(config.num_envs)
    net = ActorCritic([env.single_action_space.n], NetConfig(blip=blip))
    return PPO(net, env, config, head=0, total_steps=total_steps)


def test_gae_hand_computed() -> None:
    # One env, three steps; obs[1] came with a done flag (the episode ended at step 0).
    rewards = torch.tensor([[1.0], [0.0], [2.0]])
    values = torch.tensor([[0.5], [0.4], [0.3]])
    dones = torch.tensor([[0.0], [1.0], [0.0]])
    adv, ret = compute_gae(
        rewards, values, dones, torch.tensor([0.6]), torch.tensor([0.0]), 0.9, 0.8
    )
    a2 = 2.0 + 0.9 * 0.6 - 0.3  # bootstraps from the value after the rollout
    a1 = (0.0 + 0.9 * 0.3 - 0.4) + 0.9 * 0.8 * a2
    a0 = 1.0 - 0.5  # no bootstrap across the done
    assert torch.allclose(adv.squeeze(1), torch.tensor([a0, a1, a2]))
    assert torch.allclose(ret, adv + values)
    # A done after the rollout cuts the bootstrap too.
    adv, _ = compute_gae(rewards, values, dones, torch.tensor([0.6]), torch.tensor([1.0]), 0.9, 0.8)
    assert math.isclose(float(adv[2, 0]), 2.0 - 0.3, rel_tol=1e-6)


def test_gae_lambda_one_is_discounted_return_minus_value() -> None:
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(6, 3, generator=g)
    values = torch.rand(6, 3, generator=g)
    next_value = torch.rand(3, generator=g)
    adv, ret = compute_gae(
        rewards, values, torch.zeros(6, 3), next_value, torch.zeros(3), 0.95, 1.0
    )
    expected = next_value.clone()
    for t in reversed(range(6)):
        expected = rewards[t] + 0.95 * expected
        assert torch.allclose(ret[t], expected, atol=1e-5)


def test_learning_rate_anneals_linearly_to_zero_within_the_game() -> None:
    cfg = TINY
    ppo = _ppo(cfg, total_steps=4 * cfg.batch_size)
    expected = [2.5e-4 * f for f in (1.0, 0.75, 0.5, 0.25, 0.0)]
    for k, lr in enumerate(expected):
        assert math.isclose(ppo.learning_rate(), lr, abs_tol=1e-12), k
        if k < 4:
            ppo.collect()
            losses = ppo.update()
            assert math.isclose(losses["learning_rate"], lr, abs_tol=1e-12)
            assert all(math.isclose(g["lr"], lr) for g in ppo.optimizer.param_groups)
    assert ppo.global_step == 4 * cfg.batch_size
    flat = _ppo(PPOConfig(**{**vars(cfg), "anneal_lr": False}), total_steps=cfg.batch_size)
    flat.updates = 10
    assert flat.learning_rate() == 2.5e-4


def test_train_loop_episodes_and_callback() -> None:
    ppo = _ppo(TINY, total_steps=3 * TINY.batch_size)
    seen: list[Any] = []
    ppo.train(callback=lambda p, r: seen.append(r))
    assert [r.global_step for r in seen] == [32, 64, 96]
    episodes = [e for r in seen for e in r.episodes]
    # env 0 ends every 5 steps (score 10), env 1 every 6 (score 20): 48 steps each.
    assert episodes[0] == Episode(10.0, 5)
    assert sum(e.score == 10.0 for e in episodes) == 48 // 5
    assert sum(e.score == 20.0 for e in episodes) == 48 // 6
    for key in ("policy", "value", "entropy", "approx_kl", "clipfrac", "extra"):
        assert math.isfinite(seen[-1].losses[key])
    # Returning False stops early.
    ppo2 = _ppo(TINY, total_steps=10 * TINY.batch_size)
    ppo2.train(callback=lambda p, r: False)
    assert ppo2.global_step == TINY.batch_size


def test_finished_episodes_conventions() -> None:
    info = {
        "episode_return": np.array([0.0, 7.0]),
        "_episode_return": np.array([False, True]),
        "episode_length": np.array([0, 42]),
    }
    assert finished_episodes(info) == [Episode(7.0, 42)]
    gym_info = {
        "episode": {"r": np.array([3.0, 0.0]), "l": np.array([9, 0])},
        "_episode": np.array([True, False]),
    }
    assert finished_episodes(gym_info) == [Episode(3.0, 9)]
    assert finished_episodes({}) == []


def test_next_step_autoreset_masks_reset_steps() -> None:
    env = FakeEnv(2, mode="NextStep")
    ppo = _ppo(TINY, env=env)
    ppo.collect()
    s = ppo.storage
    assert s.dones.sum() > 0
    assert torch.equal(s.valid, s.dones == 0)
    ppo.update()  # runs on the valid steps only
    same = _ppo(TINY)
    same.collect()
    assert bool(same.storage.valid.all())


def test_extra_loss_is_added_and_reported() -> None:
    calls = []

    def extra() -> torch.Tensor:
        calls.append(1)
        return torch.tensor(3.0)

    ppo = _ppo(TINY)
    ppo.extra_loss = extra
    ppo.collect()
    losses = ppo.update()
    assert losses["extra"] == pytest.approx(3.0)
    assert len(calls) == TINY.update_epochs * TINY.num_minibatches


def test_state_dict_round_trip_resumes_the_optimizer() -> None:
    ppo = _ppo(TINY)
    for _ in range(2):
        ppo.collect()
        ppo.update()
    buf = io.BytesIO()
    torch.save(ppo.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=False)

    net2 = copy.deepcopy(ppo.net)
    ppo2 = PPO(net2, FakeEnv(2), TINY, head=0, total_steps=ppo.total_steps)
    ppo2.load_state_dict(state)
    assert ppo2.global_step == ppo.global_step == 64
    assert ppo2.updates == 2 and ppo2.learning_rate() == ppo.learning_rate()
    # Same rollout, same random minibatches: the next update must give identical parameters,
    # which needs the Adam moments and step counts restored.
    ppo.collect()
    for name in ("obs", "actions", "logprobs", "values", "advantages", "returns", "valid"):
        getattr(ppo2.storage, name).copy_(getattr(ppo.storage, name))
    ppo2.storage.filled = True
    torch.manual_seed(5)
    ppo.update()
    torch.manual_seed(5)
    ppo2.update()
    for (name, a), (_, b) in zip(
        ppo.net.named_parameters(), ppo2.net.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    # A fresh optimizer would not give the same parameters (the test has teeth).
    ppo3 = PPO(copy.deepcopy(net2), FakeEnv(2), TINY, head=0, total_steps=ppo.total_steps)
    assert ppo3.updates == 0 and len(ppo3.optimizer.state) == 0
    with pytest.raises(ValueError, match="head"):
        bad = dict(state, head=1)
        ppo2.load_state_dict(bad)


def test_update_before_collect_and_bad_config() -> None:
    with pytest.raises(RuntimeError, match="before collect"):
        _ppo(TINY).update()
    # Each config checks its fields on construction; the message names the flag.
    with pytest.raises(ValueError, match="--num-minibatches 0"):
        PPOConfig(num_minibatches=0)
    with pytest.raises(ValueError, match="--precision 'fp16'"):
        PPOConfig(precision="fp16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--target-kl nan"):
        PPOConfig(target_kl=math.nan)
    with pytest.raises(ValueError, match="num_envs"):
        _ppo(PPOConfig(num_envs=3), env=FakeEnv(2))


def test_one_iteration_on_a_real_rom() -> None:
    envs = make_train_envs("breakout", TINY.num_envs, seed=0)
    try:
        torch.manual_seed(0)
        net = ActorCritic([envs.num_actions], NetConfig())
        ppo = PPO(net, envs, TINY, head=0, total_steps=1000)
        blip_rl.attach(ppo.optimizer, net)
        ppo.reset_envs(seed=0)
        before = net.trunk.fc.weight.detach().clone()
        result = ppo.iteration()
        assert result.global_step == TINY.batch_size
        for key in ("policy", "value", "entropy", "approx_kl", "clipfrac"):
            assert math.isfinite(result.losses[key]), key
        obs = ppo.storage.obs
        assert obs.dtype == torch.uint8 and obs.shape == (16, 2, 4, 84, 84)
        assert int(obs.max()) > 0
        assert not torch.equal(before, net.trunk.fc.weight.detach())
    finally:
        envs.close()


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_blip_constraint_on_the_ppo_optimizer_keeps_frozen_prefixes(precision: str) -> None:
    envs = make_train_envs("breakout", 2, seed=1)
    try:
        torch.manual_seed(1)
        net = ActorCritic([envs.num_actions], NetConfig())
        # A synthetic Fisher spread over 12 decades freezes 0..20 bits across the scalars.
        g = torch.Generator().manual_seed(0)
        fisher = {
            n: 10.0 ** (torch.rand(p.shape, generator=g) * 12 - 14)
            for n, p in blip_rl.blip_parameters(net)
        }
        blip_rl.freeze(net, fisher)
        before = frozen_prefixes(net)
        frozen = sum(int((b > 0).sum()) for b, _ in before.values())
        assert 0 < frozen < sum(b.numel() for b, _ in before.values())
        weights = {n: p.detach().clone() for n, p in net.named_parameters()}

        cfg = PPOConfig(
            num_envs=2,
            num_steps=8,
            num_minibatches=2,
            update_epochs=2,
            learning_rate=1e-2,  # large steps: every unconstrained scalar moves a lot
            precision=precision,  # type: ignore[arg-type]
        )
        ppo = PPO(net, envs, cfg, head=0, total_steps=1000)
        blip_rl.attach(ppo.optimizer, net)
        ppo.reset_envs(seed=1)
        for _ in range(2):
            ppo.collect()
            ppo.update()
        after = frozen_prefixes(net)
        for name, (bits, prefix) in before.items():
            assert torch.equal(after[name][0], bits), name
            assert torch.equal(after[name][1], prefix), name
        moved = sum(int((p.detach() != weights[n]).sum()) for n, p in net.named_parameters())
        assert moved > 0.1 * sum(p.numel() for p in net.parameters())
    finally:
        envs.close()


class _Bandit(FakeEnv):
    """Reward 1 for action 2, 0 otherwise, whatever the (random) frame."""

    def step(self, actions: np.ndarray) -> Any:
        obs, _, done, truncated, info = super().step(actions)
        return obs, (actions == 2).astype(np.float32), done, truncated, info


def test_learns_a_bandit() -> None:
    """The policy gradient has the right sign: PPO finds the rewarded action."""
    cfg = PPOConfig(
        num_envs=2, num_steps=32, num_minibatches=2, learning_rate=2e-3, precision="fp32"
    )
    ppo = _ppo(cfg, env=_Bandit(2), total_steps=10**6)
    first = None
    for _ in range(10):
        ppo.collect()
        if first is None:
            first = float((ppo.storage.actions == 2).float().mean())
        ppo.update()
    ppo.collect()
    last = float((ppo.storage.actions == 2).float().mean())
    assert first is not None and first < 0.45
    assert last > 0.7


class ForcingEnv(FakeEnv):
    """FakeEnv that reports every third step of env 0 as played by the env itself."""

    def step(self, actions: np.ndarray) -> Any:
        obs, reward, done, trunc, info = super().step(actions)
        info["forced_action"] = np.zeros(self.num_envs, dtype=bool)
        info["forced_action"][0] = self.t[0] % 3 == 0
        return obs, reward, done, trunc, info


def test_steps_the_env_played_itself_are_left_out_of_the_update() -> None:
    env = ForcingEnv(TINY.num_envs)
    ppo = _ppo(env=env)
    ppo.reset_envs(seed=0)
    ppo.collect()
    valid = ppo.storage.valid
    # Step t of env 0 is the (t+1)-th env step: forced when (t + 1) % 3 == 0.
    expected = torch.tensor([(t + 1) % 3 != 0 for t in range(TINY.num_steps)])
    assert torch.equal(valid[:, 0].cpu(), expected)
    assert bool(valid[:, 1].all())
    ppo.update()  # runs on the valid steps only
