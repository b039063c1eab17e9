"""Test-wide settings, and the helpers several test files share.

The suite runs under pytest-xdist with one worker per core (``-n 2`` on the 2-core target).
Each worker, and each subprocess a test starts, uses one torch/OpenMP thread: with two threads
per worker the workers oversubscribe the cores and OpenMP's spin-waiting makes small forward
passes more than 10x slower. Training itself (not the tests) uses every core.

Test files import the helpers below by name (``from conftest import frozen_prefixes``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

# torch (and blip_rl, which imports it) only after the thread settings above.
import torch  # noqa: E402
from torch import nn  # noqa: E402

from blip_rl.quant import blip_layers, code_of  # noqa: E402

if TYPE_CHECKING:
    import pytest

torch.set_num_threads(1)


Prefixes = dict[str, tuple[torch.Tensor, torch.Tensor]]


def frozen_prefixes(model: nn.Module, bits_of: Prefixes | None = None) -> Prefixes:
    """Per quantized parameter (``"<module>.<weight|bias>"``): the frozen bits ``b`` of every
    scalar and its prefix ``code >> (N - b)`` (-1 where ``b = 0``), recomputed from the weights
    with :func:`blip_rl.code_of`. With ``bits_of`` (an earlier snapshot), the prefixes are taken
    with that snapshot's bit counts, to compare with it after more freezes."""
    out: Prefixes = {}
    for name, layer in blip_layers(model):
        for p in layer.quantized_names:
            key = f"{name}.{p}" if name else p
            bits = getattr(layer, f"{p}_bits").to(torch.int64).contiguous()
            if bits_of is not None:
                bits = bits_of[key][0]
            code = code_of(getattr(layer, p), layer.bound(p), layer.max_bits).contiguous()
            out[key] = (bits, torch.where(bits > 0, code >> (layer.max_bits - bits), -1))
    return out


def assert_in_bounds(model: nn.Module) -> None:
    """Every quantized scalar lies in its tensor's ``[-B, B)`` (checked in float64)."""
    for name, layer in blip_layers(model):
        for p in layer.quantized_names:
            w = getattr(layer, p).detach().double()
            bound = layer.bound(p)
            assert bool((w >= -bound).all()) and bool((w < bound).all()), f"{name}.{p}"


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The captured stderr is exactly one ``error: ...`` line (no traceback); returns it."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def both_ll(m: nn.Module, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Policy and value terms of a ``(logits, value)`` model, as a ``(batch, 2)`` log-likelihood
    for :func:`blip_rl.estimate_fisher` with two terms."""
    logits, v = m(x)
    return torch.stack([torch.log_softmax(logits, -1).gather(1, a[:, None]).squeeze(1), v], 1)
