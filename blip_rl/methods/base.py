"""The interface every continual method implements, and the rollout Fisher they share.

A method is a small plugin (as in Avalanche) that the continual loop calls at fixed points:

* ``setup(net)`` once, when the network exists;
* ``states_to_keep()``: how many of a game's last training states ``after_game`` will read;
* ``reserved_steps(steps_per_game)``: env steps of a game's budget the method keeps for itself
  after the main training (e.g. PackNet's retraining after pruning); the loop trains the rest
  first;
* ``before_game(ctx)`` when a game starts (or resumes), after its PPO learner is built;
* ``extra_loss(ctx)`` inside every PPO minibatch (a regulariser such as EWC's), or ``None``;
* ``after_update(ctx)`` after every PPO update (e.g. re-apply masks);
* ``after_game(ctx)`` when the main training of a game is done (estimate Fisher, freeze,
  prune...); it may spend its reserved steps with ``ctx.train(steps, lr_scale)``;
* ``state_dict()`` / ``load_state_dict()`` for checkpoints (``--resume``).

Every hook gets the :class:`GameContext`. PPO knows nothing of methods: the loop hands it
``extra_loss``; a method may attach optimizer hooks to ``ctx.ppo.optimizer`` and asks for more
training only through ``ctx.train``, never by changing the learner's fields.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from blip_rl.policy_fisher import sampled_action_fisher
from blip_rl.validate import check_int, check_number

if TYPE_CHECKING:
    from blip_rl.atari import GameSpec
    from blip_rl.nets import ActorCritic
    from blip_rl.ppo import PPO

__all__ = [
    "ContinualMethod",
    "FinetuneConfig",
    "GameContext",
    "MethodConfig",
    "game_fisher",
    "rollout_fisher",
]


@dataclass
class MethodConfig:
    """Hyper-parameters shared by methods that use Fisher information."""

    fisher_states: int = 4096
    """States from the end of each game's training used for its Fisher estimate (the last
    rollouts; topped up with states from the current policy if the game had fewer)."""
    value_fisher_coef: float = 1.0
    """Weight of the value head's Fisher term (squared per-sample gradient of V(s), the Fisher
    of a unit-variance Gaussian) added to the policy term (squared gradient of log pi(a|s))."""
    fisher_chunk: int = 256
    """States per pass of the Fisher estimate (bounds memory)."""

    def __post_init__(self) -> None:
        check_int(self, "fisher_states", 1)
        check_number(self, "value_fisher_coef", 0.0)
        check_int(self, "fisher_chunk", 1)


@dataclass
class GameContext:
    """What a method sees of the game being learned."""

    net: ActorCritic
    ppo: PPO
    game: GameSpec
    game_index: int
    """Position in the sequence (0-based)."""
    head: int
    """The net head this game trains."""
    fisher_states: Callable[[int], torch.Tensor]
    """``fisher_states(n)``: up to the last ``n`` training states of this game, uint8
    ``(n, 4, 84, 84)``, topped up with states from the current policy when there are fewer."""
    steps_per_game: int = 0
    """The game's whole env-step budget (the method's reserved steps included)."""
    train: Callable[[int, float], int] | None = None
    """``train(steps, lr_scale)``: ``steps`` more env steps of PPO on this game, through the
    run's loop (logged, counted in the global step), with the learning rate restarting at
    ``lr_scale`` times the PPO rate and annealed to 0 over those steps; returns the env steps
    done (whole rollouts). For use in ``after_game`` within the method's reserved steps."""


@dataclass
class FinetuneConfig:
    """Plain fine-tuning has no settings of its own."""


class ContinualMethod:
    """Base class: plain fine-tuning (every hook does nothing)."""

    name: ClassVar[str] = "finetune"
    config_class: ClassVar[type] = FinetuneConfig
    needs_blip_layers: ClassVar[bool] = False

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.config_class()

    def setup(self, net: ActorCritic) -> None:
        """Called once with the network, before any game."""

    def states_to_keep(self) -> int:
        """How many of a game's last training states the method's ``after_game`` reads through
        ``ctx.fisher_states`` (the loop copies that many from its rollouts): a Fisher-based
        method's ``fisher_states``, 0 otherwise."""
        return self.config.fisher_states if isinstance(self.config, MethodConfig) else 0

    def reserved_steps(self, steps_per_game: int) -> int:
        """Env steps of a game's budget (``steps_per_game``) kept for the method's own use in
        ``after_game`` (through ``ctx.train``); the main training gets the rest, and at least
        one rollout (the loop clamps the request). Default 0."""
        return 0

    def before_game(self, ctx: GameContext) -> None:
        """A game starts or resumes; ``ctx.ppo`` is its fresh learner."""

    def extra_loss(self, ctx: GameContext) -> torch.Tensor | None:
        """A term added to every PPO minibatch loss, or None."""
        return None

    def after_update(self, ctx: GameContext) -> None:
        """After every PPO update of the game."""

    def after_game(self, ctx: GameContext) -> dict[str, float]:
        """The game's training budget is spent. Returns scalars to log (name -> value)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (tensors allowed)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def memory_bytes_per_param(self, net: torch.nn.Module) -> float:
        """Persistent memory this method keeps per network parameter (beyond the weights)."""
        return 0.0


def rollout_fisher(
    net: ActorCritic,
    head: int,
    states: torch.Tensor,
    value_coef: float = 1.0,
    chunk_size: int = 256,
    generator: torch.Generator | None = None,
    params: Literal["blip", "all"] = "blip",
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of the BLIP parameters (``params="all"``: of every parameter) from game
    states.

    For each state an action is sampled from the current policy of ``head``; the Fisher is the
    mean over states of ``(d log pi(a|s))**2 + value_coef * (d V(s))**2`` (per-sample squared
    gradients, term by term). Computed in float32, one forward per chunk.
    """
    device = next(net.parameters()).device
    # Actions are drawn on the generator's device (the CPU for a CPU generator): the same seed
    # draws the same actions whether the net runs on a CPU or a GPU.
    draw_on = generator.device if generator is not None else device

    def sample(chunk: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(net(chunk, head)[0].float(), -1).to(draw_on)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(device)

    def loglik(m: torch.nn.Module, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        logits, value = m(obs, head)
        logp = torch.log_softmax(logits.float(), -1).gather(1, act[:, None]).squeeze(1)
        return torch.stack([logp, value.float()], 1)

    return sampled_action_fisher(
        net,
        states.to(device),
        sample,
        loglik,
        value_coef=value_coef,
        chunk_size=chunk_size,
        params=params,
    )


def game_fisher(
    ctx: GameContext, config: MethodConfig, params: Literal["blip", "all"] = "blip"
) -> tuple[dict[str, torch.Tensor], int]:
    """The Fisher of the game that just ended, as every Fisher-based method takes it: over the
    game's last ``config.fisher_states`` training states, with the action sampling seeded by the
    game's position (so a resumed run draws the same actions). Returns (Fisher, states used)."""
    states = ctx.fisher_states(config.fisher_states)
    # A CPU generator on purpose: the actions drawn do not depend on the net's device.
    generator = torch.Generator(device="cpu").manual_seed(1_000_003 * (ctx.game_index + 1))
    fisher = rollout_fisher(
        ctx.net,
        ctx.head,
        states,
        value_coef=config.value_fisher_coef,
        chunk_size=config.fisher_chunk,
        generator=generator,
        params=params,
    )
    return fisher, len(states)
