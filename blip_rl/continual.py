"""The loop over games: train, protect, evaluate every game, log, checkpoint, resume.

For each game of the sequence, in order:

1. a fresh PPO learner (new Adam state: optimizer moments from the previous game would push
   the new game's first updates in the old game's directions; every game starts at the full
   learning rate and anneals to 0 within its own budget) on the game's training envs, with the
   method's ``before_game`` hook (BLIP attaches its constraint to the optimizer here);
2. ``steps_per_game`` env steps of PPO (less the method's ``reserved_steps``) in the one training
   loop, :meth:`PPO.train <blip_rl.ppo.PPO.train>`, whose per-iteration callbacks keep the
   Fisher states, log, run the method's ``after_update``, evaluate every game of the sequence
   every ``eval_every`` global steps and checkpoint every ``checkpoint_every`` steps;
3. the method's ``after_game`` (BLIP: Fisher from the game's last ``fisher_states`` training
   states, then bit freezing; PackNet: pruning, then its reserved steps through ``ctx.train``);
4. evaluation of every game: row ``i`` of the matrix ``R[i][j]``; forgetting is logged;
5. a checkpoint.

Run folder ``runs/<name>/``: ``config.json``, TensorBoard event files, ``checkpoints/latest.pt``
(rewritten atomically) and ``checkpoints/after-game-<k>.pt``, ``evals.csv`` and ``matrix.csv``,
``metrics.json`` (updated after each game) and ``summary.json`` (at the end; both strict JSON,
``null`` where a value is undefined). Every file is written to a temporary name and renamed, so
a kill at any moment leaves the previous version.

Branch (``--from-checkpoint RUN/checkpoints/after-game-K.pt``): a new run folder starts from
another run's state after game ``K`` (network, history, position) and trains games ``K+1..``;
its method is the source's or ``finetune`` (e.g. BLIP's game 1 trained once, then fine-tuning
and BLIP continue from the same state).

Resume (``--resume``): the last checkpoint restores the network with its BLIP state, the
optimizer and learning-rate schedule, the method's state, the RNG states, the evaluation history
and the position (game, env steps). Training continues at that step with freshly reset envs
(emulator states are not saved); steps after the checkpoint are lost and done again, and
TensorBoard drops the killed run's events after that step (``purge_step``; the events at the
checkpoint's own step were logged before it was written, and are kept).

Videos (``--capture-video``, :mod:`blip_rl.video`): right after the after-game evaluation, one
episode of every game is recorded (on its own RNG: the run's training is the same with or
without videos). W&B (``--track``, :mod:`blip_rl.wandb_log`): the TensorBoard log mirrored.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from blip_rl import atari, metrics
from blip_rl.callbacks import (
    KeepFisherStates,
    MethodHooks,
    PeriodicCheckpoint,
    PeriodicEval,
    RunCallback,
    TrainLog,
)
from blip_rl.config import RunConfig
from blip_rl.errors import UsageError
from blip_rl.files import atomic_write, write_json
from blip_rl.methods import METHODS, ContinualMethod, GameContext
from blip_rl.nets import ActorCritic
from blip_rl.ppo import PPO, IterationResult, autocast_dtype
from blip_rl.tblog import TBLogger
from blip_rl.video import VideoCapture

__all__ = ["CHECKPOINT_FORMAT", "ContinualRun", "check_branch", "load_checkpoint"]

CHECKPOINT_FORMAT = "blip-rl-checkpoint-1"


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint; UsageError (one line) when it is missing, corrupt or not ours."""
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's corrupt file
        raise UsageError(f"corrupt checkpoint {path}: {type(exc).__name__}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"{path} is not a blip-rl checkpoint")
    for key in ("progress", "net", "method", "rng", "evals", "matrix"):
        if key not in ckpt:
            raise UsageError(f"corrupt checkpoint {path}: no {key!r} entry")
    return ckpt


BLIP_STATE_SUFFIXES = ("_bits", "_prefix", "_fisher", "freezes")
"""Buffer names of what BLIP's freezes wrote (frozen-bit counts and prefixes, running Fisher)."""


def is_trained_point(ckpt: dict[str, Any]) -> bool:
    """Whether ``ckpt`` was written between a game's training and its end-of-game step (BLIP's
    freeze, EWC's Fisher, PackNet's pruning): ``trained-game-1.pt``, or a ``latest.pt`` of a run
    killed during that step."""
    p = ckpt["progress"]
    return bool(p.get("game_trained")) and not p.get("game_done")


def main_steps(config: RunConfig, method: ContinualMethod | None = None) -> int:
    """Env steps of a game's main training: the budget less what the method (``config``'s,
    or the given instance of it) reserves for its end-of-game step (PackNet's retraining),
    keeping at least one rollout."""
    method = method or METHODS[config.method](config.method_config)
    reserved = int(method.reserved_steps(config.steps_per_game))
    batch = config.ppo.batch_size
    return config.steps_per_game - min(max(reserved, 0), max(config.steps_per_game - batch, 0))


def check_branch(config: RunConfig, source: dict[str, Any]) -> None:
    """UsageError unless a run with ``config`` can start from the checkpoint ``source``
    (``--from-checkpoint``: ``after-game-K.pt`` or ``trained-game-1.pt``): the same games (after
    ``trained-game-1.pt`` only the first), protocol and evaluation, and a method that can take
    over the source's state (the same method, or ``finetune``; any method whose game-1
    training is the source's from ``trained-game-1.pt``). ``docs/configuration.md`` has the
    rules and why."""
    src = RunConfig.from_json(source["config"])
    trained = is_trained_point(source)
    done = source["progress"]["game_index"] + (0 if trained else 1)  # games the source ended
    where = f"--from-checkpoint {config.branched_from}"
    if done == 0:
        # Before game 1's end-of-game step no matrix row exists yet: the later games are free.
        if config.games[:1] != src.games[:1]:
            raise UsageError(
                f"{where}: a branch from trained-game-1.pt starts with the source run's first "
                f"game ({src.games[0]}), not {config.games[0]}"
            )
    elif config.games != src.games or len(config.games) <= done:
        # Same games: the source's matrix rows and curves (every game of the sequence is
        # evaluated after every game) are the branch's own first rows.
        raise UsageError(
            f"{where}: a branch plays the source run's games ({', '.join(src.games)}) and needs "
            f"at least one left after game {done} ({', '.join(config.games)} given); other "
            "later games can start from the source's trained-game-1.pt"
        )
    if config.method not in (src.method, "finetune") and done > 0:
        raise UsageError(
            f"{where}: method {config.method} cannot continue a {src.method} run (its state "
            f"after game {done} is missing); use an agent of method {src.method} or finetune"
        )
    if trained:
        # The branch runs its own end-of-game step on the source's training of that game, so
        # the game's main training must have been the branch's too.
        if main_steps(config) != main_steps(src):
            raise UsageError(
                f"{where}: this agent trains game {done + 1} for {main_steps(config)} env steps "
                f"before its end-of-game step, the source for {main_steps(src)}; a branch from "
                "trained-game-1.pt needs the same (same --steps-per-game, and a method that "
                "reserves the same steps)"
            )
        for name in ("num_envs", "num_steps"):
            if getattr(config.ppo, name) != getattr(src.ppo, name):
                raise UsageError(f"{where}: {name} differs from the source run's")
    for name in ("atari", "eval_episodes", "shared_head", "seed"):
        if getattr(config, name) != getattr(src, name):
            raise UsageError(
                f"{where}: {name} differs from the source run's ({getattr(src, name)!r}); "
                "a branch keeps it so that its matrix rows compare"
            )
    bit_settings = (src.net.max_bits, src.net.f_prior, src.net.conv_prior)
    if (
        config.net.blip
        and src.net.blip
        and (config.net.max_bits, config.net.f_prior, config.net.conv_prior) != bit_settings
        and not (trained and done == 0)
    ):
        # Frozen bits and the running-mean Fisher (seeded with the prior) are carried over
        # after a game; before the first freeze (trained-game-1.pt) nothing is, so they may differ.
        raise UsageError(
            f"{where}: max_bits, f_prior and the convolutions' prior {bit_settings} are fixed "
            "once a game was frozen; to compare other values, branch from the source's "
            "trained-game-1.pt"
        )
    reserve = getattr(config.method_config, "reserve", 0.0)
    src_reserve = getattr(src.method_config, "reserve", 0.0) if src.method == "blip" else 0.0
    if config.method == "blip" and reserve != src_reserve:
        # Game 1 trained with the units it left free; a freeze cannot set them apart later.
        raise UsageError(
            f"{where}: --reserve {reserve:g} differs from the source run's ({src_reserve:g}), "
            "with which game 1 was trained"
        )
    shapes = (src.net.channels, src.net.hidden)
    if (config.net.channels, config.net.hidden) != shapes:
        raise UsageError(f"{where}: the network shape differs from the source run's {shapes}")


@dataclass
class _Progress:
    game_index: int = 0
    """Game being trained (or the last one finished when ``game_done``)."""
    step_in_game: int = 0
    global_step: int = 0
    game_done: bool = False
    """The game at ``game_index`` is finished (frozen, evaluated)."""
    game_trained: bool = False
    """The main training of the game at ``game_index`` is over; the method's end-of-game step
    (BLIP's freeze, EWC's Fisher, PackNet's pruning) comes next."""
    next_eval: int = 0
    next_checkpoint: int = 0
    wall_time: float = 0.0
    """Seconds spent in this run so far, over all sessions."""
    resumes: int = 0


@dataclass
class _History:
    evals: list[dict[str, Any]] = field(default_factory=list)
    matrix: list[list[float]] = field(default_factory=list)
    after_game: list[dict[str, float]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------- run
class ContinualRun:
    """One run: a game sequence, an agent, a run folder.

    Args:
        run_dir: the run folder (created by the caller for a new run; holds config.json).
        config: the run's configuration.
        resume: continue from the folder's last checkpoint.
        progress: show tqdm bars.
        branch: an after-game checkpoint of another run to start from (``--from-checkpoint``;
            check it first with :func:`check_branch`).
    """

    def __init__(
        self,
        run_dir: Path,
        config: RunConfig,
        resume: bool = False,
        progress: bool = True,
        branch: dict[str, Any] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.cfg = config
        self.show_progress = progress
        self.games = [atari.resolve_game(g) for g in config.games]
        self.atari_config = config.atari
        self.ppo_config = config.ppo
        self.device = torch.device(config.device)
        # Heads: one per distinct game (a game that returns uses its head again) or one shared.
        order = list(dict.fromkeys(g.name for g in self.games))
        by_name = {g.name: g for g in self.games}
        if config.shared_head:
            self.head_of = [0] * len(self.games)
            counts = [atari.FULL_ACTION_COUNT]
        else:
            self.head_of = [order.index(g.name) for g in self.games]
            full = self.atari_config.full_action_space
            counts = [
                atari.FULL_ACTION_COUNT if full else by_name[n].minimal_actions for n in order
            ]
        self.eval_names = order
        self.progress = _Progress()
        self.history = _History()
        self.log: TBLogger | None = None
        # A run killed before its first checkpoint (written right at the start) has nothing to
        # resume from: it starts over in its folder, dropping the few events it logged.
        latest = self.ckpt_dir / "latest.pt"
        self._restart = resume and not latest.exists()
        checkpoint = load_checkpoint(latest) if resume and not self._restart else None
        _seed_everything(config.seed)
        self.net = ActorCritic(counts, config.net).to(self.device)
        self.method: ContinualMethod = METHODS[config.method](config.method_config)
        self.method.setup(self.net)
        self.ppo_state: dict[str, Any] | None = None
        self._branched = False
        if checkpoint is not None:
            self._restore(checkpoint)
        elif branch is not None:
            self._branch(branch)
        self._started, self._wall0 = time.perf_counter(), self.progress.wall_time

    # ------------------------------------------------------------------------------ state
    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def _restore(self, ckpt: dict[str, Any]) -> None:
        try:
            self.net.load_state_dict(ckpt["net"])
            self.method.load_state_dict(ckpt["method"])
            self.progress = _Progress(**ckpt["progress"])
            self.history = _History(
                evals=list(ckpt["evals"]),
                matrix=[list(r) for r in ckpt["matrix"]],
                after_game=list(ckpt.get("after_game", [])),
            )
            torch.set_rng_state(ckpt["rng"]["torch"])
            if ckpt["rng"].get("cuda") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
            np.random.set_state(ckpt["rng"]["numpy"])  # noqa: NPY002 - global state
            random.setstate(ckpt["rng"]["python"])
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise UsageError(f"corrupt checkpoint in {self.ckpt_dir}: {first}") from None
        self.ppo_state = ckpt.get("ppo")
        self.progress.resumes += 1

    def _branch(self, ckpt: dict[str, Any]) -> None:
        """Start from another run's after-game (or trained-game) state: the network's
        parameters (and BLIP state where both networks have it), the method's state when it is
        the same method, the history and the position."""
        own = self.net.state_dict()
        src = ckpt["net"]
        # Before game 1's end-of-game step (trained-game-1.pt) nothing is protected and only
        # the trunk and game 1's heads were trained: the rest (BLIP state seeded with the
        # branch's own prior, the heads of the branch's later games, the method's state) is
        # the branch's own.
        trained = is_trained_point(ckpt)
        first = trained and ckpt["progress"]["game_index"] == 0
        if first:
            head = f".{self.head_of[0]}."
            own = {
                k: v
                for k, v in own.items()
                if not k.endswith(BLIP_STATE_SUFFIXES) and (not k.startswith("heads.") or head in k)
            }
        missing = [k for k, _ in self.net.named_parameters() if k in own and k not in src]
        if missing:
            raise UsageError(f"--from-checkpoint: the source network has no {missing[0]}")
        try:
            self.net.load_state_dict({k: v for k, v in src.items() if k in own}, strict=False)
        except RuntimeError as exc:
            raise UsageError(f"--from-checkpoint: {str(exc).splitlines()[0][:160]}") from None
        if ckpt["config"].get("method") == self.cfg.method and not first:
            self.method.load_state_dict(ckpt["method"])
        p = ckpt["progress"]
        self.progress = _Progress(
            game_index=p["game_index"],
            step_in_game=p["step_in_game"],
            global_step=p["global_step"],
            game_done=not trained,
            game_trained=trained,
            next_eval=p["next_eval"],
            next_checkpoint=p["next_checkpoint"],
        )
        if trained:  # the game's training is over: its PPO state, so none is trained again
            self.ppo_state = dict(ckpt["ppo"])
            if ckpt["config"]["games"] != self.cfg.games:  # other heads: other Adam moments
                del self.ppo_state["optimizer"]
        self.history = _History(  # the curves of the branch's games
            evals=[e for e in ckpt["evals"] if e["game"] in self.eval_names],
            matrix=[list(r) for r in ckpt["matrix"]],
            after_game=list(ckpt.get("after_game", [])),
        )
        self._branched = True

    def _ppo_state(self, ppo: PPO | None) -> dict[str, Any] | None:
        """The learner's state, or the restored one that no learner has taken yet."""
        return ppo.state_dict() if ppo is not None else self.ppo_state

    def checkpoint(self, ppo: PPO | None, name: str | None = None) -> None:
        """Write ``checkpoints/latest.pt`` (and ``checkpoints/<name>``), atomically."""
        self.progress.wall_time = self._wall()
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_json(),
            "progress": asdict(self.progress),
            "net": self.net.state_dict(),
            "ppo": None if self.progress.game_done else self._ppo_state(ppo),
            "method": self.method.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "numpy": np.random.get_state(),  # noqa: NPY002
                "python": random.getstate(),
            },
            "evals": self.history.evals,
            "matrix": self.history.matrix,
            "after_game": self.history.after_game,
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        atomic_write(self.ckpt_dir / "latest.pt", data)
        if name is not None:
            atomic_write(self.ckpt_dir / name, data)

    # ------------------------------------------------------------------------------ evaluation
    def _autocast(self) -> torch.dtype | None:
        """The autocast dtype of training and evaluation here (None: float32)."""
        return autocast_dtype(self.ppo_config.precision, self.device)

    @contextmanager
    def _own_rng(self, seed: int | None = None) -> Iterator[None]:
        """Run the block on a fork of the global RNG, restored on exit, so the training after it
        draws the same numbers as without it; seeded with ``seed`` when given, so the policy's
        sampled actions inside depend on that seed alone (not on how much training came
        before: a branch evaluates its source's network exactly as the source did)."""
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            if seed is not None:
                torch.manual_seed(seed)
            yield

    def _policy_fn(self, head: int) -> Callable[[np.ndarray], np.ndarray]:
        net = self.net
        dtype = self._autocast()

        def act(obs: np.ndarray) -> np.ndarray:
            with (
                torch.inference_mode(),
                torch.autocast(
                    self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None
                ),
            ):
                x = torch.as_tensor(obs, device=self.device)
                action = net.get_action_and_value(x, head)[0]
            return action.cpu().numpy()

        return act

    def evaluate_all(self, after_game: int | None) -> list[float]:
        """Evaluate every distinct game; log the returns at the global step."""
        assert self.log is not None
        step = self.progress.global_step
        round_index = len({e["global_step"] for e in self.history.evals})
        results: dict[str, float] = {}
        for j, name in enumerate(self.eval_names):
            k = [g.name for g in self.games].index(name)
            seed = self.cfg.seed * 7919 + 1000 * round_index + j + 10_000
            with self._own_rng(seed):
                scores = atari.evaluate(
                    self._policy_fn(self.head_of[k]),
                    self.games[k],
                    self.cfg.eval_episodes,
                    seed=seed,
                    config=self.atari_config,
                    num_envs=min(self.cfg.eval_episodes, 8),
                )
            mean = float(np.mean(scores))
            norm = atari.human_normalized(self.games[k], mean)
            results[name] = mean
            self.log.eval_return(name, mean, norm, step)
            self.history.evals.append(
                {
                    "global_step": step,
                    "game_index": self.progress.game_index,
                    "after_game": after_game,
                    "game": name,
                    "return": mean,
                    "normalized": norm,
                    "returns": scores,
                }
            )
        self._write_evals_csv()
        return [results[g.name] for g in self.games]

    def _write_evals_csv(self) -> None:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(
            ["global_step", "game_index", "after_game", "game", "return", "normalized"]
            + ["stderr", "episodes"]
        )
        for e in self.history.evals:
            returns = e.get("returns") or []
            sem = _stderr(returns)
            w.writerow(
                [
                    e["global_step"],
                    e["game_index"],
                    "" if e["after_game"] is None else e["after_game"],
                    e["game"],
                    f"{e['return']:.4f}",
                    "" if e["normalized"] is None else f"{e['normalized']:.6f}",
                    "" if math.isnan(sem) else f"{sem:.4f}",
                    len(returns),
                ]
            )
        atomic_write(self.run_dir / "evals.csv", buf.getvalue().encode())

    def _write_matrix(self) -> None:
        names = [g.name for g in self.games]
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["after_game", *names])
        for i, row in enumerate(self.history.matrix):
            w.writerow([f"{i + 1}:{names[i]}", *(f"{v:.4f}" for v in row)])
        atomic_write(self.run_dir / "matrix.csv", buf.getvalue().encode())
        write_json(self.run_dir / "metrics.json", self._metrics())

    def _metrics(self) -> dict[str, Any]:
        names = [g.name for g in self.games]
        m = self.history.matrix
        out: dict[str, Any] = {"games": names, "matrix": m}
        if m:
            mm = metrics.matrix_metrics(m)
            refs = [atari.reference_scores(g) for g in self.games]
            norm = metrics.normalize(m, refs)
            stderr = self._matrix_stderr()
            kept = metrics.retention(
                m, [r[0] if r else None for r in refs], [stderr[j][j] for j in range(len(m))]
            )
            out.update(
                matrix_stderr=stderr,
                average_final_return=mm["average_final"],
                forgetting={names[j]: mm["forgetting"][j] for j in range(len(m) - 1)},
                average_forgetting=mm["average_forgetting"],
                backward_transfer=mm["backward_transfer"],
                retention={names[j]: v for j, v in kept.items()},
                matrix_normalized=norm,
                average_final_normalized=_nanmean(norm[-1]),
            )
        return out

    def _matrix_stderr(self) -> list[list[float]]:
        """Standard error of each matrix entry over its evaluation episodes."""
        names = [g.name for g in self.games]
        rows: list[list[float]] = []
        for i in range(len(self.history.matrix)):
            by_game = {e["game"]: e["returns"] for e in self.history.evals if e["after_game"] == i}
            rows.append([_stderr(by_game.get(name, [])) for name in names])
        return rows

    # ------------------------------------------------------------------------------ the loop
    def _fisher_states_fn(
        self, keeper: KeepFisherStates, game_index: int
    ) -> Callable[[int], torch.Tensor]:
        def get(n: int) -> torch.Tensor:
            recent = keeper.states
            states = (
                torch.cat(recent)[-n:]
                if recent
                else torch.empty(0, dtype=torch.uint8, device=self.device)
            )
            if len(states) >= n:
                return states
            extra = self._policy_states(game_index, n - len(states)).to(states.device)
            return torch.cat([states, extra]) if len(states) else extra

        return get

    def _policy_states(self, game_index: int, n: int) -> torch.Tensor:
        """``n`` training-env states visited by the current policy (no learning)."""
        num, seed = self.ppo_config.num_envs, self.cfg.seed + 50_000 + game_index
        envs = atari.make_train_envs(self.games[game_index], num, seed, self.atari_config)
        act = self._policy_fn(self.head_of[game_index])
        out = []
        try:
            with self._own_rng(seed):
                obs, _ = envs.reset(seed=seed)
                got = 0
                while got < n:
                    out.append(torch.as_tensor(obs).clone())
                    got += len(obs)
                    obs, *_ = envs.step(act(obs))
        finally:
            envs.close()
        return torch.cat(out)[:n]

    def _wall(self) -> float:
        return self._wall0 + time.perf_counter() - self._started

    def run(self) -> dict[str, Any]:
        """Train the whole sequence (or its remainder after a resume); returns the summary."""
        cfg, prog = self.cfg, self.progress
        # Everything at the checkpoint's step was logged before the checkpoint was written.
        purge = prog.global_step + 1 if prog.resumes else (0 if self._restart else None)
        tracker = None
        if cfg.track:  # before the TensorBoard writer: W&B hooks writers created after it
            from blip_rl.wandb_log import WandbTracker

            tracker = WandbTracker(self.run_dir, cfg.to_json(), cfg.wandb_project, cfg.wandb_entity)
        self.log = log = TBLogger(str(self.run_dir), purge_step=purge)
        try:
            if not prog.resumes:
                log.hparams(_flat_hparams(cfg), ["summary/average_final_return"])
                log.text("config", "```\n" + json.dumps(cfg.to_json(), indent=2) + "\n```")
                if self._branched:  # the source run's evaluations, so every curve is whole
                    for e in self.history.evals:
                        log.eval_return(e["game"], e["return"], e["normalized"], e["global_step"])
                else:
                    prog.next_eval = cfg.eval_every if cfg.eval_every > 0 else -1
                    prog.next_checkpoint = cfg.checkpoint_every
                self.checkpoint(None)
            first = prog.game_index + (1 if prog.game_done else 0)
            for k in range(first, len(self.games)):
                if prog.game_done:
                    prog.game_index, prog.step_in_game, prog.game_done = k, 0, False
                    prog.game_trained = False
                self._train_game(k)
            summary = self._summary(self._wall())
            log.scalars(
                {f"summary/{k}": v for k, v in summary["scalars"].items()}, prog.global_step
            )
            write_json(self.run_dir / "summary.json", summary)
            if tracker is not None:
                tracker.summary(summary["scalars"], summary["games"], self.history.matrix)
            return summary
        finally:
            log.close()
            self.log = None
            if tracker is not None:
                tracker.finish()

    def _train_game(self, k: int) -> None:
        cfg, prog = self.cfg, self.progress
        game, head = self.games[k], self.head_of[k]
        batch = self.ppo_config.batch_size
        envs = atari.make_train_envs(game, self.ppo_config.num_envs, None, self.atari_config)
        try:
            train_steps = main_steps(cfg, self.method)
            ppo = PPO(
                self.net,
                envs,
                self.ppo_config,
                head=head,
                total_steps=train_steps,
                device=self.device,
                extra_loss=lambda: self.method.extra_loss(ctx),
            )
            if self.ppo_state is not None and prog.step_in_game > 0:
                ppo.load_state_dict(self.ppo_state)
            self.ppo_state = None
            main_end = -(-train_steps // batch) * batch  # whole rollouts
            keeper = KeepFisherStates(self.method.states_to_keep(), main_end)
            ctx = GameContext(
                net=self.net,
                ppo=ppo,
                game=game,
                game_index=k,
                head=head,
                fisher_states=self._fisher_states_fn(keeper, k),
                steps_per_game=cfg.steps_per_game,
            )
            bar = tqdm(
                total=-(-cfg.steps_per_game // batch) * batch,
                initial=ppo.global_step,
                desc=f"game {k + 1}/{len(self.games)} {game.name}",
                unit="step",
                disable=not self.show_progress,
                dynamic_ncols=True,
            )
            log_cb = TrainLog(bar)
            main = [keeper, log_cb, MethodHooks(), PeriodicEval(main_end)]
            main.append(PeriodicCheckpoint(main_end))
            ctx.train = self._method_phase(ctx, [log_cb, MethodHooks()])
            self.method.before_game(ctx)
            ppo.reset_envs(seed=cfg.seed * 1000 + 100 * k + prog.resumes)
            with bar:
                ppo.train(train_steps - ppo.global_step, callback=self._callback(ctx, main))
                # Training is over: a resume starts here. After game 1 this is also the branch
                # point for other settings of the end-of-game step, other methods and other
                # later games (kept for game 1 only: the rules after a freeze are the
                # after-game ones, and each file holds the optimizer state too).
                prog.game_trained = True
                self.checkpoint(ppo, name="trained-game-1.pt" if k == 0 else None)
                scalars = self.method.after_game(ctx)
            self._log_method(scalars)
            row = self.evaluate_all(after_game=k)
            if cfg.capture_video:
                self._record_videos(k)
            self.history.matrix.append(row)
            self.history.after_game.append(scalars)
            assert self.log is not None
            for j, f in metrics.forgetting_after(self.history.matrix, k).items():
                self.log.writer.add_scalar(f"forgetting/{self.games[j].name}", f, prog.global_step)
            self.log.matrix(self.history.matrix, [g.name for g in self.games], prog.global_step)
            self._write_matrix()
            prog.game_done = True
            self.checkpoint(None, name=f"after-game-{k + 1}.pt")
            self.log.flush()
        finally:
            envs.close()

    def _record_videos(self, k: int) -> None:
        """One episode of every game after game ``k`` (:mod:`blip_rl.video`), on a forked RNG
        so that the training that follows is the same as without videos."""
        capture = VideoCapture(
            self.run_dir, self.atari_config, self.cfg.video_max_frames, self.cfg.seed
        )
        names = [g.name for g in self.games]
        players = [
            (self.games[names.index(n)], self._policy_fn(self.head_of[names.index(n)]))
            for n in self.eval_names
        ]
        with self._own_rng():
            capture.after_game(k, self.games[k].name, self.progress.global_step, players, self.log)

    def _callback(
        self, ctx: GameContext, callbacks: list[RunCallback]
    ) -> Callable[[PPO, IterationResult], None]:
        """The per-iteration callback of ``PPO.train``: count the steps, then every callback."""

        def on_iteration(ppo: PPO, result: IterationResult) -> None:
            self.progress.global_step += self.ppo_config.batch_size
            self.progress.step_in_game = ppo.global_step
            for cb in callbacks:
                cb.on_iteration(self, ctx, result)

        return on_iteration

    def _method_phase(
        self, ctx: GameContext, callbacks: list[RunCallback]
    ) -> Callable[[int, float], int]:
        """``ctx.train``: extra steps of the game asked for by the method (logged and counted,
        no evaluation or checkpoint inside: the after-game checkpoint follows)."""

        def train(steps: int, lr_scale: float) -> int:
            batch = self.ppo_config.batch_size
            steps = -(-int(steps) // batch) * batch
            if steps <= 0:
                return 0
            before = ctx.ppo.global_step
            ctx.ppo.restart_schedule(self.ppo_config.learning_rate * lr_scale, steps)
            ctx.ppo.train(steps, callback=self._callback(ctx, callbacks))
            return ctx.ppo.global_step - before

        return train

    def _log_method(self, scalars: dict[str, float]) -> None:
        assert self.log is not None
        step = self.progress.global_step
        self.log.scalars({f"method/{k}": v for k, v in scalars.items()}, step)
        if self.method.needs_blip_layers:
            self.log.blip(self.net, step, self.method.memory_bytes_per_param(self.net))

    def _summary(self, wall: float) -> dict[str, Any]:
        m = self._metrics()
        keys = (
            "average_final_return",
            "average_forgetting",
            "backward_transfer",
            "average_final_normalized",
        )
        scalars = {k: m[k] for k in keys if k in m and m[k] is not None and not math.isnan(m[k])}
        return {
            "games": [g.name for g in self.games],
            "agent": self.cfg.agent,
            "method": self.cfg.method,
            "seed": self.cfg.seed,
            "steps_per_game": self.cfg.steps_per_game,
            "global_steps": self.progress.global_step,
            "wall_time_s": wall,
            "resumes": self.progress.resumes,
            # what the last process computed in: "bf16" falls back to fp32 on a CPU without it
            "precision_used": "bf16" if self._autocast() is torch.bfloat16 else "fp32",
            "branched_from": self.cfg.branched_from,
            "memory_bytes_per_param": self.method.memory_bytes_per_param(self.net),
            "after_game": self.history.after_game,
            "metrics": m,
            "scalars": scalars,
        }


def _stderr(returns: Sequence[float]) -> float:
    """Standard error of the mean of one evaluation's episode returns (NaN under 2 episodes)."""
    x = np.asarray(returns, dtype=float)
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else math.nan


def _nanmean(values: list[float]) -> float | None:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - libraries may use the global RNG
    torch.manual_seed(seed)


def _flat_hparams(cfg: RunConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.to_json().items():
        if isinstance(v, dict):
            for k2, v2 in v.items():
                out[f"{k}.{k2}"] = ",".join(map(str, v2)) if isinstance(v2, list) else v2
        elif isinstance(v, list):
            out[k] = ",".join(map(str, v))
        elif v is not None:
            out[k] = v
    return out
