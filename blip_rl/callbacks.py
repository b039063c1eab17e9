"""What attaches to the training loop of a run (SB3-style callbacks).

:meth:`PPO.train <blip_rl.ppo.PPO.train>` is the one training loop; after every iteration (one
rollout and one update) :class:`~blip_rl.continual.ContinualRun` calls ``on_iteration`` of each
callback of the game, in order, with the run, the game's context and the iteration's result:

* :class:`KeepFisherStates` copies the rollouts of the game's last ``states_to_keep()`` steps;
* :class:`TrainLog` writes episode returns, losses and speed, and moves the progress bar;
* :class:`MethodHooks` runs the continual method's ``after_update(ctx)``;
* :class:`PeriodicEval` evaluates every game every ``eval_every`` global steps;
* :class:`PeriodicCheckpoint` writes a checkpoint every ``checkpoint_every`` global steps.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from blip_rl.methods import GameContext
from blip_rl.ppo import IterationResult

if TYPE_CHECKING:
    from blip_rl.continual import ContinualRun

__all__ = [
    "KeepFisherStates",
    "MethodHooks",
    "PeriodicCheckpoint",
    "PeriodicEval",
    "RunCallback",
    "TrainLog",
]


class RunCallback:
    """Something that attaches to the training loop (SB3-style): called after every PPO
    iteration (``on_iteration``) with the run, the game's context and the iteration's result."""

    def on_iteration(self, run: ContinualRun, ctx: GameContext, result: IterationResult) -> None:
        """After one rollout and update."""


class KeepFisherStates(RunCallback):
    """Copies of the game's last rollouts (the storage is overwritten each iteration), kept
    only within the game's last ``fisher_states`` steps: the states a method's Fisher uses."""

    def __init__(self, keep: int, last_step: int) -> None:
        self.keep, self.last_step = keep, last_step
        self.states: list[torch.Tensor] = []

    def on_iteration(self, run: ContinualRun, ctx: GameContext, result: IterationResult) -> None:
        if self.last_step - result.global_step < self.keep:
            self.states.append(ctx.ppo.storage.obs.flatten(0, 1).clone())


class TrainLog(RunCallback):
    """Episode returns, losses and speed to TensorBoard; the progress bar."""

    def __init__(self, bar: tqdm) -> None:
        self.bar = bar
        self.last_return = math.nan

    def on_iteration(self, run: ContinualRun, ctx: GameContext, result: IterationResult) -> None:
        step, log = run.progress.global_step, run.log
        assert log is not None
        for ep in result.episodes:
            log.writer.add_scalar(f"train/{ctx.game.name}/episode_return", ep.score, step)
            self.last_return = ep.score
        log.losses(result.losses, step)
        log.scalars({"perf/steps_per_s": result.steps_per_s}, step)
        self.bar.update(run.ppo_config.batch_size)
        self.bar.set_postfix(
            sps=f"{result.steps_per_s:.0f}", ret=f"{self.last_return:.1f}", refresh=False
        )


class MethodHooks(RunCallback):
    def on_iteration(self, run: ContinualRun, ctx: GameContext, result: IterationResult) -> None:
        run.method.after_update(ctx)


class PeriodicEval(RunCallback):
    """Every ``eval_every`` global steps: every game of the sequence (not at the game's very
    end, where the after-game evaluation follows)."""

    def __init__(self, end: int) -> None:
        self.end = end

    def on_iteration(self, run: ContinualRun, ctx: GameContext, result: IterationResult) -> None:
        prog, every = run.progress, run.cfg.eval_every
        if prog.next_eval > 0 and prog.global_step >= prog.next_eval:
            while prog.next_eval <= prog.global_step:
                prog.next_eval += every
            if result.global_step < self.end:
                run.evaluate_all(after_game=None)


class PeriodicCheckpoint(RunCallback):
    """Every ``checkpoint_every`` global steps (not at the game's end: the after-game one)."""

    def __init__(self, end: int) -> None:
        self.end = end

    def on_iteration(self, run: ContinualRun, ctx: GameContext, result: IterationResult) -> None:
        prog, every = run.progress, run.cfg.checkpoint_every
        if every > 0 and prog.global_step >= prog.next_checkpoint and result.global_step < self.end:
            while prog.next_checkpoint <= prog.global_step:
                prog.next_checkpoint += every
            run.checkpoint(ctx.ppo)
