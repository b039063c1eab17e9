"""blip-rl: continual reinforcement learning with BLIP (Bit-Level Information Preserving) layers."""

__version__ = "0.1.0"
