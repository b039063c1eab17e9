"""Nature-CNN actor-critic built from BLIP layers, with one policy and one value head per game.

The trunk is the DQN "Nature" CNN (Mnih et al. 2015) as used by PPO on Atari::

    uint8 (B, 4, 84, 84) / 255 -> conv 8x8 s4 -> ReLU -> conv 4x4 s2 -> ReLU -> conv 3x3 s1 -> ReLU
                               -> flatten -> linear hidden -> ReLU

Every layer, heads included, is a :class:`~blip_rl.BlipConv2d` / :class:`~blip_rl.BlipLinear`
when ``NetConfig.blip`` is true, so a game that comes back later finds its heads protected by
the bits frozen after it was learned. With ``blip=False`` the same shapes are built from plain
``nn.Conv2d`` / ``nn.Linear`` with the same initial values (for the fine-tuning baseline and to
measure BLIP's overhead): with the same global seed both variants start from identical weights.

Initialisation (as CleanRL's PPO): orthogonal with gain ``sqrt(2)`` for the trunk, ``0.01`` for
the policy heads and ``1`` for the value heads, zero biases; each weight is then clamped into its
BLIP bound ``[-B, B)`` with ``B = 6 / sqrt(n)`` (plain layers get the same clamp, so the two
variants stay identical).

Module names are stable and readable because TensorBoard tags and checkpoints use them:
``trunk.conv1``, ``trunk.conv2``, ``trunk.conv3``, ``trunk.fc``, ``heads.policy.<k>``,
``heads.value.<k>`` where ``k`` is the head index (one per game; a shared-head setup is simply
``action_counts=[18]`` with head 0 for every game).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from blip_rl.nature_cnn import conv_output_size, nature_convs
from blip_rl.quant import BlipLayer, BlipLinear
from blip_rl.validate import check_bool, check_int, check_number

__all__ = ["BLIP_ONLY_FIELDS", "NetConfig", "ActorCritic", "PAPER_NET", "reserve_masks"]


@dataclass
class NetConfig:
    """Shape and BLIP settings of :class:`ActorCritic`."""

    channels: tuple[int, int, int] = (32, 64, 64)
    """Output channels of the three conv layers (8x8 s4, 4x4 s2, 3x3 s1). Paper: (32, 64, 128)."""
    hidden: int = 512
    """Width of the linear layer after the convolutions. Paper: 1024."""
    blip: bool = True
    """BLIP layers (True) or plain ``nn.Conv2d`` / ``nn.Linear`` of identical shapes and init."""
    max_bits: int = 20
    """N, the bits of each parameter's fixed-point code (paper: 20). Ignored when blip=False."""
    f_prior: float = 5e-18
    """Fisher prior in the reference implementation's units (the paper's 5e-18). Each layer's
    prior in this project's true-Fisher units is ``f_prior * 62**2 * n`` (see
    :class:`~blip_rl.BlipLinear`). Ignored when blip=False."""
    conv_f_prior: float | None = None
    """Fisher prior of the three convolutions alone, in the same units; none: f_prior. A larger
    value frees the shared features for later games while the linear layer and the heads keep
    f_prior's protection (``docs/blip.md``, "The convolutions' own prior"). Ignored when
    blip=False."""

    def __post_init__(self) -> None:
        channels = tuple(self.channels) if isinstance(self.channels, list | tuple) else None
        if (
            channels is None
            or len(channels) != 3
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in channels)
        ):
            shown = ",".join(map(str, self.channels)) if channels else self.channels
            raise ValueError(
                f"invalid --channels {shown!r}; expected three integers >= 1, e.g. 32,64,64"
            )
        self.channels = channels
        check_int(self, "hidden", 1)
        check_bool(self, "blip")
        check_int(self, "max_bits", 1, 32)
        check_number(self, "f_prior", 0.0)
        check_number(self, "conv_f_prior", 0.0, allow_none=True)

    @property
    def conv_prior(self) -> float:
        """The prior the convolutions get: ``conv_f_prior``, or ``f_prior`` when it is none."""
        return self.f_prior if self.conv_f_prior is None else self.conv_f_prior


BLIP_ONLY_FIELDS = ("f_prior", "conv_f_prior", "max_bits")
"""NetConfig fields that only BLIP layers read (ignored when ``blip=False``)."""

PAPER_NET = NetConfig(channels=(32, 64, 128), hidden=1024)
"""The network of the BLIP paper's Atari experiments."""


TRUNK_LAYERS = ("conv1", "conv2", "conv3", "fc")
"""The trunk's layers with weights, input first."""


def _weight_bound(layer: nn.Module) -> float:
    """The BLIP weight bound ``6 / sqrt(n)``, also used to clamp the init of plain layers."""
    if isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size
        n = max(layer.out_channels, layer.in_channels // layer.groups * kh * kw)
    else:
        assert isinstance(layer, nn.Linear)
        n = max(layer.in_features, layer.out_features)
    return 6.0 / math.sqrt(n)


def _float32_range(bound: float) -> tuple[float, float]:
    """The smallest and largest float32 values in ``[-B, B)``: the range a BLIP layer with
    nothing frozen keeps its weights in (exact in float64, as :func:`blip_rl.quant.code_of`)."""
    inf = torch.tensor(float("inf"))
    lo = torch.tensor(-bound, dtype=torch.float32)
    while float(lo) < -bound:
        lo = torch.nextafter(lo, inf)
    hi = torch.tensor(bound, dtype=torch.float32)
    while float(hi) >= bound:
        hi = torch.nextafter(hi, -inf)
    return float(lo), float(hi)


@torch.no_grad()
def _init_layer(layer: nn.Module, gain: float, generator: torch.Generator) -> None:
    assert isinstance(layer, nn.Conv2d | nn.Linear)
    nn.init.orthogonal_(layer.weight, gain=gain, generator=generator)
    lo, hi = _float32_range(_weight_bound(layer))
    layer.weight.clamp_(lo, hi)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    if isinstance(layer, BlipLayer):
        layer.constrain_()  # a no-op here (nothing frozen), kept as the layer's own guarantee


class ActorCritic(nn.Module):
    """Nature-CNN actor-critic with one (policy, value) head pair per game.

    Args:
        action_counts: number of discrete actions of each head; head ``k`` serves game ``k``.
            Use ``[18]`` (the full Atari action set) for a single shared head.
        config: shapes and BLIP settings; defaults to :class:`NetConfig()`.

    Input: uint8 observations ``(B, 4, 84, 84)`` (any float dtype works too: values in 0..255),
    scaled by 1/255 inside. The network accepts both contiguous and channels-last inputs.
    """

    def __init__(self, action_counts: list[int], config: NetConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else NetConfig()
        if not action_counts or any(int(a) < 1 for a in action_counts):
            raise ValueError(
                f"action_counts={action_counts!r} is not accepted: use a non-empty list of "
                "positive integers (one per head)"
            )
        if len(config.channels) != 3 or any(c < 1 for c in config.channels) or config.hidden < 1:
            raise ValueError(
                f"channels={config.channels!r}, hidden={config.hidden!r} are not accepted: "
                "use three positive channel counts and a positive hidden width"
            )
        self.config = config
        self.action_counts = [int(a) for a in action_counts]
        # One seed drawn from the global RNG initialises every layer, so blip=True and
        # blip=False nets built after the same torch.manual_seed start from identical weights
        # (the layers' own constructors consume the global RNG differently).
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64).item())

        def linear(fin: int, fout: int) -> nn.Linear:
            if config.blip:
                return BlipLinear(fin, fout, max_bits=config.max_bits, f_prior=config.f_prior)
            return nn.Linear(fin, fout)

        convs = nature_convs(
            4,
            config.channels,
            blip=config.blip,
            max_bits=config.max_bits,
            f_prior=config.conv_prior,
        )
        flat = config.channels[2] * conv_output_size(84) ** 2
        self.trunk = nn.Sequential(
            OrderedDict(
                [
                    *convs,
                    ("flatten", nn.Flatten()),
                    ("fc", linear(flat, config.hidden)),
                    ("relu4", nn.ReLU()),
                ]
            )
        )
        self.heads = nn.ModuleDict(
            {
                "policy": nn.ModuleList(linear(config.hidden, a) for a in self.action_counts),
                "value": nn.ModuleList(linear(config.hidden, 1) for _ in self.action_counts),
            }
        )
        gen = torch.Generator().manual_seed(seed)
        for name in TRUNK_LAYERS:
            _init_layer(self.trunk.get_submodule(name), math.sqrt(2.0), gen)
        for k in range(len(self.action_counts)):
            _init_layer(self.policy_head(k), 0.01, gen)
            _init_layer(self.value_head(k), 1.0, gen)

    @property
    def num_heads(self) -> int:
        """Number of (policy, value) head pairs."""
        return len(self.action_counts)

    def policy_head(self, head: int) -> nn.Linear:
        """The policy head ``head`` (a ``BlipLinear`` when BLIP is on)."""
        layer = self.heads.get_submodule(f"policy.{head}")
        assert isinstance(layer, nn.Linear)
        return layer

    def value_head(self, head: int) -> nn.Linear:
        """The value head ``head`` (a ``BlipLinear`` when BLIP is on)."""
        layer = self.heads.get_submodule(f"value.{head}")
        assert isinstance(layer, nn.Linear)
        return layer

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """Trunk output ``(B, hidden)`` for uint8 observations ``(B, 4, 84, 84)``."""
        x = obs.float().mul_(1.0 / 255.0) if obs.dtype == torch.uint8 else obs / 255.0
        out: torch.Tensor = self.trunk(x)
        return out

    def forward(self, obs: torch.Tensor, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (B, actions of head), value (B,))``. Only head ``head`` runs."""
        if not 0 <= head < self.num_heads:
            raise IndexError(f"head={head} is out of range: the net has {self.num_heads} heads")
        h = self.features(obs)
        return self.policy_head(head)(h), self.value_head(head)(h).squeeze(-1)

    def get_value(self, obs: torch.Tensor, head: int) -> torch.Tensor:
        """Value ``(B,)`` of head ``head`` (float32)."""
        return self.value_head(head)(self.features(obs)).squeeze(-1).float()

    def get_action_and_value(
        self, obs: torch.Tensor, head: int, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(action, log pi(action|obs), entropy, value)``, each ``(B,)``.

        Samples ``action`` from the policy of head ``head`` when it is not given. Log-probs,
        entropy and value are float32 even under a bf16 autocast.
        """
        logits, value = self(obs, head)
        logp_all = F.log_softmax(logits.float(), dim=-1)
        logp_all = logp_all.clamp(min=torch.finfo(logp_all.dtype).min)  # 0 * log 0 -> 0, not nan
        if action is None:
            # Gumbel-max sampling: one op, same distribution as Categorical(logits).sample().
            u = torch.rand_like(logp_all).clamp_(min=1e-20)
            action = torch.argmax(logp_all - torch.log(-torch.log(u)), dim=-1)
        logprob = logp_all.gather(-1, action.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return action, logprob, entropy, value.float()


def reserve_masks(net: ActorCritic, fraction: float, heads: list[int]) -> dict[str, torch.Tensor]:
    """Keep-masks that set a column of units apart from the rest of the network.

    The last ``round(fraction * width)`` output units of every trunk layer (conv1, conv2, conv3
    and fc) form the column. Returned: for every weight that could carry the column's activity
    into a unit outside it (``trunk.conv2.weight``, ``trunk.conv3.weight``, ``trunk.fc.weight``,
    and the policy and value weights of each head in ``heads``), a bool tensor of its shape,
    False where the weight reads a column unit and writes a unit outside it. With those weights
    at 0, the outputs of ``heads`` do not depend on the column at all, while the column itself
    reads every unit of the layer below it and any other head reads every unit of ``fc``.

    ValueError when ``fraction`` leaves a layer with no unit in the column or none outside it.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"reserve fraction {fraction!r} is not accepted: use 0 < fraction < 1")
    weights = [net.trunk.get_submodule(name).get_parameter("weight") for name in TRUNK_LAYERS]
    widths = [int(w.shape[0]) for w in weights]  # output units: channels, or features of fc
    reserved = [round(fraction * w) for w in widths]
    for name, w, r in zip(TRUNK_LAYERS, widths, reserved, strict=True):
        if not 0 < r < w:
            raise ValueError(
                f"reserve fraction {fraction!r} sets apart {r} of the {w} units of trunk.{name}; "
                "it must leave at least one unit on each side"
            )
    masks: dict[str, torch.Tensor] = {}
    for below, name in enumerate(TRUNK_LAYERS[1:]):
        weight = weights[below + 1]
        keep = torch.ones_like(weight, dtype=torch.bool)
        # Input columns of the lower layer's column units; the flatten before fc is channel-major.
        per_unit = int(weight.shape[1]) // widths[below]
        first_in = (widths[below] - reserved[below]) * per_unit
        keep[: widths[below + 1] - reserved[below + 1], first_in:] = False
        masks[f"trunk.{name}.weight"] = keep
    first_in = widths[-1] - reserved[-1]
    for head in heads:
        for kind, layer in (("policy", net.policy_head(head)), ("value", net.value_head(head))):
            keep = torch.ones_like(layer.weight, dtype=torch.bool)
            keep[:, first_in:] = False
            masks[f"heads.{kind}.{head}.weight"] = keep
    return masks
