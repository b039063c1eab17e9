"""PackNet (Mallya and Lazebnik, CVPR 2018) as a continual method.

Every weight of the network's ``nn.Linear`` / ``nn.Conv2d`` layers has an *owner*: 0 while it is
free, ``k + 1`` once game ``k`` (0-based position in the sequence) has kept it. One uint8 per
weight (1 byte per parameter; at most 254 games).

* **Training game k**: only free weights learn. A gradient hook on every weight zeroes the
  gradient of owned entries before clipping and Adam, and each game starts with a fresh Adam
  (moments zero), so owned weights stay bit-for-bit unchanged. Biases learn only in the first
  game that trains their layer and are frozen afterwards (as in the paper, where biases are fixed
  after the first task).
* **After game k** (``after_game``): in every layer that game ``k`` ran (the trunk and its
  heads), the free weights with the largest magnitude are kept (owner ``k + 1``); the other
  ``packnet_prune`` fraction of them is set to 0 and stays free for later games. Then a short
  retraining (the paper's fine-tuning after pruning): ``packnet_retrain_frac`` times the game's
  PPO updates, each a ``collect()`` and ``update()`` of the game's own PPO learner, with the
  learning rate starting at ``packnet_retrain_lr`` times the PPO learning rate and annealed to 0.
  Only the kept weights learn; pruned ones are held at exactly 0 (an optimizer step post-hook).
  These env steps come on top of ``steps_per_game``; they are not in the run's global step
  (``after_game`` reports them as ``retrain_steps``).
* **Using game j** (evaluation, or any forward with game j's head): the network computes with
  the weights owned by games ``0..j`` only; later games' weights (and weights still being
  trained by the current game, when the forward is for another game's head) are masked to 0 for
  that forward. The head index identifies the game: the mask follows the last sequence position
  that trained that head. With ``--shared-head`` every game uses head 0, so PackNet cannot pick a
  game's mask and earlier games see later games' weights.

The continual loop has no dedicated pruning or masking hook; everything runs in the existing
hooks: masks via tensor and module hooks registered in ``setup``/``before_game``, pruning and
retraining inside ``after_game``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from blip_rl.errors import UsageError
from blip_rl.methods.base import ContinualMethod, GameContext

__all__ = ["PackNetConfig", "PackNetMethod"]

_MAX_GAMES = 254


@dataclass
class PackNetConfig:
    """PackNet's settings."""

    packnet_prune: float = 0.5
    """Fraction of the weights a game trained that is pruned (set to 0 and released to later
    games) after the game; the rest is kept and frozen for it."""
    packnet_retrain_frac: float = 0.1
    """Length of the retraining after pruning, as a fraction of the game's PPO updates (at least
    one update when > 0; 0 disables it)."""
    packnet_retrain_lr: float = 0.1
    """Learning rate at the start of the retraining, as a fraction of the PPO learning rate
    (annealed linearly to 0 over the retraining)."""

    def __post_init__(self) -> None:
        def check(name: str, value: Any, ok: bool, accepted: str) -> None:
            if isinstance(value, bool) or not isinstance(value, int | float) or not ok:
                raise UsageError(
                    f"invalid --{name.replace('_', '-')} {value!r}; expected {accepted}"
                )

        p, r, lr = self.packnet_prune, self.packnet_retrain_frac, self.packnet_retrain_lr
        check("packnet_prune", p, 0 <= p < 1, "a fraction in [0, 1)")
        check("packnet_retrain_frac", r, 0 <= r <= 10, "a number in [0, 10]")
        check("packnet_retrain_lr", lr, 0 < lr <= 1, "a fraction in (0, 1]")


class PackNetMethod(ContinualMethod):
    """PackNet: prune after each game, freeze the kept weights, retrain briefly; each game
    computes with its own and earlier games' weights only.

    State (checkpointed, restored by ``--resume``): the owner of every weight, which biases are
    frozen, and the last sequence position that trained each head.
    """

    name: ClassVar[str] = "packnet"
    config_class: ClassVar[type] = PackNetConfig
    needs_blip_layers: ClassVar[bool] = False

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.layers: dict[str, nn.Linear | nn.Conv2d] = {}
        self.owner: dict[str, torch.Tensor] = {}
        """Layer name -> uint8 owner of each weight (0 free, k+1 kept by game k)."""
        self.frozen_bias: set[str] = set()
        """Layers whose bias no longer learns."""
        self.head_position: dict[int, int] = {}
        """Head -> last sequence position that trained it."""
        self.training_head: int | None = None
        """The head whose game is training now (its forward may use free weights)."""
        self._trainable: dict[str, torch.Tensor | None] = {}
        self._phase = "idle"  # "train": free weights learn; "retrain": the game's kept ones
        self._position = -1
        self._free_dirty = False
        self._top = 0  # the largest owner id
        self._hooks: list[RemovableHandle] = []
        self._step_hook: RemovableHandle | None = None
        self._saved: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------------------ setup
    def setup(self, net: nn.Module) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self.layers = {
            name: m for name, m in net.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)
        }
        if not self.layers:
            raise ValueError("packnet needs a network with nn.Linear / nn.Conv2d layers")
        self.owner = {
            name: torch.zeros(m.weight.shape, dtype=torch.uint8, device=m.weight.device)
            for name, m in self.layers.items()
        }
        for name, m in self.layers.items():
            self._hooks.append(m.weight.register_hook(self._weight_grad_hook(name)))
            if m.bias is not None:
                self._hooks.append(m.bias.register_hook(self._bias_grad_hook(name)))
        self._hooks.append(net.register_forward_pre_hook(self._mask_weights, with_kwargs=True))
        self._hooks.append(net.register_forward_hook(self._restore_weights, always_call=True))

    def _weight_grad_hook(self, name: str) -> Any:
        def hook(g: torch.Tensor) -> torch.Tensor:
            mask = self._trainable.get(name)
            return g if mask is None else g * mask

        return hook

    def _bias_grad_hook(self, name: str) -> Any:
        def hook(g: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(g) if name in self.frozen_bias else g

        return hook

    # -------------------------------------------------------------------- masks at use
    def _allowed(self, head: int) -> dict[str, torch.Tensor] | None:
        """Per layer, the weights a forward with ``head`` may use; None when all of them."""
        limit = self.head_position.get(head)
        with_free = head == self.training_head
        later = limit is not None and self._top > limit + 1
        if not later and (with_free or not self._free_dirty):
            return None
        hi = _MAX_GAMES + 1 if limit is None else limit + 1
        out = {}
        for name, o in self.owner.items():
            ok = (o >= 1) & (o <= hi)
            out[name] = ok | (o == 0) if with_free else ok
        return out

    def _mask_weights(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        head = args[1] if len(args) > 1 else kwargs.get("head")
        if not isinstance(head, int) or self._saved:
            return
        allowed = self._allowed(head)
        if allowed is None:
            return
        for name, ok in allowed.items():
            w = self.layers[name].weight
            self._saved[name] = w.data
            w.data = w.data * ok

    def _restore_weights(self, module: nn.Module, args: Any, output: Any) -> None:
        for name, data in self._saved.items():
            self.layers[name].weight.data = data
        self._saved = {}

    # ------------------------------------------------------------------------------ hooks
    def before_game(self, ctx: GameContext) -> None:
        if ctx.game_index >= _MAX_GAMES:
            raise UsageError(
                f"packnet supports at most {_MAX_GAMES} games; got game {ctx.game_index + 1}"
            )
        self._position = ctx.game_index
        self.training_head = ctx.head
        self.head_position[ctx.head] = ctx.game_index
        self._free_dirty = True
        self._set_phase("train", ctx)
        if self._step_hook is not None:
            self._step_hook.remove()
        self._step_hook = ctx.ppo.optimizer.register_step_post_hook(self._after_step)

    def _set_phase(self, phase: str, ctx: GameContext) -> None:
        self._phase = phase
        used = self._used_layers(ctx)
        self._trainable = {}
        for name, o in self.owner.items():
            if phase == "train":
                self._trainable[name] = o == 0
            elif phase == "retrain" and name in used:
                self._trainable[name] = o == self._position + 1
            else:
                self._trainable[name] = torch.zeros_like(o, dtype=torch.bool)

    def _used_layers(self, ctx: GameContext) -> set[str]:
        """Layers a forward with the game's head runs: everything but the other heads."""
        other = {
            f"heads.{kind}.{k}"
            for kind in ("policy", "value")
            for k in range(ctx.net.num_heads)
            if k != ctx.head
        }
        return {n for n in self.layers if n not in other}

    @torch.no_grad()
    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._phase == "retrain":  # pruned weights stay exactly 0
            for name, o in self.owner.items():
                w = self.layers[name].weight
                w.masked_fill_(o == 0, 0.0)

    def after_game(self, ctx: GameContext) -> dict[str, float]:
        kept, pruned = self._prune(ctx)
        self._free_dirty = False
        steps = self._retrain(ctx)
        self._phase = "idle"
        self._trainable = {}
        self.training_head = None
        for name in self._used_layers(ctx):
            if self.layers[name].bias is not None:
                self.frozen_bias.add(name)
        if self._step_hook is not None:
            self._step_hook.remove()
            self._step_hook = None
        total = sum(o.numel() for o in self.owner.values())
        owned = sum(int((o > 0).sum()) for o in self.owner.values())
        return {
            "kept_weights": float(kept),
            "pruned_weights": float(pruned),
            "owned_frac": owned / max(total, 1),
            "retrain_steps": float(steps),
            "memory_bytes_per_param": self.memory_bytes_per_param(ctx.net),
        }

    @torch.no_grad()
    def _prune(self, ctx: GameContext) -> tuple[int, int]:
        """Keep the largest free weights of every layer the game ran; zero the rest."""
        kept = pruned = 0
        for name in sorted(self._used_layers(ctx)):
            o, w = self.owner[name], self.layers[name].weight
            free = o == 0
            n_free = int(free.sum())
            if n_free == 0:
                continue
            n_keep = n_free - int(math.floor(self.config.packnet_prune * n_free))
            mags = w.detach().abs().float().masked_fill(~free, -1.0).flatten()
            keep = torch.zeros_like(free).flatten()
            if n_keep > 0:
                keep[torch.topk(mags, n_keep, sorted=False).indices] = True
            keep = keep.view_as(free)
            o[keep] = self._position + 1
            self._top = max(self._top, self._position + 1)
            drop = free & ~keep
            w.masked_fill_(drop, 0.0)
            kept += n_keep
            pruned += int(drop.sum())
        return kept, pruned

    def _retrain(self, ctx: GameContext) -> int:
        """Short PPO retraining of the kept weights; returns the env steps it took."""
        ppo = ctx.ppo
        per_game = max(1, math.ceil(ppo.total_steps / ppo.config.batch_size))
        updates = math.ceil(self.config.packnet_retrain_frac * per_game)
        if updates == 0:
            return 0
        saved = (ppo.config, ppo.updates, ppo.total_steps, ppo.global_step)
        ppo.config = dataclasses.replace(
            ppo.config,
            learning_rate=ppo.config.learning_rate * self.config.packnet_retrain_lr,
            anneal_lr=True,
        )
        ppo.updates, ppo.total_steps = 0, updates * ppo.config.batch_size
        self._set_phase("retrain", ctx)
        try:
            for _ in range(updates):
                ppo.collect()
                ppo.update()
        finally:
            ppo.config, ppo.updates, ppo.total_steps, ppo.global_step = saved
        return updates * ppo.config.batch_size

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.name,
            "owner": {n: o.clone() for n, o in self.owner.items()},
            "frozen_bias": sorted(self.frozen_bias),
            "head_position": {int(h): int(p) for h, p in self.head_position.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.name:
            raise ValueError(f"method state is for {state.get('kind')!r}, not {self.name!r}")
        owner = state["owner"]
        if set(owner) != set(self.owner) or any(
            owner[n].shape != self.owner[n].shape for n in owner
        ):
            raise ValueError("packnet state does not fit the network's layers")
        for n, o in owner.items():
            self.owner[n].copy_(o)
        self._top = max((int(o.max()) for o in self.owner.values()), default=0)
        self.frozen_bias = set(state["frozen_bias"])
        self.head_position = {int(h): int(p) for h, p in state["head_position"].items()}

    def memory_bytes_per_param(self, net: nn.Module) -> float:
        """One owner byte per weight of the masked layers, over all parameters."""
        stored = sum(o.numel() * o.element_size() for o in self.owner.values())
        return stored / max(sum(p.numel() for p in net.parameters()), 1)
