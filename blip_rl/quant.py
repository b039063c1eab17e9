"""BLIP layers: bit-level quantized parameters, the exact frozen-prefix constraint and bit growth.

This module is pure torch and knows nothing of reinforcement learning; any model built with
:class:`BlipLinear` / :class:`BlipConv2d` can use it (a supervised user too).

The method (Shi et al., "Continual Learning via Bit-Level Information Preserving", CVPR 2021) as
this project states it is in ``docs/blip.md``. In short, for a parameter tensor with
bound ``B`` and ``N = max_bits``:

* the N-bit code of a value ``w`` is ``floor((w + B) / (2B) * 2**N)`` clamped to ``[0, 2**N - 1]``,
  computed in float64 (see :func:`code_of`);
* each scalar has ``b`` frozen leading bits; after any optimiser step :func:`constrain_` puts every
  scalar back into the float32 interval whose codes share its frozen prefix, so a frozen bit never
  changes (exactly, float rounding at bin edges included);
* after a task, :func:`freeze` grows ``b`` by ``ceil(0.5 * log2(Fbar_new / Fbar_old))`` where
  ``Fbar`` is a running mean of the task's Fisher information seeded with a prior.

Persistent state per quantized scalar (saved in ``state_dict``): the frozen-bit count ``{p}_bits``
(uint8, 1 byte), the frozen prefix ``{p}_prefix`` (int32, 4 bytes; int64 for ``max_bits=32``) and
the running-mean Fisher ``{p}_fisher`` (bfloat16, 2 bytes): 7 bytes, whatever the number of
freezes. bfloat16 keeps float32's exponent range with a 0.4% relative precision; that moves a
freeze decision only when ``0.5 * log2`` of the Fisher ratio lies within 0.003 of an integer, far
below the sampling noise of any Fisher estimate. For speed, each layer also keeps the float32
interval edges derived from that state (8 bytes per scalar, not saved, rebuilt after
``load_state_dict`` and after each freeze), so that the constraint is one clamp per tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

__all__ = [
    "REFERENCE_FISHER_SCALE",
    "BlipLayer",
    "BlipLinear",
    "BlipConv2d",
    "BlipStats",
    "attach",
    "blip_layers",
    "blip_parameters",
    "blip_stats",
    "code_of",
    "constrain_",
    "format_stats",
    "freeze",
    "layer_stats",
]

#: The authors' code squares per-sample gradients of a batch *mean* over minibatches of 62 states,
#: so its Fisher is the true diagonal Fisher divided by 62**2. Priors given in the reference's units
#: (``f_prior=5e-18``) are multiplied by this factor to get the project's true-Fisher units.
REFERENCE_FISHER_SCALE = 62.0**2


def code_of(w: torch.Tensor, bound: float, max_bits: int) -> torch.Tensor:
    """The N-bit code of every value of ``w``: ``floor((w + B) / (2B) * 2**N)`` in float64,
    clamped to ``[0, 2**N - 1]``, as an int64 tensor. This is the project's exact definition."""
    t = (w.detach().to(torch.float64) + bound) / (2.0 * bound)
    code = torch.floor(t * float(2**max_bits))
    return code.clamp_(0, 2**max_bits - 1).to(torch.int64)


def _key(f: torch.Tensor) -> torch.Tensor:
    """Order-preserving int64 key of float32 values (adjacent floats have adjacent keys)."""
    i = f.contiguous().view(torch.int32).to(torch.int64)
    return torch.where(i >= 0, i, -(i & 0x7FFFFFFF))


def _unkey(k: torch.Tensor) -> torch.Tensor:
    bits = torch.where(k >= 0, k, (-k) | 0x80000000)
    bits = torch.where(bits >= 2**31, bits - 2**32, bits)
    return bits.to(torch.int32).view(torch.float32)


def _smallest_true(pred: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Bisection over float32 keys: ``pred`` is monotone (False then True), ``pred(a)`` is False
    and ``pred(b)`` is True; returns the smallest key where it is True."""
    while True:
        gap = b - a > 1
        if not bool(gap.any()):
            return b
        m = torch.where(gap, (a + b) // 2, b)
        v = pred(m)
        b = torch.where(gap & v, m, b)
        a = torch.where(gap & ~v, m, a)


def _float32_edges(
    prefix: torch.Tensor, bits: torch.Tensor, bound: float, max_bits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest and largest float32 values whose code carries the frozen prefix.

    ``code_of`` is monotone in ``w``, so the float32 values whose top ``b`` bits equal the prefix
    form one contiguous range, also bounded by ``[-B, B)``. Its ends are found by bisection over
    the ordered float32 values with the float64 code check itself as the test, so they are exact:
    this is what keeps a frozen bit from ever flipping at a bin edge (float64 rounding of
    ``w + B`` near ``w = 0`` shifts an edge by many float32 steps, which no fixed rounding rule
    would catch). A bracket of a few floats around the real edge is tried first; only scalars
    outside it are searched over the whole range. Scalars with ``b = 0`` get ``[-B, B)``.
    """
    n = max_bits
    top = 2.0 * bound

    glob = torch.tensor([-bound, math.nextafter(bound, 0.0)], dtype=torch.float64)
    g = _key(glob.to(torch.float32))
    # Both predicates below are monotone in w (False then True), as bisection needs.
    g_lo = int(_smallest_true(lambda k: _unkey(k).double() >= -bound, g[:1] - 3, g[:1] + 3)[0])
    g_hi = int(_smallest_true(lambda k: _unkey(k).double() >= bound, g[1:] - 3, g[1:] + 3)[0]) - 1
    lo_key = torch.full(bits.shape, g_lo, dtype=torch.int64)
    hi_key = torch.full(bits.shape, g_hi, dtype=torch.int64)
    sel = bits > 0
    if bool(sel.any()):
        b = bits[sel].to(torch.int64)
        pre = prefix[sel].to(torch.int64)
        lo_code = pre << (n - b)
        hi_code = ((pre + 1) << (n - b)) - 1
        scale = top / float(2**n)

        def lo_ok(k: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            f = _unkey(k)
            return (code_of(f, bound, n) >= c) & (f.to(torch.float64) >= -bound)

        def hi_bad(k: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            f = _unkey(k)
            return (code_of(f, bound, n) > c) | (f.to(torch.float64) >= bound)

        # Edges at w = 0 (code 2**(N-1)) are where float64 rounding of w + B moves the edge by
        # many float32 steps; the exact float is the same for every scalar: find it once.
        mid = torch.tensor([2 ** (n - 1)], dtype=torch.int64)
        wide = _key(torch.tensor([-top, top], dtype=torch.float32))
        zero_key = _smallest_true(lambda k: lo_ok(k, mid), wide[:1], wide[1:])

        def search(pred: Any, c: torch.Tensor, edge_code: torch.Tensor) -> torch.Tensor:
            guess = _key((edge_code.to(torch.float64) * scale - bound).to(torch.float32))
            guess = torch.where(edge_code == 2 ** (n - 1), zero_key, guess)
            a, z = guess - 4, guess + 4
            ok = ~pred(a, c) & pred(z, c)
            out = _smallest_true(lambda k: pred(k, c), a, torch.where(ok, z, a + 1))
            if not bool(ok.all()):  # rare: search those scalars over the whole range
                cb = c[~ok]
                out[~ok] = _smallest_true(
                    lambda k: pred(k, cb), wide[:1].expand_as(cb), wide[1:].expand_as(cb)
                )
            return out

        lo_key[sel] = search(lo_ok, lo_code, lo_code)
        hi_key[sel] = search(hi_bad, hi_code, hi_code + 1) - 1
    return _unkey(lo_key), _unkey(hi_key)


class BlipLayer:
    """Mixin holding the BLIP state of a layer's quantized parameters ("weight" and "bias").

    Buffers per parameter ``p`` (all in ``state_dict``): ``{p}_bits`` (uint8, frozen leading
    bits of each scalar), ``{p}_prefix`` (the frozen top bits of each scalar's code) and
    ``{p}_fisher`` (bfloat16 running-mean Fisher, seeded with the layer's prior). The layer buffer
    ``freezes`` counts the freezes so far. ``{p}_bound`` (float) is the tensor's bound ``B``.
    """

    max_bits: int
    prior: float
    quantized_names: tuple[str, ...]
    freezes: torch.Tensor

    # Set by the concrete classes.
    def _fan(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def _init_blip(self, max_bits: int, f_prior: float) -> None:
        if not isinstance(max_bits, int) or isinstance(max_bits, bool) or not 1 <= max_bits <= 32:
            raise ValueError(f"max_bits={max_bits!r} is not accepted: use an integer in 1..32")
        if not math.isfinite(f_prior) or f_prior < 0:
            raise ValueError(f"f_prior={f_prior!r} is not accepted: use a finite number >= 0")
        module = self._module()
        self.max_bits = max_bits
        self.f_prior = float(f_prior)
        n = self._fan()
        # The prior in true-Fisher units: the reference's value times 62**2, times the layer's n.
        self.prior = float(f_prior) * REFERENCE_FISHER_SCALE * n
        names = [p for p in ("weight", "bias") if getattr(module, p, None) is not None]
        self.quantized_names = tuple(names)
        prefix_dtype = torch.int32 if max_bits <= 31 else torch.int64
        module.register_buffer("freezes", torch.zeros((), dtype=torch.int64))
        for p in names:
            param: torch.Tensor = getattr(module, p)
            dev = param.device
            module.register_buffer(f"{p}_bits", torch.zeros_like(param, dtype=torch.uint8))
            module.register_buffer(f"{p}_prefix", torch.zeros_like(param, dtype=prefix_dtype))
            fisher = torch.full_like(param, self.prior, dtype=torch.bfloat16, device=dev)
            module.register_buffer(f"{p}_fisher", fisher)
            # Derived float32 interval edges (not saved; rebuilt on load and freeze).
            module.register_buffer(f"_{p}_lo", torch.empty_like(param), persistent=False)
            module.register_buffer(f"_{p}_hi", torch.empty_like(param), persistent=False)
        self._rebuild_edges()
        with torch.no_grad():
            self.constrain_()
        module.register_load_state_dict_post_hook(_after_load)

    def _module(self) -> nn.Module:
        assert isinstance(self, nn.Module)
        return self

    def bound(self, name: str) -> float:
        """The bound ``B`` of parameter ``name`` ("weight" or "bias")."""
        return float(getattr(self, f"{name}_bound"))

    def _rebuild_edges(self) -> None:
        module = self._module()
        for p in self.quantized_names:
            bits = getattr(module, f"{p}_bits")
            prefix = getattr(module, f"{p}_prefix")
            lo, hi = _float32_edges(prefix.cpu(), bits.cpu(), self.bound(p), self.max_bits)
            getattr(module, f"_{p}_lo").copy_(lo)
            getattr(module, f"_{p}_hi").copy_(hi)

    @torch.no_grad()
    def constrain_(self) -> None:
        """Clamp each quantized scalar into the float32 interval its frozen prefix names."""
        module = self._module()
        for p in self.quantized_names:
            param = getattr(module, p)
            lo, hi = getattr(module, f"_{p}_lo"), getattr(module, f"_{p}_hi")
            if param.device.type != "cpu":
                # On an accelerator a read would stall the stream every step: always map a NaN
                # (from a diverged step) to 0 first, then clamp; no host sync.
                torch.nan_to_num(param, nan=0.0, out=param)
                torch.clamp(param, lo, hi, out=param)
                continue
            torch.clamp(param, lo, hi, out=param)
            # A NaN (from a diverged step) passes through a clamp. Clamped values sum to a finite
            # number, so one read tells whether there is one; then it goes to 0 and is clamped.
            if not bool(torch.isfinite(param.sum())):
                torch.nan_to_num(param, nan=0.0, out=param)
                torch.clamp(param, lo, hi, out=param)

    @torch.no_grad()
    def _freeze(self, fisher: Mapping[str, torch.Tensor], prefix_name: str) -> None:
        module = self._module()
        t = int(self.freezes.item())
        n = self.max_bits
        for p in self.quantized_names:
            param: torch.Tensor = getattr(module, p)
            f_new_task = fisher[f"{prefix_name}{p}"].detach().to(param.device, torch.float64)
            bits_buf: torch.Tensor = getattr(module, f"{p}_bits")
            fbar_buf: torch.Tensor = getattr(module, f"{p}_fisher")
            old = fbar_buf.to(torch.float64)
            new = ((t + 1) * old + f_new_task) / (t + 2)
            gain = torch.ceil(0.5 * torch.log2(new / old)).clamp_(min=0)
            gain = torch.nan_to_num(gain, nan=0.0, posinf=float(n)).clamp_(max=n)
            bits = torch.clamp(bits_buf.to(torch.int64) + gain.to(torch.int64), max=n)
            code = code_of(param, self.bound(p), n)
            prefix = code >> (n - bits)
            prefix = torch.where(bits == 0, torch.zeros_like(prefix), prefix)
            bits_buf.copy_(bits.to(torch.uint8))
            getattr(module, f"{p}_prefix").copy_(prefix)
            fbar_buf.copy_(new.to(torch.bfloat16))
        self.freezes.add_(1)
        self._rebuild_edges()


def _after_load(module: nn.Module, incompatible_keys: Any) -> None:
    assert isinstance(module, BlipLayer)
    module._rebuild_edges()


def _init_weight_(layer: BlipLinear | BlipConv2d) -> None:
    """Orthogonal init (gain sqrt(2)), clamped into [-B, B); zero bias."""
    with torch.no_grad():
        nn.init.orthogonal_(layer.weight, gain=math.sqrt(2.0))
        layer.weight.clamp_(-layer.weight_bound, layer.weight_bound)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
        if hasattr(layer, "_weight_lo"):
            if int(layer.freezes.item()) > 0:
                raise RuntimeError("reset_parameters() on a BLIP layer that has frozen bits")
            layer.constrain_()  # exact [-B, B) in float32


class BlipLinear(nn.Linear, BlipLayer):
    """``nn.Linear`` whose weight and bias carry BLIP state.

    Args:
        in_features, out_features, bias, device, dtype: as for ``nn.Linear``.
        max_bits: N, the bits of each parameter's fixed-point code (1..32; paper: 20).
        f_prior: the Fisher prior in the reference implementation's units (5e-18 there). The
            layer's prior in this project's true-Fisher units is
            ``f_prior * REFERENCE_FISHER_SCALE * n`` with ``REFERENCE_FISHER_SCALE = 62**2``
            (the reference squared gradients of a 62-sample batch mean) and
            ``n = max(in_features, out_features)``.

    Bounds: weight ``6 / sqrt(n)``, bias ``1.0``. Init: orthogonal with gain ``sqrt(2)``, clamped
    into ``[-B, B)``; bias zero.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        max_bits: int = 20,
        f_prior: float = 5e-18,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        self.weight_bound = 6.0 / math.sqrt(max(in_features, out_features))
        self.bias_bound = 1.0
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_blip(max_bits, f_prior)

    def _fan(self) -> int:
        return max(self.in_features, self.out_features)

    def reset_parameters(self) -> None:
        _init_weight_(self)


class BlipConv2d(nn.Conv2d, BlipLayer):
    """``nn.Conv2d`` whose weight and bias carry BLIP state.

    Args are those of ``nn.Conv2d`` plus ``max_bits`` and ``f_prior`` as in :class:`BlipLinear`,
    with ``n = max(out_channels, in_channels / groups * kh * kw)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: Literal["zeros", "reflect", "replicate", "circular"] = "zeros",
        max_bits: int = 20,
        f_prior: float = 5e-18,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        n = max(out_channels, in_channels // groups * ks[0] * ks[1])
        self.weight_bound = 6.0 / math.sqrt(n)
        self.bias_bound = 1.0
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        self._init_blip(max_bits, f_prior)

    def _fan(self) -> int:
        kh, kw = self.kernel_size
        return max(self.out_channels, self.in_channels // self.groups * kh * kw)

    def reset_parameters(self) -> None:
        _init_weight_(self)


def blip_layers(model: nn.Module) -> Iterator[tuple[str, BlipLayer]]:
    """``(module name, layer)`` for every BLIP layer of ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, BlipLayer):
            yield name, module


def blip_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name as in model.named_parameters(), tensor)`` for every quantized parameter."""
    for name, layer in blip_layers(model):
        for p in layer.quantized_names:
            yield (f"{name}.{p}" if name else p), getattr(layer, p)


@torch.no_grad()
def constrain_(model: nn.Module) -> nn.Module:
    """Clamp every BLIP parameter of ``model`` into the interval that its frozen prefix allows.

    Exact: afterwards ``code_of(w) >> (N - b)`` equals the frozen prefix for every scalar with
    ``b > 0``, and every scalar lies in ``[-B, B)``. Returns ``model``.
    """
    for _, layer in blip_layers(model):
        layer.constrain_()
    return model


def attach(optimizer: Optimizer, model: nn.Module) -> RemovableHandle:
    """Register :func:`constrain_` as a step post-hook of ``optimizer``, so it runs after every
    ``optimizer.step()`` whatever the training loop. Also constrains once now. Returns the hook
    handle (``handle.remove()`` detaches it)."""
    if not any(True for _ in blip_layers(model)):
        raise ValueError("attach(): the model has no BLIP layers (BlipLinear / BlipConv2d)")
    constrain_(model)

    def _hook(opt: Optimizer, args: Any, kwargs: Any) -> None:
        constrain_(model)

    return optimizer.register_step_post_hook(_hook)


def freeze(model: nn.Module, fisher: Mapping[str, torch.Tensor]) -> None:
    """Grow the frozen bits of every BLIP parameter of ``model`` from this task's Fisher.

    ``fisher`` maps each quantized parameter's name (as in ``model.named_parameters()``) to a
    non-negative tensor of its shape (e.g. from :func:`blip_rl.estimate_fisher`). Per scalar, with
    ``t`` the layer's number of earlier freezes: ``Fbar_new = ((t+1) Fbar_old + F) / (t+2)``,
    ``b = min(N, b + max(0, ceil(0.5 log2(Fbar_new / Fbar_old))))``; the new prefix is the top
    ``b`` bits of the current code. Bits never shrink. Raises ``ValueError`` naming the parameter
    when an entry is missing, has the wrong shape, or holds negative or non-finite values.
    """
    layers = list(blip_layers(model))
    if not layers:
        raise ValueError("freeze(): the model has no BLIP layers (BlipLinear / BlipConv2d)")
    for name, layer in layers:
        prefix_name = f"{name}." if name else ""
        for p in layer.quantized_names:
            key = prefix_name + p
            if key not in fisher:
                raise ValueError(f"freeze(): the Fisher dict has no entry for parameter {key!r}")
            f = fisher[key]
            param = getattr(layer, p)
            if not isinstance(f, torch.Tensor) or tuple(f.shape) != tuple(param.shape):
                got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                raise ValueError(
                    f"freeze(): Fisher entry for parameter {key!r} has shape {got}, "
                    f"expected {tuple(param.shape)}"
                )
            if not bool(torch.isfinite(f).all()) or bool((f < 0).any()):
                raise ValueError(
                    f"freeze(): Fisher entry for parameter {key!r} must be finite and >= 0"
                )
    for name, layer in layers:
        layer._freeze(fisher, f"{name}." if name else "")


@dataclass(frozen=True)
class BlipStats:
    """BLIP state of one quantized parameter tensor."""

    name: str
    numel: int
    max_bits: int
    freezes: int
    histogram: list[int]
    """Count of scalars with b = 0, 1, ..., max_bits frozen bits."""
    frac_frozen: float
    """Fraction of scalars with at least one frozen bit."""
    mean_bits: float
    persistent_bytes_per_param: float
    """Saved BLIP state (bits + prefix + running Fisher) per scalar; constant in the freezes."""
    cache_bytes_per_param: float
    """Derived float32 interval edges held in memory for a fast constraint (not saved)."""


def blip_stats(model: nn.Module) -> list[BlipStats]:
    """Per quantized parameter: frozen-bit histogram, fraction frozen, mean bits, memory."""
    out: list[BlipStats] = []
    for name, layer in blip_layers(model):
        for p in layer.quantized_names:
            bits = getattr(layer, f"{p}_bits")
            numel = bits.numel()
            hist = torch.bincount(bits.flatten().to(torch.int64), minlength=layer.max_bits + 1)
            persistent = sum(
                getattr(layer, f"{p}_{s}").element_size() for s in ("bits", "prefix", "fisher")
            )
            cache = sum(getattr(layer, f"_{p}_{s}").element_size() for s in ("lo", "hi"))
            out.append(
                BlipStats(
                    name=f"{name}.{p}" if name else p,
                    numel=numel,
                    max_bits=layer.max_bits,
                    freezes=int(layer.freezes.item()),
                    histogram=[int(x) for x in hist.tolist()],
                    frac_frozen=float((bits > 0).float().mean().item()) if numel else 0.0,
                    mean_bits=float(bits.float().mean().item()) if numel else 0.0,
                    persistent_bytes_per_param=float(persistent),
                    cache_bytes_per_param=float(cache),
                )
            )
    return out


def layer_stats(model: nn.Module) -> dict[str, dict[str, float]]:
    """Per BLIP layer (weight and bias together), keyed by module name: ``frozen_bits`` (mean
    frozen bits per scalar), ``frac_frozen`` (fraction of scalars with a frozen bit) and
    ``freezes``. What the ``blip/<layer>/...`` TensorBoard tags show."""
    out: dict[str, dict[str, float]] = {}
    for name, layer in blip_layers(model):
        bits = [getattr(layer, f"{p}_bits") for p in layer.quantized_names]
        total = max(sum(b.numel() for b in bits), 1)
        out[name] = {
            "frozen_bits": sum(float(b.sum(dtype=torch.int64)) for b in bits) / total,
            "frac_frozen": sum(int((b > 0).sum()) for b in bits) / total,
            "freezes": float(layer.freezes.item()),
        }
    return out


def format_stats(stats: list[BlipStats]) -> str:
    """A plain-text table of :func:`blip_stats`."""
    lines = [f"{'parameter':<28}{'numel':>10}{'frozen':>9}{'mean b':>8}{'B/param':>9}"]
    for s in stats:
        lines.append(
            f"{s.name:<28}{s.numel:>10}{s.frac_frozen:>9.1%}{s.mean_bits:>8.2f}"
            f"{s.persistent_bytes_per_param:>9.0f}"
        )
    total = sum(s.numel for s in stats)
    if total:
        mean = sum(s.mean_bits * s.numel for s in stats) / total
        frac = sum(s.frac_frozen * s.numel for s in stats) / total
        lines.append(f"{'total':<28}{total:>10}{frac:>9.1%}{mean:>8.2f}")
    return "\n".join(lines)
