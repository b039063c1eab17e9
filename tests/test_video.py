"""Videos after every game (``--capture-video``) and W&B tracking (``--track``), on real ROMs
with tiny budgets: the files decode, TensorBoard holds one video per game per game-end (also
over a kill and a resume), the contact sheet has the grid, and W&B offline gets the scalars."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image
from scripts import load_script
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny import TINY

from blip_rl.config import RunConfig
from blip_rl.continual import ContinualRun
from blip_rl.train import main
from blip_rl.video import cell_origin, load_index, sheet_size

GAMES = ("pong", "breakout")
MAX_FRAMES = 30  # below the 40 agent steps TINY's 160-frame episodes last: every video is cut
ARGV = [*TINY, "--agent", "finetune", "--steps-per-game", "128", "--eval-every", "0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-game run with videos, killed as game 2 starts, then resumed to the end."""
    root = tmp_path_factory.mktemp("videos")
    argv = [*ARGV, "--capture-video", "--video-max-frames", str(MAX_FRAMES)]
    original = ContinualRun._train_game

    def killed_in_game_2(self: ContinualRun, k: int) -> None:
        if k == 1:
            raise RuntimeError("killed")
        original(self, k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ContinualRun, "_train_game", killed_in_game_2)
        with pytest.raises(RuntimeError, match="killed"):
            main([*argv, "--runs-dir", str(root), "--run-name", "r"])
    folder = root / "r"
    first = {
        p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.glob("videos/after-1-*")
    }
    assert len(first) == 4  # an MP4 and a PNG per game
    assert main(["--resume", str(folder), "--no-progress"]) == 0
    # The videos written before the kill are kept as they were.
    assert {
        p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.glob("videos/after-1-*")
    } == first
    return folder


def test_one_playable_rgb_video_per_game_per_game_end(run: Path) -> None:
    entries = load_index(run)
    assert [(e.after_game, e.game) for e in entries] == [(k, g) for k in (1, 2) for g in GAMES]
    for e in entries:
        assert e.file == f"videos/after-{e.after_game}-{e.game}.mp4"
        assert e.tag == f"video/{e.game}/after_{e.after_game}"
        assert e.trained == GAMES[e.after_game - 1] and e.global_step == 128 * e.after_game
        assert e.frames == MAX_FRAMES and not e.finished  # cut by --video-max-frames
        frames = iio.imread(run / e.file, plugin="FFMPEG", index=None)
        assert frames.shape == (MAX_FRAMES, 210, 160, 3), frames.shape  # the screen, not 84x84
        assert frames.std(axis=0).max() > 20  # the frames differ: the game moves
        assert np.abs(frames[..., 0].astype(int) - frames[..., 2]).max() > 50  # colour
        poster = np.asarray(Image.open(run / e.poster))
        assert poster.shape == (210, 160, 3)
        # The representative frame is the video's middle frame (up to the MP4's compression).
        assert np.abs(frames[MAX_FRAMES // 2].astype(int) - poster).mean() < 6


def test_tensorboard_holds_each_video_once_over_the_resume(run: Path) -> None:
    acc = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    videos = sorted(t for t in acc.Tags()["images"] if t.startswith("video/"))
    assert videos == sorted(f"video/{g}/after_{k}" for g in GAMES for k in (1, 2))
    for tag in videos:
        events = acc.Images(tag)
        assert [e.step for e in events] == [128 * int(tag[-1])], (tag, events)
        gif = Image.open(io.BytesIO(events[0].encoded_image_string))
        assert gif.format == "GIF" and gif.size == (160, 210)
        assert gif.n_frames > 1
    # The resume keeps the events at its checkpoint's step (the after-game-1 evaluation).
    for game in GAMES:
        assert [e.step for e in acc.Scalars(f"eval/{game}/return")] == [128, 256]


def test_contact_sheet_grid(run: Path) -> None:
    sheet = np.asarray(Image.open(run / "videos" / "contact-sheet.png").convert("RGB"))
    assert (sheet.shape[1], sheet.shape[0]) == sheet_size(2, len(GAMES))
    for e in load_index(run):
        x, y = cell_origin(e.after_game - 1, GAMES.index(e.game))
        cell = sheet[y : y + 210, x : x + 160]
        assert np.array_equal(cell, np.asarray(Image.open(run / e.poster))), e.file


def test_report_embeds_the_contact_sheet_and_links_every_video(run: Path) -> None:
    from blip_rl.report import main as report

    assert report([str(run)]) == 0
    out = run / "report"
    sheet = Image.open(out / "contact-sheet.png")
    assert sheet.size == sheet_size(2, len(GAMES))
    text = (out / "summary.md").read_text()
    assert "](contact-sheet.png)" in text
    links = re.findall(r"\]\((\.\./videos/[^)]+\.mp4)\)", text)
    assert sorted(links) == sorted(f"../{e.file}" for e in load_index(run))
    assert all((out / link).is_file() for link in links)


def test_videos_do_not_change_the_training(tmp_path: Path, capsys) -> None:
    """Recording runs on a forked RNG: the random state training continues with is unchanged."""
    assert main([*ARGV, "--games", "breakout", "--dry-run"]) == 0
    config = RunConfig.from_json(json.loads(capsys.readouterr().out))
    config.video_max_frames = 5
    r = ContinualRun(tmp_path, config, progress=False)
    before = torch.get_rng_state()
    r._record_videos(0)
    assert torch.equal(before, torch.get_rng_state())
    assert [e.frames for e in load_index(tmp_path)] == [5]


def test_track_without_wandb_is_one_line_exit_2(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if the extra were not installed
    assert main([*ARGV, "--track", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "blip-rl[wandb]" in err[0], err
    assert not any(tmp_path.iterdir())  # before any folder or training


def _wandb_records(path: Path) -> list:
    """The records of a W&B run file (``run-<id>.wandb``: a LevelDB-style log of protobufs
    after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, buf, out = path.read_bytes(), 7, 32768, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        buf += data[pos + 7 : pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # a whole record, or the last piece of one
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def test_track_offline_writes_a_local_wandb_run(tmp_path: Path) -> None:
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true")
    argv = [*ARGV, "--games", "breakout", "--track", "--capture-video", "--wandb-project", "t"]
    cmd = [sys.executable, "-m", "blip_rl.train", *argv, "--runs-dir", str(tmp_path)]
    proc = subprocess.run([*cmd, "--run-name", "w"], env=env, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "w"
    run_id = json.loads((run / "wandb-run.json").read_text())["id"]
    files = list(run.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1, list(run.rglob("*.wandb"))
    records = _wandb_records(files[0])
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert runs[0].project == "t" and runs[0].run_id == run_id
    config = {u.key: json.loads(u.value_json) for u in runs[0].config.update}
    assert config["games"] == ["breakout"] and config["capture_video"] is True  # the hparams
    history: dict[str, list] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item
            }
            for key, value in row.items():
                history.setdefault(key, []).append((row.get("global_step"), value))
    assert [s for s, _ in history["eval/breakout/return"]] == [128]
    assert "loss/policy" in history and "perf/steps_per_s" in history
    # The video: TensorBoard's animated GIF, a W&B media file under the same tag.
    (path,) = history["video/breakout/after_1/filenames"][0][1]
    gif = Image.open(files[0].parent / "files" / path)
    assert gif.format == "GIF" and gif.size == (160, 210) and gif.n_frames > 1
    assert any(k.startswith("matrix/eval_return") for k in history), sorted(history)
    # No copy of the TensorBoard files in the run folder (TensorBoard would show the run twice).
    assert len(list(run.rglob("events.out.tfevents.*"))) == 1


def test_sb3_example_records_the_same_videos(tmp_path: Path) -> None:
    """``examples/sb3_continual.py --capture-video``: the same helper, with ``model.predict``."""
    example = load_script("examples/sb3_continual.py", "sb3_continual")
    argv = ["--games", "breakout", "--steps-per-game", "64", "--n-envs", "2", "--n-steps", "32"]
    argv += ["--batch-size", "32", "--n-epochs", "1", "--eval-episodes", "1"]
    argv += ["--eval-max-frames", "160", "--capture-video", "--video-max-frames", "12"]
    assert example.main([*argv, "--logdir", str(tmp_path)]) == 0
    (entry,) = load_index(tmp_path)
    assert (entry.game, entry.frames, entry.global_step) == ("breakout", 12, 64)
    frames = iio.imread(tmp_path / entry.file, plugin="FFMPEG", index=None)
    assert frames.shape == (12, 210, 160, 3)
    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    acc.Reload()
    assert [e.step for e in acc.Images("video/breakout/after_1")] == [64]
