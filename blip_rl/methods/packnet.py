"""PackNet (Mallya and Lazebnik, CVPR 2018) as a continual method.

Every weight of the network's ``nn.Linear`` / ``nn.Conv2d`` layers has an *owner*: 0 while it is
free, ``k + 1`` once game ``k`` (0-based position in the sequence) has kept it. One uint8 per
weight (1 byte per parameter; at most 254 games).

* **Training game k**: only free weights learn. A gradient hook on every weight zeroes the
  gradient of owned entries before clipping and Adam, and each game starts with a fresh Adam
  (moments zero), so owned weights stay bit-for-bit unchanged. Biases learn only in the first
  game that trains their layer and are frozen afterwards (as in the paper, where biases are fixed
  after the first task).
* **After game k's main training** (``after_game``): in every trunk layer, the free weights with
  the largest magnitude are kept (owner ``k + 1``); the other ``packnet_prune`` fraction of them
  is set to 0 and stays free for later games. The game's own heads are kept whole (every free
  weight becomes ``k + 1``): no other game ever runs them, so pruning them would only hurt game
  ``k``. (With a single shared head, ``--shared-head``, the head is pruned like the trunk.) Then
  the retraining (the paper's fine-tuning after pruning) of the kept weights, **inside the game's
  budget**: :meth:`PackNetMethod.reserved_steps` keeps ``packnet_retrain_frac`` of the game's
  env steps, the loop trains the rest first (whole rollouts), and ``after_game`` spends what is
  left of the game's whole-rollout budget through ``ctx.train`` (logged and counted in the
  global step like any training), the learning rate restarting at ``packnet_retrain_lr`` times
  the PPO rate and annealed to 0. Every method therefore sees the same env steps. Only the kept
  weights learn; pruned ones are held at exactly 0 (an optimizer step post-hook).
* **Using game j** (evaluation, or any forward with game j's head): the network computes with
  the weights owned by games ``0..j`` only; later games' weights (and weights still being
  trained by the current game, when the forward is for another game's head) are masked to 0 for
  that forward. The head index identifies the game: the mask follows the last sequence position
  that trained that head. With ``--shared-head`` every game uses head 0, so PackNet cannot pick a
  game's mask and earlier games see later games' weights.

The continual loop has no dedicated pruning or masking hook; everything runs in the existing
hooks: masks via tensor and module hooks registered in ``setup``/``before_game``, pruning and
retraining inside ``after_game`` (the retraining through the loop's ``ctx.train``).

Limitation: a game that comes back later in the sequence (same head) finds its head fully owned
by its first occurrence, so its second occurrence trains only the trunk's free weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from blip_rl.errors import UsageError
from blip_rl.methods.base import ContinualMethod, GameContext
from blip_rl.validate import check_number

__all__ = ["PackNetConfig", "PackNetMethod"]

_MAX_GAMES = 254


@dataclass
class PackNetConfig:
    """PackNet's settings."""

    packnet_prune: float = 0.5
    """Fraction of the weights a game trained that is pruned (set to 0 and released to later
    games) after the game; the rest is kept and frozen for it."""
    packnet_retrain_frac: float = 0.1
    """Share of the game's own env-step budget (its last PPO updates, whole rollouts) spent
    retraining the kept weights after pruning: at least one update when > 0, at least one main
    update left; 0 disables the retraining. The game's total env steps do not change."""
    packnet_retrain_lr: float = 0.1
    """Learning rate at the start of the retraining, as a fraction of the PPO learning rate
    (annealed linearly to 0 over the retraining)."""

    def __post_init__(self) -> None:
        check_number(self, "packnet_prune", 0.0, 1.0)
        if self.packnet_prune >= 1:
            raise ValueError(
                f"invalid --packnet-prune {self.packnet_prune!r}; expected a fraction in [0, 1)"
            )
        check_number(self, "packnet_retrain_frac", 0.0, 1.0)
        if self.packnet_retrain_frac >= 1:
            raise ValueError(
                f"invalid --packnet-retrain-frac {self.packnet_retrain_frac!r}; "
                "expected a fraction in [0, 1)"
            )
        check_number(self, "packnet_retrain_lr", 0.0, 1.0, low_open=True)


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
        self._game_layers: set[str] = set()
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
    def reserved_steps(self, steps_per_game: int, batch_size: int | None = None) -> int:
        """The retraining's env steps, kept from the game's own budget.

        With the PPO rollout size ``batch_size`` (``B``): the last
        ``ceil(packnet_retrain_frac * U)`` of the game's ``U = ceil(steps_per_game / B)``
        updates, at most ``U - 1`` (the main training keeps at least one), in env steps.
        Without it: ``floor(packnet_retrain_frac * steps_per_game)``; ``after_game`` then
        retrains exactly what is left of the game's whole-rollout budget either way."""
        if batch_size is None:
            return int(math.floor(self.config.packnet_retrain_frac * steps_per_game))
        updates = max(1, math.ceil(steps_per_game / batch_size))
        retrain = math.ceil(self.config.packnet_retrain_frac * updates)
        return min(retrain, updates - 1) * batch_size

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
        self._game_layers = used
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
            # only in the layers this game ran: other games' heads keep their initial weights
            for name in self._game_layers:
                o = self.owner[name]
                w = self.layers[name].weight
                w.masked_fill_(o == 0, 0.0)

    def after_game(self, ctx: GameContext) -> dict[str, float]:
        kept, pruned = self._prune(ctx)
        self._free_dirty = False
        steps = self._retrain(ctx, self._left_in_budget(ctx))
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

    def _own_heads(self, ctx: GameContext) -> set[str]:
        """The game's own head layers: used by no other game unless the net has one shared
        head."""
        if ctx.net.num_heads <= 1:
            return set()
        return {f"heads.{kind}.{ctx.head}" for kind in ("policy", "value")}

    @torch.no_grad()
    def _prune(self, ctx: GameContext) -> tuple[int, int]:
        """Keep the largest free weights of every trunk layer the game ran (and all of its own
        heads' free weights); zero the rest."""
        kept = pruned = 0
        own_heads = self._own_heads(ctx)
        for name in sorted(self._used_layers(ctx)):
            o, w = self.owner[name], self.layers[name].weight
            free = o == 0
            n_free = int(free.sum())
            if n_free == 0:
                continue
            prune = 0.0 if name in own_heads else self.config.packnet_prune
            n_keep = n_free - int(math.floor(prune * n_free))
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

    def _left_in_budget(self, ctx: GameContext) -> int:
        """Env steps of the game's whole-rollout budget (what the loop gives every method:
        ``ceil(steps_per_game / B)`` rollouts of ``B`` steps) not yet used; 0 without
        retraining."""
        if self.config.packnet_retrain_frac <= 0:
            return 0
        batch = ctx.ppo.config.batch_size
        budget = math.ceil((ctx.steps_per_game or ctx.ppo.total_steps) / batch) * batch
        return max(0, budget - ctx.ppo.global_step)

    def _retrain(self, ctx: GameContext, steps: int) -> int:
        """Retrain the kept weights for the game's reserved ``steps`` through the loop's
        ``ctx.train``; returns the env steps it took."""
        if steps <= 0:
            return 0
        if ctx.train is None:
            raise RuntimeError(
                "packnet's retraining needs the loop's ctx.train (the game's reserved steps)"
            )
        self._set_phase("retrain", ctx)
        return int(ctx.train(steps, self.config.packnet_retrain_lr))

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
