"""blip-rl: continual reinforcement learning with BLIP (Bit-Level Information Preserving) layers.

Public API of the BLIP core (pure torch, usable on any model)::

    from blip_rl import BlipLinear, BlipConv2d, attach, estimate_fisher, freeze
"""

from blip_rl import quant
from blip_rl.fisher import estimate_fisher
from blip_rl.quant import *  # noqa: F403 - the BLIP core's public names (quant.__all__)

__version__ = "0.1.0"

__all__ = ["estimate_fisher", *quant.__all__]
