"""BLIP for stable-baselines3: quantized actor-critic policies, freezing and logging.

Use BLIP inside your own SB3 training code::

    from stable_baselines3 import PPO
    from blip_rl.sb3 import BlipActorCriticCnnPolicy, BlipFreezeCallback

    model = PPO(BlipActorCriticCnnPolicy, atari_vec_env, policy_kwargs={"max_bits": 20})
    model.learn(1_000_000, callback=BlipFreezeCallback())   # freezes bits at the end of learn()
    model.set_env(next_game_env)                             # same observation/action spaces
    model.learn(1_000_000, callback=BlipFreezeCallback(), reset_num_timesteps=False)

What this module provides:

* :class:`BlipActorCriticPolicy` (vector observations) and :class:`BlipActorCriticCnnPolicy`
  (images): SB3 ``ActorCriticPolicy`` subclasses whose features extractor, policy and value
  networks, action head and value head are :class:`~blip_rl.BlipLinear` /
  :class:`~blip_rl.BlipConv2d` layers. They work with ``PPO`` and ``A2C``. SB3's orthogonal
  init (``ortho_init=True``) keeps every weight inside its bound. The BLIP constraint runs after
  every ``optimizer.step()`` of SB3's own ``train()``: the policy registers it as a step post-hook
  on whatever optimizer is assigned to ``policy.optimizer``, so it also holds after ``PPO.load``
  (which rebuilds the optimizer) and after a user replaces the optimizer.
* :func:`freeze_policy`: Fisher information from the states of ``model.rollout_buffer``
  (optionally more states collected with the current policy), then bit growth (the method is
  described in ``docs/blip.md``). Not to be confused with :func:`blip_rl.freeze`, which takes a
  model and a Fisher you computed yourself.
* :class:`BlipFreezeCallback`: freezes at the end of ``learn()`` and logs BLIP statistics
  (``blip/<layer>/frozen_bits``, ``blip/<layer>/frac_frozen``) to SB3's logger.
* :func:`make_sb3_atari_env`: an SB3 Atari ``VecEnv`` (SB3's ``AtariWrapper`` + frame stack) for
  any game name :func:`blip_rl.atari.resolve_game` accepts, full 18-action set by default.
* :class:`TagSchemeLogger`: an SB3 logger that writes SB3's own keys in the project's TensorBoard
  tag scheme (``train/<game>/episode_return``, ``loss/<name>``, ``perf/steps_per_s``).

The BLIP buffers (frozen bits, prefixes, running Fisher, freeze counts) are in the policy's
``state_dict``, so ``model.save`` / ``PPO.load`` keep them exactly. A Gaussian policy's
``log_std`` (continuous actions) is a plain parameter and is not quantized.
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any, TypedDict, Unpack

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter, Logger, make_output_format
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, MlpExtractor
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecFrameStack
from torch import nn
from torch.utils.hooks import RemovableHandle

from blip_rl.nature_cnn import nature_convs
from blip_rl.policy_fisher import sampled_action_fisher
from blip_rl.quant import BlipLayer, BlipLinear, blip_layers, constrain_, layer_stats
from blip_rl.quant import freeze as _freeze_bits  # not re-exported: blip_rl.freeze is the core one

try:  # another module of the project; fall back to ValueError when it is absent
    from blip_rl.errors import UsageError
except ImportError:  # pragma: no cover
    UsageError = ValueError  # type: ignore[assignment,misc]

__all__ = [
    "ATARI_PPO_KWARGS",
    "BlipActorCriticCnnPolicy",
    "BlipActorCriticPolicy",
    "BlipFreezeCallback",
    "BlipMlpExtractor",
    "BlipNatureCNN",
    "TagSchemeLogger",
    "blip_layer_stats",
    "estimate_policy_fisher",
    "freeze_policy",
    "make_sb3_atari_env",
    "record_blip_stats",
    "rollout_states",
    "short_layer_name",
]

ATARI_PPO_KWARGS: dict[str, Any] = {
    "n_steps": 128,
    "n_epochs": 4,
    "learning_rate": 2.5e-4,
    "clip_range": 0.1,
    "ent_coef": 0.01,
    "vf_coef": 0.5,
    "max_grad_norm": 0.5,
}
"""SB3 ``PPO`` keyword arguments of the Atari setting (rl-baselines3-zoo's, CleanRL's, and
blip-rl's own :class:`~blip_rl.ppo.PPOConfig` defaults); add ``batch_size=n_envs * 128 // 4``."""

DEFAULT_MAX_BITS = 20
"""N, the bits of each parameter's fixed-point code (paper: 20)."""
DEFAULT_F_PRIOR = 5e-18
"""Fisher prior in the reference implementation's units; the layers convert it to true-Fisher
units (times ``62**2`` and the layer's ``n``), see :class:`blip_rl.BlipLinear`."""


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------


class BlipNatureCNN(BaseFeaturesExtractor):
    """SB3's Nature-CNN features extractor built from BLIP layers.

    Same layout as ``stable_baselines3.common.torch_layers.NatureCNN`` by default (conv 8x8/4,
    4x4/2, 3x3/1 with 32, 64, 64 channels, then a linear layer of ``features_dim`` units, ReLU
    everywhere). The BLIP paper's RL network is ``channels=(32, 64, 128), features_dim=1024``.

    Args:
        observation_space: a channel-first image ``Box`` (SB3 transposes Atari frames for you).
        features_dim: units of the final linear layer.
        channels: output channels of the three conv layers.
        normalized_image: as in SB3's ``NatureCNN`` (skip the uint8 image-space check).
        max_bits: N of every BLIP layer.
        f_prior: Fisher prior in the reference's units (see :data:`DEFAULT_F_PRIOR`).
        conv_f_prior: Fisher prior of the three convolutions alone (None: ``f_prior``); a larger
            one leaves the shared features freer for later games (pass it in
            ``features_extractor_kwargs``).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        features_dim: int = 512,
        channels: tuple[int, int, int] = (32, 64, 64),
        normalized_image: bool = False,
        max_bits: int = DEFAULT_MAX_BITS,
        f_prior: float = DEFAULT_F_PRIOR,
        conv_f_prior: float | None = None,
    ) -> None:
        if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 3:
            raise UsageError(
                f"BlipNatureCNN needs a channel-first image Box observation space, got "
                f"{observation_space}; use BlipActorCriticPolicy for vector observations"
            )
        super().__init__(observation_space, features_dim)
        conv_prior = f_prior if conv_f_prior is None else conv_f_prior
        convs = nature_convs(
            observation_space.shape[0], channels, max_bits=max_bits, f_prior=conv_prior
        )
        self.cnn = nn.Sequential(*(layer for _, layer in convs), nn.Flatten())
        with torch.no_grad():
            sample = torch.as_tensor(observation_space.sample()[None]).float()
            n_flatten = int(self.cnn(sample).shape[1])
        self.linear = nn.Sequential(
            BlipLinear(n_flatten, features_dim, max_bits=max_bits, f_prior=f_prior), nn.ReLU()
        )

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.linear(self.cnn(observations))


class BlipMlpExtractor(MlpExtractor):
    """SB3's ``MlpExtractor`` (separate policy and value MLPs) built from :class:`BlipLinear`.

    Args are those of ``MlpExtractor`` plus ``max_bits`` and ``f_prior``.
    """

    def __init__(
        self,
        feature_dim: int,
        net_arch: list[int] | dict[str, list[int]],
        activation_fn: type[nn.Module],
        device: torch.device | str = "auto",
        max_bits: int = DEFAULT_MAX_BITS,
        f_prior: float = DEFAULT_F_PRIOR,
    ) -> None:
        nn.Module.__init__(self)
        if isinstance(net_arch, dict):
            pi_dims = list(net_arch.get("pi", []))
            vf_dims = list(net_arch.get("vf", []))
        else:
            pi_dims = vf_dims = list(net_arch)

        def mlp(dims: list[int]) -> tuple[nn.Sequential, int]:
            layers: list[nn.Module] = []
            last = feature_dim
            for d in dims:
                layers += [BlipLinear(last, d, max_bits=max_bits, f_prior=f_prior), activation_fn()]
                last = d
            return nn.Sequential(*layers), last

        self.policy_net, self.latent_dim_pi = mlp(pi_dims)
        self.value_net, self.latent_dim_vf = mlp(vf_dims)
        if device != "auto":
            self.to(device)


def _accepts(cls: type, name: str) -> bool:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False
    return name in params  # named explicitly: **kwargs may forward to something else


def _blip_head(old: nn.Linear, max_bits: int, f_prior: float) -> BlipLinear:
    return BlipLinear(
        old.in_features,
        old.out_features,
        bias=old.bias is not None,
        max_bits=max_bits,
        f_prior=f_prior,
        device=old.weight.device,
    )


class BlipActorCriticPolicy(ActorCriticPolicy):
    """SB3 actor-critic policy whose networks and heads are all BLIP layers.

    Accepts every argument of SB3's ``ActorCriticPolicy`` (``net_arch``, ``activation_fn``,
    ``ortho_init``, ``features_extractor_class``, ``optimizer_class``, ...) plus:

    Args:
        max_bits: N, the bits of each parameter's fixed-point code (1..32; paper: 20).
        f_prior: the Fisher prior in the reference implementation's units (paper: 5e-18); each
            layer's prior in true-Fisher units is ``f_prior * 62**2 * n`` (see
            :class:`blip_rl.BlipLinear`). Larger priors freeze fewer bits.

    ``max_bits`` and ``f_prior`` are also passed to the features extractor when its class accepts
    them (as :class:`BlipNatureCNN` does). The default extractor flattens the observation and has
    no parameters; the MLPs (default ``pi=[64, 64], vf=[64, 64]``), the action head and the value
    head are BLIP layers. With ``ortho_init`` the SB3 gains are kept (``sqrt(2)`` for the
    extractor and MLPs, 0.01 for the action head, 1 for the value head) and every weight is then
    clamped into its bound ``[-B, B)``. A custom extractor made of plain ``nn.Linear`` /
    ``nn.Conv2d`` layers works but is not protected; a warning says so.
    """

    max_bits: int
    f_prior: float

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        *args: Any,
        max_bits: int = DEFAULT_MAX_BITS,
        f_prior: float = DEFAULT_F_PRIOR,
        **kwargs: Any,
    ) -> None:
        # Set before ActorCriticPolicy.__init__, which builds everything (and assigns optimizer).
        self.__dict__["_blip_opt"] = None
        self.__dict__["_blip_hook"] = None
        self.__dict__["max_bits"] = max_bits
        self.__dict__["f_prior"] = f_prior
        extractor = kwargs.get("features_extractor_class")
        if extractor is None and len(args) >= 9:  # positional, as SB3 orders them
            extractor = args[8]
        if extractor is not None:
            fe_kwargs = dict(kwargs.get("features_extractor_kwargs") or {})
            for key, value in (("max_bits", max_bits), ("f_prior", f_prior)):
                if _accepts(extractor, key):
                    fe_kwargs.setdefault(key, value)
            if (
                isinstance(extractor, type)
                and issubclass(extractor, BlipNatureCNN)
                and not kwargs.get("normalize_images", True)
            ):
                fe_kwargs["normalized_image"] = True
            if fe_kwargs:
                kwargs["features_extractor_kwargs"] = fe_kwargs
            if (
                isinstance(extractor, type)
                and issubclass(extractor, BlipNatureCNN)
                and kwargs.get("net_arch") is None
                and len(args) < 1
            ):
                kwargs["net_arch"] = []  # as SB3 does for its NatureCNN: heads on the features
        super().__init__(observation_space, action_space, lr_schedule, *args, **kwargs)

    # -- the optimizer: every optimizer assigned here gets the constraint as a step post-hook --
    @property
    def optimizer(self) -> torch.optim.Optimizer:
        opt = self.__dict__.get("_blip_opt")
        if opt is None:
            raise AttributeError("optimizer")
        return opt

    @optimizer.setter
    def optimizer(self, opt: torch.optim.Optimizer) -> None:
        hook: RemovableHandle | None = self.__dict__.get("_blip_hook")
        if hook is not None:
            hook.remove()
        self.__dict__["_blip_opt"] = opt
        self.__dict__["_blip_hook"] = (
            opt.register_step_post_hook(self._constrain_after_step) if opt is not None else None
        )

    def _constrain_after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        constrain_(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch optimizers drop their hooks when pickled or deep-copied: attach the constraint
        # again to the (copied) optimizer.
        super().__setstate__(state)
        opt = self.__dict__.get("_blip_opt")
        self.__dict__["_blip_hook"] = None
        if opt is not None:
            self.optimizer = opt

    # -- construction ---------------------------------------------------------------------------
    @staticmethod
    def init_weights(module: nn.Module, gain: float = 1) -> None:
        """SB3's orthogonal init, then every BLIP weight is clamped into its frozen interval
        (``[-B, B)`` while nothing is frozen)."""
        if isinstance(module, BlipLayer):
            assert isinstance(module, nn.Linear | nn.Conv2d)
            with torch.no_grad():
                nn.init.orthogonal_(module.weight, gain=gain)
                if module.bias is not None:
                    module.bias.zero_()
                module.constrain_()
        else:
            BasePolicy.init_weights(module, gain)

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = BlipMlpExtractor(
            self.features_dim,
            net_arch=self.net_arch,
            activation_fn=self.activation_fn,
            device=self.device,
            max_bits=self.max_bits,
            f_prior=self.f_prior,
        )

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)
        # SB3 built plain nn.Linear heads; replace them by BLIP heads with SB3's init gains.
        heads: list[tuple[str, float]] = [("action_net", 0.01), ("value_net", 1.0)]
        for name, gain in heads:
            old = getattr(self, name)
            if isinstance(old, nn.Linear) and not isinstance(old, BlipLayer):
                new = _blip_head(old, self.max_bits, self.f_prior)
                if self.ortho_init:
                    self.init_weights(new, gain=gain)
                setattr(self, name, new)
        constrain_(self)
        # The optimizer must see the new heads' parameters (the setter attaches the constraint).
        self.optimizer = self.optimizer_class(
            self.parameters(),
            lr=lr_schedule(1),
            **self.optimizer_kwargs,  # type: ignore[call-arg]
        )
        plain = [
            n
            for n, m in self.named_modules()
            if isinstance(m, nn.Linear | nn.Conv2d) and not isinstance(m, BlipLayer)
        ]
        if plain:
            warnings.warn(
                f"{type(self).__name__}: layers {plain} are plain nn.Linear/nn.Conv2d, not BLIP "
                "layers; BLIP does not protect them (use BlipNatureCNN or BLIP layers in your "
                "features extractor)",
                stacklevel=2,
            )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(max_bits=self.max_bits, f_prior=self.f_prior)
        return data


class BlipActorCriticCnnPolicy(BlipActorCriticPolicy):
    """:class:`BlipActorCriticPolicy` for images: :class:`BlipNatureCNN` features, then the
    action and value heads directly on the features (SB3's ``CnnPolicy`` layout, ``net_arch=[]``).

    Use with SB3's Atari preprocessing (``make_atari_env`` + ``VecFrameStack``); for a continual
    sequence of games create every env with ``full_action_space=True`` so the action spaces match.
    Accepts the same arguments as :class:`BlipActorCriticPolicy`.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        if len(args) < 9:  # features_extractor_class is SB3's 9th optional positional argument
            kwargs.setdefault("features_extractor_class", BlipNatureCNN)
        super().__init__(observation_space, action_space, lr_schedule, *args, **kwargs)


# --------------------------------------------------------------------------------------------
# Fisher and freezing
# --------------------------------------------------------------------------------------------


def _blip_policy(model: BaseAlgorithm, what: str) -> ActorCriticPolicy:
    policy = getattr(model, "policy", None)
    if not isinstance(policy, ActorCriticPolicy):
        raise UsageError(
            f"{what}: expected an SB3 actor-critic model (PPO, A2C), got {type(model).__name__}"
        )
    if not any(True for _ in blip_layers(policy)):
        raise UsageError(
            f"{what}: the policy {type(policy).__name__} has no BLIP layers; build the model with "
            "BlipActorCriticCnnPolicy or BlipActorCriticPolicy from blip_rl.sb3"
        )
    return policy


def _check_n_states(n_states: int | None) -> None:
    if n_states is not None and (not isinstance(n_states, int) or n_states < 1):
        raise UsageError(f"n_states={n_states!r} is not accepted: use None or an integer >= 1")


def _check_value_fisher_coef(coef: float) -> None:
    if not (isinstance(coef, int | float) and math.isfinite(coef)) or coef < 0:
        raise UsageError(f"value_fisher_coef={coef!r} is not accepted: use a finite number >= 0")


def _buffer_observations(model: BaseAlgorithm, policy: ActorCriticPolicy) -> np.ndarray:
    """The observations of the model's current rollout buffer, one row per state."""
    buffer = getattr(model, "rollout_buffer", None)
    if buffer is None:
        return np.zeros((0, *(policy.observation_space.shape or ())))
    if not isinstance(buffer, RolloutBuffer) or isinstance(buffer.observations, dict):
        raise UsageError(
            f"freeze_policy(): rollout buffer {type(buffer).__name__} is not supported; "
            "use a Box or Discrete observation space (not Dict)"
        )
    obs = buffer.observations
    obs_shape = tuple(buffer.obs_shape)
    if buffer.generator_ready:  # already flattened by RolloutBuffer.get(): all states are valid
        return obs.reshape(-1, *obs_shape)
    steps = buffer.buffer_size if buffer.full else buffer.pos
    return obs[:steps].reshape(-1, *obs_shape)


def _collect(model: BaseAlgorithm, policy: ActorCriticPolicy, n: int) -> np.ndarray:
    """Step ``model.env`` with the current (stochastic) policy and return ``n`` observations.

    Continues from where SB3's rollout collection stopped and hands the env back in a consistent
    state (``model._last_obs``), so a later ``learn(reset_num_timesteps=False)`` resumes cleanly.
    These steps are not counted in ``model.num_timesteps``.
    """
    env: VecEnv | None = model.get_env()
    if env is None:
        raise UsageError(
            "freeze_policy(): more states were asked for (n_states) but the model has no env; "
            "pass env= to PPO.load or call model.set_env(env) first"
        )
    obs: Any = model._last_obs
    if obs is None:
        obs = env.reset()
    assert isinstance(obs, np.ndarray)
    out: list[np.ndarray] = []
    got = 0
    dones = np.zeros(env.num_envs, dtype=bool)
    while got < n:
        out.append(np.asarray(obs))
        got += len(obs)
        with torch.no_grad():
            actions, _, _ = policy(policy.obs_to_tensor(obs)[0])
        act = actions.cpu().numpy()
        if isinstance(policy.action_space, spaces.Box):
            act = np.clip(act, policy.action_space.low, policy.action_space.high)
        obs, _, dones, _ = env.step(act)
    model._last_obs = obs
    model._last_episode_starts = dones
    return np.concatenate(out)[:n]


def rollout_states(
    model: BaseAlgorithm, n_states: int | None = None, *, seed: int | None = None
) -> torch.Tensor:
    """States for the Fisher estimate, as a tensor on the policy's device (not preprocessed:
    the policy's forward does that, as in SB3).

    Args:
        model: a PPO / A2C model with a BLIP policy that has collected at least one rollout.
        n_states: ``None`` (default) uses every state of ``model.rollout_buffer``; a smaller
            number uses a random subset of it; a larger one adds states collected with the current
            policy from ``model.env`` (see :func:`freeze_policy`).
        seed: seed of the subset choice.

    Raises:
        UsageError: no rollout exists yet (call ``model.learn`` first), ``n_states < 1``, or more
            states are needed and the model has no env.
    """
    policy = _blip_policy(model, "rollout_states()")
    _check_n_states(n_states)
    obs = _buffer_observations(model, policy)
    if len(obs) == 0:
        raise UsageError(
            "freeze_policy(): the model has no rollout yet (its rollout buffer is empty); call "
            "model.learn(...) first so the Fisher can be estimated from the states it visited"
        )
    if n_states is not None and n_states < len(obs):
        rng = np.random.default_rng(seed)
        obs = obs[np.sort(rng.choice(len(obs), size=n_states, replace=False))]
    elif n_states is not None and n_states > len(obs):
        obs = np.concatenate([obs, _collect(model, policy, n_states - len(obs))])
    tensor, _ = policy.obs_to_tensor(obs)
    assert isinstance(tensor, torch.Tensor)
    if tensor.shape[0] != len(obs):  # a single unbatched observation was broadcast
        tensor = tensor.reshape(len(obs), *tensor.shape[1:])
    return tensor


def estimate_policy_fisher(
    model: BaseAlgorithm,
    *,
    n_states: int | None = None,
    value_fisher_coef: float = 1.0,
    chunk_size: int = 256,
    seed: int | None = None,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of every BLIP parameter of ``model.policy`` from its rollout states.

    ``F = F_policy + value_fisher_coef * F_value`` where, averaged over the states ``s``:

    * ``F_policy`` is the squared per-sample gradient of ``log pi(a|s)`` with ``a`` sampled
      from the current policy (the paper's term);
    * ``F_value`` is the squared per-sample gradient of the value prediction ``V(s)``: the Fisher
      of a unit-variance Gaussian ``N(V(s), 1)`` over returns, i.e. ``(dV/dtheta)**2``. It
      protects the value head and the critic's share of the features.

    Args:
        model: PPO or A2C with a :class:`BlipActorCriticPolicy`.
        n_states: states to use, see :func:`rollout_states` (default: the whole rollout buffer).
        value_fisher_coef: weight of the value term (>= 0; 0 gives the paper's policy-only
            Fisher). Default 1.0: the value head then gets bits like the action head. The value
            gradient scales with the return scale (Atari rewards are clipped to [-1, 1] by SB3's
            ``AtariWrapper``); lower it if the critic freezes too much of the shared features.
        chunk_size: states per backward pass (bounds memory).
        seed: seed of the state subset and of the sampled actions.

    Returns:
        ``{parameter name: Fisher}`` as in ``model.policy.named_parameters()``.
    """
    _check_value_fisher_coef(value_fisher_coef)
    policy = _blip_policy(model, "freeze_policy()")
    states = rollout_states(model, n_states, seed=seed)
    gen = torch.Generator(device=states.device)
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()

    def terms(pol: nn.Module, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        # One forward (shared features run once) gives both terms: log pi(a|s) and V(s).
        assert isinstance(pol, ActorCriticPolicy)
        values, log_prob, _ = pol.evaluate_actions(obs, act)
        return torch.stack([log_prob, values.reshape(-1)], 1)

    return sampled_action_fisher(
        policy,
        states,
        lambda chunk: _sample(policy, chunk, gen),
        terms,
        value_coef=value_fisher_coef,
        chunk_size=chunk_size,
    )


def _sample(policy: ActorCriticPolicy, obs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Actions sampled from the policy with an explicit generator (reproducible, and leaves the
    global RNG alone)."""
    dist: Any = policy.get_distribution(obs).distribution
    if isinstance(dist, torch.distributions.Categorical):
        return torch.multinomial(dist.probs, 1, generator=gen).squeeze(-1)
    if isinstance(dist, list):  # MultiCategorical
        return torch.stack(
            [torch.multinomial(d.probs, 1, generator=gen).squeeze(-1) for d in dist], dim=1
        )
    if isinstance(dist, torch.distributions.Bernoulli):
        return torch.bernoulli(torch.as_tensor(dist.probs), generator=gen)
    if isinstance(dist, torch.distributions.Normal):
        noise = torch.randn(dist.mean.shape, generator=gen, device=dist.mean.device)
        return dist.mean + dist.stddev * noise
    return policy.get_distribution(obs).sample()  # pragma: no cover


class FisherOptions(TypedDict, total=False):
    """The keyword options of :func:`estimate_policy_fisher`, which :func:`freeze_policy` passes
    through."""

    n_states: int | None
    value_fisher_coef: float
    chunk_size: int
    seed: int | None


def freeze_policy(
    model: BaseAlgorithm, **options: Unpack[FisherOptions]
) -> dict[str, torch.Tensor]:
    """End a task: estimate the Fisher from the model's rollout states and freeze bits.

    Call it between games, after ``model.learn(...)``. The frozen leading bits of every BLIP
    parameter then never change in later ``learn`` calls (SB3's optimizer steps are constrained).
    Args as in :func:`estimate_policy_fisher`. Returns the Fisher used.

    Raises:
        UsageError: the policy has no BLIP layers, or no rollout exists yet.
    """
    fisher = estimate_policy_fisher(model, **options)
    _freeze_bits(model.policy, fisher)
    constrain_(model.policy)
    return fisher


# --------------------------------------------------------------------------------------------
# Statistics, callback and logging
# --------------------------------------------------------------------------------------------


_SHORT_NAMES = (
    ("pi_features_extractor.", "pi_"),
    ("vf_features_extractor.", "vf_"),
    ("features_extractor.", ""),
    ("mlp_extractor.policy_net.", "pi_mlp."),
    ("mlp_extractor.value_net.", "vf_mlp."),
)


def short_layer_name(name: str) -> str:
    """The ``<layer>`` of ``blip/<layer>/...`` tags: the policy's module name without SB3's
    long container names (``features_extractor.linear.0`` -> ``linear.0``,
    ``mlp_extractor.policy_net.0`` -> ``pi_mlp.0``), so SB3's console log (36-character keys)
    keeps them apart."""
    for long, short in _SHORT_NAMES:
        if name.startswith(long):
            return short + name[len(long) :]
    return name or "model"


def blip_layer_stats(policy: nn.Module) -> dict[str, dict[str, float]]:
    """Per BLIP layer (weight and bias together), keyed by :func:`short_layer_name`:
    ``frozen_bits`` (mean frozen bits per scalar), ``frac_frozen`` (fraction of scalars with a
    frozen bit) and ``freezes``."""
    return {short_layer_name(name): v for name, v in layer_stats(policy).items()}


def record_blip_stats(logger: Logger, policy: nn.Module) -> None:
    """Record ``blip/<layer>/frozen_bits`` and ``blip/<layer>/frac_frozen`` for every BLIP layer,
    and ``blip/freezes``, in an SB3 logger (written at its next ``dump``)."""
    stats = blip_layer_stats(policy)
    for layer, s in stats.items():
        logger.record(f"blip/{layer}/frozen_bits", s["frozen_bits"])
        logger.record(f"blip/{layer}/frac_frozen", s["frac_frozen"])
    if stats:
        logger.record("blip/freezes", max(s["freezes"] for s in stats.values()))


class BlipFreezeCallback(BaseCallback):
    """Freeze BLIP bits when ``learn()`` ends, and log BLIP statistics to SB3's logger.

    Pass a new one to each ``learn`` call of a continual sequence::

        for env in game_envs:
            model.set_env(env)
            model.learn(steps, callback=BlipFreezeCallback(), reset_num_timesteps=False)

    Args:
        freeze_on_end: freeze at the end of ``learn()`` (default). With ``False`` the callback
            only logs; call :func:`freeze_policy` yourself.
        n_states, value_fisher_coef, chunk_size, seed: keyword options of
            :func:`estimate_policy_fisher` (:class:`FisherOptions`), used by the freeze.
        log_stats: record ``blip/<layer>/frozen_bits`` and ``blip/<layer>/frac_frozen`` after each
            rollout (written with SB3's next log dump) and after the freeze (dumped at once).
        verbose: 1 prints a line per freeze.

    After the freeze, ``self.fisher`` holds the Fisher that was used.
    """

    def __init__(
        self,
        freeze_on_end: bool = True,
        *,
        log_stats: bool = True,
        verbose: int = 0,
        **fisher_options: Unpack[FisherOptions],
    ) -> None:
        super().__init__(verbose)
        _check_n_states(fisher_options.get("n_states"))
        _check_value_fisher_coef(fisher_options.get("value_fisher_coef", 1.0))
        self.freeze_on_end = freeze_on_end
        self.fisher_options = fisher_options
        self.log_stats = log_stats
        self.fisher: dict[str, torch.Tensor] | None = None

    def _init_callback(self) -> None:
        _blip_policy(self.model, "BlipFreezeCallback")  # fail before training, not after

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if self.log_stats:
            record_blip_stats(self.logger, self.model.policy)

    def _on_training_end(self) -> None:
        if not self.freeze_on_end:
            return
        self.fisher = freeze_policy(self.model, **self.fisher_options)
        if self.log_stats:
            record_blip_stats(self.logger, self.model.policy)
            self.logger.dump(self.num_timesteps)
        if self.verbose >= 1:
            stats = blip_layer_stats(self.model.policy)
            mean = {k: round(v["frozen_bits"], 2) for k, v in stats.items()}
            print(f"BLIP freeze at step {self.num_timesteps}: mean frozen bits {mean}")


class TagSchemeLogger(Logger):
    """SB3 ``Logger`` that writes SB3's own keys in the project's TensorBoard tag scheme.

    Renames: ``rollout/ep_rew_mean`` -> ``train/<game>/episode_return``, ``rollout/ep_len_mean``
    -> ``train/<game>/episode_length``, ``train/<name>`` (SB3's losses and diagnostics) ->
    ``loss/<name>``, ``time/fps`` -> ``perf/steps_per_s``. Other keys (``eval/...``,
    ``blip/...``, ``forgetting/...``) pass through. Set :attr:`game` before each game; pass
    ``reset_num_timesteps=False`` to ``learn`` so the step is the env steps of the whole sequence.

    Args:
        folder: log directory (TensorBoard event files go there).
        formats: SB3 output formats ("stdout", "tensorboard", "csv", "log", "json").
        game: the current game's name.
    """

    def __init__(
        self,
        folder: str,
        formats: tuple[str, ...] = ("stdout", "tensorboard"),
        game: str = "game",
    ) -> None:
        writers: list[KVWriter] = [make_output_format(f, folder) for f in formats]
        super().__init__(folder=folder, output_formats=writers)
        self.game = game

    def _tag(self, key: str) -> str:
        if key == "rollout/ep_rew_mean":
            return f"train/{self.game}/episode_return"
        if key == "rollout/ep_len_mean":
            return f"train/{self.game}/episode_length"
        if key == "time/fps":
            return "perf/steps_per_s"
        if key.startswith("train/") and key.count("/") == 1:
            return "loss/" + key[len("train/") :]
        return key

    def record(self, key: str, value: Any, exclude: str | tuple[str, ...] | None = None) -> None:
        super().record(self._tag(key), value, exclude)

    def record_mean(
        self, key: str, value: float | None, exclude: str | tuple[str, ...] | None = None
    ) -> None:
        super().record_mean(self._tag(key), value, exclude)


# --------------------------------------------------------------------------------------------
# Atari envs for SB3
# --------------------------------------------------------------------------------------------


def make_sb3_atari_env(
    game: str,
    n_envs: int = 8,
    *,
    seed: int | None = None,
    full_action_space: bool = True,
    sticky_actions: float = 0.25,
    max_episode_frames: int = 108_000,
    frame_stack: int = 4,
    evaluation: bool = False,
    vec_env_cls: type[DummyVecEnv] | type[SubprocVecEnv] | None = None,
) -> VecEnv:
    """An SB3 Atari ``VecEnv``: ``ALE/<Game>-v5`` with the emulator's own frame skip off,
    SB3's ``AtariWrapper`` (no-op starts, frame skip 4 with max-pooling, FIRE on reset, 84x84
    grey frames, and for training life loss as episode end and sign-clipped rewards) and a
    ``VecFrameStack``. SB3 transposes the frames to channel-first itself.

    Args:
        game: any spelling :func:`blip_rl.atari.resolve_game` accepts (``pong``,
            ``SpaceInvaders``, ``ALE/Breakout-v5``...).
        n_envs: parallel envs (``DummyVecEnv`` unless ``vec_env_cls`` says otherwise).
        seed: seed of the first env (the others get ``seed + i``).
        full_action_space: all 18 actions, so that every game has the same action space and one
            model can move between games with ``set_env`` (default True).
        sticky_actions: ALE ``repeat_action_probability`` (0.25 = ALE v5; the paper used 0).
        max_episode_frames: emulator frames before an episode is truncated (108000 = 30 min).
        frame_stack: frames stacked per observation.
        evaluation: whole games and raw rewards (no life-loss episode ends, no reward clipping).
        vec_env_cls: e.g. ``SubprocVecEnv`` to run the envs in processes.

    Raises:
        UsageError: unknown game or a bad number.
    """
    import ale_py
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_atari_env

    from blip_rl.atari import resolve_game

    for name, value, low in (
        ("n_envs", n_envs, 1),
        ("max_episode_frames", max_episode_frames, 1),
        ("frame_stack", frame_stack, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UsageError(f"{name}={value!r} is not accepted: use an integer >= {low}")
    if not 0.0 <= float(sticky_actions) <= 1.0:
        raise UsageError(
            f"sticky_actions={sticky_actions!r} is not accepted: use a probability in [0, 1]"
        )
    spec = resolve_game(game)
    gym.register_envs(ale_py)
    env = make_atari_env(
        spec.gym_id,
        n_envs=n_envs,
        seed=seed,
        env_kwargs={
            "full_action_space": full_action_space,
            "frameskip": 1,
            "repeat_action_probability": float(sticky_actions),
            "max_num_frames_per_episode": max_episode_frames,
        },
        wrapper_kwargs={
            "terminal_on_life_loss": not evaluation,
            "clip_reward": not evaluation,
        },
        vec_env_cls=vec_env_cls,
    )
    return VecFrameStack(env, n_stack=frame_stack)
