"""Why was game 1 forgotten? Compare a run's network after game 1 with its final one, on game 1.

For a finished (or running) BLIP run of a sequence, this plays game 1 with the network saved
after game 1 (``checkpoints/after-game-1.pt``, sampled actions, ``--steps`` steps of 8 envs)
and, on those states, compares it with the latest network (``checkpoints/latest.pt``):

* how many units of the linear layer (``fc``) are dead (ReLU output 0) on every state, before
  and after the later games, and how many came back;
* how much the game-1 head's logits moved, and how much of that comes from revived units;
* the policy's action distribution before and after, and the KL between them;
* the bits BLIP froze after game 1: per conv layer, and in the ``fc`` rows of the units that
  game 1 uses (alive) and does not use (dead);
* how far the features of the alive units moved (relative norm of the change).

Reads the run's ``config.json`` for the games, the network and the Atari protocol::

    OMP_NUM_THREADS=1 python benchmarks/forgetting/diagnose_freeze.py \\
        runs/forgetting/evidence/freeway-boxing/blip-s2-500000
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from blip_rl.atari.config import AtariConfig
from blip_rl.atari.envs import make_eval_envs
from blip_rl.config import RunConfig
from blip_rl.continual import load_checkpoint
from blip_rl.errors import UsageError, run_cli
from blip_rl.files import read_json
from blip_rl.nets import ActorCritic, NetConfig


def load_net(path: Path, net_config: NetConfig) -> tuple[ActorCritic, dict[str, torch.Tensor]]:
    state = load_checkpoint(path)["net"]
    heads = sum(1 for k in state if k.startswith("heads.policy.") and k.endswith(".weight"))
    counts = [int(state[f"heads.policy.{k}.weight"].shape[0]) for k in range(heads)]
    net = ActorCritic(counts, net_config)
    net.load_state_dict(state)
    return net.eval(), state


def game_states(net: ActorCritic, game: str, atari: AtariConfig, steps: int) -> torch.Tensor:
    """States of ``game`` visited by ``net``'s head 0 with sampled actions (8 envs)."""
    env = make_eval_envs(game, 8, seed=123, config=atari)
    torch.manual_seed(0)
    try:
        obs, _ = env.reset()
        seen = []
        with torch.no_grad():
            for _ in range(steps):
                seen.append(obs.copy())
                logits, _ = net(torch.from_numpy(obs), 0)
                obs, *_ = env.step(torch.distributions.Categorical(logits=logits).sample().numpy())
    finally:
        env.close()
    return torch.from_numpy(np.concatenate(seen))


def _probs(p: torch.Tensor) -> str:
    return "[" + ", ".join(f"{x:.2f}" for x in p.mean(0).tolist()) + "]"


def diagnose(run: Path, steps: int) -> str:
    if not (run / "config.json").is_file():
        raise UsageError(f"{run} is not a run folder (no config.json)")
    config = RunConfig.from_json(read_json(run / "config.json"))
    game, net_config, atari = config.games[0], config.net, config.atari
    if not net_config.blip:
        raise UsageError(f"{run} is not a BLIP-network run (net.blip is false)")
    before, state = load_net(run / "checkpoints" / "after-game-1.pt", net_config)
    after, _ = load_net(run / "checkpoints" / "latest.pt", net_config)
    states = game_states(before, game, atari, steps)
    with torch.no_grad():
        h1, h2 = before.features(states), after.features(states)
        dead1, dead2 = (h1 <= 0).all(0), (h2 <= 0).all(0)
        revived, alive = dead1 & ~dead2, ~dead1
        l1, _ = before(states, 0)
        l2, _ = after(states, 0)
        head = after.policy_head(0).weight
        head_moved = (before.policy_head(0).weight - head).abs().max().item()
        from_revived = h2[:, revived] @ head[:, revived].T
        p1, p2 = torch.softmax(l1.float(), -1), torch.softmax(l2.float(), -1)
        kl = (p1 * (p1.clamp_min(1e-12).log() - p2.clamp_min(1e-12).log())).sum(-1).mean()
        moved = (h2 - h1)[:, alive].norm() / h1[:, alive].norm().clamp_min(1e-12)
    bits = state["trunk.fc.weight_bits"].float()
    conv = [state[f"trunk.conv{i}.weight_bits"].float().mean().item() for i in (1, 2, 3)]
    return "\n".join(
        [
            f"{run}: {len(states)} states of {game} (game 1), after game 1 -> latest",
            f"  fc units dead on them: {dead1.float().mean():.2f} -> {dead2.float().mean():.2f} "
            f"(revived {revived.float().mean():.2f})",
            f"  game-1 policy head moved by at most {head_moved:.1e}; mean |logit change| "
            f"{(l2 - l1).abs().mean():.3f}, through revived units {from_revived.abs().mean():.3f}",
            f"  action probabilities {_probs(p1)} -> {_probs(p2)}; KL(before || after) {kl:.3f}",
            f"  bits frozen after game 1: conv1-3 {[round(c, 2) for c in conv]}, fc rows of alive "
            f"units {bits[alive].mean():.2f}, of dead units {bits[dead1].mean():.2f}",
            f"  features of the alive units moved by {moved:.2f} (relative norm)",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="BLIP run folders of a sequence")
    ap.add_argument("--steps", type=int, default=300, help="agent steps of 8 envs (default 300)")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error(f"invalid --steps {args.steps}; expected an integer >= 1")
    torch.set_num_threads(1)
    for run in args.runs:
        print(diagnose(run, args.steps), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
