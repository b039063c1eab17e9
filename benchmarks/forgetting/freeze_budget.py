"""How much of the network one game freezes, per setting, from one after-game checkpoint.

Plasticity is what BLIP pays for retention: every bit frozen after game 1 is a bit game 2 cannot
use. This script takes a run's checkpoint after game ``k`` (whose weights are the ones the freeze
saw), plays ``--states`` states of that game with its policy, estimates the policy and value
Fisher terms once, and reports the frozen bits that each (``f_prior``, ``value_fisher_coef``)
would give on a fresh network (nothing frozen before): mean bits per layer out of ``max_bits``.
No training: it is a cheap first look at the calibration knobs, not a retention measurement.

    python benchmarks/forgetting/freeze_budget.py \\
        runs/forgetting/evidence/krull-freeway/blip-s1-100000/checkpoints/after-game-1.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from blip_rl.config import RunConfig
from blip_rl.continual import ContinualRun, load_checkpoint
from blip_rl.methods.base import rollout_fisher
from blip_rl.nets import ActorCritic
from blip_rl.quant import REFERENCE_FISHER_SCALE, blip_layers


def bits_for(fisher: torch.Tensor, prior: float, max_bits: int) -> torch.Tensor:
    """Bits the first freeze gives (``quant.BlipLayer._freeze`` with ``t = 0``)."""
    new = (prior + fisher.double()) / 2
    gain = torch.ceil(0.5 * torch.log2(new / prior)).clamp(min=0)
    return torch.nan_to_num(gain, nan=0.0, posinf=float(max_bits)).clamp(max=max_bits)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="RUN/checkpoints/after-game-K.pt")
    parser.add_argument("--states", type=int, default=2048)
    parser.add_argument("--priors", default="5e-18,1e-16,1e-14,1e-12")
    parser.add_argument("--value-coefs", default="1,0.1,0.01,0")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ckpt = load_checkpoint(args.checkpoint)
    config = RunConfig.from_json(ckpt["config"])
    run_dir = args.checkpoint.parent.parent
    k = ckpt["progress"]["game_index"]
    run = ContinualRun(run_dir, config, progress=False)  # the run's nets and envs, not trained
    run.net.load_state_dict(ckpt["net"])
    head = run.head_of[k]
    states = run._policy_states(k, args.states)
    terms = {}
    for name, coef in (("policy", 0.0), ("policy+value", 1.0)):
        terms[name] = rollout_fisher(run.net, head, states, value_coef=coef)
    value = {n: terms["policy+value"][n] - terms["policy"][n] for n in terms["policy"]}
    net: ActorCritic = run.net
    max_bits = config.net.max_bits
    layers = [(n, layer) for n, layer in blip_layers(net)]
    print(f"# {args.checkpoint} (game {k + 1}: {config.games[k]}), {len(states)} states")
    print("# mean frozen bits per scalar after this game's freeze, on a network with none frozen")
    names = [n for n, _ in layers]
    print("| f_prior | value_fisher_coef | " + " | ".join(names) + " | all |")
    print("|---" * (len(names) + 3) + "|")
    for prior in (float(p) for p in args.priors.split(",")):
        for coef in (float(c) for c in args.value_coefs.split(",")):
            cells, total, count = [], 0.0, 0
            for name, layer in layers:
                n = layer._fan()
                layer_prior = prior * REFERENCE_FISHER_SCALE * n
                bits = []
                for p in layer.quantized_names:
                    key = f"{name}.{p}"
                    f = terms["policy"][key] + coef * value[key]
                    b = bits_for(f, layer_prior, max_bits)
                    bits.append(b.flatten())
                b = torch.cat(bits)
                cells.append(f"{float(b.mean()):.1f}")
                total += float(b.sum())
                count += b.numel()
            print(f"| {prior:g} | {coef:g} | " + " | ".join(cells) + f" | {total / count:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
