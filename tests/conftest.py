"""Test-wide settings.

The suite runs under pytest-xdist with one worker per core (``-n 2`` on the 2-core target).
Each worker, and each subprocess a test starts, uses one torch/OpenMP thread: with two threads
per worker the workers oversubscribe the cores and OpenMP's spin-waiting makes small forward
passes more than 10x slower. Training itself (not the tests) uses every core.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)
