"""BLIP as a continual method: the constraint during each game, Fisher and freezing after it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from blip_rl.methods.base import ContinualMethod, GameContext, MethodConfig, game_fisher
from blip_rl.quant import attach, blip_layers, blip_stats, freeze


@dataclass
class BlipConfig(MethodConfig):
    """BLIP's settings; the bit width and the prior are the network's (``max_bits``,
    ``f_prior``)."""


class BlipMethod(ContinualMethod):
    """Bit-level information preserving (Shi et al., CVPR 2021).

    During a game the BLIP constraint is attached to the PPO optimizer (it runs after every
    Adam step). After the game, the Fisher information of the policy and value terms over the
    game's last training states decides how many leading bits of every parameter freeze. All
    of BLIP's state lives in the network's buffers, so the method itself keeps nothing.
    """

    name: ClassVar[str] = "blip"
    config_class: ClassVar[type] = BlipConfig
    needs_blip_layers: ClassVar[bool] = True

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._handle: Any = None

    def setup(self, net: torch.nn.Module) -> None:
        if not any(True for _ in blip_layers(net)):
            raise ValueError("the blip method needs a network with BLIP layers (net.blip=true)")

    def before_game(self, ctx: GameContext) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle = attach(ctx.ppo.optimizer, ctx.net)

    def after_game(self, ctx: GameContext) -> dict[str, float]:
        fisher, n_states = game_fisher(ctx, self.config)
        freeze(ctx.net, fisher)
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        stats = blip_stats(ctx.net)
        total = sum(s.numel for s in stats)
        return {
            "fisher_states": float(n_states),
            "mean_bits": sum(s.mean_bits * s.numel for s in stats) / total,
            "frac_frozen": sum(s.frac_frozen * s.numel for s in stats) / total,
        }

    def memory_bytes_per_param(self, net: torch.nn.Module) -> float:
        stats = blip_stats(net)
        total_params = sum(p.numel() for p in net.parameters())
        return sum(s.persistent_bytes_per_param * s.numel for s in stats) / max(total_params, 1)
