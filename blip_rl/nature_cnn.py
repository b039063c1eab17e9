"""The convolutions of the DQN "Nature" CNN (Mnih et al. 2015), defined once.

Three convolutions, each followed by a ReLU: 8x8 stride 4, 4x4 stride 2, 3x3 stride 1. The
continual loop's actor-critic (:mod:`blip_rl.nets`) and the stable-baselines3 features extractor
(:class:`blip_rl.sb3.BlipNatureCNN`) put a flatten and a linear layer after them.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from blip_rl.quant import BlipConv2d

__all__ = ["NATURE_KERNELS", "conv_output_size", "nature_convs"]

NATURE_KERNELS: tuple[tuple[int, int], ...] = ((8, 4), (4, 2), (3, 1))
"""(kernel size, stride) of conv1, conv2 and conv3."""


def conv_output_size(size: int) -> int:
    """Height (or width) of the last convolution's output for an input of height ``size``."""
    for kernel, stride in NATURE_KERNELS:
        size = (size - kernel) // stride + 1
    return size


def nature_convs(
    in_channels: int,
    channels: Sequence[int],
    *,
    blip: bool = True,
    max_bits: int,
    f_prior: float,
) -> list[tuple[str, nn.Module]]:
    """The three convolutions with their ReLUs, named ``conv1, relu1, ..., relu3``, in order.

    Build an ``nn.Sequential`` from the pairs (``OrderedDict(pairs)`` keeps the names,
    ``nn.Sequential(*(m for _, m in pairs))`` numbers them 0..5). The layers are created in order,
    so they draw their default initial values from the global RNG in the same order as before.

    Args:
        in_channels: channels of the input image (stacked frames).
        channels: output channels of the three convolutions, e.g. ``(32, 64, 64)``.
        blip: :class:`~blip_rl.BlipConv2d` layers (True) or plain ``nn.Conv2d`` of the same shape.
        max_bits: N of every BLIP layer (ignored when ``blip`` is false).
        f_prior: Fisher prior of every BLIP layer, in the reference's units (ignored when
            ``blip`` is false).
    """
    if len(channels) != len(NATURE_KERNELS):
        raise ValueError(f"channels={tuple(channels)!r}: expected three output channel counts")
    pairs: list[tuple[str, nn.Module]] = []
    cin = in_channels
    for i, (cout, (kernel, stride)) in enumerate(zip(channels, NATURE_KERNELS, strict=True), 1):
        conv: nn.Module
        if blip:
            conv = BlipConv2d(cin, cout, kernel, stride, max_bits=max_bits, f_prior=f_prior)
        else:
            conv = nn.Conv2d(cin, cout, kernel, stride)
        pairs += [(f"conv{i}", conv), (f"relu{i}", nn.ReLU())]
        cin = cout
    return pairs
