"""blip-rl: continual reinforcement learning with BLIP (Bit-Level Information Preserving) layers.

Public API of the BLIP core (pure torch, usable on any model)::

    from blip_rl import BlipLinear, BlipConv2d, attach, estimate_fisher, freeze
"""

from blip_rl.fisher import estimate_fisher
from blip_rl.quant import (
    BlipConv2d,
    BlipLayer,
    BlipLinear,
    BlipStats,
    attach,
    blip_layers,
    blip_parameters,
    blip_stats,
    code_of,
    constrain_,
    format_stats,
    freeze,
)

__version__ = "0.1.0"

__all__ = [
    "BlipConv2d",
    "BlipLayer",
    "BlipLinear",
    "BlipStats",
    "attach",
    "blip_layers",
    "blip_parameters",
    "blip_stats",
    "code_of",
    "constrain_",
    "estimate_fisher",
    "format_stats",
    "freeze",
]
