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
paper's RL runs use ``lambda = 5000`` (the presets' default); see ``docs/methods.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from blip_rl.errors import UsageError
from blip_rl.methods.base import ContinualMethod, GameContext, MethodConfig

__all__ = [
    "EwcConfig",
    "EwcMethod",
    "OnlineEwcConfig",
    "OnlineEwcMethod",
    "parameter_fisher",
    "policy_fisher",
]

LogLikelihood = Callable[..., torch.Tensor]


# ------------------------------------------------------------------------------------ Fisher
class _Fallback(Exception):
    """The layerwise path cannot handle this model; use torch.func."""


def parameter_fisher(
    model: nn.Module,
    log_likelihood: LogLikelihood,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    chunk_size: int = 256,
    term_weights: Sequence[float] | None = None,
    method: str = "auto",
) -> dict[str, torch.Tensor]:
    """Mean squared per-sample gradient of ``log_likelihood`` for every trainable parameter.

    The plain-layer counterpart of :func:`blip_rl.fisher.estimate_fisher` (which covers BLIP
    parameters only), with the same arguments: ``log_likelihood(model, *batch)`` returns
    ``(batch,)`` or ``(batch, K)`` terms, each entry depending on its own sample only; the
    result is ``sum_k w_k * mean_samples(g_k ** 2)``.

    ``method="layerwise"`` (what ``"auto"`` uses when it can): one backward per chunk and term
    to the outputs of every ``nn.Linear`` / ``nn.Conv2d`` (BLIP layers included), then per-layer
    sums of squared per-sample gradients (``(G*G)^T (X*X)`` for a linear layer, the per-sample
    product of output gradients and unfolded inputs for a convolution). ``"vmap"``:
    ``torch.func.vmap(grad)`` over all parameters, chunked (general, slower).

    Returns ``{name: float32 tensor}`` for every parameter with ``requires_grad``, keyed as in
    ``model.named_parameters()``; parameters the forward never used get zeros.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} is not accepted: use an integer >= 1")
    if method not in ("auto", "layerwise", "vmap"):
        raise ValueError(f"method={method!r} is not accepted: use 'auto', 'layerwise' or 'vmap'")
    tensors = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if not tensors or any(t.shape[0] != tensors[0].shape[0] for t in tensors):
        raise ValueError("parameter_fisher(): inputs must be tensors with one common batch size")
    total = int(tensors[0].shape[0])
    if total == 0:
        raise ValueError("parameter_fisher(): inputs hold no samples")
    if method in ("auto", "layerwise"):
        try:
            return _layerwise(model, log_likelihood, tensors, chunk_size, total, term_weights)
        except _Fallback:
            if method == "layerwise":
                raise
    return _vmap(model, log_likelihood, tensors, chunk_size, total, term_weights)


def _as_terms(out: torch.Tensor, batch: int) -> torch.Tensor:
    if out.dim() not in (1, 2) or out.shape[0] != batch:
        raise ValueError(
            "log_likelihood must return one value (or one row of K terms) per sample, "
            f"got shape {tuple(out.shape)} for {batch} samples"
        )
    return out if out.dim() == 2 else out[:, None]


def _weights(term_weights: Sequence[float] | None, k: int) -> list[float]:
    if term_weights is None:
        return [1.0] * k
    if len(term_weights) != k or any(not w >= 0 for w in term_weights):
        raise ValueError(f"term_weights={list(term_weights)!r}: use {k} weights >= 0")
    return [float(w) for w in term_weights]


def _layerwise(
    model: nn.Module,
    log_likelihood: LogLikelihood,
    tensors: tuple[torch.Tensor, ...],
    chunk_size: int,
    total: int,
    term_weights: Sequence[float] | None,
) -> dict[str, torch.Tensor]:
    layers: list[tuple[str, nn.Module]] = []
    covered: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            if isinstance(module, nn.Conv2d) and (
                module.groups != 1
                or module.padding_mode != "zeros"
                or isinstance(module.padding, str)
            ):
                raise _Fallback(name)
            layers.append((name, module))
            for p, _ in module.named_parameters(recurse=False):
                covered.add(f"{name}.{p}" if name else p)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(trainable) - covered:
        raise _Fallback("parameters outside Linear/Conv2d layers")
    acc = {
        n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in trainable.items()
    }
    captured: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            captured.setdefault(name, []).append((args[0].detach(), output))

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in layers]
    try:
        for start in range(0, total, chunk_size):
            chunk = tuple(t[start : start + chunk_size] for t in tensors)
            captured.clear()
            with torch.enable_grad():
                ll = _as_terms(log_likelihood(model, *chunk), chunk[0].shape[0])
                weights = _weights(term_weights, ll.shape[1])
                used = [(n, m) for n, m in layers if n in captured]
                if any(len(captured[n]) != 1 for n, _ in used):
                    raise _Fallback("a layer ran more than once in one forward")
                outs = [captured[n][0][1] for n, _ in used]
                live = [i for i, o in enumerate(outs) if o.requires_grad]
                for k, w in enumerate(weights):
                    grads = torch.autograd.grad(
                        ll[:, k].sum(),
                        [outs[i] for i in live],
                        retain_graph=k < len(weights) - 1,
                        allow_unused=True,
                    )
                    for i, g in zip(live, grads, strict=True):
                        if g is None:
                            continue
                        name, module = used[i]
                        x = captured[name][0][0].float()
                        _accumulate(module, name, x, g.float() * math.sqrt(w), acc)
    finally:
        for h in handles:
            h.remove()
        captured.clear()
    return {n: a / total for n, a in acc.items()}


def _accumulate(
    module: nn.Module, name: str, x: torch.Tensor, g: torch.Tensor, acc: dict[str, torch.Tensor]
) -> None:
    """Add the squared per-sample gradients of ``module``'s parameters (inputs ``x``, output
    gradients ``g``, batch first) to ``acc``."""
    prefix = f"{name}." if name else ""
    weight = prefix + "weight"
    bias = prefix + "bias" if getattr(module, "bias", None) is not None else None
    if isinstance(module, nn.Linear):
        if x.dim() == 2:
            if weight in acc:
                acc[weight] += (g * g).t() @ (x * x)
            if bias in acc:
                acc[bias] += (g * g).sum(0)
        else:  # (batch, ..., features): a sample's gradient sums over the middle dims
            xb = x.reshape(x.shape[0], -1, x.shape[-1])
            gb = g.reshape(g.shape[0], -1, g.shape[-1])
            if weight in acc:
                acc[weight] += torch.einsum("bto,bti->boi", gb, xb).pow(2).sum(0)
            if bias in acc:
                acc[bias] += gb.sum(1).pow(2).sum(0)
        return
    assert isinstance(module, nn.Conv2d)
    gb = g.reshape(g.shape[0], g.shape[1], -1)  # (B, O, L)
    if weight in acc:
        cols = F.unfold(
            x,
            module.kernel_size,
            dilation=module.dilation,
            padding=module.padding,  # type: ignore[arg-type]
            stride=module.stride,
        )  # (B, C*kh*kw, L)
        per_sample = torch.bmm(gb, cols.transpose(1, 2))  # (B, O, C*kh*kw)
        acc[weight] += per_sample.pow(2).sum(0).view(acc[weight].shape)
    if bias in acc:
        acc[bias] += gb.sum(2).pow(2).sum(0)


class _Call(nn.Module):
    def __init__(self, model: nn.Module, fn: LogLikelihood) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        return self.fn(self.model, *batch)


def _vmap(
    model: nn.Module,
    log_likelihood: LogLikelihood,
    tensors: tuple[torch.Tensor, ...],
    chunk_size: int,
    total: int,
    term_weights: Sequence[float] | None,
) -> dict[str, torch.Tensor]:
    named = dict(model.named_parameters())
    theta = {n: p.detach() for n, p in named.items() if p.requires_grad}
    rest = {n: p.detach() for n, p in named.items() if not p.requires_grad}
    rest.update(dict(model.named_buffers()))
    wrapper = _Call(model, log_likelihood)
    with torch.no_grad():
        first = _as_terms(log_likelihood(model, *(t[:1] for t in tensors)), 1)
    weights = _weights(term_weights, first.shape[1])

    def one(th: dict[str, torch.Tensor], k: int, *sample: torch.Tensor) -> torch.Tensor:
        state = {f"model.{n}": v for n, v in {**rest, **th}.items()}
        out = functional_call(wrapper, state, tuple(s.unsqueeze(0) for s in sample))
        return _as_terms(out, 1)[0, k]

    acc = {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in theta.items()}
    for k, w in enumerate(weights):
        per_sample = vmap(
            grad(lambda th, *s, k=k: one(th, k, *s)),
            in_dims=(None, *([0] * len(tensors))),
            randomness="different",
        )
        for start in range(0, total, chunk_size):
            grads = per_sample(theta, *(t[start : start + chunk_size] for t in tensors))
            for n in acc:
                acc[n] += w * grads[n].float().pow(2).sum(0)
    return {n: a / total for n, a in acc.items()}


def policy_fisher(
    net: nn.Module,
    head: int,
    states: torch.Tensor,
    value_coef: float = 1.0,
    chunk_size: int = 256,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of *every* parameter of an actor-critic from game states.

    As :func:`blip_rl.methods.rollout_fisher` (actions sampled from the policy of ``head``; the
    mean of ``(d log pi(a|s))**2 + value_coef * (d V(s))**2``), but for all parameters of plain
    or BLIP layers, via :func:`parameter_fisher`. On a plain net and a BLIP net with the same
    weights both give the same numbers for the BLIP parameters.
    """
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            actions = torch.cat(
                [
                    torch.multinomial(
                        torch.softmax(net(chunk, head)[0].float(), -1), 1, generator=generator
                    ).squeeze(1)
                    for chunk in states.split(chunk_size)
                ]
            )

        def loglik(m: nn.Module, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
            logits, value = m(obs, head)
            logp = torch.log_softmax(logits.float(), -1).gather(1, act[:, None]).squeeze(1)
            return torch.stack([logp, value.float()], 1)

        return parameter_fisher(
            net, loglik, (states, actions), chunk_size=chunk_size, term_weights=[1.0, value_coef]
        )
    finally:
        net.train(was_training)


# ----------------------------------------------------------------------------------- methods
@dataclass
class EwcConfig(MethodConfig):
    """EWC's settings (and the Fisher settings shared with BLIP: ``fisher_states``,
    ``value_fisher_coef``, ``fisher_chunk``)."""

    ewc_lambda: float = 5000.0
    """Strength of the EWC penalty (lambda/2) * sum F (theta - anchor)^2; the BLIP paper's RL
    runs use 5000."""

    def __post_init__(self) -> None:
        if not (isinstance(self.ewc_lambda, int | float) and self.ewc_lambda >= 0):
            raise UsageError(f"invalid --ewc-lambda {self.ewc_lambda!r}; expected a number >= 0")
        if isinstance(self.fisher_states, bool) or not (
            isinstance(self.fisher_states, int) and self.fisher_states >= 1
        ):
            raise UsageError(
                f"invalid --fisher-states {self.fisher_states!r}; expected an integer >= 1"
            )
        if not self.value_fisher_coef >= 0:
            raise UsageError(
                f"invalid --value-fisher-coef {self.value_fisher_coef!r}; expected a number >= 0"
            )
        if isinstance(self.fisher_chunk, bool) or not (
            isinstance(self.fisher_chunk, int) and self.fisher_chunk >= 1
        ):
            raise UsageError(
                f"invalid --fisher-chunk {self.fisher_chunk!r}; expected an integer >= 1"
            )


@dataclass
class OnlineEwcConfig(EwcConfig):
    """Online EWC's settings: EWC's plus the decay of the running Fisher."""

    ewc_gamma: float = 1.0
    """Decay of the running Fisher: F <- gamma * F + F_game after each game (1: no decay)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.ewc_gamma, int | float) and 0 <= self.ewc_gamma <= 1):
            raise UsageError(f"invalid --ewc-gamma {self.ewc_gamma!r}; expected a number in [0, 1]")


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
        self._generator = torch.Generator()

    # ---------------------------------------------------------------------------- hooks
    def setup(self, net: nn.Module) -> None:
        self.params = dict(net.named_parameters())

    def extra_loss(self) -> torch.Tensor:
        """``(lambda / 2) * sum_terms sum_i F_i * (theta_i - anchor_i) ** 2`` (0 before the
        first game ends)."""
        total: torch.Tensor | None = None
        for fisher, anchor in self.terms:
            for name, f in fisher.items():
                p = self.params[name]
                term = (f * (p - anchor[name]).pow(2)).sum()
                total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return 0.5 * self.config.ewc_lambda * total

    def after_game(self, ctx: GameContext) -> dict[str, float]:
        states = ctx.fisher_states(self.config.fisher_states)
        self._generator.manual_seed(1_000_003 * (ctx.game_index + 1))
        fisher = policy_fisher(
            ctx.net,
            ctx.head,
            states,
            value_coef=self.config.value_fisher_coef,
            chunk_size=self.config.fisher_chunk,
            generator=self._generator,
        )
        fisher = {n: f for n, f in fisher.items() if bool((f != 0).any())}
        self._store(fisher)
        self.game_indices.append(ctx.game_index)
        values = torch.cat([f.flatten() for f in fisher.values()]) if fisher else torch.zeros(1)
        return {
            "fisher_states": float(len(states)),
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
