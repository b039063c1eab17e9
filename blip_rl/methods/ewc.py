"""Elastic weight consolidation (EWC) and online EWC as continual methods.

EWC (Kirkpatrick et al., PNAS 2017) keeps, after every game ``g``, the weights ``theta*_g`` it
ended with (the *anchor*) and the diagonal Fisher information ``F_g`` of its policy, and adds to
every later PPO minibatch loss the penalty

    (lambda / 2) * sum_g sum_i F_g,i * (theta_i - theta*_g,i) ** 2

over every parameter of the network (the trunk and the heads; a head that a game never ran has
zero Fisher for that game and is not stored). Memory: one anchor and one Fisher per game, 8 bytes
per parameter per game in float32.

Online EWC (Schwarz et al., ICML 2018, "Progress & Compress") keeps one running Fisher and one
anchor: after game ``g``, ``F <- gamma * F + F_g`` and ``theta* <- theta_g``; the penalty is
``(lambda / 2) * sum_i F_i * (theta_i - theta*_i) ** 2``. Memory: 8 bytes per parameter, whatever
the number of games.

The Fisher is estimated as BLIP's is (:func:`blip_rl.methods.rollout_fisher`): over the game's
last ``fisher_states`` training states, an action sampled from the current policy for each, the
mean of the squared per-sample gradients of ``log pi(a|s)`` plus ``value_fisher_coef`` times
those of the value prediction (a unit-variance Gaussian log-likelihood). Here it covers *every*
parameter of ordinary ``nn.Linear`` / ``nn.Conv2d`` layers (the baselines use the plain network,
``[net] blip = false``), computed layer by layer without materialising per-sample gradients:
:func:`parameter_fisher`.

Units of lambda: this project's Fisher is the true (per-sample) diagonal Fisher. The BLIP
paper's RL runs use ``lambda = 5000`` with a Fisher of squared gradients of 62-sample batch means,
about ``62**2 = 3844`` times smaller than ours; the same stiffness here is ``5000 / 3844 ~= 1.3``,
the default (see ``docs/methods.md``).

Devices: every tensor the method creates (Fisher, anchors, the zero penalty before the first game)
lives on the device of the parameter it belongs to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from blip_rl.fisher import estimate_fisher
from blip_rl.methods.base import (
    ContinualMethod,
    GameContext,
    MethodConfig,
    game_fisher,
    rollout_fisher,
)
from blip_rl.validate import check_number

__all__ = [
    "REFERENCE_FISHER_SCALE",
    "REFERENCE_LAMBDA",
    "EwcConfig",
    "EwcMethod",
    "OnlineEwcConfig",
    "OnlineEwcMethod",
    "parameter_fisher",
    "policy_fisher",
]

LogLikelihood = Callable[..., torch.Tensor]

REFERENCE_LAMBDA = 5000.0
"""EWC's lambda in the BLIP paper's RL runs (its own Fisher units)."""
REFERENCE_FISHER_SCALE = 62.0**2
"""Our per-sample Fisher over the reference's (squared gradients of 62-sample batch means)."""


# ------------------------------------------------------------------------------------ Fisher
def parameter_fisher(
    model: nn.Module,
    log_likelihood: LogLikelihood,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    chunk_size: int = 256,
    term_weights: Sequence[float] | None = None,
    method: Literal["auto", "layerwise", "vmap"] = "auto",
) -> dict[str, torch.Tensor]:
    """:func:`blip_rl.estimate_fisher` over every trainable parameter (``params="all"``): plain
    ``nn.Linear`` / ``nn.Conv2d`` layers included, as EWC on the plain network needs."""
    return estimate_fisher(
        model,
        log_likelihood,
        inputs,
        chunk_size=chunk_size,
        term_weights=term_weights,
        method=method,
        params="all",
    )


def policy_fisher(
    net: nn.Module,
    head: int,
    states: torch.Tensor,
    value_coef: float = 1.0,
    chunk_size: int = 256,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """:func:`blip_rl.methods.rollout_fisher` over *every* parameter of an actor-critic
    (policy term plus ``value_coef`` times the value term, actions sampled from ``head``)."""
    return rollout_fisher(
        net,  # type: ignore[arg-type]
        head,
        states,
        value_coef=value_coef,
        chunk_size=chunk_size,
        generator=generator,
        params="all",
    )


# ----------------------------------------------------------------------------------- methods
@dataclass
class EwcConfig(MethodConfig):
    """EWC's settings (and the Fisher settings shared with BLIP: ``fisher_states``,
    ``value_fisher_coef``, ``fisher_chunk``)."""

    ewc_lambda: float = REFERENCE_LAMBDA / REFERENCE_FISHER_SCALE
    """Strength of the EWC penalty (lambda/2) * sum F (theta - anchor)^2, in this project's
    (per-sample) Fisher units: the BLIP paper's RL value 5000 divided by 62**2 (~1.3)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self, "ewc_lambda", 0.0)


@dataclass
class OnlineEwcConfig(EwcConfig):
    """Online EWC's settings: EWC's plus the decay of the running Fisher."""

    ewc_gamma: float = 1.0
    """Decay of the running Fisher: F <- gamma * F + F_game after each game (1: no decay)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self, "ewc_gamma", 0.0, 1.0)


_Tensors = dict[str, torch.Tensor]


class EwcMethod(ContinualMethod):
    """EWC: one anchor and one Fisher per finished game; a quadratic penalty on every minibatch.

    State (checkpointed, restored by ``--resume``): for each finished game its index, and the
    Fisher and anchor of each parameter the game's Fisher touched (float32).
    """

    name: ClassVar[str] = "ewc"
    config_class: ClassVar[type] = EwcConfig
    needs_blip_layers: ClassVar[bool] = False

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.params: dict[str, nn.Parameter] = {}
        self.terms: list[tuple[_Tensors, _Tensors]] = []
        """(fisher, anchor) per stored term: one per game (EWC) or one running term (online)."""
        self.game_indices: list[int] = []
        """Sequence positions of the games whose Fisher is stored (or folded in, online)."""

    # ---------------------------------------------------------------------------- hooks
    def setup(self, net: nn.Module) -> None:
        self.params = dict(net.named_parameters())

    def extra_loss(self, ctx: GameContext | None = None) -> torch.Tensor:
        """``(lambda / 2) * sum_terms sum_i F_i * (theta_i - anchor_i) ** 2`` (0, on the
        network's device, before the first game ends). ``ctx`` is not needed."""
        total: torch.Tensor | None = None
        for fisher, anchor in self.terms:
            for name, f in fisher.items():
                p = self.params[name]
                term = (f * (p - anchor[name]).pow(2)).sum()
                total = term if total is None else total + term
        if total is None:
            device = next(iter(self.params.values())).device if self.params else None
            return torch.zeros((), device=device)
        return 0.5 * self.config.ewc_lambda * total

    def after_game(self, ctx: GameContext) -> dict[str, float]:
        fisher, n_states = game_fisher(ctx, self.config, params="all")
        fisher = {n: f for n, f in fisher.items() if bool((f != 0).any())}
        self._store(fisher)
        self.game_indices.append(ctx.game_index)
        values = (
            torch.cat([f.flatten() for f in fisher.values()])
            if fisher
            else torch.zeros(1, device=next(ctx.net.parameters()).device)
        )
        return {
            "fisher_states": float(n_states),
            "fisher_mean": float(values.mean()),
            "fisher_max": float(values.max()),
            "memory_bytes_per_param": self.memory_bytes_per_param(ctx.net),
        }

    def _anchor(self, names: Any) -> _Tensors:
        """A float32 copy of the current weights of the parameters ``names``."""
        return {n: self.params[n].detach().float().clone() for n in names}

    def _store(self, fisher: _Tensors) -> None:
        """Keep this game's Fisher with the current weights as its anchor."""
        self.terms.append((fisher, self._anchor(fisher)))

    # ---------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.name,
            "game_indices": list(self.game_indices),
            "terms": [{"fisher": f, "anchor": a} for f, a in self.terms],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.name:
            raise ValueError(f"method state is for {state.get('kind')!r}, not {self.name!r}")
        terms = [(dict(t["fisher"]), dict(t["anchor"])) for t in state["terms"]]
        for fisher, anchor in terms:
            for name, f in fisher.items():
                p = self.params.get(name)
                if p is None or f.shape != p.shape or anchor[name].shape != p.shape:
                    raise ValueError(f"method state does not fit the network at {name!r}")
        self.terms = [
            ({n: f.to(self.params[n].device) for n, f in fi.items()},
             {n: a.to(self.params[n].device) for n, a in an.items()})
            for fi, an in terms
        ]  # fmt: skip
        self.game_indices = [int(i) for i in state["game_indices"]]

    def memory_bytes_per_param(self, net: nn.Module) -> float:
        """Bytes of stored Fisher and anchor tensors over the network's parameter count:
        about 8 per game for EWC, about 8 in all for online EWC."""
        stored = sum(
            t.numel() * t.element_size() for f, a in self.terms for t in (*f.values(), *a.values())
        )
        return stored / max(sum(p.numel() for p in net.parameters()), 1)


class OnlineEwcMethod(EwcMethod):
    """Online EWC: one running Fisher ``F <- gamma * F + F_game`` and the latest anchor."""

    name: ClassVar[str] = "online-ewc"
    config_class: ClassVar[type] = OnlineEwcConfig

    def _store(self, fisher: _Tensors) -> None:
        """Fold this game's Fisher into the running one; the anchor becomes the current
        weights of every parameter the running Fisher covers."""
        gamma = float(self.config.ewc_gamma)
        merged = {n: gamma * f for n, f in self.terms[0][0].items()} if self.terms else {}
        for n, f in fisher.items():
            merged[n] = merged[n] + f if n in merged else f
        self.terms = [(merged, self._anchor(merged))]
