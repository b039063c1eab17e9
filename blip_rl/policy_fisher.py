"""The rollout Fisher of an actor-critic, defined once for every policy type.

For each visited state ``s`` an action ``a`` is sampled from the current policy; the diagonal
Fisher of a parameter is the mean over states of

    (d log pi(a|s) / d theta)**2 + value_coef * (d V(s) / d theta)**2

(per-sample squared gradients, term by term: :func:`blip_rl.fisher.estimate_fisher` with two
weighted terms). The value term is the Fisher of a unit-variance Gaussian ``N(V(s), 1)`` over
returns; it protects the value head and the critic's share of the features
(see ``docs/blip.md``). The policy types differ only in how they sample an action and how they
compute ``log pi(a|s)`` and ``V(s)``, which the caller passes in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from blip_rl.fisher import estimate_fisher

__all__ = ["sampled_action_fisher"]


def sampled_action_fisher(
    model: nn.Module,
    states: torch.Tensor,
    sample: Callable[[torch.Tensor], torch.Tensor],
    terms: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    value_coef: float,
    chunk_size: int = 256,
    params: Literal["blip", "all"] = "blip",
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of ``model``'s BLIP parameters (``params="all"``: of every parameter).

    The model is put in evaluation mode for the estimate and handed back in its former mode.

    Args:
        model: the actor-critic whose parameters get a Fisher.
        states: observations, batch first, on the model's device.
        sample: ``sample(chunk)``: one action per state of a chunk of ``states`` from the current
            policy (called without gradients, chunk by chunk, in order), on the model's device.
        terms: ``terms(model, obs, actions)``: a ``(B, 2)`` tensor, ``log pi(a|s)`` in column 0
            and ``V(s)`` in column 1, computed with ``model`` (the function is differentiated).
        value_coef: weight of the value term (0: the policy-only Fisher of the BLIP paper).
        chunk_size: states per pass (bounds memory).
        params: ``"blip"`` (BLIP layers only) or ``"all"``.

    Returns:
        ``{parameter name: Fisher}`` as in ``model.named_parameters()``.
    """
    was_training = model.training
    model.train(False)
    try:
        with torch.no_grad():
            actions = torch.cat([sample(chunk) for chunk in states.split(chunk_size)])
        return estimate_fisher(
            model,
            terms,
            (states, actions),
            chunk_size=chunk_size,
            term_weights=[1.0, float(value_coef)],
            params=params,
        )
    finally:
        model.train(was_training)
