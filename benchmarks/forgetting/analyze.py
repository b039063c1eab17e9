"""Forgetting, retention and plasticity from blip-rl run folders, with IQM and bootstrap CIs.

Reads run folders only (``config.json``, ``summary.json`` / ``metrics.json``, ``evals.csv`` and
the after-game checkpoints for the per-episode returns); never trains. The quantities follow
the project's measurement protocol (``benchmarks/forgetting/README.md``):

* ``R[i][j]``: the evaluation return on game ``j`` after training game ``i`` (``K`` games), with
  its standard error ``se[i][j]`` over the evaluation episodes; ``r_j``, ``h_j``: the published
  random and human scores.
* **gain** ``G_j = R[j][j] - r_j``. Game ``j`` counts as **learned** in a run when
  ``G_j > 2 * se[j][j]`` (above random by more than two standard errors of its own evaluation)
  and ``G_j > LEARNED_MIN_FRACTION * (h_j - r_j)`` (a floor for evaluations whose episodes all
  scored the same, so their standard error is 0). Otherwise the game is "not learned": its
  forgetting and retention are undefined (NaN), never 0.
* **forgetting** ``F_j = (max_{j <= i < K-1} R[i][j] - R[K-1][j]) / G_j`` for ``j < K-1``
  (Chaudhry et al. 2018, divided by the gain so games of different scales average; negative
  when the game improved later). **Retention** ``1 - F_j``.
* **plasticity** ``P_j = G_j / (S_j - r_j)`` for ``j > 0``, where ``S_j`` is the mean final
  return of the from-scratch single-game runs on ``j`` with the same budget (``--scratch``; all
  their seeds, so the denominator is the expected from-scratch score rather than one seed's
  draw). Undefined when the from-scratch runs did not learn the game.
* **average final normalized score**: ``mean_j (R[K-1][j] - r_j) / (h_j - r_j)``.

Aggregates per group (one agent and its settings on one game sequence): the interquartile mean
(IQM: the mean of the middle 50% of the pooled seed x game values, ``trim_mean(x, 0.25)``) with a
95% stratified percentile bootstrap CI (Agarwal et al. 2021): each bootstrap sample redraws the
seeds with replacement independently per game, then recomputes the IQM; NaN values (not learned)
are left out of each sample. Also the plain mean with the same bootstrap.

    python benchmarks/forgetting/analyze.py runs/forgetting/evidence/*  \\
        --scratch runs/forgetting/scratch/* --out benchmarks/forgetting/report
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from blip_rl.atari import reference_scores
from blip_rl.errors import UsageError
from blip_rl.plots import heatmap, pyplot
from blip_rl.report import RunData, group_runs, load_run, plot_comparison

#: A learned game gains at least this fraction of its random-to-human gap (see module doc).
LEARNED_MIN_FRACTION = 0.02
#: Standard errors a learned gain must exceed.
LEARNED_SE = 2.0

Stat = Callable[[np.ndarray], float]

#: The settings a calibration varies: name -> its path in a run's ``config.json``.
KNOBS = {
    "f_prior": ("net", "f_prior"),
    "conv_f_prior": ("net", "conv_f_prior"),
    "value_fisher_coef": ("method_config", "value_fisher_coef"),
    "ewc_lambda": ("method_config", "ewc_lambda"),
    "reserve": ("method_config", "reserve"),
}


# ------------------------------------------------------------------------------- statistics
def iqm(values: np.ndarray) -> float:
    """Interquartile mean of the finite values: drop ``floor(0.25 n)`` from each end, average
    the rest (``scipy.stats.trim_mean(x, 0.25)``). NaN when there is no finite value."""
    x = np.sort(np.asarray(values, dtype=float).ravel())
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan
    cut = int(0.25 * x.size)
    return float(x[cut : x.size - cut].mean())


def finite_mean(values: np.ndarray) -> float:
    """Mean of the finite values (NaN when none)."""
    x = np.asarray(values, dtype=float).ravel()
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


def stratified_bootstrap_ci(
    scores: np.ndarray,
    stat: Stat = iqm,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(point, low, high)``: ``stat`` of ``scores`` and its percentile bootstrap interval.

    ``scores`` is ``(runs, tasks)`` (seeds x games); NaN marks an undefined entry. Each bootstrap
    sample draws, for every task (column) independently, ``runs`` rows with replacement
    (stratified by task, as ``rliable``), and applies ``stat`` to the whole resampled array.
    With a single run per task every sample equals the data, so the interval collapses to the
    point: one seed gives no interval, by construction.
    """
    data = np.asarray(scores, dtype=float)
    if data.ndim == 1:
        data = data[:, None]
    point = stat(data)
    if math.isnan(point):
        return math.nan, math.nan, math.nan
    n_runs, n_tasks = data.shape
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_runs, size=(reps, n_runs, n_tasks))
    cols = np.arange(n_tasks)[None, None, :]
    samples = data[idx, cols]  # (reps, runs, tasks)
    stats = np.array([stat(s) for s in samples])
    stats = stats[np.isfinite(stats)]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(point), float(low), float(high)


def gains(matrix: np.ndarray, random: np.ndarray) -> np.ndarray:
    """``G_j = R[j][j] - r_j`` for every game with a row (NaN for the others)."""
    m = np.asarray(matrix, dtype=float)
    k = m.shape[1]
    g = np.full(k, math.nan)
    for j in range(min(m.shape[0], k)):
        g[j] = m[j, j] - random[j]
    return g


def learned(
    gain: np.ndarray, se_diag: np.ndarray, random: np.ndarray, human: np.ndarray
) -> np.ndarray:
    """Boolean per game: the gain exceeds ``LEARNED_SE`` standard errors of the game's own
    evaluation and ``LEARNED_MIN_FRACTION`` of its random-to-human gap. A NaN standard error
    (the episode returns are unknown) counts as 0; a NaN human score drops the floor."""
    se = np.nan_to_num(np.asarray(se_diag, dtype=float), nan=0.0)
    floor = np.nan_to_num(LEARNED_MIN_FRACTION * (human - random), nan=0.0)
    g = np.asarray(gain, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.isfinite(g) & (g > LEARNED_SE * se) & (g > floor)


def forgetting_fraction(matrix: np.ndarray, gain: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """``F_j = (max_{j <= i < K-1} R[i][j] - R[K-1][j]) / G_j`` for learned ``j < K-1``; NaN
    for the last game, for unlearned games and for an unfinished run (fewer than ``K`` rows)."""
    m = np.asarray(matrix, dtype=float)
    k = m.shape[1]
    out = np.full(k, math.nan)
    if m.shape[0] < k:
        return out
    for j in range(k - 1):
        if ok[j]:
            out[j] = (np.max(m[j : k - 1, j]) - m[k - 1, j]) / gain[j]
    return out


def plasticity(
    gain: np.ndarray, random: np.ndarray, scratch: np.ndarray, scratch_ok: np.ndarray
) -> np.ndarray:
    """``P_j = G_j / (S_j - r_j)`` for ``j > 0`` whose from-scratch score ``S_j`` learned the
    game; NaN otherwise (and for game 0, which starts from scratch in every method)."""
    out = np.full(len(gain), math.nan)
    for j in range(1, len(gain)):
        if scratch_ok[j] and np.isfinite(scratch[j]):
            out[j] = gain[j] / (scratch[j] - random[j])
    return out


def normalized(values: np.ndarray, random: np.ndarray, human: np.ndarray) -> np.ndarray:
    """``(x - r) / (h - r)`` (NaN where there are no reference scores)."""
    return (np.asarray(values, dtype=float) - random) / (human - random)


# --------------------------------------------------------------------------------- reading
def _sem(values: Sequence[float]) -> float:
    if len(values) < 2:
        return math.nan
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def episode_returns(run: Path) -> dict[tuple[int, str], list[float]]:
    """``(after_game, game) -> episode returns`` of the after-game evaluations, from the run's
    newest after-game checkpoint: for runs whose ``evals.csv`` predates its ``stderr`` column.
    Empty when unavailable."""
    ckpts = sorted(
        (run / "checkpoints").glob("after-game-*.pt"),
        key=lambda p: int(p.stem.rsplit("-", 1)[1]),
    )
    if not ckpts:
        return {}
    import torch

    state = torch.load(ckpts[-1], map_location="cpu", weights_only=False)
    out: dict[tuple[int, str], list[float]] = {}
    for e in state.get("evals", []):
        if e.get("after_game") is not None and e.get("returns"):
            out[(int(e["after_game"]), str(e["game"]))] = [float(r) for r in e["returns"]]
    return out


@dataclass
class Run:
    """One run folder with its matrix, standard errors and reference scores."""

    data: RunData
    se: np.ndarray
    random: np.ndarray
    human: np.ndarray

    @property
    def games(self) -> list[str]:
        return self.data.games

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.data.matrix, dtype=float)

    @property
    def sequence(self) -> str:
        return ",".join(self.games)


def read_run(path: str | Path) -> Run:
    """Load a run folder (UsageError if it is not one)."""
    data = load_run(path)
    # A branch (--from-checkpoint) names its source run; seeds of one agent branch from
    # different sources but belong to one group.
    source = str(data.config.get("branched_from") or "")
    data.config = {k: v for k, v in data.config.items() if k != "branched_from"}
    # Fine-tuning on the BLIP network (an ablation: BLIP without the freezing) is its own group.
    net = data.config.get("net")
    if isinstance(net, dict) and net.get("blip") and data.method != "blip":
        data.config["agent"] = f"{data.agent}@blipnet"
    # A branch from trained-game-1.pt ran its own end-of-game step on the source's training;
    # its Fisher states were played anew, so it is compared with other such branches only.
    if Path(source).name.startswith("trained-game-"):
        data.config["agent"] = f"{data.config['agent']}@branch"
    k = len(data.games)
    se = np.full((len(data.matrix), k), math.nan)
    index = {g: j for j, g in enumerate(data.games)}
    for e in data.evals:  # evals.csv keeps each evaluation's standard error
        i = e.get("after_game")
        if i not in (None, "") and int(i) < len(data.matrix) and e["game"] in index:
            se[int(i), index[e["game"]]] = e["stderr"]
    if np.isnan(se).all():  # a run from before evals.csv had it: its after-game checkpoint
        rets = episode_returns(Path(path))
        for (i, g), returns in rets.items():
            if i < len(data.matrix) and g in index:
                se[i, index[g]] = _sem(returns)
    refs = [reference_scores(g) for g in data.games]
    random = np.array([math.nan if r is None else r[0] for r in refs])
    human = np.array([math.nan if r is None else r[1] for r in refs])
    return Run(data=data, se=se, random=random, human=human)


# -------------------------------------------------------------------------------- analysis
@dataclass
class GroupResult:
    """Per-seed, per-game quantities of one group, ``(seeds, games)`` arrays, and aggregates."""

    label: str
    sequence: list[str]
    seeds: list[Any]
    steps_per_game: int
    diag: np.ndarray
    final: np.ndarray
    gain: np.ndarray
    learned: np.ndarray
    forgetting: np.ndarray
    plasticity: np.ndarray
    final_normalized: np.ndarray
    aggregates: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    means: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    mean_bits_after: list[float] = field(default_factory=list)
    """BLIP: the mean frozen bits per parameter after each game but the last, over the runs
    (game 1's first): the freeze each later game meets, e.g. two values for three games (NaN
    for other methods)."""
    method: str = ""
    """The continual method of the group's runs (``blip``, ``finetune``, ``ewc``...)."""
    knobs: dict[str, float] = field(default_factory=dict)
    """The calibrated settings of the group's runs, where their config has them (``KNOBS``)."""
    scratch_learned: dict[str, bool] = field(default_factory=dict)
    """Each later game that has from-scratch runs at this budget: whether they learned it."""

    @property
    def mean_bits(self) -> float:
        """BLIP: the mean frozen bits per parameter after game 1 (NaN otherwise)."""
        return self.mean_bits_after[0] if self.mean_bits_after else math.nan

    @property
    def seq(self) -> str:
        """The sequence as one string (``Run.sequence``'s form), to group results by."""
        return ",".join(self.sequence)


def scratch_scores(
    scratch: Sequence[Run], games: Sequence[str], steps: int
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Mean from-scratch final return per game of ``games`` (same ``steps``), whether it was
    learned (by the same rule, on the mean gain against the pooled standard error), and the
    number of from-scratch runs per game."""
    s = np.full(len(games), math.nan)
    ok = np.zeros(len(games), dtype=bool)
    counts: dict[str, int] = {}
    for j, g in enumerate(games):
        runs = [r for r in scratch if r.games == [g] and r.data.steps_per_game == steps]
        runs = [r for r in runs if len(r.data.matrix) == 1]
        counts[g] = len(runs)
        if not runs:
            continue
        finals = np.array([r.matrix[0, 0] for r in runs])
        s[j] = finals.mean()
        se = (
            finals.std(ddof=1) / math.sqrt(len(finals))
            if len(finals) > 1
            else float(np.nan_to_num(runs[0].se[0, 0], nan=0.0))
        )
        ref = runs[0]
        ok[j] = bool(
            learned(
                np.array([s[j] - ref.random[0]]), np.array([se]), ref.random[:1], ref.human[:1]
            )[0]
        )
    return s, ok, counts


def knob_values(config: dict[str, Any]) -> dict[str, float]:
    """The ``KNOBS`` a run's config sets (a method without the setting has no entry)."""
    out = {}
    for name, (section, key) in KNOBS.items():
        value = (config.get(section) or {}).get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def trade_off_front(results: Sequence[GroupResult]) -> list[GroupResult]:
    """The groups no other group of the same sequence beats on both retention and plasticity
    (IQMs; at least as good on both and better on one), by rising plasticity. Groups without
    both numbers are left out."""
    points = [
        r
        for r in results
        if np.isfinite(r.aggregates["retention"][0]) and np.isfinite(r.aggregates["plasticity"][0])
    ]

    def beats(a: GroupResult, b: GroupResult) -> bool:
        ra, pa = a.aggregates["retention"][0], a.aggregates["plasticity"][0]
        rb, pb = b.aggregates["retention"][0], b.aggregates["plasticity"][0]
        return a.seq == b.seq and ra >= rb and pa >= pb and (ra > rb or pa > pb)

    front = [b for b in points if not any(beats(a, b) for a in points)]
    return sorted(front, key=lambda r: (r.seq, r.aggregates["plasticity"][0]))


def _bits_after(run: Run, i: int) -> float:
    """The mean frozen bits per parameter after game ``i`` (0-based) of ``run``'s
    ``summary.json``, NaN where it has none."""
    after = (run.data.summary or {}).get("after_game") or []
    bits = after[i].get("mean_bits") if i < len(after) else None
    return math.nan if bits is None else float(bits)


def analyze_group(
    label: str, runs: Sequence[Run], scratch: Sequence[Run], reps: int = 2000
) -> GroupResult:
    """Every quantity of the module docstring for one group of runs (same sequence)."""
    games = runs[0].games
    k = len(games)
    steps = runs[0].data.steps_per_game
    s_scores, s_ok, s_counts = scratch_scores(scratch, games, steps)
    rows: dict[str, list[np.ndarray]] = {
        n: [] for n in ("diag", "final", "gain", "learned", "forgetting", "plasticity", "norm")
    }
    for r in runs:
        m = r.matrix
        full = m.shape[0] == k
        g = gains(m, r.random)
        se_diag = np.array([r.se[j, j] if j < m.shape[0] else math.nan for j in range(k)])
        ok = learned(g, se_diag, r.random, r.human)
        rows["diag"].append(np.array([m[j, j] if j < m.shape[0] else math.nan for j in range(k)]))
        rows["final"].append(m[k - 1] if full else np.full(k, math.nan))
        rows["gain"].append(g)
        rows["learned"].append(ok)
        rows["forgetting"].append(forgetting_fraction(m, g, ok))
        rows["plasticity"].append(plasticity(g, r.random, s_scores, s_ok))
        rows["norm"].append(
            normalized(m[k - 1], r.random, r.human) if full else np.full(k, math.nan)
        )
    arr = {n: np.stack(v) for n, v in rows.items()}
    res = GroupResult(
        label=label,
        sequence=games,
        seeds=[r.data.seed for r in runs],
        steps_per_game=steps,
        diag=arr["diag"],
        final=arr["final"],
        gain=arr["gain"],
        learned=arr["learned"].astype(bool),
        forgetting=arr["forgetting"],
        plasticity=arr["plasticity"],
        final_normalized=arr["norm"],
    )
    # BLIP's own freeze (a branch of another method copies its source's record)
    res.mean_bits_after = [
        finite_mean(np.array([_bits_after(r, i) for r in runs if r.data.method == "blip"], float))
        for i in range(k - 1)
    ]
    res.method = runs[0].data.method
    res.knobs = knob_values(runs[0].data.config)
    res.scratch_learned = {g: bool(s_ok[j]) for j, g in enumerate(games) if j and s_counts[g]}
    quantities = {
        "forgetting": res.forgetting,
        "retention": 1 - res.forgetting,
        "plasticity": res.plasticity,
        "final_normalized": res.final_normalized,
    }
    for name, values in quantities.items():
        res.aggregates[name] = stratified_bootstrap_ci(values, iqm, reps=reps)
        res.means[name] = stratified_bootstrap_ci(values, finite_mean, reps=reps)
    # the average final normalized score is one number per run: its IQM over seeds
    per_run = np.array([[finite_mean(v)] for v in res.final_normalized])
    res.aggregates["avg_final_normalized"] = stratified_bootstrap_ci(per_run, iqm, reps=reps)
    res.means["avg_final_normalized"] = stratified_bootstrap_ci(per_run, finite_mean, reps=reps)
    return res


# --------------------------------------------------------------------------------- writing
def _f(v: float, digits: int = 2) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _ci(t: tuple[float, float, float], digits: int = 2) -> str:
    point, low, high = t
    if not np.isfinite(point):
        return "–"
    if not (np.isfinite(low) and np.isfinite(high)) or low == high:
        return f"{point:.{digits}f}"
    return f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _n(values: np.ndarray) -> int:
    return int(np.isfinite(values).sum())


def group_markdown(res: GroupResult) -> str:
    """Per-game table (mean over seeds, n = seeds where the quantity is defined)."""
    lines = [
        f"### {res.label} on {' → '.join(res.sequence)}",
        "",
        f"{len(res.seeds)} run(s), seeds {', '.join(map(str, res.seeds))}, "
        f"{res.steps_per_game} env steps per game.",
        "",
        "| game | R[j][j] (mean) | gain | learned (runs) | forgetting F (mean, n) "
        "| retention (mean) | plasticity (mean, n) | final (mean) | final norm |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for j, g in enumerate(res.sequence):
        f, p = res.forgetting[:, j], res.plasticity[:, j]
        fmean = finite_mean(f)
        lines.append(
            f"| {g} | {_f(finite_mean(res.diag[:, j]))} | {_f(finite_mean(res.gain[:, j]))} "
            f"| {int(res.learned[:, j].sum())}/{len(res.seeds)} "
            f"| {_f(fmean)} ({_n(f)}) | {_f(1 - fmean)} "
            f"| {_f(finite_mean(p))} ({_n(p)}) | {_f(finite_mean(res.final[:, j]))} "
            f"| {_f(finite_mean(res.final_normalized[:, j]))} |"
        )
    return "\n".join(lines)


def runs_markdown(runs: Sequence[Run]) -> str:
    """Every run's matrix with the standard error of each entry (over its episodes)."""
    k = max(len(r.games) for r in runs)
    lines = [
        "| run | seed | after game | " + " | ".join(f"on game {j + 1}" for j in range(k)) + " |",
        "|---" * (k + 3) + "|",
    ]
    for r in runs:
        m = r.matrix
        for i in range(m.shape[0]):
            cells = [
                f"{r.games[j]} {m[i, j]:.1f}"
                + ("" if np.isnan(r.se[i, j]) else f" ± {r.se[i, j]:.1f}")
                for j in range(m.shape[1])
            ]
            lines.append(
                f"| {r.data.path.name} | {r.data.seed} | {i + 1}. {r.games[i]} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines)


def _bits_cell(r: GroupResult) -> str:
    """The frozen bits after each game but the last, ``3.43, 4.96``; a dash for no BLIP run."""
    if not np.isfinite(r.mean_bits_after).any():
        return _f(math.nan)
    return ", ".join(_f(b) for b in r.mean_bits_after)


def aggregate_markdown(results: Sequence[GroupResult]) -> str:
    """One row per group: IQM [95% CI] and mean [95% CI] of each aggregate."""
    lines = [
        "| sequence | group | runs | forgetting IQM [CI] | retention IQM [CI] "
        "| plasticity IQM [CI] | avg final norm IQM [CI] | forgetting mean [CI] "
        "| plasticity mean [CI] | bits frozen after game 1 (, 2, ...) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        a, m = r.aggregates, r.means
        lines.append(
            f"| {r.seq} | {r.label} | {len(r.seeds)} "
            f"| {_ci(a['forgetting'])} (n={_n(r.forgetting)}) | {_ci(a['retention'])} "
            f"| {_ci(a['plasticity'])} (n={_n(r.plasticity)}) "
            f"| {_ci(a['avg_final_normalized'])} "
            f"| {_ci(m['forgetting'])} | {_ci(m['plasticity'])} | {_bits_cell(r)} |"
        )
    return "\n".join(lines)


def front_markdown(results: Sequence[GroupResult]) -> list[str]:
    """One line per sequence: its trade-off front (``trade_off_front``)."""
    lines = []
    for seq in dict.fromkeys(r.seq for r in results):
        front = [r for r in trade_off_front(results) if r.seq == seq]
        points = "; ".join(
            f"{r.label}: retention {_f(r.aggregates['retention'][0])}, "
            f"plasticity {_f(r.aggregates['plasticity'][0])}"
            for r in front
        )
        lines.append(f"- `{seq}`: {points or 'no group has both numbers'}")
    return lines


def _setting(r: GroupResult, knobs: Sequence[str]) -> str:
    return ", ".join(f"{k}={r.knobs[k]:g}" for k in knobs if k in r.knobs) or "-"


def calibration_picks(
    results: Sequence[GroupResult], min_retention: float = 0.9, min_plasticity: float = 0.8
) -> list[str]:
    """The rules of ``README.md`` (sections 4c and 4d), applied per method calibrated with
    several settings: on each sequence, of the method's groups on the method's own trade-off
    front that keep ``min_retention``, the one with the highest plasticity (the pick); whether
    the sequences pick the same setting; and the settings that keep ``min_retention`` and reach
    ``min_plasticity`` on every sequence.

    The rule's second clause (a candidate on both fronts with retention >= 0.9 and the higher
    plasticity of the two candidates on both) needs no code: a sequence's pick has the highest
    plasticity among its front's settings that keep ``min_retention``, so another candidate can
    be at least as plastic there only by an exact tie of plasticity IQMs."""
    lines = []
    for method in dict.fromkeys(r.method for r in results):
        mine = [r for r in results if r.method == method]
        # the settings that tell the method's groups apart (not those they share)
        knobs = [k for k in KNOBS if len({r.knobs.get(k) for r in mine}) > 1]
        if not knobs:
            continue
        seqs = list(dict.fromkeys(r.seq for r in mine))
        picks, accepted = {}, []
        for seq in seqs:
            groups = [r for r in mine if r.seq == seq]
            keep = [
                r for r in trade_off_front(groups)
                if r.aggregates["retention"][0] >= min_retention
            ]  # fmt: skip
            best = max(keep, key=lambda r: r.aggregates["plasticity"][0], default=None)
            picks[seq] = _setting(best, knobs) if best else None
            accepted.append(
                {
                    _setting(r, knobs)
                    for r in groups
                    if r.aggregates["retention"][0] >= min_retention
                    and r.aggregates["plasticity"][0] >= min_plasticity
                }
            )
        said = "; ".join(
            f"`{seq}` picks {pick or f'nothing (no setting keeps {min_retention:g})'}"
            for seq, pick in picks.items()
        )
        chosen = set(picks.values())
        if len(seqs) == 1:
            verdict = "one sequence only"
        elif len(chosen) == 1 and None not in chosen:
            verdict = f"every sequence picks {chosen.pop()}"
        else:
            verdict = "the picks differ"
        everywhere = sorted(set.intersection(*accepted))
        lines.append(
            f"- `{method}`: {said}. **{verdict}**. Settings with retention >= {min_retention:g} "
            f"and plasticity >= {min_plasticity:g} on every sequence: "
            f"{'; '.join(everywhere) or 'none'}."
        )
    return lines


def paired_difference(
    a: GroupResult, b: GroupResult, key: str = "forgetting", reps: int = 2000
) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)``: the mean over common seeds of ``a``'s minus ``b``'s per-seed
    value (each the mean over the games where it is defined), with a 95% percentile bootstrap
    CI over seeds. Paired by seed: runs that branch from one shared checkpoint share game 1."""
    va = {s: finite_mean(v) for s, v in zip(a.seeds, getattr(a, key), strict=True)}
    vb = {s: finite_mean(v) for s, v in zip(b.seeds, getattr(b, key), strict=True)}
    diffs = np.array([va[s] - vb[s] for s in va if s in vb])
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size == 0:
        return math.nan, math.nan, math.nan, 0
    point, low, high = stratified_bootstrap_ci(diffs[:, None], finite_mean, reps=reps)
    return point, low, high, int(diffs.size)


def _seeds_with_forgetting(r: GroupResult) -> int:
    return int(np.isfinite(r.forgetting).any(axis=1).sum())


def _why_no_plasticity(r: GroupResult) -> str:
    """Why ``r``'s plasticity IQM is NaN, for the bar line."""
    if not r.scratch_learned:
        return "plasticity not measured (no from-scratch run at this budget)"
    unlearned = [g for g, ok in r.scratch_learned.items() if not ok]
    if len(unlearned) == len(r.scratch_learned):
        return (
            "plasticity undefined (the from-scratch runs did not learn "
            f"{', '.join(unlearned)}: no gain to divide by)"
        )
    return "plasticity undefined (no run reached a game with a learned from-scratch reference)"


def bar_check(results: Sequence[GroupResult], method: str, baseline: str) -> list[str]:
    """Issue 9's bar per sequence: ``method``'s forgetting at most a third of ``baseline``'s
    with separated CIs, and ``method``'s plasticity at least 0.8."""
    out = []
    # "blip (x=1)" pairs with "finetune@blipnet (x=1)": the same setting suffix, if any;
    # otherwise with plain "finetune@blipnet" (e.g. a BLIP-only setting such as the reserve).
    suffixes = sorted({r.label[len(method) :] for r in results if r.label.startswith(method)})
    for seq, suffix in sorted({(r.seq, x) for r in results for x in suffixes}):
        here = [r for r in results if r.seq == seq]
        mine = [r for r in here if r.label == method + suffix]
        base = [r for r in here if r.label == baseline + suffix]
        if mine and not base:  # a setting the baseline does not have: its one group, if any
            base = [r for r in here if r.label == baseline]
        if not mine or not base:
            continue
        method_x, baseline_x = method + suffix, base[0].label
        fm, fb = mine[0].aggregates["forgetting"], base[0].aggregates["forgetting"]
        pm = mine[0].aggregates["plasticity"]
        # seeds that have something to forget: a seed whose earlier games were all not learned
        # has no forgetting value and does not count towards the bar's 3 seeds
        seeds = min(_seeds_with_forgetting(mine[0]), _seeds_with_forgetting(base[0]))
        steps = min(mine[0].steps_per_game, base[0].steps_per_game)
        forgetting_met = False
        if not (np.isfinite(fm[0]) and np.isfinite(fb[0])):
            forgetting = "undefined (a game was not learned)"
        elif seeds < 3:
            forgetting = (
                f"inconclusive, {seeds} seed(s) with a learned game to forget and the bar "
                "needs >= 3"
            )
        elif fm[2] < fb[1] and fm[0] <= fb[0] / 3:
            forgetting, forgetting_met = "at most 1/3 of the baseline's, CIs separate", True
        elif fm[2] < fb[1]:
            forgetting = "CIs separate, but more than 1/3 of the baseline's"
        else:
            forgetting = "inconclusive, the CIs overlap"
        missing = [] if forgetting_met else ["forgetting"]
        if steps < 200_000:
            missing.append(f"{steps} env steps per game, below the bar's 200k")
        if not np.isfinite(pm[0]):
            missing.append(_why_no_plasticity(mine[0]))
        elif pm[0] < 0.8:
            missing.append(f"plasticity {pm[0]:.2f} < 0.8")
        verdict = "bar met" if not missing else "bar not met: " + "; ".join(missing)
        d = paired_difference(mine[0], base[0])
        paired = (
            "no common seed"
            if d[3] == 0
            else f"{d[0]:+.2f} [{d[1]:+.2f}, {d[2]:+.2f}] over {d[3]} paired seed(s)"
        )
        plast = "–" if not np.isfinite(pm[0]) else _ci(pm)
        out.append(
            f"- `{seq}`: {method_x} forgetting {_ci(fm)} vs {baseline_x} {_ci(fb)}: "
            f"{forgetting}; {method_x} plasticity IQM {plast}. **{verdict}**. Paired difference "
            f"of forgetting ({method} - {baseline}): {paired}."
        )
    return out


def _bars(t: Any) -> np.ndarray:
    """Error-bar lengths (below, above) of (IQM, low, high) triples, for ``errorbar``."""
    t = np.asarray(t, dtype=float).reshape(-1, 3)
    return np.stack([t[:, 0] - t[:, 1], t[:, 2] - t[:, 0]])


def plot_tradeoff(results: Sequence[GroupResult], path: Path) -> None:
    """Retention (y) against plasticity (x): one point per group, IQM with 95% CI bars."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    for r in results:
        ret, pla = r.aggregates["retention"], r.aggregates["plasticity"]
        if not (np.isfinite(ret[0]) and np.isfinite(pla[0])):
            continue
        ax.errorbar(
            pla[0],
            ret[0],
            xerr=_bars(pla),
            yerr=_bars(ret),
            fmt="o",
            capsize=3,
            label=f"{r.label} ({r.seq}, {len(r.seeds)} seeds)",
        )
    ax.axhline(1.0, color="0.6", lw=0.8, ls="--")
    ax.axvline(0.8, color="0.6", lw=0.8, ls=":")
    ax.set_xlabel("plasticity (gain / from-scratch gain), IQM")
    ax.set_ylabel("retention (1 - forgetting), IQM")
    ax.set_title("retention vs plasticity (bars: 95% stratified bootstrap CI)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


#: Per method, the knob its calibration curve runs along and the knob that splits its series.
CURVES = {
    "blip": ("f_prior", "value_fisher_coef"),
    "ewc": ("ewc_lambda", ""),
    "online-ewc": ("ewc_lambda", ""),
}


def plot_knobs(results: Sequence[GroupResult], path: Path, baseline: str = "") -> None:
    """One sequence's calibration curves: per knob of ``CURVES`` that takes at least two
    values, retention and plasticity (IQM, 95% CI bars) against it on a log axis, one series
    per agent label and value of the splitting knob; ``baseline``'s retention as a grey line.
    Nothing is written when no knob varies."""
    panels: dict[str, dict[str, list[GroupResult]]] = {}
    for r in results:
        x_knob, split = CURVES.get(r.method, ("", ""))
        if "conv_f_prior" in r.knobs:  # the convolutions' own prior: a panel of its own
            x_knob, split = "conv_f_prior", "f_prior"
        if x_knob in r.knobs:
            agent = r.label.split(" (")[0]  # a source run and branches are separate series
            name = agent + (f", {split}={r.knobs[split]:g}" if split in r.knobs else "")
            panels.setdefault(x_knob, {}).setdefault(name, []).append(r)
    panels = {
        k: v for k, v in panels.items() if len({r.knobs[k] for g in v.values() for r in g}) > 1
    }
    if not panels:
        return
    plt = pyplot()
    fig, axes = plt.subplots(
        1, len(panels), figsize=(max(8.0, 6.0 * len(panels)), 5.0), squeeze=False
    )
    base = [r for r in results if r.label == baseline]
    for ax, (knob, series) in zip(axes[0], panels.items(), strict=True):
        for n, (name, groups) in enumerate(sorted(series.items())):
            groups = sorted(groups, key=lambda r: r.knobs[knob])
            # series side by side on the log axis, so that their bars do not hide each other
            x = np.array([r.knobs[knob] for r in groups]) * 1.15 ** (n - (len(series) - 1) / 2)
            for quantity, style in (("retention", "-o"), ("plasticity", "--s")):
                t = np.array([r.aggregates[quantity] for r in groups])
                ax.errorbar(
                    x, t[:, 0], yerr=_bars(t), fmt=style,
                    color=f"C{n}", capsize=3, label=f"{quantity}: {name}",
                )  # fmt: skip
        if base and np.isfinite(base[0].aggregates["retention"][0]):
            ax.axhline(base[0].aggregates["retention"][0], color="0.5", lw=1.0)
            ax.annotate(
                f"{baseline} retention", (0.01, 0.02), xycoords="axes fraction", color="0.4"
            )
        ax.axhline(0.8, color="0.6", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel(knob)
        ax.set_ylabel("IQM over seeds and games")
        ax.legend(fontsize=7)
    seeds = sorted({len(r.seeds) for g in panels.values() for rs in g.values() for r in rs})
    fig.suptitle(
        f"{' -> '.join(results[0].sequence)}: retention (solid) and plasticity (dashed)\n"
        f"IQM with 95% CI, seeds per point: {'/'.join(map(str, seeds))}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_heatmaps(groups: dict[str, list[Run]], path: Path) -> None:
    """Per group, the human-normalized matrix averaged over its seeds."""
    plt = pyplot()
    n = len(groups)
    k = max(len(runs[0].games) for runs in groups.values())
    fig, axes = plt.subplots(1, n, figsize=(n * (2.6 + 1.0 * k), 1.8 + 0.8 * k), squeeze=False)
    for ax, (label, runs) in zip(axes[0], groups.items(), strict=True):
        mats = [normalized(r.matrix, r.random, r.human) for r in runs if r.matrix.shape[0] == k]
        if not mats:
            ax.axis("off")
            continue
        mean = np.nanmean(np.stack(mats), axis=0)
        im = heatmap(ax, mean, runs[0].games, f"{label} ({len(mats)} seeds)", digits=2)
        fig.colorbar(im, ax=ax)
    fig.suptitle("human-normalized R[i][j], mean over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _to_json(res: GroupResult) -> dict[str, Any]:
    def arr(a: np.ndarray) -> Any:
        return [[None if not np.isfinite(v) else float(v) for v in row] for row in a]

    return {
        "label": res.label,
        "sequence": res.sequence,
        "seeds": res.seeds,
        "steps_per_game": res.steps_per_game,
        "diag": arr(res.diag),
        "gain": arr(res.gain),
        "learned": res.learned.tolist(),
        "forgetting": arr(res.forgetting),
        "plasticity": arr(res.plasticity),
        "final_normalized": arr(res.final_normalized),
        "iqm_ci": {k: list(v) for k, v in res.aggregates.items()},
        "mean_ci": {k: list(v) for k, v in res.means.items()},
        "mean_bits": None if math.isnan(res.mean_bits) else res.mean_bits,
        "mean_bits_after": [None if math.isnan(b) else b for b in res.mean_bits_after],
        "method": res.method,
        "knobs": res.knobs,
    }


def analyze(
    run_paths: Sequence[str | Path],
    scratch_paths: Sequence[str | Path],
    out: Path,
    reps: int = 2000,
    method: str = "blip",
    baseline: str = "finetune",
) -> list[GroupResult]:
    """Analyze the runs, write ``forgetting.md``, ``analysis.json`` and the plots into ``out``;
    returns the per-group results."""
    runs = [read_run(p) for p in run_paths]
    scratch = [read_run(p) for p in scratch_paths]
    if not runs:
        raise UsageError("no run folders given")
    by_seq: dict[str, list[Run]] = {}
    for r in runs:
        by_seq.setdefault(r.sequence, []).append(r)
    out.mkdir(parents=True, exist_ok=True)
    results: list[GroupResult] = []
    sections: list[str] = []
    for seq, seq_runs in by_seq.items():
        lookup = {id(r.data): r for r in seq_runs}
        groups = {
            label: [lookup[id(d)] for d in members]
            for label, members in group_runs([r.data for r in seq_runs]).items()
        }
        seq_results = [analyze_group(label, g, scratch, reps) for label, g in groups.items()]
        results.extend(seq_results)
        sections.extend(group_markdown(r) for r in seq_results)
        tag = seq.replace(",", "-")
        plot_knobs(seq_results, out / f"knobs_{tag}.png", baseline)
        plot_heatmaps(groups, out / f"heatmaps_{tag}.png")
        plot_comparison(
            {label: [r.data for r in g] for label, g in groups.items()},
            seq_runs[0].games,
            out / f"curves_{tag}.png",
        )
    plot_tradeoff(results, out / "retention_plasticity.png")
    counts = {
        g: c
        for r in runs
        for g, c in scratch_scores(scratch, r.games, r.data.steps_per_game)[2].items()
    }
    text = "\n".join(
        [
            "# Forgetting analysis",
            "",
            f"Generated by `benchmarks/forgetting/analyze.py` (`{' '.join(sys.argv)}`).",
            "",
            f"Learned: gain > {LEARNED_SE:g} standard errors of the game's own evaluation and > "
            f"{LEARNED_MIN_FRACTION:g} of the random-to-human gap; forgetting and retention are "
            "left out (n counts what is left) for games not learned. Plasticity against the "
            "mean of the from-scratch runs with the same budget "
            f"(runs per game: {', '.join(f'{g} {c}' for g, c in counts.items()) or 'none'}). "
            "Brackets: 95% stratified percentile bootstrap CI "
            f"({reps} samples); one seed gives no interval.",
            "",
            "## Aggregates",
            "",
            aggregate_markdown(results),
            "",
            f"## Bar of issue 9 ({method} vs {baseline})",
            "",
            *(bar_check(results, method, baseline) or ["- no sequence has both groups"]),
            "",
            "## Trade-off front",
            "",
            "Per sequence, the groups that no other group beats on both retention and "
            "plasticity (IQMs), by rising plasticity: the settings a default is chosen from.",
            "",
            *front_markdown(results),
            "",
            "## Calibration rules",
            "",
            "Per method with several settings (the rules of `benchmarks/forgetting/README.md`, "
            "sections 4c and 4d): each sequence's pick, the best plasticity on the method's own "
            "front among the settings that keep 0.9 of the first game's gain; and the settings "
            "that keep 0.9 and reach 0.8 plasticity everywhere.",
            "",
            *(calibration_picks(results) or ["- no method has several settings"]),
            "",
            "## Per game (means over seeds)",
            "",
            "\n\n".join(sections),
            "",
            "## Every run (mean ± standard error over the evaluation episodes)",
            "",
            runs_markdown(runs),
            "",
            "Plots: `retention_plasticity.png`, `heatmaps_<sequence>.png`, "
            "`curves_<sequence>.png` (shaded: each game's own training), and "
            "`knobs_<sequence>.png` where a calibrated setting takes several values.",
            "",
        ]
    )
    (out / "forgetting.md").write_text(text)
    (out / "analysis.json").write_text(json.dumps([_to_json(r) for r in results], indent=1))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="sequence run folders (any methods, seeds)")
    ap.add_argument("--scratch", nargs="*", default=[], help="from-scratch single-game runs")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/forgetting/report"))
    ap.add_argument("--reps", type=int, default=2000, help="bootstrap samples")
    ap.add_argument("--method", default="blip", help="group checked against the bar")
    ap.add_argument("--baseline", default="finetune", help="its baseline group")
    args = ap.parse_args(argv)
    try:
        if args.reps < 10:
            raise UsageError(f"invalid --reps {args.reps}; expected an integer >= 10")
        analyze(args.runs, args.scratch, args.out, args.reps, args.method, args.baseline)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out / 'forgetting.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
