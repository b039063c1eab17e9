"""Continual methods behind one small interface (see :mod:`blip_rl.methods.base`)."""

from __future__ import annotations

from blip_rl.methods.base import ContinualMethod, GameContext, MethodConfig, rollout_fisher
from blip_rl.methods.blip import BlipConfig, BlipMethod

METHODS: dict[str, type[ContinualMethod]] = {
    "blip": BlipMethod,
    "finetune": ContinualMethod,
}
"""Method name (the ``method`` field of an agent preset) -> class."""

__all__ = [
    "METHODS",
    "BlipConfig",
    "BlipMethod",
    "ContinualMethod",
    "GameContext",
    "MethodConfig",
    "rollout_fisher",
]
