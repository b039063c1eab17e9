"""Diagonal Fisher information of BLIP parameters from per-sample gradients.

``estimate_fisher`` returns, for every BLIP parameter, the mean over samples of the squared
per-sample gradient of a per-sample log-likelihood that the caller supplies. Two ways compute the
same numbers:

* ``method="vmap"``: ``torch.func.vmap`` over ``torch.func.grad`` of the log-likelihood of one
  sample, in chunks. General, but it materialises one full gradient per sample (1.6M floats per
  state for a Nature-CNN), which is slow on a CPU.
* ``method="layerwise"``: one ordinary backward pass per chunk to the *outputs* of the BLIP layers
  (a sample's log-likelihood depends only on that sample, so the gradient of the chunk's sum
  w.r.t. a layer output is the per-sample output gradient), then the per-sample squared weight
  gradients are summed layer by layer: for a linear layer ``(G*G)^T (X*X)`` is one matmul; for a
  convolution the per-sample gradient is the product of the output gradients with the unfolded
  input, formed per chunk. No full per-sample gradient is ever held.

``method="auto"`` (default) uses the layerwise path when every BLIP layer runs exactly once per
forward (the usual case) and falls back to ``vmap`` otherwise. Tests check both agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from blip_rl.quant import BlipConv2d, BlipLinear, blip_layers, blip_parameters

__all__ = ["estimate_fisher"]

LogLikelihood = Callable[..., torch.Tensor]


class _Unsupported(Exception):
    """The layerwise path cannot handle this model; use vmap."""


def estimate_fisher(
    model: nn.Module,
    log_likelihood: LogLikelihood,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    chunk_size: int = 256,
    method: Literal["auto", "layerwise", "vmap"] = "auto",
    term_weights: Sequence[float] | None = None,
    params: Literal["blip", "all"] = "blip",
) -> dict[str, torch.Tensor]:
    """Mean squared per-sample gradient of ``log_likelihood`` for every BLIP parameter (or, with
    ``params="all"``, every trainable parameter).

    Args:
        model: a model with BLIP layers (``BlipLinear``, ``BlipConv2d``).
        log_likelihood: ``log_likelihood(model, *batch) -> Tensor[batch]``, the log-likelihood of
            each sample; entry ``i`` must depend on sample ``i`` only (no batch statistics). For a
            Fisher under the model's own distribution, sample the targets from the model first
            (e.g. actions from the policy) and pass them in ``inputs``. It may also return
            ``Tensor[batch, K]``: K log-likelihood terms from one forward pass (say a policy and
            a value term); the result is then ``sum_k w_k * mean(g_k ** 2)``, a sum of squared
            per-sample gradients term by term, not the square of their sum.
        inputs: a tensor or a sequence of tensors batched along dim 0 (states, sampled actions...).
        chunk_size: samples per pass; bounds memory.
        method: "layerwise" (fast, exact for layers used once per forward), "vmap" (torch.func,
            general) or "auto".
        term_weights: the weights ``w_k`` of the K terms (default all 1).
        params: "blip" (the BLIP parameters, for :func:`blip_rl.freeze`) or "all" (every
            parameter with ``requires_grad``, e.g. for EWC on plain layers; the layerwise path
            then covers every ``nn.Linear`` / ``nn.Conv2d`` and falls back to vmap when other
            modules hold trainable parameters).

    Returns:
        ``{name: tensor}`` keyed as in ``model.named_parameters()``, float32, one per selected
        parameter (zeros for parameters the log-likelihood does not use).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} is not accepted: use an integer >= 1")
    if method not in ("auto", "layerwise", "vmap"):
        raise ValueError(f"method={method!r} is not accepted: use 'auto', 'layerwise' or 'vmap'")
    if term_weights is not None and any(not w >= 0 for w in term_weights):
        raise ValueError(f"term_weights={list(term_weights)!r} is not accepted: use weights >= 0")
    tensors = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if not tensors or any(t.shape[0] != tensors[0].shape[0] for t in tensors):
        raise ValueError("estimate_fisher(): inputs must be tensors with one common batch size")
    total = int(tensors[0].shape[0])
    if total == 0:
        raise ValueError("estimate_fisher(): inputs hold no samples")
    if params not in ("blip", "all"):
        raise ValueError(f"params={params!r} is not accepted: use 'blip' or 'all'")
    if params == "blip":
        names = [n for n, _ in blip_parameters(model)]
        if not names:
            raise ValueError("estimate_fisher(): the model has no BLIP layers")
    else:
        names = [n for n, p in model.named_parameters() if p.requires_grad]

    if method in ("auto", "layerwise"):
        try:
            return _layerwise(
                model, log_likelihood, tensors, chunk_size, total, term_weights, params == "all"
            )
        except _Unsupported:
            if method == "layerwise":
                raise
    return _vmap(model, log_likelihood, tensors, chunk_size, total, names, term_weights)


def _chunks(tensors: tuple[torch.Tensor, ...], size: int, total: int) -> Any:
    for start in range(0, total, size):
        yield tuple(t[start : start + size] for t in tensors)


def _terms(loglik: torch.Tensor, batch: int, weights: Sequence[float] | None) -> torch.Tensor:
    """Check the log-likelihood's shape; returns it as (batch, K)."""
    if loglik.dim() not in (1, 2) or loglik.shape[0] != batch:
        raise ValueError(
            "log_likelihood must return one value (or one row of K terms) per sample, "
            f"got shape {tuple(loglik.shape)} for {batch} samples"
        )
    ll = loglik if loglik.dim() == 2 else loglik[:, None]
    if weights is not None and len(weights) != ll.shape[1]:
        raise ValueError(f"term_weights has {len(weights)} entries for {ll.shape[1]} terms")
    return ll


def _vmap(
    model: nn.Module,
    log_likelihood: LogLikelihood,
    tensors: tuple[torch.Tensor, ...],
    chunk_size: int,
    total: int,
    names: list[str],
    term_weights: Sequence[float] | None,
) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    blip = {n: params[n].detach() for n in names}
    rest = {n: p.detach() for n, p in params.items() if n not in blip}
    rest.update(dict(model.named_buffers()))
    wrapper = _Call(model, log_likelihood)
    first = tuple(t[:1] for t in tensors)
    with torch.no_grad():
        n_terms = _terms(log_likelihood(model, *first), 1, term_weights).shape[1]
    weights = list(term_weights) if term_weights is not None else [1.0] * n_terms

    def one(theta: dict[str, torch.Tensor], k: int, *sample: torch.Tensor) -> torch.Tensor:
        batch = tuple(s.unsqueeze(0) for s in sample)
        state = {f"model.{key}": v for key, v in {**rest, **theta}.items()}
        out = functional_call(wrapper, state, batch)
        return (out if out.dim() == 2 else out[:, None])[:, k].sum()

    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in blip.items()}
    for k, w in enumerate(weights):
        per_sample = vmap(
            grad(lambda th, *s, k=k: one(th, k, *s)),
            in_dims=(None, *([0] * len(tensors))),
            randomness="different",
        )
        for chunk in _chunks(tensors, chunk_size, total):
            grads = per_sample(blip, *chunk)
            for n in names:
                acc[n] += w * grads[n].float().pow(2).sum(0)
    return {n: a / total for n, a in acc.items()}


class _Call(nn.Module):
    """Wraps ``log_likelihood(model, *batch)`` so ``functional_call`` can swap the parameters."""

    def __init__(self, model: nn.Module, fn: LogLikelihood) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        return self.fn(self.model, *batch)


def _layerwise(
    model: nn.Module,
    log_likelihood: LogLikelihood,
    tensors: tuple[torch.Tensor, ...],
    chunk_size: int,
    total: int,
    term_weights: Sequence[float] | None,
    all_params: bool = False,
) -> dict[str, torch.Tensor]:
    layers: list[tuple[str, nn.Module]]
    if all_params:
        layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
        covered = {f"{n}.{p}" if n else p for n, m in layers for p in ("weight", "bias")}
        if any(p.requires_grad and n not in covered for n, p in model.named_parameters()):
            raise _Unsupported("trainable parameters outside Linear/Conv2d layers")
    else:
        layers = [(n, layer) for n, layer in blip_layers(model)]  # type: ignore[misc]
    for name, layer in layers:
        if type(layer) not in (BlipLinear, BlipConv2d, nn.Linear, nn.Conv2d):
            raise _Unsupported(f"{name}: {type(layer).__name__}")
        if isinstance(layer, nn.Conv2d) and (
            layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str)
        ):
            raise _Unsupported(f"{name}: grouped, string-padded or non-zero-padded conv")
    acc: dict[str, torch.Tensor] = {}
    for name, layer in layers:
        prefix = f"{name}." if name else ""
        for p in ("weight", "bias"):
            param = getattr(layer, p, None)
            if param is not None and param.requires_grad:
                acc[prefix + p] = torch.zeros_like(param, dtype=torch.float32)

    captured: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def make_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            captured.setdefault(name, []).append((args[0].detach(), output))

        return hook

    handles = [layer.register_forward_hook(make_hook(name)) for name, layer in layers]
    try:
        for chunk in _chunks(tensors, chunk_size, total):
            captured.clear()
            with torch.enable_grad():
                ll = _terms(log_likelihood(model, *chunk), chunk[0].shape[0], term_weights)
                used = [(n, layer) for n, layer in layers if n in captured]
                for n, _ in used:
                    if len(captured[n]) != 1:
                        raise _Unsupported(f"{n} ran {len(captured[n])} times in one forward")
                outs = [captured[n][0][1] for n, _ in used]
                live = [i for i, o in enumerate(outs) if o.requires_grad]
                weights = term_weights or [1.0] * ll.shape[1]
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
                        n, layer = used[i]
                        x = captured[n][0][0]
                        _accumulate(layer, x.float(), g.float(), acc, f"{n}." if n else "", w)
    finally:
        for h in handles:
            h.remove()
        captured.clear()
    return {n: a / total for n, a in acc.items()}


def _accumulate(
    layer: Any,
    x: torch.Tensor,
    g: torch.Tensor,
    acc: dict[str, torch.Tensor],
    prefix: str,
    w: float = 1.0,
) -> None:
    if w != 1.0:
        g = g * w**0.5
    w_key, b_key = prefix + "weight", prefix + "bias"
    has_bias = b_key in acc
    if isinstance(layer, nn.Linear):
        if x.dim() == 2:
            if w_key in acc:
                acc[w_key] += (g * g).t() @ (x * x)
            if has_bias:
                acc[b_key] += (g * g).sum(0)
        else:  # (batch, ..., features): a sample's gradient sums over the middle dims
            xb = x.reshape(x.shape[0], -1, x.shape[-1])
            gb = g.reshape(g.shape[0], -1, g.shape[-1])
            if w_key in acc:
                acc[w_key] += torch.einsum("bto,bti->boi", gb, xb).pow(2).sum(0)
            if has_bias:
                acc[b_key] += gb.sum(1).pow(2).sum(0)
        return
    # Conv2d: per-sample weight gradient = G (O x L) @ unfold(X)^T (L x C*kh*kw).
    assert isinstance(layer, nn.Conv2d)
    if has_bias:
        gb = g.reshape(g.shape[0], g.shape[1], -1)
        acc[b_key] += gb.sum(2).pow(2).sum(0)
    if w_key not in acc:
        return
    cols = F.unfold(
        x,
        layer.kernel_size,
        dilation=layer.dilation,
        padding=layer.padding,  # type: ignore[arg-type]
        stride=layer.stride,
    )  # (B, C*kh*kw, L)
    gb = g.reshape(g.shape[0], g.shape[1], -1)  # (B, O, L)
    per_sample = torch.bmm(gb, cols.transpose(1, 2))  # (B, O, C*kh*kw)
    acc[w_key] += per_sample.pow(2).sum(0).view_as(layer.weight)
