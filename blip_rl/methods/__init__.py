"""Continual methods behind one small interface (see :mod:`blip_rl.methods.base`)."""

from __future__ import annotations

from blip_rl.methods.base import ContinualMethod, GameContext, MethodConfig, rollout_fisher
from blip_rl.methods.blip import BlipConfig, BlipMethod
from blip_rl.methods.ewc import EwcConfig, EwcMethod, OnlineEwcConfig, OnlineEwcMethod
from blip_rl.methods.packnet import PackNetConfig, PackNetMethod

METHODS: dict[str, type[ContinualMethod]] = {
    "blip": BlipMethod,
    "finetune": ContinualMethod,
    "ewc": EwcMethod,
    "online-ewc": OnlineEwcMethod,
    "packnet": PackNetMethod,
}
"""Method name (the ``method`` field of an agent preset) -> class."""

__all__ = [
    "METHODS",
    "BlipConfig",
    "BlipMethod",
    "ContinualMethod",
    "EwcConfig",
    "EwcMethod",
    "GameContext",
    "MethodConfig",
    "OnlineEwcConfig",
    "OnlineEwcMethod",
    "PackNetConfig",
    "PackNetMethod",
    "rollout_fisher",
]
