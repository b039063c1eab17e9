"""Atari games: names, presets, reference scores, env contract, CLI errors (real ROMs)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from ale_py import roms
from conftest import one_error_line

from blip_rl import atari
from blip_rl.atari import (
    FULL_ACTION_COUNT,
    OBS_SHAPE,
    AtariConfig,
    GameSpec,
    evaluate,
    human_normalized,
    list_games,
    list_presets,
    load_preset,
    make_eval_envs,
    make_train_envs,
    reference_scores,
    resolve_game,
    resolve_games,
    resolve_sequence,
)
from blip_rl.errors import UsageError, run_cli
from blip_rl.train import main as train_main

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ["native", "gymnasium"]


def _ale_action_count(rom: str) -> int:
    """Minimal action count straight from a gymnasium ALE env, independent of blip_rl."""
    from ale_py.env import AtariEnv

    env = AtariEnv(game=rom)
    try:
        return int(env.action_space.n)  # type: ignore[attr-defined]
    finally:
        env.close()


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    [
        "space_invaders",
        "spaceinvaders",
        "SpaceInvaders",
        "Space Invaders",
        " SPACE-INVADERS ",
        "ALE/SpaceInvaders-v5",
        "SpaceInvadersNoFrameskip-v4",
    ],
)
def test_resolve_game_accepts_common_spellings(spelling: str) -> None:
    spec = resolve_game(spelling)
    assert spec == GameSpec("space_invaders", "space_invaders", "SpaceInvaders", 6)


def test_resolve_game_counts_actions_from_the_rom() -> None:
    for name, rom in [("pong", "pong"), ("ALE/Breakout-v5", "breakout"), ("MsPacman", "ms_pacman")]:
        spec = resolve_game(name)
        assert spec.rom == rom
        assert spec.minimal_actions == _ale_action_count(rom)
    assert resolve_game("jamesbond").display_name == "Jamesbond"
    assert resolve_game("james_bond").name == "jamesbond"
    assert resolve_game("pong").gym_id == "ALE/Pong-v5"


def test_unknown_game_names_it_and_suggests() -> None:
    with pytest.raises(UsageError) as err:
        resolve_game("spaceinvadrs")
    message = str(err.value)
    assert "'spaceinvadrs'" in message and "space_invaders" in message
    assert "\n" not in message
    with pytest.raises(UsageError, match="no single-player mode"):
        resolve_game("combat")


def test_resolve_games_lists_and_presets() -> None:
    assert [g.name for g in resolve_games("pong, breakout,SpaceInvaders")] == [
        "pong",
        "breakout",
        "space_invaders",
    ]
    assert [g.name for g in resolve_games("@demo")] == ["crazy_climber", "road_runner"]
    assert [g.name for g in resolve_games("@demo,pong")] == ["crazy_climber", "road_runner", "pong"]
    assert [g.name for g in resolve_games("@breakout-freeway")] == ["breakout", "freeway"]
    assert [g.name for g in resolve_games("@breakout-krull")] == ["breakout", "krull"]
    assert [g.name for g in resolve_games("@crazy_climber-krull")] == ["crazy_climber", "krull"]
    assert [g.name for g in resolve_games("@tutankham-assault")] == ["tutankham", "assault"]
    for bad in ["", " , ", "@nope", "pong,nope"]:
        with pytest.raises(UsageError):
            resolve_games(bad)


def test_list_games_covers_every_single_player_rom() -> None:
    games = list_games()
    names = [g.name for g in games]
    expected = sorted(set(roms.get_all_rom_ids()) - atari.MULTIPLAYER_ONLY)
    assert names == expected
    by_name = {g.name: g for g in games}
    assert by_name["pong"].minimal_actions == 6
    assert by_name["breakout"].minimal_actions == 4
    assert all(1 <= g.minimal_actions <= FULL_ACTION_COUNT for g in games)


def test_cli_list_games(capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main(["--list-games"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for game in list_games():
        assert rows[game.name][2] == str(game.minimal_actions)
    assert "@blip-atari6" in out and "Agent57" in out
    assert "no published pair" in rows["air_raid"][3] + " " + " ".join(rows["air_raid"][4:])


# --------------------------------------------------------------------------------------------
# Presets and reference scores
# --------------------------------------------------------------------------------------------


def test_presets_content() -> None:
    assert {"blip-atari6", "cora-atari6", "demo"} <= set(list_presets())
    blip = load_preset("@blip-atari6")
    # The orders published by the two papers (BLIP, Shi et al. 2021; CoRA, Powers et al. 2022).
    assert [g.name for g in blip.games] == (
        "kung_fu_master boxing jamesbond krull riverraid space_invaders".split()
    )
    assert blip.protocol == {"sticky_actions": 0.0}
    cora = load_preset("cora-atari6")
    assert [g.name for g in cora.games] == (
        "space_invaders krull beam_rider hero star_gunner ms_pacman".split()
    )


def test_preset_protocol_and_explicit_override() -> None:
    assert resolve_sequence("@blip-atari6").config.sticky_actions == 0.0
    assert resolve_sequence("@cora-atari6").config.sticky_actions == 0.25
    seq = resolve_sequence("@blip-atari6", {"sticky_actions": 0.1, "backend": None})
    assert seq.config.sticky_actions == 0.1 and seq.config.backend == "native"
    assert seq.presets == ("blip-atari6",)


def test_reference_scores() -> None:
    assert reference_scores("pong") == (-20.7, 14.6)
    assert reference_scores("SpaceInvaders") == (148.0, 1668.7)
    assert human_normalized("pong", 14.6) == pytest.approx(1.0)
    assert human_normalized("pong", -20.7) == pytest.approx(0.0)
    assert human_normalized("breakout", 30.5 + (30.5 - 1.7)) == pytest.approx(2.0)
    # ale-py ships games that have no published pair: say so, never invent one
    assert reference_scores("air_raid") is None
    assert human_normalized("air_raid", 100.0) is None
    for preset in list_presets():
        for game in load_preset(preset).games:
            random_score, human_score = reference_scores(game) or (0.0, 0.0)
            assert human_score > random_score, game.name


def test_score_table_names_are_real_games_and_source_is_named() -> None:
    data = tomllib.loads((REPO / "blip_rl/presets/envs/scores.toml").read_text())
    assert "Agent57" in data["source"]
    assert len(data["games"]) == 57
    playable = {g.name for g in list_games()}
    assert set(data["games"]) <= playable


def test_presets_are_package_data() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["blip_rl"]
    assert "presets/envs/*.toml" in patterns
    assert (REPO / "envs").resolve() == (REPO / "blip_rl/presets/envs").resolve()


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"sticky_actions": 1.5}, "1.5"),
        ({"sticky_actions": -0.1}, "-0.1"),
        ({"backend": "cuda"}, "'cuda'"),
        ({"max_episode_frames": 0}, "--max-episode-frames"),
        ({"frame_skip": 0}, "--frame-skip"),
        ({"noop_max": -1}, "--noop-max"),
        ({"num_threads": -2}, "--env-threads"),
        ({"gym_vectorization": "threads"}, "'threads'"),
        ({"full_action_space": "yes"}, "--full-action-space"),
    ],
)
def test_bad_options_raise_value_error(changes: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match="invalid") as err:
        AtariConfig(**changes)  # type: ignore[arg-type]
    assert needle in str(err.value)
    with pytest.raises(ValueError):
        AtariConfig().replace(**changes)


def test_bad_env_arguments() -> None:
    with pytest.raises(ValueError, match="unknown Atari option 'sticky'"):
        AtariConfig().replace(sticky=0.1)
    for num_envs in (0, -1):
        with pytest.raises(UsageError, match=f"num_envs {num_envs}"):
            make_train_envs("pong", num_envs)
    with pytest.raises(UsageError, match="episodes"):
        evaluate(lambda o: np.zeros(len(o), np.int64), "pong", 0)
    with pytest.raises(UsageError, match="unknown game"):
        make_eval_envs("pongg", 1)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--games", "spaceinvadrs"], "unknown game 'spaceinvadrs'; did you mean: space_invaders"),
        (["--games", "@blip"], "unknown preset '@blip'; did you mean @blip-atari6?"),
        (["--games", ","], "empty game list"),
        (["--games", "pong", "--sticky-actions", "2"], "invalid --sticky-actions 2.0"),
    ],
)
def test_cli_usage_errors_are_one_line_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train_main([*argv, "--dry-run"]) == 2  # --dry-run: never train if it passed
    assert needle in one_error_line(capsys)


def test_cli_choice_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main(["--env-backend", "cuda", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: invalid --env-backend 'cuda'; expected one of native, gymnasium"]


def test_cli_valid_sequence(capsys: pytest.CaptureFixture[str]) -> None:
    # --dry-run: resolve and print the configuration, never train
    assert train_main(["--games", "@blip-atari6", "--env-backend", "gymnasium", "--dry-run"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["games"] == [
        "kung_fu_master",
        "boxing",
        "jamesbond",
        "krull",
        "riverraid",
        "space_invaders",
    ]
    assert config["atari"]["sticky_actions"] == 0.0
    assert config["atari"]["backend"] == "gymnasium"


def test_cli_process_exit_code_and_no_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "blip_rl.train", "--games", "pong,notagame", "--dry-run"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown game 'notagame'")
    assert "Traceback" not in proc.stderr


def test_run_cli_lets_bugs_raise() -> None:
    def usage(argv: list[str] | None) -> int:
        raise UsageError("bad value 'x'; expected y")

    def bug(argv: list[str] | None) -> int:
        raise KeyError("bug")

    assert run_cli(usage, []) == 2
    with pytest.raises(KeyError):
        run_cli(bug, [])


# --------------------------------------------------------------------------------------------
# Environments (real ROMs)
# --------------------------------------------------------------------------------------------


def _preset_games() -> list[str]:
    names: list[str] = []
    for preset in ("blip-atari6", "cora-atari6", "demo"):
        names += [g.name for g in load_preset(preset).games if g.name not in names]
    return names


@pytest.mark.parametrize("game", _preset_games())
def test_every_preset_game_constructs_and_steps(game: str) -> None:
    env = make_train_envs(game, 2, seed=1)
    try:
        obs, info = env.reset()
        spec = resolve_game(game)
        assert env.num_actions == spec.minimal_actions
        assert obs.shape == (2, *OBS_SHAPE) and obs.dtype == np.uint8
        rng = np.random.default_rng(0)
        for _ in range(8):
            obs, reward, terminated, truncated, info = env.step(
                rng.integers(0, spec.minimal_actions, 2)
            )
        assert obs.shape == (2, *OBS_SHAPE) and obs.dtype == np.uint8
        assert reward.shape == (2,) and reward.dtype == np.float32
        assert terminated.dtype == bool and truncated.dtype == bool
        assert obs[:, -1].any(), "the newest frame should not be blank"
    finally:
        env.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_observation_contract(backend: str) -> None:
    config = AtariConfig(backend=backend)  # type: ignore[arg-type]
    env = make_eval_envs("breakout", 3, seed=0, config=config)
    try:
        obs, _ = env.reset()
        assert obs.shape == (3, 4, 84, 84) and obs.dtype == np.uint8
        assert env.observation_space.shape == (3, 4, 84, 84)
        assert not obs[:, :3].any() and obs[:, 3].any(), "older frames are zeros after reset"
        obs, *_ = env.step(np.zeros(3, dtype=np.int64))
        assert obs[:, 2:].any(axis=(1, 2, 3)).all() and not obs[:, :2].any()
    finally:
        env.close()
    full = make_train_envs("pong", 1, seed=0, config=AtariConfig(full_action_space=True))
    try:
        full.reset()
        assert full.num_actions == FULL_ACTION_COUNT == full.single_action_space.n  # type: ignore[attr-defined]
        full.step(np.array([17]))
    finally:
        full.close()


def test_frames_match_gymnasium_and_sb3_preprocessing() -> None:
    """Both backends and SB3's ``AtariWrapper`` see the same frames and rewards.

    Freeway (no FIRE, so no wrapper presses extra buttons), no no-ops, no sticky actions, one
    fixed action sequence. The two backends agree exactly; SB3 max-pools RGB frames before
    converting them to gray, so about 1% of its pixels differ, by at most a few gray levels
    on average.
    """
    import ale_py
    import gymnasium as gym
    from stable_baselines3.common.atari_wrappers import AtariWrapper

    actions = np.random.default_rng(0).choice(3, size=200, p=[0.1, 0.8, 0.1])
    frames, rewards = {}, {}
    for backend in BACKENDS:
        config = AtariConfig(backend=backend, noop_max=0, sticky_actions=0.0)  # type: ignore[arg-type]
        env = make_train_envs("freeway", 1, seed=0, config=config)
        try:
            obs, _ = env.reset(seed=0)
            seen, got = [obs[0, -1]], []
            for a in actions:
                obs, r, *_ = env.step(np.array([a]))
                seen.append(obs[0, -1])
                got.append(float(r[0]))
        finally:
            env.close()
        frames[backend], rewards[backend] = np.array(seen, dtype=int), got
    gym.register_envs(ale_py)
    sb3 = AtariWrapper(
        gym.make("ALE/Freeway-v5", frameskip=1, repeat_action_probability=0.0),
        noop_max=0,
        terminal_on_life_loss=False,
    )
    try:
        obs, _ = sb3.reset(seed=0)
        seen, got = [obs[..., 0]], []
        for a in actions:
            obs, r, *_ = sb3.step(int(a))
            seen.append(obs[..., 0])
            got.append(float(r))
    finally:
        sb3.close()
    frames["sb3"], rewards["sb3"] = np.array(seen, dtype=int), got
    native = frames["native"]
    assert np.abs(np.diff(native, axis=0)).mean() > 0.1, "the frames should move"
    assert sum(rewards["native"]) >= 1, "the chicken should cross at least once"
    assert np.array_equal(native, frames["gymnasium"])
    assert rewards["native"] == rewards["gymnasium"] == rewards["sb3"]
    differ = native != frames["sb3"]
    assert differ.mean() < 0.03 and np.abs(native - frames["sb3"]).mean() < 0.2


@contextlib.contextmanager
def train_and_eval_envs(
    game: str, num_envs: int, seed: int, backend: str
) -> Iterator[tuple[atari.AtariVecEnv, atari.AtariVecEnv]]:
    """Training and evaluation envs of one game with one seed (no sticky actions), reset."""
    config = AtariConfig(backend=backend, sticky_actions=0.0)  # type: ignore[arg-type]
    train = make_train_envs(game, num_envs, seed=seed, config=config)
    evals = make_eval_envs(game, num_envs, seed=seed, config=config)
    try:
        train.reset()
        evals.reset()
        yield train, evals
    finally:
        train.close()
        evals.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_clipping_only_in_training_and_same_streams(backend: str) -> None:
    """Train and eval envs with one seed play the same game; only the rewards differ."""
    with train_and_eval_envs("space_invaders", 2, 5, backend) as (train, evals):
        rng = np.random.default_rng(1)
        big = False
        for _ in range(120):
            actions = rng.integers(0, 6, 2)
            o1, r1, *_ = train.step(actions)
            o2, r2, *_ = evals.step(actions)
            assert np.array_equal(o1, o2)
            assert np.array_equal(r1, np.sign(r2))
            big |= bool((r2 > 1).any())
        assert big, "space invaders gives rewards above 1 within 120 random steps"


@pytest.mark.parametrize("backend", BACKENDS)
def test_true_scores_and_life_loss(backend: str) -> None:
    """Training ends an 'episode' at each life loss, but the game goes on; both report the
    whole-game true score when the game ends."""
    with train_and_eval_envs("breakout", 1, 3, backend) as (train, evals):
        rng = np.random.default_rng(2)
        raw_sum = 0.0
        life_losses = 0
        lives_seen = []
        for _ in range(3000):
            actions = rng.integers(0, 4, 1)
            _, r_t, term_t, trunc_t, info_t = train.step(actions)
            _, r_e, term_e, trunc_e, info_e = evals.step(actions)
            raw_sum += float(r_e[0])
            lives_seen.append(int(info_t["lives"][0]))
            if info_t["life_lost"][0]:
                life_losses += 1
                assert term_t[0] and not term_e[0], "life loss ends training episodes only"
            if info_e["_episode_return"][0]:
                assert info_t["_episode_return"][0]
                assert info_e["episode_return"][0] == raw_sum
                assert info_t["episode_return"][0] == raw_sum, "true score, not clipped"
                assert info_e["episode_length"][0] == info_t["episode_length"][0] > 0
                break
        else:
            pytest.fail("a random breakout game should end within 3000 steps")
        assert life_losses == 4, "5 lives: 4 life losses, then game over"
        assert lives_seen[:-1] == sorted(lives_seen[:-1], reverse=True), "no reset at life loss"


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncation_and_true_score_in_training(backend: str) -> None:
    """Episodes stop at max_episode_frames; training reports the unclipped score."""
    config = AtariConfig(backend=backend, max_episode_frames=600, sticky_actions=0.0)  # type: ignore[arg-type]
    env = make_train_envs("space_invaders", 2, seed=0, config=config)
    try:
        env.reset()
        clipped = np.zeros(2)
        rng = np.random.default_rng(0)
        for step in range(1, 400):  # noqa: B007 (step is read after the loop)
            obs, reward, terminated, truncated, info = env.step(rng.integers(0, 6, 2))
            clipped += reward
            if truncated.any():
                break
        assert truncated.all() and not terminated.any()
        assert step == 600 // 4
        assert info["_episode_return"].all()
        true_score = info["episode_return"]
        assert (true_score > clipped).all(), "space invaders rewards are 5 to 30 points"
        assert (true_score % 5 == 0).all()
        final = info["final_obs"]
        assert final.shape == (2, *OBS_SHAPE) and final.dtype == np.uint8
        assert info["_final_obs"].all() and final[:, -1].any()
        assert not np.array_equal(final, obs), "obs already starts the next episode"
    finally:
        env.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_seed_reproduces_streams(backend: str) -> None:
    config = AtariConfig(backend=backend)  # type: ignore[arg-type]

    def rollout(seed: int) -> np.ndarray:
        env = make_train_envs("space_invaders", 2, seed=seed, config=config)
        try:
            frames = [env.reset()[0]]
            for _ in range(30):
                frames.append(env.step(np.array([1, 3]))[0])  # sticky actions use the seed too
            return np.stack(frames)
        finally:
            env.close()

    a, b, c = rollout(11), rollout(11), rollout(12)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_evaluate_counts_a_fixed_quota_per_env() -> None:
    def make_policy() -> atari.PolicyFn:
        rng = np.random.default_rng(0)
        return lambda obs: rng.integers(0, 4, len(obs))

    config = AtariConfig(sticky_actions=0.0)
    scores = evaluate(make_policy(), "breakout", 3, seed=4, config=config, num_envs=2)
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)

    # Replay by hand: env 0 counts its first 2 episodes, env 1 its first one.
    policy = make_policy()
    env = make_eval_envs("breakout", 2, seed=4, config=config)
    per_env: list[list[float]] = [[], []]
    obs, _ = env.reset()
    while len(per_env[0]) < 2 or len(per_env[1]) < 1:
        obs, reward, _, _, info = env.step(policy(obs))
        for i in np.flatnonzero(info["_episode_return"]):
            per_env[i].append(float(info["episode_return"][i]))
    env.close()
    assert scores == per_env[0][:2] + per_env[1][:1]


@pytest.mark.slow
def test_presets_work_from_a_wheel(tmp_path: Path) -> None:
    """Build the wheel, unpack it, and read presets from it with the checkout out of the way."""
    import shutil
    import zipfile

    src = tmp_path / "src"  # build from a copy: an in-tree build would write into the checkout
    shutil.copytree(REPO / "blip_rl", src / "blip_rl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path / "dist"), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tmp_path / "site")
    site = str(tmp_path / "site")
    code = (
        "import blip_rl, blip_rl.atari as a; "
        f"assert blip_rl.__file__.startswith({site!r}), blip_rl.__file__; "
        "print([g.name for g in a.resolve_games('@demo')], a.reference_scores('pong'))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": site},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['crazy_climber', 'road_runner'] (-20.7, 14.6)"


def test_gymnasium_async_matches_sync() -> None:
    def rollout(vectorization: str) -> np.ndarray:
        config = AtariConfig(backend="gymnasium", gym_vectorization=vectorization)  # type: ignore[arg-type]
        env = make_train_envs("breakout", 2, seed=21, config=config)
        try:
            frames = [env.reset()[0]]
            frames += [env.step(np.array([1, 2]))[0] for _ in range(10)]
            return np.stack(frames)
        finally:
            env.close()

    assert np.array_equal(rollout("sync"), rollout("async"))


@pytest.mark.parametrize("on", [True, False])
def test_fire_after_a_lost_life(on: bool) -> None:
    """Breakout with a policy that never presses FIRE: with fire_on_life_loss the env serves
    after each lost life (and says so in info), so the game ends by itself; without it the ball
    is never served again after the first life."""
    cfg = AtariConfig(sticky_actions=0.0, fire_on_life_loss=on, max_episode_frames=20_000)
    env = make_eval_envs("breakout", 1, seed=0, config=cfg)
    try:
        env.reset(seed=0)
        forced, ended = 0, False
        for _ in range(600):
            _, _, term, trunc, info = env.step(np.zeros(1, dtype=np.int64))  # NOOP
            forced += int(info["forced_action"].sum())
            if bool((term | trunc).any()):
                ended = True
                break
    finally:
        env.close()
    assert ended == on
    assert forced == (4 if on else 0)  # five lives: four serves after a lost life
