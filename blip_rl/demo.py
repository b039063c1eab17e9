"""A two-task demo of the BLIP core, no RL: how much of task A survives training on task B.

Two supervised classification tasks share an MLP trunk, each with its own head (as each Atari game
has its own heads in the RL agent). The model learns task A, then task B. Plain fine-tuning lets B
overwrite the trunk; with BLIP the bits that A's Fisher information marks as important are frozen
after A, and A's loss stays close to its end-of-A value.

    python -m blip_rl.demo
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from blip_rl.errors import ArgumentParser, cli
from blip_rl.fisher import estimate_fisher
from blip_rl.quant import BlipLinear, attach, blip_stats, freeze


@dataclass
class TwoTaskResult:
    """Task-A cross-entropy at the end of A and after B, and task-B loss at the end of B."""

    loss_a_after_a: float
    loss_a_after_b: float
    loss_b_after_b: float
    mean_bits: float

    @property
    def forgetting(self) -> float:
        """Increase of task A's loss caused by training on B."""
        return self.loss_a_after_b - self.loss_a_after_a


class TwoHeadMLP(nn.Module):
    def __init__(self, dim: int = 16, hidden: int = 64, classes: int = 4) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            BlipLinear(dim, hidden), nn.Tanh(), BlipLinear(hidden, hidden), nn.Tanh()
        )
        self.heads = nn.ModuleList([BlipLinear(hidden, classes) for _ in range(2)])

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.heads[task](self.trunk(x))


def make_task(gen: torch.Generator, n: int = 2048, dim: int = 16, classes: int = 4):
    """Labels of a random two-layer teacher network on Gaussian inputs."""
    x = torch.randn(n, dim, generator=gen)
    w1 = torch.randn(dim, 32, generator=gen)
    w2 = torch.randn(32, classes, generator=gen)
    y = (torch.tanh(x @ w1) @ w2).argmax(1)
    return x, y


def run_two_tasks(use_blip: bool, seed: int = 0, epochs: int = 60) -> TwoTaskResult:
    """Train task A then task B, with BLIP freezing after A or plain fine-tuning."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    tasks = [make_task(gen), make_task(gen)]
    model = TwoHeadMLP()
    ce = nn.CrossEntropyLoss()

    def loss_on(task: int) -> float:
        x, y = tasks[task]
        with torch.no_grad():
            return float(ce(model(x, task), y))

    def train(task: int) -> None:
        x, y = tasks[task]
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        if use_blip:
            attach(opt, model)
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=gen).split(128):
                opt.zero_grad()
                ce(model(x[idx], task), y[idx]).backward()
                opt.step()

    train(0)
    loss_a_after_a = loss_on(0)
    if use_blip:
        x, _ = tasks[0]
        with torch.no_grad():
            sampled = torch.distributions.Categorical(logits=model(x, 0)).sample()

        def loglik(m: nn.Module, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
            return torch.log_softmax(m(xs, 0), -1).gather(1, ys[:, None]).squeeze(1)

        freeze(model, estimate_fisher(model, loglik, (x, sampled)))
    train(1)
    stats = blip_stats(model)
    total = sum(s.numel for s in stats)
    return TwoTaskResult(
        loss_a_after_a=loss_a_after_a,
        loss_a_after_b=loss_on(0),
        loss_b_after_b=loss_on(1),
        mean_bits=sum(s.mean_bits * s.numel for s in stats) / total,
    )


@cli
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m blip_rl.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print("Two supervised tasks, shared BLIP trunk, one head per task; train A, then B.\n")
    print(f"{'':<12}{'A loss after A':>16}{'A loss after B':>16}{'B loss':>9}{'mean bits':>11}")
    rows = {}
    for label, use_blip in (("fine-tune", False), ("BLIP", True)):
        r = run_two_tasks(use_blip, seed=args.seed)
        rows[label] = r
        print(
            f"{label:<12}{r.loss_a_after_a:>16.3f}{r.loss_a_after_b:>16.3f}"
            f"{r.loss_b_after_b:>9.3f}{r.mean_bits:>11.2f}"
        )
    ft, bl = rows["fine-tune"], rows["BLIP"]
    print(
        "\nForgetting of A (loss increase): "
        f"fine-tune {ft.forgetting:+.3f}, BLIP {bl.forgetting:+.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
