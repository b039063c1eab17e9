"""The stable-baselines3 plug-in with real SB3 algorithms and real Atari envs (tiny budgets)."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest
import torch
from conftest import Prefixes, assert_in_bounds, frozen_prefixes
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.logger import KVWriter, Logger
from torch import nn

from blip_rl import BlipLayer, blip_layers
from blip_rl.errors import UsageError
from blip_rl.sb3 import (
    DEFAULT_F_PRIOR,
    BlipActorCriticCnnPolicy,
    BlipActorCriticPolicy,
    BlipFreezeCallback,
    TagSchemeLogger,
    estimate_policy_fisher,
    freeze_policy,
    make_sb3_atari_env,
    rollout_states,
)

PPO_TINY: dict[str, Any] = {"n_steps": 16, "batch_size": 16, "n_epochs": 2, "seed": 0}
# SB3's Nature-CNN layout, narrower (20k instead of 1.7M parameters): the same code paths at a
# fraction of the cost (a freeze rebuilds the constraint edges of every scalar, ~2 us each).
SMALL_CNN: dict[str, Any] = {
    "features_extractor_kwargs": {"features_dim": 16, "channels": (8, 16, 16)}
}


def atari(n_envs: int = 2, game: str = "pong") -> Any:
    return make_sb3_atari_env(game, n_envs, seed=0, sticky_actions=0.0)


def params(policy: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in policy.named_parameters()}


def assert_prefixes_kept(before: Prefixes, policy: nn.Module) -> None:
    after = frozen_prefixes(policy, bits_of=before)
    assert any(bool((bits > 0).any()) for bits, _ in before.values()), "nothing was frozen"
    for name, (_, prefix) in before.items():
        changed = int((after[name][1] != prefix).sum())
        assert changed == 0, f"{name}: {changed} frozen prefixes changed"


def assert_moved(before: dict[str, torch.Tensor], policy: nn.Module) -> None:
    after = params(policy)
    assert any(not torch.equal(before[n], after[n]) for n in before), "training changed nothing"


def freeze_then_learn(model: Any, steps: int) -> dict[str, torch.Tensor]:
    """Freeze, learn ``steps`` more steps, and check that training moved the weights but no
    frozen prefix. Returns the Fisher of the freeze."""
    fisher = freeze_policy(model)
    before, weights = frozen_prefixes(model.policy), params(model.policy)
    model.learn(steps, reset_num_timesteps=False)
    assert_moved(weights, model.policy)
    assert_prefixes_kept(before, model.policy)
    return fisher


def assert_all_blip(policy: nn.Module) -> None:
    plain = [
        n
        for n, m in policy.named_modules()
        if isinstance(m, nn.Linear | nn.Conv2d) and not isinstance(m, BlipLayer)
    ]
    assert not plain, f"plain layers: {plain}"


# --- construction ------------------------------------------------------------------------------


@pytest.mark.parametrize("ortho_init", [True, False])
def test_cnn_policy_is_all_blip_and_init_respects_bounds(ortho_init: bool) -> None:
    # Full Nature-CNN size with SB3's ortho init; the BLIP layers' own init on the small one.
    kwargs = {"ortho_init": ortho_init, **({} if ortho_init else SMALL_CNN)}
    model = PPO(BlipActorCriticCnnPolicy, atari(1), policy_kwargs=kwargs, **PPO_TINY)
    policy = model.policy
    assert_all_blip(policy)
    names = {n for n, _ in blip_layers(policy)}
    assert {"action_net", "value_net", "features_extractor.linear.0"} <= names
    assert sum(1 for n in names if n.startswith("features_extractor.cnn")) == 3
    assert_in_bounds(policy)
    # The optimizer trains exactly the policy's parameters (the BLIP heads included).
    opt_params = {id(p) for g in policy.optimizer.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in policy.parameters()}
    if ortho_init:  # SB3's small action-head gain survives (clamping does not touch it)
        assert float(policy.action_net.weight.detach().abs().max()) < 0.05


def test_max_bits_and_prior_reach_every_layer() -> None:
    model = PPO(
        BlipActorCriticCnnPolicy,
        atari(1),
        policy_kwargs={"max_bits": 12, "f_prior": 1e-16, **SMALL_CNN},
        **PPO_TINY,
    )
    layers = list(blip_layers(model.policy))
    assert len(layers) == 6
    assert all(layer.max_bits == 12 and layer.f_prior == 1e-16 for _, layer in layers)
    # The convolutions' own prior reaches the convolutions only.
    kwargs = {**SMALL_CNN}
    kwargs["features_extractor_kwargs"] = {
        **kwargs["features_extractor_kwargs"],
        "conv_f_prior": 1e-10,
    }
    model = PPO(BlipActorCriticCnnPolicy, atari(1), policy_kwargs=kwargs, **PPO_TINY)
    priors = {name: layer.f_prior for name, layer in blip_layers(model.policy)}
    assert [p for n, p in priors.items() if ".cnn." in n] == [1e-10] * 3
    assert [p for n, p in priors.items() if ".cnn." not in n] == [DEFAULT_F_PRIOR] * 3


def test_replaced_optimizer_is_constrained_too() -> None:
    model = PPO(BlipActorCriticPolicy, "CartPole-v1", **PPO_TINY)
    policy = model.policy
    policy.optimizer = torch.optim.SGD(policy.parameters(), lr=100.0)
    policy.optimizer.zero_grad()
    policy.value_net(torch.ones(1, 64)).sum().backward()
    policy.optimizer.step()  # would push value_net far beyond its bound
    assert_in_bounds(policy)


def test_copied_policy_keeps_its_constraint() -> None:
    model = PPO(BlipActorCriticPolicy, "CartPole-v1", **PPO_TINY)
    for policy in (copy.deepcopy(model.policy), pickle.loads(pickle.dumps(model.policy))):
        for g in policy.optimizer.param_groups:
            g["lr"] = 100.0
        policy.optimizer.zero_grad()
        policy.value_net(torch.ones(1, 64)).sum().backward()
        policy.optimizer.step()
        assert_in_bounds(policy)


# --- learning, freezing, saving ---------------------------------------------------------------


def test_ppo_atari_updates_keep_frozen_prefixes() -> None:
    model = PPO(BlipActorCriticCnnPolicy, atari(), policy_kwargs=SMALL_CNN, **PPO_TINY)
    model.learn(32)
    fisher = freeze_then_learn(model, 64)
    assert set(fisher) == {n for n, _ in model.policy.named_parameters() if n != "log_std"}
    assert model.num_timesteps == 96
    assert_in_bounds(model.policy)


def test_save_load_keeps_blip_state_exactly_and_still_constrains(tmp_path: Any) -> None:
    env = atari()
    model = PPO(BlipActorCriticCnnPolicy, env, policy_kwargs=SMALL_CNN, **PPO_TINY)
    model.learn(32)
    freeze_policy(model)
    model.learn(32, reset_num_timesteps=False)
    freeze_policy(model)
    state = {k: v.clone() for k, v in model.policy.state_dict().items()}
    before = frozen_prefixes(model.policy)
    model.save(tmp_path / "m.zip")

    loaded = PPO.load(tmp_path / "m.zip", env=env)
    loaded_state = loaded.policy.state_dict()
    assert set(loaded_state) == set(state)
    blip_keys = {k for k in state if k.endswith(("_bits", "_prefix", "_fisher", "freezes"))}
    # 6 layers x ((weight, bias) x 3 buffers + freezes); SB3 lists the shared extractor's
    # layers under three names (features_extractor, pi_ and vf_features_extractor).
    assert len(blip_keys) == (4 * 3 + 2) * 7
    for k, v in state.items():
        assert loaded_state[k].dtype == v.dtype, k
        assert torch.equal(loaded_state[k], v), k
    assert all(int(layer.freezes) == 2 for _, layer in blip_layers(loaded.policy))

    # SB3 rebuilt the optimizer on load: its updates must still be constrained.
    weights = params(loaded.policy)
    loaded.learn(64, reset_num_timesteps=False)
    assert_moved(weights, loaded.policy)
    assert_prefixes_kept(before, loaded.policy)


def test_a2c_atari_works_and_keeps_frozen_prefixes() -> None:
    model = A2C(BlipActorCriticCnnPolicy, atari(), n_steps=8, seed=0, policy_kwargs=SMALL_CNN)
    assert isinstance(model.policy.optimizer, torch.optim.RMSprop)
    model.learn(32)
    freeze_then_learn(model, 64)


def test_mlp_policy_on_cartpole() -> None:
    model = PPO(BlipActorCriticPolicy, "CartPole-v1", **PPO_TINY)
    assert_all_blip(model.policy)
    names = {n for n, _ in blip_layers(model.policy)}
    assert names == {
        "mlp_extractor.policy_net.0",
        "mlp_extractor.policy_net.2",
        "mlp_extractor.value_net.0",
        "mlp_extractor.value_net.2",
        "action_net",
        "value_net",
    }
    model.learn(64)
    freeze_then_learn(model, 128)


def test_continual_set_env_between_games() -> None:
    model = PPO(BlipActorCriticCnnPolicy, atari(1, "pong"), policy_kwargs=SMALL_CNN, **PPO_TINY)
    model.learn(16, callback=BlipFreezeCallback())
    before = frozen_prefixes(model.policy)
    model.set_env(atari(1, "breakout"))  # same spaces thanks to the full action set
    model.learn(32, callback=BlipFreezeCallback(), reset_num_timesteps=False)
    assert model.num_timesteps == 48
    assert_prefixes_kept(before, model.policy)
    assert all(int(layer.freezes) == 2 for _, layer in blip_layers(model.policy))


# --- Fisher --------------------------------------------------------------------------------------


def test_value_term_protects_value_head() -> None:
    model = PPO(BlipActorCriticPolicy, "CartPole-v1", **PPO_TINY)
    model.learn(32)
    f0 = estimate_policy_fisher(model, value_fisher_coef=0.0, seed=1)
    f1 = estimate_policy_fisher(model, value_fisher_coef=1.0, seed=1)
    f3 = estimate_policy_fisher(model, value_fisher_coef=3.0, seed=1)
    for name in ("value_net.weight", "mlp_extractor.value_net.0.weight"):
        assert float(f0[name].abs().max()) == 0.0
        assert float(f1[name].min()) >= 0 and float(f1[name].max()) > 0
        torch.testing.assert_close(f3[name], 3 * f1[name])
    for name in ("action_net.weight", "mlp_extractor.policy_net.0.weight"):
        assert float(f0[name].max()) > 0
        torch.testing.assert_close(f1[name], f0[name])  # the value term does not touch the actor


def test_fisher_matches_per_sample_gradients() -> None:
    model = PPO(BlipActorCriticPolicy, "CartPole-v1", **PPO_TINY)
    model.learn(16)
    policy = model.policy
    states = rollout_states(model)
    fisher = estimate_policy_fisher(model, seed=3)
    # Brute force for the value head: mean over states of (dV/dW)^2 plus the policy term (0).
    acc = torch.zeros_like(policy.value_net.weight)
    for s in states:
        policy.zero_grad()
        policy.predict_values(s[None]).sum().backward()
        assert policy.value_net.weight.grad is not None
        acc += policy.value_net.weight.grad**2
    torch.testing.assert_close(fisher["value_net.weight"], acc / len(states))


def test_rollout_states_uses_buffer_and_collects_more() -> None:
    model = PPO(BlipActorCriticPolicy, "CartPole-v1", **PPO_TINY)
    model.learn(16)
    assert rollout_states(model).shape == (16, 4)  # the whole buffer (1 env x 16 steps)
    assert rollout_states(model, 5, seed=0).shape == (5, 4)
    assert rollout_states(model, 40).shape == (40, 4)  # 24 more from the current policy
    assert model.num_timesteps == 16  # extra states are not training steps
    model.learn(16, reset_num_timesteps=False)  # and learning resumes cleanly
    freeze_policy(model, n_states=40)


# --- errors --------------------------------------------------------------------------------------


def test_freeze_errors_are_clear() -> None:
    plain = PPO("MlpPolicy", "CartPole-v1", **PPO_TINY)
    plain.learn(16)
    with pytest.raises(UsageError, match="no BLIP layers.*BlipActorCritic"):
        freeze_policy(plain)
    with pytest.raises(UsageError, match="no BLIP layers"):
        plain.learn(16, callback=BlipFreezeCallback())

    fresh = PPO(BlipActorCriticPolicy, "CartPole-v1", **PPO_TINY)
    with pytest.raises(UsageError, match="no rollout yet.*learn"):
        freeze_policy(fresh)
    with pytest.raises(UsageError, match="n_states"):
        BlipFreezeCallback(n_states=0)
    with pytest.raises(UsageError, match="value_fisher_coef"):
        BlipFreezeCallback(value_fisher_coef=-1.0)
    assert issubclass(UsageError, ValueError)


# --- logging -------------------------------------------------------------------------------------


class Memory(KVWriter):
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, Any]]] = []

    def write(self, key_values: dict[str, Any], key_excluded: Any, step: int = 0) -> None:
        self.rows.append((step, dict(key_values)))


def test_callback_freezes_and_logs_blip_stats() -> None:
    model = PPO(BlipActorCriticPolicy, "CartPole-v1", **PPO_TINY)
    memory = Memory()
    model.set_logger(Logger(folder=None, output_formats=[memory]))
    callback = BlipFreezeCallback()
    model.learn(32, callback=callback)
    assert callback.fisher is not None
    assert all(int(layer.freezes) == 1 for _, layer in blip_layers(model.policy))
    step, last = memory.rows[-1]
    assert step == 32
    for layer in ("action_net", "value_net", "pi_mlp.0", "pi_mlp.2", "vf_mlp.0", "vf_mlp.2"):
        bits = last[f"blip/{layer}/frozen_bits"]
        frac = last[f"blip/{layer}/frac_frozen"]
        assert 0 < bits <= 20 and 0 < frac <= 1
    assert last["blip/freezes"] == 1
    # Before the freeze (logged after each rollout), nothing was frozen.
    early = [row for _, row in memory.rows[:-1] if "blip/value_net/frozen_bits" in row]
    assert early and early[0]["blip/value_net/frozen_bits"] == 0


def test_tag_scheme_logger_renames_sb3_keys(tmp_path: Any) -> None:
    logger = TagSchemeLogger(str(tmp_path), formats=(), game="pong")
    memory = Memory()
    logger.output_formats.append(memory)
    model = PPO(BlipActorCriticPolicy, "CartPole-v1", **PPO_TINY)
    model.set_logger(logger)
    model.learn(48)
    logger.record("eval/pong/return", 1.0)
    logger.dump(48)
    keys = set().union(*(row for _, row in memory.rows))
    assert {"loss/value_loss", "loss/entropy_loss", "perf/steps_per_s"} <= keys
    assert "train/pong/episode_return" in keys or not model.ep_info_buffer
    assert "eval/pong/return" in keys
    assert not any(k.startswith("train/") and k.count("/") == 1 for k in keys)
    assert "time/fps" not in keys


def test_make_sb3_atari_env_errors() -> None:
    with pytest.raises(UsageError, match="unknown game"):
        make_sb3_atari_env("not_a_game", 1)
    with pytest.raises(UsageError, match="n_envs"):
        make_sb3_atari_env("pong", 0)
