"""BLIP as a continual method: the constraint during each game, Fisher and freezing after it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from blip_rl.methods.base import ContinualMethod, GameContext, MethodConfig, game_fisher
from blip_rl.nets import reserve_masks
from blip_rl.quant import attach, blip_layers, blip_stats, freeze
from blip_rl.validate import check_number


@dataclass
class BlipConfig(MethodConfig):
    """BLIP's settings; the bit width and the prior are the network's (``max_bits``,
    ``f_prior``)."""

    reserve: float = 0.0
    """Fraction of every trunk layer's units (the last ones) that game 1 does not use, so that
    its freeze leaves them free for the later games: the weights from those units into game
    1's units and heads stay 0, so game 1 never reads them; the later games read every unit.
    0: off (the paper's BLIP). See docs/blip.md, "Reserved units"."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self, "reserve", 0.0, 0.9)


class BlipMethod(ContinualMethod):
    """Bit-level information preserving (Shi et al., CVPR 2021).

    During a game the BLIP constraint is attached to the PPO optimizer (it runs after every
    Adam step). After the game, the Fisher information of the policy and value terms over the
    game's last training states decides how many leading bits of every parameter freeze. All
    of BLIP's state lives in the network's buffers, so the method itself keeps nothing.

    With ``reserve`` > 0, a column of units is set apart (:func:`~blip_rl.nets.reserve_masks`)
    for the games after the first: the weights that would carry it into game 1's units and
    heads (head 0: the loop gives game 1 the first head) start at 0 and get no gradient, ever,
    so game 1's outputs never depend on it. The column's own weights get no gradient during
    game 1 (nothing reads it), hence no Fisher and no frozen bits, and learn freely from game 2.
    """

    name: ClassVar[str] = "blip"
    config_class: ClassVar[type] = BlipConfig
    needs_blip_layers: ClassVar[bool] = True

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._handle: Any = None
        self._keep: dict[str, torch.Tensor] = {}
        self._grad_hooks: list[Any] = []

    def setup(self, net: torch.nn.Module) -> None:
        if not any(True for _ in blip_layers(net)):
            raise ValueError("the blip method needs a network with BLIP layers (net.blip=true)")
        for h in self._grad_hooks:
            h.remove()
        self._grad_hooks = []
        self._keep = {}
        if self.config.reserve > 0:
            params = dict(net.named_parameters())
            masks = reserve_masks(net, self.config.reserve, heads=[0])  # type: ignore[arg-type]
            self._keep = {n: keep.to(params[n].device) for n, keep in masks.items()}
            for name, keep in self._keep.items():
                self._grad_hooks.append(params[name].register_hook(lambda g, k=keep: g * k))

    def before_game(self, ctx: GameContext) -> None:
        if self._keep:
            if ctx.game_index == 0 and ctx.head != 0:
                raise ValueError("blip reserve: game 1 must train head 0")
            params = dict(ctx.net.named_parameters())
            with torch.no_grad():
                for name, keep in self._keep.items():
                    if ctx.game_index == 0:
                        params[name].masked_fill_(~keep, 0.0)
                    elif bool(params[name].detach()[~keep].any()):
                        # A branch whose game 1 was trained without this reserve.
                        raise ValueError(
                            f"blip reserve {self.config.reserve}: {name} reads the reserved "
                            "units, so game 1 was not trained with this reserve"
                        )
        if self._handle is not None:
            self._handle.remove()
        self._handle = attach(ctx.ppo.optimizer, ctx.net)

    def after_game(self, ctx: GameContext) -> dict[str, float]:
        fisher, n_states = game_fisher(ctx, self.config)
        for name, keep in self._keep.items():  # weights held at 0 by design carry nothing
            fisher[name] = fisher[name] * keep.to(fisher[name].device)
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
