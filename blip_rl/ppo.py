"""PPO learner for one game of a sequence: rollout storage, GAE, clipped-surrogate update.

The PPO math follows CleanRL's ``ppo_atari.py`` (Huang et al., "The 37 implementation details of
PPO"): GAE(lambda), per-minibatch advantage normalisation, clipped value loss, global gradient
clipping, Adam with eps 1e-5 and a learning rate annealed linearly to 0.

This module knows nothing of continual learning. A continual method reaches in through two
doors only:

* ``PPO.optimizer``: the Adam optimizer of this game; e.g. ``blip_rl.attach(ppo.optimizer, net)``
  re-applies the BLIP constraint after every step.
* ``extra_loss``: a callable returning a scalar added to every minibatch loss (e.g. an EWC
  penalty); reported as ``"extra"`` in the loss dict.

Design choices (documented here because they matter for the results):

* **One PPO object per game.** Its Adam optimizer, step counters and learning-rate schedule start
  fresh with each game: Adam's moments belong to the previous game's loss surface, and the
  schedule is defined per game (the paper anneals within each game).
* **Storage is allocated once** per PPO object: observations stay uint8 ``(num_steps, num_envs,
  4, 84, 84)`` and are converted to float per forward pass. After the last ``collect()`` of a
  game, ``ppo.storage.obs`` (and ``ppo.storage.valid``) hold the states for the Fisher estimate.
* **Autoreset modes.** Gymnasium vector envs reset finished sub-environments either in the same
  step (``SameStep``: the returned observation is already the new episode's first) or in the
  next step (``NextStep``: the step after a ``done`` only resets and ignores its action). Both are
  handled: in ``NextStep`` mode the reset-only steps are marked invalid and left out of the
  update; GAE never bootstraps across a ``done``. Time-limit truncations are treated as
  terminations (as CleanRL does).
* **Steps the env played itself.** A step whose info flags ``forced_action`` (the Atari envs
  press FIRE after a lost life) is marked invalid: the sampled action was not played, so it is
  left out of the update (values and GAE still run through it).
* **Precision.** ``precision="bf16"`` runs the network's forward and backward under a bfloat16
  CPU autocast (weights, optimizer and BLIP state stay float32); log-probs, values and losses
  are computed in float32. On a CPU without native bf16 (no AVX512-BF16 / AMX) bf16 would be
  slow, so "bf16" falls back to float32 there (``ppo.autocast_dtype`` says what is used).
* **Threads.** PPO leaves ``torch.set_num_threads`` to the caller (it is process-wide). On a
  small machine shared with the emulator's C++ threads, one torch thread is best: measured on
  2 cores, a second OpenMP thread spun against the emulator and made PPO 5-20x slower under
  load (``benchmarks/bench_ppo.py``).
* **Resume.** ``state_dict()`` holds the optimizer state, the step counters (hence the position
  in the learning-rate schedule) and the config. It does not hold the environments: a restored
  learner starts its next ``collect()`` from freshly reset environments (call
  :meth:`PPO.reset_envs` with a seed for reproducibility). Resuming is exact at the level of the
  parameters and optimizer, not of the episode in progress. RNG states belong to the caller.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np
import torch
from torch import nn

from blip_rl.nets import ActorCritic
from blip_rl.validate import check_bool, check_choice, check_int, check_number

__all__ = [
    "PPOConfig",
    "PPO",
    "Episode",
    "IterationResult",
    "RolloutStorage",
    "VectorEnvLike",
    "autocast_dtype",
    "bf16_supported",
    "compute_gae",
    "finished_episodes",
]


@dataclass
class PPOConfig:
    """PPO hyper-parameters. Defaults: CleanRL / rl-baselines3-zoo Atari PPO."""

    num_envs: int = 8
    """Parallel environments; must equal the vector env's ``num_envs``."""
    num_steps: int = 128
    """Steps per environment per rollout; a rollout holds ``num_envs * num_steps`` transitions."""
    update_epochs: int = 4
    """Passes over each rollout in ``update()``."""
    num_minibatches: int = 4
    """Minibatches per epoch (minibatch size = batch size / num_minibatches)."""
    learning_rate: float = 2.5e-4
    """Adam learning rate at the start of each game."""
    anneal_lr: bool = True
    """Anneal the learning rate linearly to 0 over the game's ``total_steps``."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """Lambda of generalised advantage estimation."""
    clip_coef: float = 0.1
    """PPO clipping range of the probability ratio (and of the value change if clip_vloss)."""
    ent_coef: float = 0.01
    """Weight of the entropy bonus."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clipping threshold."""
    adam_eps: float = 1e-5
    """Adam epsilon."""
    norm_adv: bool = True
    """Normalise advantages per minibatch (zero mean, unit std)."""
    clip_vloss: bool = True
    """Clip the value loss around the rollout's value predictions."""
    target_kl: float | None = None
    """Stop the epochs of an update early once the approximate KL exceeds this (None: never)."""
    precision: Literal["bf16", "fp32"] = "bf16"
    """Network compute precision: "bf16" autocast (where the CPU supports bf16 natively, float32
    otherwise) or "fp32". Parameters, optimizer state and losses are float32 either way."""
    channels_last: bool = True
    """Use the channels-last memory format for the conv layers (faster with oneDNN on CPU)."""

    @property
    def batch_size(self) -> int:
        """Transitions per rollout: ``num_envs * num_steps``."""
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        """Transitions per minibatch: ``batch_size // num_minibatches``."""
        return self.batch_size // self.num_minibatches

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field (also run on construction)."""
        for name in ("num_envs", "num_steps", "update_epochs", "num_minibatches"):
            check_int(self, name, 1)
        if self.num_minibatches > self.batch_size:
            raise ValueError(
                f"invalid --num-minibatches {self.num_minibatches}; expected at most "
                f"num_envs * num_steps = {self.batch_size}"
            )
        check_number(self, "learning_rate", 0.0)
        for name in ("clip_coef", "ent_coef", "vf_coef", "max_grad_norm"):
            check_number(self, name, 0.0)
        for name in ("gamma", "gae_lambda"):
            check_number(self, name, 0.0, 1.0)
        check_number(self, "adam_eps", 0.0, low_open=True)
        check_number(self, "target_kl", 0.0, low_open=True, allow_none=True)
        for name in ("anneal_lr", "norm_adv", "clip_vloss", "channels_last"):
            check_bool(self, name)
        check_choice(self, "precision", ("bf16", "fp32"))


class Episode(NamedTuple):
    """A finished episode reported by the environment."""

    score: float
    """True game score (unclipped reward summed over all lives)."""
    length: int
    """Length in agent steps, as the environment reports it."""


@dataclass
class IterationResult:
    """What one ``PPO.iteration()`` did."""

    episodes: list[Episode]
    """Episodes that finished during the rollout."""
    losses: dict[str, float]
    """The loss dict of ``update()``."""
    global_step: int
    """Env steps of this game so far (all envs), after the iteration."""
    steps_per_s: float
    """Env steps per second of the iteration (rollout and update)."""


class VectorEnvLike(Protocol):
    """What PPO needs of a vector env (a ``gymnasium.vector.VectorEnv`` satisfies it)."""

    num_envs: int
    single_action_space: Any
    metadata: dict[str, Any]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any: ...

    def step(self, actions: Any) -> Any: ...


def finished_episodes(info: dict[str, Any]) -> list[Episode]:
    """Finished episodes in a vector env's step ``info``, with their true game scores.

    Reads blip-rl's Atari convention (:mod:`blip_rl.atari`): ``info["episode_return"]`` and
    ``info["episode_length"]`` with the mask ``info["_episode_return"]`` of the sub-envs whose
    episode (whole game, all lives) ended in this step. Falls back to gymnasium's
    ``RecordEpisodeStatistics`` convention (``info["episode"]["r"]``, ``["l"]``, mask
    ``info["_episode"]``). The env must put the unclipped score there: training envs clip
    rewards and end episodes on life loss, the statistics must not.
    """
    if "episode_return" in info:
        returns = np.asarray(info["episode_return"]).reshape(-1)
        lengths = np.asarray(info.get("episode_length", np.zeros(returns.shape))).reshape(-1)
        mask = np.asarray(info.get("_episode_return", np.ones(returns.shape, bool))).reshape(-1)
    elif "episode" in info:
        returns = np.asarray(info["episode"]["r"]).reshape(-1)
        lengths = np.asarray(info["episode"]["l"]).reshape(-1)
        mask = np.asarray(info.get("_episode", np.ones(returns.shape, bool))).reshape(-1)
    else:
        return []
    if not mask.any():
        return []
    return [Episode(float(returns[i]), int(lengths[i])) for i in np.flatnonzero(mask)]


def bf16_supported() -> bool:
    """True when this CPU runs bfloat16 natively (AVX512-BF16 or AMX)."""
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((check is not None and check()) or (amx is not None and amx()))


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype that ``precision`` means on ``device``: bfloat16 for "bf16" on a GPU or
    on a CPU with native bf16, else None (float32). Training and evaluation both use it."""
    if precision == "bf16" and (torch.device(device).type != "cpu" or bf16_supported()):
        return torch.bfloat16
    return None


@torch.no_grad()
def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    next_value: torch.Tensor,
    next_done: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a rollout.

    Args:
        rewards, values: ``(T, N)``: reward of step ``t`` and value of ``obs[t]``.
        dones: ``(T, N)``: 1 where ``obs[t]`` came with a done flag, i.e. the episode ended at
            step ``t - 1`` (so step ``t - 1`` must not bootstrap from ``obs[t]``).
        next_value, next_done: ``(N,)``: value and done flag of the observation after the rollout.
        gamma, gae_lambda: discount and GAE lambda.

    Returns:
        ``(advantages, returns)``, each ``(T, N)``, with ``returns = advantages + values``:
        ``delta_t = r_t + gamma * V_{t+1} * (1 - d_{t+1}) - V_t`` and
        ``A_t = delta_t + gamma * lambda * (1 - d_{t+1}) * A_{t+1}``.
    """
    num_steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(num_steps)):
        if t == num_steps - 1:
            nonterminal = 1.0 - next_done
            next_v = next_value
        else:
            nonterminal = 1.0 - dones[t + 1]
            next_v = values[t + 1]
        delta = rewards[t] + gamma * next_v * nonterminal - values[t]
        last = delta + gamma * gae_lambda * nonterminal * last
        advantages[t] = last
    return advantages, advantages + values


@dataclass
class RolloutStorage:
    """Preallocated rollout buffers; ``T = num_steps``, ``N = num_envs``."""

    obs: torch.Tensor
    """uint8 ``(T, N, 4, 84, 84)``: the observation each action was taken in."""
    actions: torch.Tensor
    """int64 ``(T, N)``."""
    logprobs: torch.Tensor
    """float32 ``(T, N)``: log pi(action | obs) at collection time."""
    rewards: torch.Tensor
    """float32 ``(T, N)``: training reward (clipped by the env)."""
    dones: torch.Tensor
    """float32 ``(T, N)``: 1 where ``obs[t]`` came with a done flag (see :func:`compute_gae`)."""
    values: torch.Tensor
    """float32 ``(T, N)``: value of ``obs[t]`` at collection time."""
    valid: torch.Tensor
    """bool ``(T, N)``: False for reset-only steps of a ``NextStep`` autoreset env."""
    advantages: torch.Tensor
    """float32 ``(T, N)``: GAE advantages, filled by ``collect()``."""
    returns: torch.Tensor
    """float32 ``(T, N)``: value targets, ``advantages + values``."""
    filled: bool = field(default=False)
    """True once a full rollout has been collected."""

    @classmethod
    def allocate(
        cls, num_steps: int, num_envs: int, obs_shape: tuple[int, ...], device: torch.device
    ) -> RolloutStorage:
        """Zeroed buffers of the given shape."""

        def f32() -> torch.Tensor:
            return torch.zeros((num_steps, num_envs), dtype=torch.float32, device=device)

        return cls(
            obs=torch.zeros((num_steps, num_envs, *obs_shape), dtype=torch.uint8, device=device),
            actions=torch.zeros((num_steps, num_envs), dtype=torch.int64, device=device),
            logprobs=f32(),
            rewards=f32(),
            dones=f32(),
            values=f32(),
            valid=torch.ones((num_steps, num_envs), dtype=torch.bool, device=device),
            advantages=f32(),
            returns=f32(),
        )


class PPO:
    """PPO on one game (one head of an :class:`~blip_rl.nets.ActorCritic`).

    Args:
        net: the actor-critic; trained in place. With ``config.channels_last`` its conv
            parameters are converted to the channels-last memory format (values unchanged).
        envs: a vector env with uint8 observations ``(num_envs, 4, 84, 84)`` and a discrete
            action space of ``net.action_counts[head]`` actions; finished episodes' true scores
            in the step info as read by :func:`finished_episodes`.
        config: hyper-parameters (:class:`PPOConfig`).
        head: which (policy, value) head this game trains.
        total_steps: env steps (all envs) planned for this game; the learning rate reaches 0
            there. Also the default length of :meth:`train`.
        device: torch device of the network and the storage.
        extra_loss: optional ``() -> scalar tensor or None`` added to each minibatch loss (a
            continual method's regulariser; None adds nothing); its value is reported as
            ``"extra"``.

    Typical use::

        ppo = PPO(net, envs, PPOConfig(), head=0, total_steps=10_000_000)
        blip_rl.attach(ppo.optimizer, net)       # the BLIP constraint after every Adam step
        ppo.reset_envs(seed=1)
        while ppo.global_step < ppo.total_steps:
            episodes = ppo.collect()
            losses = ppo.update()
            ...                                  # log, evaluate, checkpoint between iterations
    """

    def __init__(
        self,
        net: ActorCritic,
        envs: VectorEnvLike,
        config: PPOConfig,
        head: int,
        total_steps: int,
        device: torch.device | str = "cpu",
        extra_loss: Callable[[], torch.Tensor | None] | None = None,
    ) -> None:
        config.validate()
        if not 0 <= head < net.num_heads:
            raise ValueError(f"head={head} is not accepted: the net has {net.num_heads} heads")
        if total_steps < 1:
            raise ValueError(f"total_steps={total_steps!r} is not accepted: use an integer >= 1")
        if envs.num_envs != config.num_envs:
            raise ValueError(
                f"the vector env has {envs.num_envs} envs but config.num_envs={config.num_envs}"
            )
        n_actions = int(envs.single_action_space.n)
        if n_actions != net.action_counts[head]:
            raise ValueError(
                f"head {head} has {net.action_counts[head]} actions but the env has {n_actions}"
            )
        mode = envs.metadata.get("autoreset_mode", "NextStep")
        mode = getattr(mode, "value", mode)
        if mode not in ("NextStep", "SameStep"):
            raise ValueError(f"autoreset mode {mode!r} is not supported: use NextStep or SameStep")
        self.next_step_reset = mode == "NextStep"

        self.net = net
        self.envs = envs
        self.config = config
        self.head = head
        self.total_steps = int(total_steps)
        self.device = torch.device(device)
        self.extra_loss = extra_loss
        if config.channels_last:
            net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.autocast_dtype = autocast_dtype(config.precision, self.device)
        if config.precision == "bf16" and self.autocast_dtype is None:
            warnings.warn(
                "precision='bf16': this CPU has no native bf16, using float32",
                RuntimeWarning,
                stacklevel=2,
            )
        self.optimizer = torch.optim.Adam(
            net.parameters(), lr=config.learning_rate, eps=config.adam_eps
        )
        obs_shape = tuple(int(s) for s in envs.single_observation_space.shape)  # type: ignore[attr-defined]
        self.storage = RolloutStorage.allocate(
            config.num_steps, config.num_envs, obs_shape, self.device
        )
        self.global_step = 0
        """Env steps (all envs) collected in this game."""
        self.updates = 0
        """Completed ``update()`` calls; sets the learning-rate schedule position."""
        self._schedule = (float(config.learning_rate), 0, self.total_steps)
        # (starting rate, updates when the schedule started, env steps it anneals over)
        self._next_obs: torch.Tensor | None = None
        # On a GPU, observations go through one pinned host buffer and a non-blocking copy (the
        # per-step ``action.cpu()`` synchronises, so the buffer is free again at the next step).
        self._staging: torch.Tensor | None = None
        if self.device.type == "cuda":
            self._staging = torch.empty(
                (config.num_envs, *obs_shape), dtype=torch.uint8, device="cpu"
            ).pin_memory()
        self._next_done = torch.zeros(config.num_envs, device=self.device)

    # ----------------------------------------------------------------------------------- helpers
    def _autocast(self) -> torch.autocast:
        return torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.bfloat16,
            enabled=self.autocast_dtype is not None,
        )

    def _prep(self, obs: torch.Tensor) -> torch.Tensor:
        obs = obs.to(self.device, non_blocking=True)
        if self.config.channels_last:
            obs = obs.contiguous(memory_format=torch.channels_last)
        return obs

    def learning_rate(self) -> float:
        """The learning rate of the next ``update()``: ``lr0 * max(0, 1 - k * B / total_steps)``
        for update ``k`` (0-based) and batch size ``B``; ``lr0`` if annealing is off."""
        lr, start, steps = self._schedule
        if self.config.anneal_lr:
            lr *= max(0.0, 1.0 - (self.updates - start) * self.config.batch_size / steps)
        return lr

    def restart_schedule(self, learning_rate: float, steps: int) -> None:
        """Start a new learning-rate schedule at the next ``update()``: ``learning_rate``,
        annealed linearly to 0 over the next ``steps`` env steps (if ``anneal_lr``). The
        sanctioned way for a caller to run a phase of extra training (e.g. PackNet's retraining
        after pruning) on the same learner."""
        if steps < 1 or not learning_rate >= 0:
            raise ValueError(
                f"restart_schedule({learning_rate!r}, {steps!r}): need rate >= 0, steps >= 1"
            )
        self._schedule = (float(learning_rate), self.updates, int(steps))

    def reset_envs(self, seed: int | None = None) -> None:
        """Reset all environments (sub-env ``i`` gets seed ``seed + i``); the next ``collect()``
        starts from there. ``collect()`` calls it (unseeded) if the envs were never reset."""
        obs, _ = self.envs.reset(seed=seed)
        self._next_obs = torch.as_tensor(obs)
        self._next_done.zero_()

    def _host_obs(self, obs: np.ndarray) -> torch.Tensor:
        if self._staging is None:
            return torch.as_tensor(obs)
        self._staging.copy_(torch.from_numpy(np.asarray(obs)))
        return self._staging

    # ----------------------------------------------------------------------------------- rollout
    @torch.inference_mode()
    def collect(self) -> list[Episode]:
        """Run ``num_steps`` steps in every env, fill the storage and its GAE advantages.

        Returns the episodes that finished during the rollout (true game scores).
        """
        if self._next_obs is None:
            self.reset_envs()
        assert self._next_obs is not None
        s, cfg, net = self.storage, self.config, self.net
        episodes: list[Episode] = []
        next_obs, next_done = self._next_obs, self._next_done
        s.valid.fill_(True)
        with self._autocast():
            for t in range(cfg.num_steps):
                s.obs[t].copy_(next_obs, non_blocking=True)
                s.dones[t].copy_(next_done)
                action, logprob, _, value = net.get_action_and_value(
                    self._prep(s.obs[t]), self.head
                )
                s.actions[t] = action
                s.logprobs[t] = logprob
                s.values[t] = value
                obs, reward, terminated, truncated, info = self.envs.step(action.cpu().numpy())
                s.rewards[t].copy_(torch.as_tensor(reward))
                next_done = torch.as_tensor(
                    np.logical_or(terminated, truncated), dtype=torch.float32
                )
                next_done = next_done.to(self.device)
                next_obs = self._host_obs(obs)
                episodes.extend(finished_episodes(info))
                forced = info.get("forced_action")
                if forced is not None and forced.any():  # the env played its own action
                    s.valid[t] &= ~torch.as_tensor(forced, device=self.device)
            next_value = net.get_value(self._prep(next_obs), self.head)
        self._next_obs, self._next_done = next_obs, next_done
        if self.next_step_reset:
            # obs[t] with a done flag is a terminal observation; its step only resets the env.
            s.valid &= s.dones == 0
        adv, ret = compute_gae(
            s.rewards, s.values, s.dones, next_value, next_done, cfg.gamma, cfg.gae_lambda
        )
        s.advantages.copy_(adv)
        s.returns.copy_(ret)
        s.filled = True
        self.global_step += cfg.batch_size
        return episodes

    # ------------------------------------------------------------------------------------ update
    def update(self) -> dict[str, float]:
        """``update_epochs`` passes of minibatch PPO over the last rollout.

        Returns the means over minibatches of ``policy`` (clipped surrogate loss), ``value``,
        ``entropy``, ``approx_kl``, ``clipfrac``, ``extra`` (0 without ``extra_loss``) and the
        rollout's ``explained_variance`` and the ``learning_rate`` used.
        """
        s, cfg, net = self.storage, self.config, self.net
        if not s.filled:
            raise RuntimeError("PPO.update() before collect(): the storage holds no rollout")
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        b_obs = s.obs.flatten(0, 1)
        b_actions = s.actions.flatten()
        b_logprobs = s.logprobs.flatten()
        b_adv = s.advantages.flatten()
        b_returns = s.returns.flatten()
        b_values = s.values.flatten()
        index = torch.nonzero(s.valid.flatten()).squeeze(1)
        num_mb = min(cfg.num_minibatches, max(1, index.numel()))
        # policy, value, entropy, kl, clipfrac, extra
        sums = torch.zeros(6, dtype=torch.float64, device=self.device)
        count = 0
        params = [p for p in net.parameters()]
        net.train()
        for _epoch in range(cfg.update_epochs):
            perm = index[torch.randperm(index.numel(), device=index.device)]
            approx_kl = torch.zeros((), device=self.device)
            for mb in torch.tensor_split(perm, num_mb):
                with self._autocast():
                    _, newlogprob, entropy, newvalue = net.get_action_and_value(
                        self._prep(b_obs[mb]), self.head, b_actions[mb]
                    )
                logratio = newlogprob - b_logprobs[mb]
                ratio = logratio.exp()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfrac = ((ratio - 1.0).abs() > cfg.clip_coef).float().mean()

                mb_adv = b_adv[mb]
                if cfg.norm_adv and mb_adv.numel() > 1:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                pg_loss1 = -mb_adv * ratio
                pg_loss2 = -mb_adv * torch.clamp(ratio, 1 - cfg.clip_coef, 1 + cfg.clip_coef)
                pg_loss = torch.max(pg_loss1, pg_loss2).mean()

                if cfg.clip_vloss:
                    v_unclipped = (newvalue - b_returns[mb]) ** 2
                    v_clipped = b_values[mb] + torch.clamp(
                        newvalue - b_values[mb], -cfg.clip_coef, cfg.clip_coef
                    )
                    v_loss = 0.5 * torch.max(v_unclipped, (v_clipped - b_returns[mb]) ** 2).mean()
                else:
                    v_loss = 0.5 * ((newvalue - b_returns[mb]) ** 2).mean()

                entropy_loss = entropy.mean()
                loss = pg_loss - cfg.ent_coef * entropy_loss + cfg.vf_coef * v_loss
                extra = torch.zeros((), device=self.device)
                term = self.extra_loss() if self.extra_loss is not None else None
                if term is not None:
                    extra = term
                    loss = loss + extra

                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                self.optimizer.step()

                sums += (
                    torch.stack([pg_loss, v_loss, entropy_loss, approx_kl, clipfrac, extra])
                    .detach()
                    .double()
                )
                count += 1
            if cfg.target_kl is not None and float(approx_kl) > cfg.target_kl:
                break
        self.updates += 1
        means = (sums / max(count, 1)).tolist()
        with torch.no_grad():
            y_pred, y_true = b_values[index], b_returns[index]
            var_y = y_true.var() if y_true.numel() > 1 else torch.zeros((), device=self.device)
            ev = float("nan") if var_y == 0 else float(1 - (y_true - y_pred).var() / var_y)
        names = ("policy", "value", "entropy", "approx_kl", "clipfrac", "extra")
        out = dict(zip(names, means, strict=True))
        out["explained_variance"] = ev
        out["learning_rate"] = lr
        return out

    # ------------------------------------------------------------------------------- convenience
    def iteration(self) -> IterationResult:
        """One ``collect()`` and one ``update()``."""
        start = time.perf_counter()
        episodes = self.collect()
        losses = self.update()
        elapsed = time.perf_counter() - start
        return IterationResult(
            episodes=episodes,
            losses=losses,
            global_step=self.global_step,
            steps_per_s=self.config.batch_size / max(elapsed, 1e-9),
        )

    def train(
        self,
        steps: int | None = None,
        callback: Callable[[PPO, IterationResult], bool | None] | None = None,
    ) -> None:
        """Run iterations until ``steps`` more env steps are done (default: until
        ``global_step >= total_steps``). ``callback(ppo, result)`` runs after each iteration
        (log, evaluate, checkpoint); returning ``False`` stops training."""
        stop_at = self.total_steps if steps is None else self.global_step + steps
        while self.global_step < stop_at:
            result = self.iteration()
            if callback is not None and callback(self, result) is False:
                break

    # ---------------------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Optimizer state, step counters (learning-rate schedule position), head, total_steps
        and config. Not the envs: see the module docstring on resuming."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "global_step": self.global_step,
            "updates": self.updates,
            "head": self.head,
            "total_steps": self.total_steps,
            "schedule": list(self._schedule),
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`. The next ``collect()`` starts from freshly reset envs.

        Raises ``ValueError`` if the state belongs to another head or another batch shape.
        """
        if int(state["head"]) != self.head:
            raise ValueError(f"PPO state is for head {state['head']}, this learner has {self.head}")
        saved = state.get("config", {})
        for key in ("num_envs", "num_steps"):
            if key in saved and saved[key] != getattr(self.config, key):
                raise ValueError(
                    f"PPO state has {key}={saved[key]}, this learner {getattr(self.config, key)}"
                )
        if "optimizer" in state:  # without it (a branch into other games): fresh moments
            self.optimizer.load_state_dict(state["optimizer"])
        self.global_step = int(state["global_step"])
        self.updates = int(state["updates"])
        self.total_steps = int(state["total_steps"])
        lr, start, steps = state.get("schedule", (self.config.learning_rate, 0, self.total_steps))
        self._schedule = (float(lr), int(start), int(steps))
        self._next_obs = None
        self.storage.filled = False
