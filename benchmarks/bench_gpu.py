"""Training throughput on one device against the number of envs, with its profile, and SB3's PPO.

For every ``--num-envs`` value (default 8, 32, 64, 128) the script trains the BLIP agent as
``python -m blip_rl.train`` does (``blip_rl.ppo.PPO`` on ``make_train_envs``, the BLIP network
with its constraint attached to Adam, bf16 autocast where available, updates included) and
reports env steps per second of the whole loop, split into:

* ``env``: time inside the vector env's ``step`` (the emulators, ale-py's C++ threads);
* ``infer``: the policy's forward passes during the rollout (synchronised on a GPU);
* ``xfer``: host<->device copies during the rollout (observations, rewards and dones to the
  device, actions back);
* ``other``: the rest of the rollout (GAE, storage writes, Python);
* ``update``: ``PPO.update`` (minibatch forward/backward, Adam, the BLIP constraint).

The headline steps/s comes from a clean pass (only timers around ``envs.step``, the forward
passes, ``collect`` and ``update``: the rollout synchronises on the actions anyway). The split of
the rest of the rollout into ``xfer`` and ``other`` comes from a shorter second pass in which a
``TorchFunctionMode`` times every cross-device copy with a synchronisation before and after it
(its own steps/s is printed as ``prof steps/s``: the instrumentation costs a little).

SB3's PPO (``CnnPolicy``, ``DummyVecEnv`` from ``blip_rl.sb3.make_sb3_atari_env``, the same
game, minimal action set, no sticky actions, 128 steps x 4 epochs x 4 minibatches) is measured
on the same device for every ``--sb3-num-envs`` value, split into env, inference, update and
the rest. ``--paper`` adds a row for the ``blip-paper`` setting (conv 32/64/128, fc 1024,
16 envs x 125 steps, 8 minibatches).

    python benchmarks/bench_gpu.py                                  # cuda if present
    python benchmarks/bench_gpu.py --device cpu --num-envs 8 --steps 4096 --sb3-num-envs 8
    python benchmarks/bench_gpu.py --json benchmarks/results/bench_gpu.json --paper

It runs on a CPU too (small settings), which is how it is tested; the GPU figures are only
meaningful from a GPU machine (``benchmarks/gpu_check.sh``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

import blip_rl
from blip_rl.atari import AtariConfig, make_train_envs
from blip_rl.nets import PAPER_NET, ActorCritic, NetConfig
from blip_rl.ppo import PPO, PPOConfig

PARTS = ("env", "infer", "xfer", "other", "update")


@dataclass
class Timers:
    """Seconds spent in each part, and env steps done."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PARTS, 0.0))
    collect: float = 0.0
    steps: int = 0

    @property
    def wall(self) -> float:
        return self.collect + self.seconds["update"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TransferTimer(TorchFunctionMode):
    """Times cross-device copies (``copy_`` between devices, ``.to(other device)``, ``.cpu()`` of
    a device tensor), synchronising before and after each."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.seconds = 0.0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        crossing = False
        if func is torch.Tensor.copy_ and len(args) >= 2:
            crossing = args[0].device != args[1].device
        elif func is torch.Tensor.cpu:
            crossing = args[0].device.type != "cpu"
        elif func is torch.Tensor.to and args:
            target = kwargs.get("device")
            for a in args[1:]:
                if isinstance(a, str | torch.device):
                    target = a
            crossing = target is not None and torch.device(target).type != args[0].device.type
        if not crossing:
            return func(*args, **kwargs)
        _sync(self.device)
        t0 = time.perf_counter()
        out = func(*args, **kwargs)
        _sync(self.device)
        self.seconds += time.perf_counter() - t0
        return out


class Ours:
    """The BLIP agent's PPO on ``num_envs`` envs, with timers around its parts."""

    def __init__(
        self,
        game: str,
        num_envs: int,
        device: torch.device,
        seed: int,
        net: NetConfig,
        ppo: PPOConfig,
    ) -> None:
        self.device = device
        self.envs = make_train_envs(game, num_envs, seed, AtariConfig(sticky_actions=0.0))
        torch.manual_seed(seed)
        self.net = ActorCritic([self.envs.num_actions], net).to(device)
        self.ppo = PPO(self.net, self.envs, ppo, head=0, total_steps=10**9, device=device)
        blip_rl.attach(self.ppo.optimizer, self.net)
        self.ppo.reset_envs(seed=seed)
        self.timers = Timers()
        self._in_collect = False
        self._wrap()

    def _wrap(self) -> None:
        """Timers on the instance: ``envs.step`` and the forward passes of the rollout."""
        envs_step = self.envs.step
        timers = self.timers

        def step(actions: Any) -> Any:
            t0 = time.perf_counter()
            out = envs_step(actions)
            timers.seconds["env"] += time.perf_counter() - t0
            return out

        self.envs.step = step  # type: ignore[method-assign]
        for name in ("get_action_and_value", "get_value"):
            self._wrap_forward(name)

    def _wrap_forward(self, name: str) -> None:
        fn = getattr(self.net, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self._in_collect:
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            _sync(self.device)
            self.timers.seconds["infer"] += time.perf_counter() - t0
            return out

        setattr(self.net, name, timed)

    def iterations(self, steps: int, transfers: TransferTimer | None = None) -> Timers:
        """Whole PPO iterations until ``steps`` env steps are done; returns their timers."""
        self.timers.__init__()  # type: ignore[misc]
        batch = self.ppo.config.batch_size
        for _ in range(max(1, -(-steps // batch))):
            _sync(self.device)
            t0 = time.perf_counter()
            self._in_collect = True
            try:
                if transfers is not None:
                    with transfers:
                        self.ppo.collect()
                else:
                    self.ppo.collect()
            finally:
                self._in_collect = False
            _sync(self.device)
            t1 = time.perf_counter()
            self.ppo.update()
            _sync(self.device)
            t2 = time.perf_counter()
            self.timers.collect += t1 - t0
            self.timers.seconds["update"] += t2 - t1
            self.timers.steps += batch
        s = self.timers.seconds
        if transfers is not None:
            s["xfer"] = transfers.seconds
        s["other"] = max(0.0, self.timers.collect - s["env"] - s["infer"] - s["xfer"])
        return copy.deepcopy(self.timers)  # the next call resets self.timers

    def close(self) -> None:
        self.envs.close()


class SB3:
    """stable-baselines3 PPO with ``CnnPolicy`` on the same game and device, with timers."""

    def __init__(self, game: str, num_envs: int, device: torch.device, seed: int) -> None:
        from stable_baselines3 import PPO as SB3PPO

        from blip_rl.sb3 import ATARI_PPO_KWARGS, make_sb3_atari_env

        self.device = device
        self.env = make_sb3_atari_env(
            game, num_envs, seed=seed, sticky_actions=0.0, full_action_space=False
        )
        self.model = SB3PPO(
            "CnnPolicy",
            self.env,
            **ATARI_PPO_KWARGS,
            batch_size=num_envs * 128 // 4,
            seed=seed,
            device=device,
            verbose=0,
        )
        self.batch = num_envs * 128
        self.timers = Timers()
        self._wrap()

    def _wrap(self) -> None:
        model, timers, device = self.model, self.timers, self.device

        def timed(part: str | None, fn: Callable[..., Any], sync: bool) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                out = fn(*args, **kwargs)
                if sync:
                    _sync(device)
                dt = time.perf_counter() - t0
                if part is None:
                    timers.collect += dt
                else:
                    timers.seconds[part] += dt
                return out

            return wrapper

        assert model.env is not None
        model.env.step = timed("env", model.env.step, False)  # type: ignore[method-assign]
        model.policy.forward = timed("infer", model.policy.forward, True)  # type: ignore[method-assign]
        model.collect_rollouts = timed(None, model.collect_rollouts, True)  # type: ignore[method-assign]
        model.train = timed("update", model.train, True)  # type: ignore[method-assign]

    def iterations(self, steps: int) -> Timers:
        self.timers.__init__()  # type: ignore[misc]
        n = max(1, -(-steps // self.batch)) * self.batch
        self.model.learn(total_timesteps=n, reset_num_timesteps=False)
        s = self.timers.seconds
        # SB3's train() runs after collect_rollouts() returns; the forward passes of the update
        # do not go through policy.forward (evaluate_actions), so "infer" is the rollout's only.
        s["other"] = max(0.0, self.timers.collect - s["env"] - s["infer"])
        self.timers.steps = n
        return copy.deepcopy(self.timers)

    def close(self) -> None:
        self.env.close()


@contextmanager
def _quiet() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _row(label: str, n: int, clean: Timers, prof: Timers | None) -> dict[str, Any]:
    s = dict(clean.seconds)
    if prof is not None:  # split the clean pass's rest of the rollout as the profile pass did
        rest = s["other"] + s["xfer"]
        p_rest = prof.seconds["xfer"] + prof.seconds["other"]
        share = prof.seconds["xfer"] / p_rest if p_rest > 0 else 0.0
        s["xfer"], s["other"] = rest * share, rest * (1 - share)
    wall = clean.wall
    return {
        "variant": label,
        "num_envs": n,
        "steps": clean.steps,
        "seconds": wall,
        "steps_per_s": clean.steps / wall,
        "share": {k: v / wall for k, v in s.items()},
        "seconds_by_part": s,
        "profile_steps_per_s": prof.steps / prof.wall if prof is not None else None,
    }


def _print_table(rows: list[dict[str, Any]]) -> None:
    head = f"{'variant':<14}{'envs':>5}{'steps/s':>10}" + "".join(f"{p:>8}" for p in PARTS)
    print(head + f"{'prof steps/s':>14}")
    for r in rows:
        parts = "".join(f"{100 * r['share'][p]:>7.1f}%" for p in PARTS)
        prof = r["profile_steps_per_s"]
        prof_text = f"{prof:>14.0f}" if prof is not None else f"{'':>14}"
        print(f"{r['variant']:<14}{r['num_envs']:>5}{r['steps_per_s']:>10.0f}{parts}{prof_text}")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers >= 1")
    return values


def _machine(device: torch.device) -> dict[str, Any]:
    import ale_py

    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "ale_py": ale_py.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    ap.add_argument("--game", default="breakout")
    ap.add_argument("--num-envs", type=_int_list, default=[8, 32, 64, 128], metavar="LIST")
    ap.add_argument("--num-steps", type=int, default=128, help="PPO steps per env per rollout")
    ap.add_argument("--steps", type=int, default=65536, help="timed env steps per setting")
    ap.add_argument(
        "--profile-steps", type=int, default=None, help="env steps of the profile pass (steps/4)"
    )
    ap.add_argument("--sb3-num-envs", type=_int_list, default=None, metavar="LIST")
    ap.add_argument("--sb3-steps", type=int, default=16384, help="timed env steps per SB3 setting")
    ap.add_argument("--skip-sb3", action="store_true")
    ap.add_argument("--paper", action="store_true", help="add the blip-paper setting's row")
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: 1 on a CPU, default on a GPU)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: CUDA is not available here")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    elif device.type == "cpu":
        torch.set_num_threads(1)  # the emulator threads need the cores (see bench_ppo.py)
    profile_steps = args.profile_steps if args.profile_steps is not None else args.steps // 4
    sb3_envs = args.sb3_num_envs if args.sb3_num_envs is not None else args.num_envs

    settings: list[tuple[str, int, NetConfig, PPOConfig]] = [
        (
            "blip",
            n,
            NetConfig(),
            PPOConfig(num_envs=n, num_steps=args.num_steps, precision=args.precision),
        )
        for n in args.num_envs
    ]
    if args.paper:
        settings.append(
            (
                "blip-paper",
                16,
                PAPER_NET,
                PPOConfig(num_envs=16, num_steps=125, num_minibatches=8, precision=args.precision),
            )
        )
    machine = _machine(device)
    print(
        f"{args.game} on {machine.get('gpu', machine['cpu'])} ({device}), torch {machine['torch']}"
        f", ale-py {machine['ale_py']}, {machine['cpu_cores']} cores, "
        f"{machine['torch_threads']} torch threads, precision {args.precision}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    for label, n, net, ppo in settings:
        with _quiet():
            ours = Ours(args.game, n, device, args.seed, net, ppo)
        try:
            ours.iterations(1)  # warm-up: one iteration (allocations, cuDNN autotuning)
            clean = ours.iterations(args.steps)
            prof = ours.iterations(profile_steps, TransferTimer(device)) if profile_steps else None
        finally:
            ours.close()
        rows.append(_row(label, n, clean, prof))
        print(f"{label} {n} envs: {rows[-1]['steps_per_s']:.0f} env steps/s", flush=True)
    if not args.skip_sb3:
        for n in sb3_envs:
            sb3 = SB3(args.game, n, device, args.seed)
            try:
                sb3.iterations(1)  # warm-up
                timers = sb3.iterations(args.sb3_steps)
            finally:
                sb3.close()
            rows.append(_row("SB3 CnnPolicy", n, timers, None))
            print(f"SB3 {n} envs: {rows[-1]['steps_per_s']:.0f} env steps/s", flush=True)
    print()
    _print_table(rows)
    print(
        "\nshares of the wall time: env = vector env step, infer = rollout forward passes, "
        "xfer = host<->device copies, other = rest of the rollout, update = PPO update"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {"machine": machine, "args": {**vars(args), "json": str(args.json)}, "rows": rows}
        args.json.write_text(json.dumps(out, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
