"""Device discipline: every tensor, generator and accumulator lives on the model's device.

Two kinds of tests:

* **CPU tests** (always run). A CPU-only machine cannot see a tensor on the wrong device, so
  :class:`DeviceAudit` (a ``torch.overrides.TorchFunctionMode``) watches a tiny real run of every
  continual method (real ROMs, a kill mid-game, ``--resume``) and records

  1. *factory calls without a device*: ``torch.zeros``, ``torch.tensor``, ``torch.arange``... made
     by blip-rl code inside ``PPO.collect``, ``PPO.update`` and the method hooks
     (``before_game``, ``extra_loss``, ``after_update``, ``after_game``) without ``device=``
     (``*_like`` factories inherit the device and are fine), and ``torch.Generator`` objects
     built there without a device (a mode cannot see those; ``torch.Generator`` is patched);
  2. *virtual-device violations*: every tensor gets a tag, "device" (the network's parameters
     and buffers after ``.to(device)``, tensors made with ``device=...`` or moved with
     ``.to(device)``, and everything computed from them) or "host" (factories without a device,
     ``torch.as_tensor`` of numpy data, ``.cpu()``, checkpoints read with ``map_location="cpu"``
     and everything computed only from those). An operation that mixes the two the way CUDA
     refuses (a host tensor with dimensions in an op with a device tensor, any host tensor in
     ``cat``/``stack``, an in-place op on a host tensor with a device operand, ``.numpy()`` of a
     device tensor, a generator without a device used with device tensors) is recorded with its
     call site. ``copy_`` and ``.to`` are the legal crossings. This is what a GPU would have
     raised, found on a CPU.

* **CUDA tests** (``@pytest.mark.cuda``; skipped with a reason without a GPU): the tiny
  end-to-end CLI run on ``--device cuda`` for every method with a kill and ``--resume``, the
  Fisher and the freeze on CUDA against the CPU, the SB3 plug-in on CUDA, and checkpoints that
  move between a GPU and a CPU. Run them with ``pytest -m cuda tests/test_device.py`` (or
  ``benchmarks/gpu_check.sh`` on a GPU machine).
"""

from __future__ import annotations

import io
import json
import os
import sys
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from scripts import load_script
from tiny import TINY
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

import blip_rl
from blip_rl.continual import load_checkpoint
from blip_rl.methods import METHODS
from blip_rl.ppo import PPO
from blip_rl.train import main

CUDA = torch.cuda.is_available()
cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")

TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
BLIP_DIR = os.path.dirname(blip_rl.__file__) + os.sep
HOST, DEV = "host", "device"

FACTORIES = {
    torch.zeros, torch.ones, torch.empty, torch.full, torch.tensor, torch.arange, torch.randn,
    torch.rand, torch.randint, torch.randperm, torch.eye, torch.linspace, torch.logspace,
    torch.scalar_tensor, torch.empty_strided,
}  # fmt: skip
"""Factories whose result lands on the default (CPU) device unless given ``device=``."""

CONVERSIONS = {torch.as_tensor, torch.asarray}
"""Host data (numpy arrays, lists) into tensors: host unless given ``device=``."""

CAT_LIKE = {
    torch.cat, torch.concat, torch.concatenate, torch.stack, torch.hstack, torch.vstack,
    torch.dstack, torch.column_stack,
}  # fmt: skip
"""Ops that refuse even a 0-dim CPU tensor among CUDA tensors."""

CROSSING = {torch.Tensor.copy_, torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.cuda}
"""The legal ways from one device to the other."""

HOST_ON_PURPOSE = {("quant.py", "_float32_edges")}
"""(file, function) of blip-rl code that computes on the host by design, without ``device=``.
``quant._float32_edges`` bisects the float32 interval ends of the frozen bits on the CPU (its
callers pass ``.cpu()`` copies and ``copy_`` the result into the layer's device buffers); the
virtual-device audit checks that those host tensors never meet device tensors."""


def _call_site() -> tuple[str, int, str] | None:
    """(file, line, function) of the innermost frame outside torch and this module."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if not name.startswith(TORCH_DIR) and name != __file__:
            return name, frame.f_lineno, frame.f_code.co_name
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _where(site: tuple[str, int, str] | None) -> str:
    if site is None:
        return "?"
    name, line, func = site
    return f"{os.path.relpath(name, os.path.dirname(BLIP_DIR.rstrip(os.sep)))}:{line} ({func})"


def _is_blip(site: tuple[str, int, str] | None) -> bool:
    return site is not None and site[0].startswith(BLIP_DIR)


def _device_tag(device: Any) -> str:
    """The tag a ``device=`` argument gives: the literal "cpu" means the host on purpose; a
    ``torch.device`` (``self.device``, ``x.device``) means the model's device."""
    if isinstance(device, str) and device.startswith("cpu"):
        return HOST
    return DEV


class DeviceAudit(TorchFunctionMode):
    """Records factory calls without a device (inside the hooks) and virtual-device violations
    (everywhere); see the module docstring. Use :meth:`watch` to mark the hook scope."""

    def __init__(self) -> None:
        super().__init__()
        self.factories: dict[str, str] = {}
        """call site -> factory name, for factory calls without ``device=`` inside the hooks."""
        self.generators: dict[str, str] = {}
        """call site -> "torch.Generator" for generators built without a device in the hooks."""
        self.violations: dict[str, str] = {}
        """call site -> what a GPU would have refused there."""
        self.hook_depth = 0
        self._tags: dict[int, tuple[weakref.ref[Any], str]] = {}
        self._gen_tags: dict[int, tuple[Any, str]] = {}

    # ---------------------------------------------------------------------------- tags
    def tag(self, t: Any) -> str | None:
        entry = self._tags.get(id(t))
        return entry[1] if entry is not None and entry[0]() is t else None

    def set_tag(self, t: Any, tag: str | None) -> None:
        if tag is None or not isinstance(t, torch.Tensor):
            return
        key = id(t)
        tags = self._tags

        def drop(ref: weakref.ref[Any], key: int = key) -> None:
            entry = tags.get(key)
            if entry is not None and entry[0] is ref:
                del tags[key]

        try:
            tags[key] = (weakref.ref(t, drop), tag)
        except TypeError:  # pragma: no cover - a tensor type without weak references
            pass

    def tag_tree(self, obj: Any, tag: str) -> None:
        """Tag every tensor in a nested structure (a checkpoint read from disk)."""
        if isinstance(obj, torch.Tensor):
            self.set_tag(obj, tag)
        elif isinstance(obj, dict):
            for v in obj.values():
                self.tag_tree(v, tag)
        elif isinstance(obj, list | tuple):
            for v in obj:
                self.tag_tree(v, tag)

    def generator_made(self, gen: Any, device: Any) -> None:
        if device is None:
            self._gen_tags[id(gen)] = (gen, HOST)
            if self.hook_depth > 0:
                site = _call_site()
                if _is_blip(site):
                    self.generators[_where(site)] = "torch.Generator() without device"

    # ---------------------------------------------------------------------------- scope
    @contextmanager
    def hook(self) -> Iterator[None]:
        self.hook_depth += 1
        try:
            yield
        finally:
            self.hook_depth -= 1

    def watch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Mark ``PPO.collect``, ``PPO.update`` and every method hook as the hook scope, and
        patch ``torch.Generator`` and ``torch.load`` for the audit."""
        audit = self

        def scoped(fn: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                with audit.hook():
                    return fn(*args, **kwargs)

            wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
            return wrapper

        monkeypatch.setattr(PPO, "collect", scoped(PPO.collect))
        monkeypatch.setattr(PPO, "update", scoped(PPO.update))
        for cls in {*METHODS.values()}:
            for name in ("before_game", "extra_loss", "after_update", "after_game"):
                if name in vars(cls):
                    monkeypatch.setattr(cls, name, scoped(vars(cls)[name]))

        class RecordingGenerator(torch.Generator):
            def __init__(self, device: Any = None) -> None:
                super().__init__()
                audit.generator_made(self, device)

            def __new__(cls, device: Any = None) -> Any:
                if device is None:
                    return super().__new__(cls)
                return super().__new__(cls, device=device)

        monkeypatch.setattr(torch, "Generator", RecordingGenerator)
        real_load = torch.load

        def load(*args: Any, **kwargs: Any) -> Any:
            out = real_load(*args, **kwargs)
            if kwargs.get("map_location") in ("cpu", torch.device("cpu")):
                audit.tag_tree(out, HOST)
            return out

        monkeypatch.setattr(torch, "load", load)

    # ---------------------------------------------------------------------------- the mode
    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None and self.hook_depth > 0:
            site = _call_site()
            if _is_blip(site) and (os.path.basename(site[0]), site[2]) not in HOST_ON_PURPOSE:  # type: ignore[index]
                self.factories[_where(site)] = f"torch.{func.__name__}"
        leaves = [x for x in tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
        tags = [self.tag(x) for x in leaves]
        if DEV in tags:
            problem = self._problem(func, args, kwargs, leaves, tags)
            if problem:
                site = _call_site()
                if _is_blip(site):
                    self.violations.setdefault(_where(site), problem)
        out = func(*args, **kwargs)
        if (
            func in CROSSING
            and func is not torch.Tensor.copy_
            and out is args[0]
            and self._target(func, args, kwargs) not in (None, self.tag(out))
        ):
            # On a CPU, .cpu() / .to(device) return the tensor itself; on a GPU they return a
            # new tensor on the other side. A view stands for that new tensor and takes its tag.
            out = out.view_as(out)
        if getattr(func, "__name__", "") == "__set__" and len(args) == 2:
            self.set_tag(args[0], self.tag(args[1]))  # tensor.data = other
        self._tag_output(func, args, kwargs, out, tags)
        return out

    def _target(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """The tag of the result of a crossing (``.cpu()``, ``.cuda()``, ``.to(...)``)."""
        if func is torch.Tensor.cpu:
            return HOST
        if func is torch.Tensor.cuda:
            return DEV
        tag = self.tag(args[0])
        for a in (*args[1:], kwargs.get("device"), kwargs.get("other")):
            if isinstance(a, torch.Tensor):
                tag = self.tag(a)
            elif isinstance(a, str | torch.device) or (
                isinstance(a, int) and not isinstance(a, bool)
            ):
                tag = _device_tag(a)
        return tag

    def _problem(
        self,
        func: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        leaves: list[torch.Tensor],
        tags: list[str | None],
    ) -> str | None:
        name = getattr(func, "__name__", str(func))
        gen = kwargs.get("generator")
        if gen is not None and self._gen_tags.get(id(gen), (None, None))[0] is gen:
            return f"{name}: a torch.Generator() without device used with device tensors"
        if HOST not in tags or func in CROSSING or name in ("__get__", "__set__"):
            return None
        host = [t for t, tag in zip(leaves, tags, strict=True) if tag == HOST]
        if func in CAT_LIKE:
            return f"{name} of host and device tensors"
        self_t = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if name in ("__getitem__", "__setitem__"):
            index = [x for x in tree_leaves(args[1:2]) if isinstance(x, torch.Tensor)]
            if self.tag(self_t) == HOST and any(self.tag(i) == DEV for i in index):
                return f"{name}: a host tensor indexed by a device tensor"
            return None
        inplace = (name.endswith("_") and not name.startswith("__")) or name in (
            "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__",
            "__ipow__", "__iand__", "__ior__", "__ixor__",
        )  # fmt: skip
        out = kwargs.get("out")
        target = out if isinstance(out, torch.Tensor) else (self_t if inplace else None)
        if target is not None and self.tag(target) == HOST:
            return f"{name}: in place on a host tensor with a device operand"
        shaped = [tuple(t.shape) for t in host if t.dim() > 0]
        if shaped:
            return f"{name}: host tensor of shape {shaped[0]} with device tensors"
        return None

    def _tag_output(
        self,
        func: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        out: Any,
        tags: list[str | None],
    ) -> None:
        name = getattr(func, "__name__", "")
        if name in ("numpy", "__array__") and args and self.tag(args[0]) == DEV:
            site = _call_site()
            if _is_blip(site):
                self.violations.setdefault(_where(site), f"{name}() of a device tensor")
        if not isinstance(out, torch.Tensor | tuple | list):
            return
        tag: str | None
        if func in CROSSING and func is not torch.Tensor.copy_:
            tag = self._target(func, args, kwargs)
        elif func in FACTORIES or func in CONVERSIONS or name.endswith("_like"):
            device = kwargs.get("device")
            if device is not None:
                tag = _device_tag(device)
            elif func in FACTORIES:
                tag = HOST
            elif func in CONVERSIONS:
                data = args[0] if args else kwargs.get("data", kwargs.get("obj"))
                tag = self.tag(data) if isinstance(data, torch.Tensor) else HOST
            else:
                tag = self.tag(args[0]) if args else None
        elif DEV in tags:
            tag = DEV
        elif HOST in tags:
            tag = HOST
        else:
            tag = None
        first = args[0] if args else None
        for o in out if isinstance(out, tuple | list) else (out,):
            if isinstance(o, torch.Tensor) and o is not first:  # in place: keeps its own tag
                self.set_tag(o, tag)


# -------------------------------------------------------------------------- CPU: the audit
AUDIT_RUN = [
    *TINY,
    "--device", "cpu",
    "--steps-per-game", "128",  # two rollouts of 2 envs x 32 steps per game
    "--checkpoint-every", "64",
    "--eval-every", "0",
    "--channels", "4,8,8",
    "--hidden", "16",
]  # fmt: skip
"""Two games of two rollouts each, a checkpoint after every rollout, a small network."""


class _Killed(Exception):
    """Stands for a kill of the run."""


def _audited_run(tmp: Path, agent: str, monkeypatch: pytest.MonkeyPatch) -> DeviceAudit:
    """A tiny run of ``agent`` killed in game 2 after a mid-game checkpoint, then resumed; all of
    it under one :class:`DeviceAudit`."""
    audit = DeviceAudit()
    audit.watch(monkeypatch)
    with audit:
        run = _killed_run(tmp, agent, monkeypatch, "cpu")
    with audit:
        assert main(["--resume", str(run), "--no-progress"]) == 0
    assert (run / "summary.json").is_file()
    return audit


AGENTS = ["blip", "finetune", "ewc", "online-ewc", "packnet"]
DEVICES = ["cpu", pytest.param("cuda", marks=[cuda, pytest.mark.cuda])]
"""The GPU tests' code also runs on the CPU (CPU against CPU), so it is known to work before a
GPU machine runs it."""


@pytest.mark.parametrize("agent", AGENTS)
def test_hooks_make_no_tensor_without_the_model_device(
    agent: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside PPO.collect / PPO.update and the method's hooks, blip-rl code creates no tensor or
    generator without ``device=``, and nothing mixes host and device tensors the way a GPU
    refuses (anywhere in the run, the resume included)."""
    audit = _audited_run(tmp_path, agent, monkeypatch)
    report = [f"  {site}: {what} without device=" for site, what in audit.factories.items()]
    report += [f"  {site}: {what}" for site, what in audit.generators.items()]
    report += [f"  {site}: a GPU would refuse: {what}" for site, what in audit.violations.items()]
    assert not report, "device discipline broken:\n" + "\n".join(sorted(report))


# ------------------------------------------------------------------ CPU: the audit audited
OFFENDERS = """
import torch

def factory_without_device(w):
    return w * torch.zeros(w.shape)

def stack_with_a_host_scalar(w):
    return torch.stack([w.sum(), torch.zeros(())])

def accumulate_on_host(w):
    acc = torch.zeros(w.shape, dtype=torch.float64)
    acc += w.detach().double()
    return acc

def host_copy_next_to_device(w):
    return (w.cpu() * w).sum()

def numpy_of_device(w):
    return (w.detach() * 2).numpy()

def generator_without_device(w):
    g = torch.Generator().manual_seed(0)
    return torch.multinomial(torch.softmax(w.flatten(), 0), 1, generator=g)

def correct(w, frames):
    gen = torch.Generator(device=w.device).manual_seed(0)
    buf = torch.empty(frames.shape, dtype=torch.uint8, device=w.device)
    buf.copy_(torch.as_tensor(frames))
    x = torch.as_tensor(frames).to(w.device).float()
    y = w.new_zeros(w.shape) + torch.zeros_like(w) + torch.full(w.shape, 2.0, device=w.device)
    scale = torch.zeros((), device=w.device) + 1.0
    host = torch.as_tensor(frames).float().mean()  # a 0-dim host scalar next to device tensors
    a = torch.multinomial(torch.softmax(w.flatten(), 0), 1, generator=gen)
    edges = torch.tensor([1.0, 2.0], dtype=torch.float64, device="cpu")  # host on purpose
    out = torch.empty(2, dtype=torch.float64, device=w.device).copy_(edges)
    total = (w * y).sum() * scale * host + x.mean() + a.sum() + out.sum() + buf.float().sum()
    return float(total.detach())
"""


def _offenders(tmp: Path) -> dict[str, Any]:
    """The functions above as if they were blip-rl code (the audit only reports blip-rl sites)."""
    path = Path(BLIP_DIR) / "_audit_selftest.py"  # never written: only the code's file name
    namespace: dict[str, Any] = {}
    exec(compile(OFFENDERS, str(path), "exec"), namespace)
    return namespace


def _on_device(audit: DeviceAudit) -> torch.nn.Parameter:
    with audit:
        layer = torch.nn.Linear(3, 4).to(torch.device("cpu"))  # as ContinualRun moves its net
    return layer.weight


@pytest.mark.parametrize(
    "name,needle",
    [
        ("factory_without_device", "torch.zeros without device="),
        ("stack_with_a_host_scalar", "stack of host and device tensors"),
        ("accumulate_on_host", "in place on a host tensor"),
        ("host_copy_next_to_device", "host tensor of shape (4, 3)"),
        ("numpy_of_device", "numpy() of a device tensor"),
        ("generator_without_device", "torch.Generator() without device"),
    ],
)
def test_audit_catches_what_a_gpu_refuses(name: str, needle: str, tmp_path: Path) -> None:
    """Each offender fails on a GPU; the audit reports each one on a CPU, at its line."""
    audit = DeviceAudit()
    w = _on_device(audit)
    mp = pytest.MonkeyPatch()
    try:
        audit.watch(mp)  # patches torch.Generator
        fn = _offenders(tmp_path)[name]  # recompiled: sees the patched torch.Generator
        with audit, audit.hook():
            try:
                fn(w)
            except RuntimeError:
                pass  # torch may refuse too (e.g. .numpy() of a tensor that requires grad)
    finally:
        mp.undo()
    found = {**audit.factories, **audit.generators, **audit.violations}
    found_text = [f"{s}: {v}" for s, v in {**audit.violations}.items()]
    found_text += [f"{s}: {v} without device=" for s, v in audit.factories.items()]
    found_text += [f"{s}: {v}" for s, v in audit.generators.items()]
    assert any(needle in t and "_audit_selftest.py" in t for t in found_text), found
    assert all(f"({name})" in site for site in found), found


def test_audit_accepts_device_correct_code(tmp_path: Path) -> None:
    """Explicit devices, ``*_like``, ``copy_``, ``.to(device)``, 0-dim host scalars and host
    staging copied into device buffers pass."""
    import numpy as np

    audit = DeviceAudit()
    w = _on_device(audit)
    mp = pytest.MonkeyPatch()
    try:
        audit.watch(mp)
        fn = _offenders(tmp_path)["correct"]
        with audit, audit.hook():
            fn(w, np.arange(12, dtype=np.uint8).reshape(3, 4))
    finally:
        mp.undo()
    assert not audit.factories and not audit.generators and not audit.violations, (
        audit.factories,
        audit.generators,
        audit.violations,
    )


# ----------------------------------------------------------- CPU: SB3 plug-in under the audit
def test_sb3_plugin_under_the_audit(monkeypatch: pytest.MonkeyPatch) -> None:
    """SB3 PPO with the BLIP policy, a rollout, then ``freeze`` with more states than the rollout
    (the top-up collects with the policy): nothing a GPU would refuse."""
    from stable_baselines3 import PPO as SB3PPO

    from blip_rl.sb3 import BlipActorCriticCnnPolicy, BlipFreezeCallback, make_sb3_atari_env

    audit = DeviceAudit()
    audit.watch(monkeypatch)
    env = make_sb3_atari_env("pong", 2, seed=0, sticky_actions=0.0)
    try:
        with audit:
            model = SB3PPO(
                BlipActorCriticCnnPolicy,
                env,
                n_steps=16,
                batch_size=16,
                n_epochs=1,
                seed=0,
                device="cpu",
                policy_kwargs={
                    "features_extractor_kwargs": {"features_dim": 16, "channels": (8, 16, 16)}
                },
            )
            callback = BlipFreezeCallback(n_states=48, seed=0, log_stats=False)
            with audit.hook():
                model.learn(32, callback=callback)
    finally:
        env.close()
    assert callback.fisher is not None
    report = [f"  {s}: {v}" for s, v in {**audit.generators, **audit.violations}.items()]
    assert not report, "device discipline broken:\n" + "\n".join(sorted(report))


# ------------------------------------------------- CPU: a GPU checkpoint resumes on a CPU
def test_checkpoint_written_on_a_gpu_resumes_on_a_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint whose tensors say ``cuda:0`` (as one written on a GPU) and that holds a CUDA
    RNG state resumes with ``--device cpu``: ``load_checkpoint`` maps it to the CPU and the CUDA
    RNG state is skipped without a GPU."""
    run = _killed_run(tmp_path, "finetune", monkeypatch, "cpu")
    latest = run / "checkpoints" / "latest.pt"
    ckpt = load_checkpoint(latest)
    ckpt["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)]  # a CUDA generator's state
    buf = io.BytesIO()
    with monkeypatch.context() as m:  # every storage written as if it lived on cuda:0
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(ckpt, buf)
    latest.write_bytes(buf.getvalue())
    if not CUDA:  # the file really names CUDA storages: a plain load needs a GPU
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(latest, weights_only=False)
    assert main(["--resume", str(run), "--device", "cpu", "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumes"] == 1 and summary["global_steps"] == 256
    resumed = torch.load(run / "checkpoints" / "latest.pt", weights_only=False)
    assert all(t.device.type == "cpu" for t in resumed["net"].values())


def _killed_run(tmp: Path, agent: str, monkeypatch: pytest.MonkeyPatch, device: str) -> Path:
    """``agent`` on ``device``, killed in game 2 right after the checkpoint at step 192."""
    cls = METHODS[agent]
    after_update = cls.after_update
    calls = {"n": 0}

    def killing_after_update(self: Any, ctx: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 4:
            raise _Killed
        after_update(self, ctx)

    argv = [*AUDIT_RUN, "--agent", agent, "--runs-dir", str(tmp), "--run-name", agent]
    argv[argv.index("--device") + 1] = device
    if agent not in ("finetune", "packnet"):
        argv += ["--fisher-states", "192"]
    with monkeypatch.context() as m:
        m.setattr(cls, "after_update", killing_after_update)
        with pytest.raises(_Killed):
            main(argv)
    run = tmp / agent
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["progress"]["global_step"] == 192
    return run


# ------------------------------------------------------------------------------ CUDA tests
@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("agent", AGENTS)
def test_cuda_tiny_run_kill_and_resume(
    agent: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny CLI run on ``--device cuda`` for every method: PPO, the hooks, the Fisher with its
    top-up states, the freeze, evaluation, a checkpoint with the CUDA RNG state, ``--resume``."""
    run = _killed_run(tmp_path, agent, monkeypatch, "cuda")
    raw = torch.load(run / "checkpoints" / "latest.pt", weights_only=False)  # no map_location
    assert all(t.device.type == "cuda" for t in raw["net"].values())
    assert raw["rng"]["cuda"] is not None
    assert main(["--resume", str(run), "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumes"] == 1 and summary["global_steps"] == 256
    assert len(summary["metrics"]["matrix"]) == 2


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("first,then", [("cuda", "cpu"), ("cpu", "cuda")])
def test_cuda_checkpoint_moves_between_devices(
    first: str, then: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed on one device resumes on the other (``--resume RUN --device ...``)."""
    run = _killed_run(tmp_path, "blip", monkeypatch, first)
    assert main(["--resume", str(run), "--device", then, "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumes"] == 1 and summary["global_steps"] == 256
    raw = torch.load(run / "checkpoints" / "latest.pt", weights_only=False)
    assert all(t.device.type == then for t in raw["net"].values())


@contextmanager
def _no_tf32() -> Iterator[None]:
    """Full float32 matmuls and convolutions on the GPU, for comparisons with the CPU."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("device", DEVICES)
def test_fisher_freeze_and_constraint_match_the_cpu(device: str) -> None:
    """Fisher (actions drawn with the game's CPU generator), freeze and the constraint on
    ``device`` give the CPU's numbers, and every BLIP buffer stays on the device."""
    import copy

    from blip_rl.methods.base import GameContext, MethodConfig, game_fisher
    from blip_rl.nets import ActorCritic, NetConfig
    from blip_rl.quant import attach, blip_layers, code_of, freeze

    torch.manual_seed(0)
    cpu_net = ActorCritic([4, 6], NetConfig(channels=(8, 16, 16), hidden=32))
    gpu_net = copy.deepcopy(cpu_net).to(device)
    states = torch.randint(0, 256, (96, 4, 84, 84), dtype=torch.uint8)
    config = MethodConfig(fisher_states=96, fisher_chunk=32)

    def ctx(net: ActorCritic, where: torch.device) -> GameContext:
        return GameContext(
            net=net,
            ppo=None,  # type: ignore[arg-type]  # game_fisher does not use PPO
            game=None,  # type: ignore[arg-type]
            game_index=1,
            head=1,
            fisher_states=lambda n: states[:n].to(where),
        )

    with _no_tf32():
        f_cpu, n_cpu = game_fisher(ctx(cpu_net, torch.device("cpu")), config)
        f_gpu, n_gpu = game_fisher(ctx(gpu_net, torch.device(device)), config)
    assert n_cpu == n_gpu == 96
    for name, f in f_cpu.items():
        assert f_gpu[name].device.type == device, name
        torch.testing.assert_close(f_gpu[name].cpu(), f, rtol=1e-3, atol=1e-12)
    freeze(cpu_net, f_cpu)
    freeze(gpu_net, {n: f.to(device) for n, f in f_cpu.items()})  # the same Fisher on both
    for (name, c), (_, g) in zip(blip_layers(cpu_net), blip_layers(gpu_net), strict=True):
        for p in c.quantized_names:
            for buf in (f"{p}_bits", f"{p}_prefix", f"{p}_fisher", f"_{p}_lo", f"_{p}_hi"):
                assert getattr(g, buf).device.type == device, f"{name}.{buf}"
            bits_c, bits_g = getattr(c, f"{p}_bits"), getattr(g, f"{p}_bits").cpu()
            # float64 log2 may differ in the last ulp between the devices: at most a stray
            # scalar at an exact bit boundary.
            assert float((bits_c != bits_g).float().mean()) <= 1e-4, f"{name}.{p}"
    assert any(bool((g.weight_bits > 0).any()) for _, g in blip_layers(gpu_net))
    # The constraint on a CUDA optimizer keeps every frozen prefix.
    before = {
        (name, p): (getattr(g, f"{p}_bits").long(), code_of(getattr(g, p), g.bound(p), g.max_bits))
        for name, g in blip_layers(gpu_net)
        for p in g.quantized_names
    }
    opt = torch.optim.Adam(gpu_net.parameters(), lr=1e-2)
    attach(opt, gpu_net)
    x = states[:32].to(device)
    for _ in range(3):
        logits, value = gpu_net(x, 1)
        loss = logits.logsumexp(-1).mean() + value.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for (name, p), (bits, code) in before.items():
        g = dict(blip_layers(gpu_net))[name]
        now = code_of(getattr(g, p), g.bound(p), g.max_bits)
        n = g.max_bits
        kept = torch.where(bits > 0, (now >> (n - bits)) == (code >> (n - bits)), True)
        assert bool(kept.all()), f"{name}.{p}: a frozen prefix changed on {device}"


@pytest.mark.parametrize("device", DEVICES)
def test_sb3_plugin_learns_and_freezes_on_the_device(device: str) -> None:
    """SB3 PPO with ``BlipActorCriticCnnPolicy`` on ``device``: learn, freeze with top-up states
    (``BlipFreezeCallback``), learn again with the frozen prefixes kept."""
    from stable_baselines3 import PPO as SB3PPO

    from blip_rl.quant import blip_layers, code_of
    from blip_rl.sb3 import BlipActorCriticCnnPolicy, BlipFreezeCallback, make_sb3_atari_env

    env = make_sb3_atari_env("pong", 2, seed=0, sticky_actions=0.0)
    try:
        model = SB3PPO(
            BlipActorCriticCnnPolicy,
            env,
            n_steps=32,
            batch_size=32,
            n_epochs=2,
            seed=0,
            device=device,
            policy_kwargs={
                "features_extractor_kwargs": {"features_dim": 16, "channels": (8, 16, 16)}
            },
        )
        callback = BlipFreezeCallback(n_states=96, seed=0)
        model.learn(64, callback=callback)
        assert callback.fisher is not None
        layers = dict(blip_layers(model.policy))
        assert all(m.weight_bits.device.type == device for m in layers.values())
        frozen = {
            n: (m.weight_bits.long(), code_of(m.weight, m.bound("weight"), m.max_bits))
            for n, m in layers.items()
        }
        assert any(bool((b > 0).any()) for b, _ in frozen.values()), "nothing was frozen"
        model.learn(64, reset_num_timesteps=False)
        for n, (bits, code) in frozen.items():
            m = layers[n]
            now = code_of(m.weight, m.bound("weight"), m.max_bits)
            k = m.max_bits
            kept = torch.where(bits > 0, (now >> (k - bits)) == (code >> (k - bits)), True)
            assert bool(kept.all()), f"{n}: a frozen prefix changed on {device}"
    finally:
        env.close()


@pytest.mark.parametrize("device", DEVICES)
def test_ppo_storage_and_losses_live_on_the_device(device: str) -> None:
    """One PPO iteration on a real ROM on ``device``: storage, optimizer state and BLIP buffers
    on the device, finite losses, bf16 autocast on a GPU."""
    from blip_rl.atari import AtariConfig, make_train_envs
    from blip_rl.nets import ActorCritic, NetConfig
    from blip_rl.ppo import PPOConfig, bf16_supported
    from blip_rl.quant import attach

    envs = make_train_envs("breakout", 4, 0, AtariConfig(sticky_actions=0.0))
    try:
        torch.manual_seed(0)
        net = ActorCritic([envs.num_actions], NetConfig(channels=(8, 16, 16), hidden=32))
        net = net.to(device)
        config = PPOConfig(num_envs=4, num_steps=32, num_minibatches=2, update_epochs=2)
        ppo = PPO(net, envs, config, head=0, total_steps=1024, device=device)
        attach(ppo.optimizer, net)
        bf16 = device == "cuda" or bf16_supported()
        assert ppo.autocast_dtype == (torch.bfloat16 if bf16 else None)
        ppo.reset_envs(seed=0)
        ppo.collect()
        losses = ppo.update()
        assert all(v == v for k, v in losses.items() if k != "explained_variance"), losses
        for name in ("obs", "actions", "logprobs", "rewards", "dones", "values", "valid"):
            assert getattr(ppo.storage, name).device.type == device, name
        for state in ppo.optimizer.state.values():
            assert state["exp_avg"].device.type == device
        assert all(b.device.type == device for b in net.buffers())
    finally:
        envs.close()


# ------------------------------------------------------------------------ the GPU benchmark
def test_bench_gpu_runs_on_the_cpu(tmp_path: Path) -> None:
    """``benchmarks/bench_gpu.py`` (what ``gpu_check.sh`` runs on a GPU) works at a tiny size on
    the CPU: every row, its profile shares summing to the wall time, the JSON."""
    bench = load_script("benchmarks/bench_gpu.py", "bench_gpu")
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--num-envs", "2", "--num-steps", "16", "--steps", "64"]
    argv += ["--profile-steps", "32", "--sb3-num-envs", "2", "--sb3-steps", "256"]
    threads = torch.get_num_threads()
    try:
        assert bench.main([*argv, "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = json.loads(out.read_text())["rows"]
    assert [(r["variant"], r["num_envs"]) for r in rows] == [("blip", 2), ("SB3 CnnPolicy", 2)]
    for r in rows:
        assert r["steps_per_s"] > 0 and r["steps"] >= 64
        assert sum(r["share"].values()) == pytest.approx(1.0, abs=0.02), r["share"]
        assert r["share"]["env"] > 0 and r["share"]["update"] > 0
    assert rows[0]["profile_steps_per_s"] > 0 and rows[0]["share"]["xfer"] == 0.0  # one device
