"""Cost of the BLIP core on a Nature-CNN-sized actor-critic (issue 2's targets).

    python benchmarks/bench_core.py [--repeats 30] [--states 4096]

Reports, in one run:
* a PPO-sized minibatch update (256 states 84x84x4: forward, PPO-like loss, backward, grad clip,
  Adam step) with the BLIP constraint attached vs detached, interleaved, median of each, in fp32
  and with bf16 autocast; target: the constraint adds at most 5%;
* Fisher (policy + value terms) over 4096 states with the layerwise path; target: at most 20 s;
  plus torch.func vmap on a few states for comparison;
* persistent BLIP memory per parameter; target: at most 8 bytes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from blip_rl import BlipConv2d, BlipLinear, attach, blip_stats, estimate_fisher, freeze


class NatureAC(nn.Module):
    """3 conv layers + linear 512 + policy and value heads: about 1.7M parameters."""

    def __init__(self, actions: int = 6) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            BlipConv2d(4, 32, 8, stride=4),
            nn.ReLU(),
            BlipConv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            BlipConv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
            BlipLinear(3136, 512),
            nn.ReLU(),
        )
        self.pi = BlipLinear(512, actions)
        self.v = BlipLinear(512, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x.float() / 255.0)
        return self.pi(h), self.v(h).squeeze(-1)


def policy_ll(m: nn.Module, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    logits, _ = m(x)
    return torch.log_softmax(logits, -1).gather(1, a[:, None]).squeeze(1)


def both_ll(m: nn.Module, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Policy term log pi(a|s) and value term V(s) (unit-variance Gaussian) from one forward."""
    logits, value = m(x)
    logp = torch.log_softmax(logits, -1).gather(1, a[:, None]).squeeze(1)
    return torch.stack([logp, value], 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--states", type=int, default=4096)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = NatureAC()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters, torch {torch.__version__}, 2 threads")

    states = torch.randint(0, 256, (args.states, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        actions = torch.distributions.Categorical(logits=model(states[:512])[0]).sample()
    actions = torch.cat([actions] * (args.states // 512 + 1))[: args.states]

    # --- Fisher over the states, then a freeze (so the constraint has real frozen bits).
    t0 = time.perf_counter()
    fisher = estimate_fisher(model, both_ll, (states, actions), chunk_size=256)
    t_fisher = time.perf_counter() - t0
    n_vmap = 32
    t0 = time.perf_counter()
    estimate_fisher(
        model, policy_ll, (states[:n_vmap], actions[:n_vmap]), chunk_size=16, method="vmap"
    )
    t_vmap = (time.perf_counter() - t0) / n_vmap * args.states
    t0 = time.perf_counter()
    freeze(model, fisher)
    t_freeze = time.perf_counter() - t0
    stats = blip_stats(model)
    mean_bits = sum(s.mean_bits * s.numel for s in stats) / n_params
    frac = sum(s.frac_frozen * s.numel for s in stats) / n_params
    print(
        f"Fisher (policy + value) over {args.states} states, layerwise: {t_fisher:.2f} s "
        f"(target <= 20 s); torch.func vmap, extrapolated from {n_vmap} states: {t_vmap:.1f} s"
    )
    print(
        f"freeze: {t_freeze:.2f} s; after one freeze: mean bits {mean_bits:.2f}, "
        f"{frac:.1%} of scalars frozen"
    )
    persistent = max(s.persistent_bytes_per_param for s in stats)
    cache = max(s.cache_bytes_per_param for s in stats)
    print(
        f"memory: {persistent:.0f} bytes/parameter persistent (target <= 8; constant in freezes), "
        f"+ {cache:.0f} bytes/parameter derived cache (not saved)"
    )

    # --- minibatch update with and without the constraint, interleaved.
    opt = torch.optim.Adam(model.parameters(), lr=2.5e-4, eps=1e-5)
    mb = states[:256]
    mb_actions = actions[:256]
    adv = torch.randn(256)
    ret = torch.randn(256)

    def update(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, value = model(mb)
        logp = torch.log_softmax(logits.float(), -1).gather(1, mb_actions[:, None]).squeeze(1)
        loss = -(logp * adv).mean() + 0.5 * ((value.float() - ret) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()

    for bf16 in (False, True):
        for _ in range(3):
            update(bf16)
        times: dict[bool, list[float]] = {False: [], True: []}
        for i in range(args.repeats):
            for with_blip in (i % 2 == 0, i % 2 == 1):
                handle = attach(opt, model) if with_blip else None
                t0 = time.perf_counter()
                update(bf16)
                times[with_blip].append(time.perf_counter() - t0)
                if handle is not None:
                    handle.remove()
        base = statistics.median(times[False])
        blip = statistics.median(times[True])
        t0 = time.perf_counter()
        for _ in range(20):
            for m in model.modules():
                if isinstance(m, BlipLinear | BlipConv2d):
                    m.constrain_()
        t_c = (time.perf_counter() - t0) / 20
        label = "bf16 autocast" if bf16 else "fp32"
        print(
            f"minibatch update (256 states, {label}): {base * 1e3:.1f} ms without constraint, "
            f"{blip * 1e3:.1f} ms with; overhead {blip / base - 1:+.1%} (target <= +5%); "
            f"constrain_ alone {t_c * 1e3:.2f} ms = {t_c / base:.1%} of the update"
        )


if __name__ == "__main__":
    main()
