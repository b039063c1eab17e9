"""Videos of the agent playing: one evaluation episode of every game after every game.

With ``--capture-video``, right after the after-game evaluation of game ``k`` (1-based), the
loop records one more evaluation episode of every game of the sequence and writes, in the run
folder:

* ``videos/after-<k>-<game>.mp4``: the episode from the emulator's RGB screen (210x160, not the
  84x84 grey input the network sees), one frame per agent step (``60 / frame_skip`` = 15 frames
  per second: real time), H.264 through imageio-ffmpeg;
* ``videos/after-<k>-<game>.png``: its representative frame (the middle one);
* ``videos/index.json``: one entry per video (game, after which game, score, frames, step);
* ``videos/contact-sheet.png``: a grid, one row per "after game k", one column per game, each
  cell the representative frame and the episode's score (rewritten after each game);
* TensorBoard: ``video/<game>/after_<k>`` at the global step (an animated GIF: TensorBoard's
  Images tab plays it).

The episode is an evaluation episode: the same policy (the game's head, sampling actions as
the evaluation does), the same protocol (sticky actions, no-op starts, FIRE on reset, whole
games, true scores), on one env of the ``gymnasium`` backend, whose emulator screen can be read
(ale-py's C++ vector env gives only the preprocessed frames); its random streams are its own.
A recording stops after ``max_frames`` agent steps (``--video-max-frames``): the file's size is
bounded (about 60 KB of MP4 and 200 KB of GIF per 1000 frames) and the score of a cut episode
is the score so far (marked ``finished: false`` and "cut" on the sheet).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from blip_rl.atari.config import AtariConfig
from blip_rl.atari.envs import make_eval_envs
from blip_rl.atari.names import GameSpec
from blip_rl.files import atomic_write, write_json

if TYPE_CHECKING:
    from blip_rl.tblog import TBLogger

__all__ = [
    "Episode",
    "VideoCapture",
    "VideoEntry",
    "contact_sheet",
    "encode_gif",
    "encode_mp4",
    "record_episode",
    "sheet_size",
    "video_fps",
    "videos_markdown",
    "write_contact_sheet",
]

PolicyFn = Callable[[np.ndarray], Any]

VIDEO_DIR = "videos"
INDEX = "index.json"
CONTACT_SHEET = "contact-sheet.png"


def video_fps(config: AtariConfig) -> float:
    """Frames per second of a recording that plays in real time: the Atari runs at 60 frames
    per second and one agent step is ``frame_skip`` of them."""
    return 60.0 / config.frame_skip


# ---------------------------------------------------------------------------------- recording
@dataclass
class Episode:
    """One recorded episode."""

    frames: np.ndarray
    """RGB screens, ``uint8 (T, 210, 160, 3)``: the first after the reset, then one per step."""
    score: float
    """The true game score (sum of raw rewards), of the part recorded if the episode was cut."""
    finished: bool
    """The game ended (game over or the protocol's time limit) within ``max_frames``."""


def record_episode(
    policy_fn: PolicyFn,
    game: str | GameSpec,
    *,
    seed: int,
    config: AtariConfig,
    max_frames: int,
) -> Episode:
    """Play one evaluation episode and keep the emulator's RGB screen after every step.

    Args:
        policy_fn: maps a uint8 observation batch ``(1, 4, 84, 84)`` to one action (as for
            :func:`blip_rl.atari.evaluate`).
        game: game name or GameSpec.
        seed: seed of the episode (sticky actions, no-ops).
        config: the protocol (its backend is replaced by a single gymnasium env).
        max_frames: stop after this many frames (>= 1); the episode is then ``finished=False``.
    """
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
        raise ValueError(f"invalid max_frames {max_frames!r}; expected an integer >= 1")
    single = config.replace(backend="gymnasium", gym_vectorization="sync")
    env = make_eval_envs(game, 1, seed, single)
    try:
        vec: Any = env.env  # a gymnasium SyncVectorEnv of one env
        ale = vec.get_attr("ale")[0]  # its emulator
        obs, _ = env.reset(seed=seed)
        frames = [ale.getScreenRGB()]
        score, finished = 0.0, False
        while len(frames) < max_frames:
            obs, reward, _, _, info = env.step(np.asarray(policy_fn(obs)).reshape(1))
            score += float(reward[0])
            if info["_episode_return"][0]:  # the env has already reset: its screen is new
                score, finished = float(info["episode_return"][0]), True
                break
            frames.append(ale.getScreenRGB())
        return Episode(np.stack(frames), score, finished)
    finally:
        env.close()


# ----------------------------------------------------------------------------------- encoding
def encode_mp4(frames: np.ndarray, fps: float) -> bytes:
    """H.264 MP4 (yuv420p, plays in browsers and W&B) of ``uint8 (T, H, W, 3)`` frames, by
    imageio's ffmpeg plugin (the ffmpeg binary ships with imageio-ffmpeg)."""
    import imageio.v3 as iio

    data = iio.imwrite(
        "<bytes>",
        _even(frames),
        extension=".mp4",
        plugin="FFMPEG",
        fps=fps,
        codec="libx264",
        pixelformat="yuv420p",
        macro_block_size=2,
        output_params=["-crf", "23", "-preset", "veryfast"],
    )
    return bytes(data)


def encode_gif(frames: np.ndarray, fps: float) -> bytes:
    """Looping animated GIF of ``uint8 (T, H, W, 3)`` frames (imageio's Pillow plugin): what
    TensorBoard plays as a video."""
    import imageio.v3 as iio

    data = iio.imwrite("<bytes>", frames, extension=".gif", duration=1000.0 / fps, loop=0)
    return bytes(data)


def _even(frames: np.ndarray) -> np.ndarray:
    """H.264 in yuv420p needs even sides: drop a last odd row or column (Atari: 210x160)."""
    t, h, w, c = frames.shape
    return frames[:, : h - h % 2, : w - w % 2]


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------- contact sheet
_PAD = 6
_LABEL_W = 124
_HEADER_H = 26
_CAPTION_H = 22


def sheet_size(rows: int, cols: int, frame_hw: tuple[int, int] = (210, 160)) -> tuple[int, int]:
    """``(width, height)`` in pixels of a contact sheet with ``rows`` x ``cols`` cells of
    frames of ``frame_hw`` = (height, width)."""
    h, w = frame_hw
    return (
        _LABEL_W + cols * (w + _PAD) + _PAD,
        _HEADER_H + rows * (h + _CAPTION_H + _PAD) + _PAD,
    )


def cell_origin(row: int, col: int, frame_hw: tuple[int, int] = (210, 160)) -> tuple[int, int]:
    """Top-left ``(x, y)`` of the frame of cell ``(row, col)`` in a contact sheet."""
    h, w = frame_hw
    return _LABEL_W + _PAD + col * (w + _PAD), _HEADER_H + row * (h + _CAPTION_H + _PAD)


def contact_sheet(
    rows: Sequence[str],
    cols: Sequence[str],
    cells: dict[tuple[int, int], tuple[np.ndarray, str]],
) -> bytes:
    """A PNG grid: ``rows`` labels (e.g. "after game 1: pong") down the left, ``cols`` labels
    (games) across the top, and in cell ``(i, j)`` the frame and caption ``cells[i, j]`` (a
    grey "no video" cell where there is none). Every frame must have the same shape."""
    from PIL import Image, ImageDraw, ImageFont

    shapes = {frame.shape[:2] for frame, _ in cells.values()}
    if len(shapes) > 1:
        raise ValueError(f"contact sheet frames differ in size: {sorted(shapes)}")
    hw = shapes.pop() if shapes else (210, 160)
    sheet = Image.new("RGB", sheet_size(len(rows), len(cols), hw), "white")
    draw = ImageDraw.Draw(sheet)
    try:
        font: Any = ImageFont.load_default(size=13)
    except (TypeError, OSError):  # pragma: no cover - Pillow without FreeType
        font = ImageFont.load_default()
    for j, name in enumerate(cols):
        x, _ = cell_origin(0, j, hw)
        draw.text((x + 2, 6), name, fill="black", font=font)
    for i, label in enumerate(rows):
        _, y = cell_origin(i, 0, hw)
        draw.multiline_text((6, y + 4), label.replace(": ", ":\n"), fill="black", font=font)
        for j in range(len(cols)):
            x, y = cell_origin(i, j, hw)
            if (i, j) in cells:
                frame, caption = cells[i, j]
                sheet.paste(Image.fromarray(frame), (x, y))
            else:
                draw.rectangle((x, y, x + hw[1] - 1, y + hw[0] - 1), fill=(200, 200, 200))
                caption = "no video"
            draw.text((x + 2, y + hw[0] + 3), caption, fill="black", font=font)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------ capture
@dataclass
class VideoEntry:
    """One recorded video of a run (an entry of ``videos/index.json``)."""

    after_game: int
    """1-based position of the game just learned (the video is "after game k")."""
    trained: str
    """That game's name."""
    game: str
    """The game played in the video."""
    file: str
    """The MP4, relative to the run folder."""
    poster: str
    """The representative frame (PNG), relative to the run folder."""
    frames: int
    score: float
    finished: bool
    global_step: int
    tag: str
    """Its TensorBoard tag."""


class VideoCapture:
    """Records and writes the videos of one run folder (see the module docstring).

    Args:
        run_dir: the run folder; ``videos/`` is created in it.
        config: the run's protocol.
        max_frames: frames per video at most (``--video-max-frames``).
        seed: the run's seed (each video's episode seed derives from it, the game's position
            and the game).

    The index already in the folder is kept: a resumed run adds its videos to it (a game that
    is trained again after a kill replaces its own entries and files).
    """

    def __init__(self, run_dir: Path, config: AtariConfig, max_frames: int, seed: int) -> None:
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / VIDEO_DIR
        self.config = config
        self.max_frames = max_frames
        self.seed = seed
        self.fps = video_fps(config)
        self.entries = load_index(self.run_dir)

    def after_game(
        self,
        k: int,
        trained: str,
        step: int,
        players: Sequence[tuple[GameSpec, PolicyFn]],
        log: TBLogger | None = None,
    ) -> list[VideoEntry]:
        """Record one episode of every game in ``players`` (the game and its policy) after the
        game at 0-based position ``k`` (named ``trained``) was learned; write the files, the
        TensorBoard videos at ``step``, the index and the contact sheet."""
        new: list[VideoEntry] = []
        for j, (game, policy) in enumerate(players):
            seed = self.seed * 7919 + 1000 * k + j + 90_000
            ep = record_episode(
                policy, game, seed=seed, config=self.config, max_frames=self.max_frames
            )
            stem = f"after-{k + 1}-{game.name}"
            entry = VideoEntry(
                after_game=k + 1,
                trained=trained,
                game=game.name,
                file=f"{VIDEO_DIR}/{stem}.mp4",
                poster=f"{VIDEO_DIR}/{stem}.png",
                frames=len(ep.frames),
                score=ep.score,
                finished=ep.finished,
                global_step=step,
                tag=f"video/{game.name}/after_{k + 1}",
            )
            atomic_write(self.run_dir / entry.file, encode_mp4(ep.frames, self.fps))
            atomic_write(self.run_dir / entry.poster, _png(ep.frames[len(ep.frames) // 2]))
            if log is not None:
                log.video(entry.tag, ep.frames, step, self.fps)
            new.append(entry)
        keep = [e for e in self.entries if e.after_game != k + 1]
        self.entries = sorted([*keep, *new], key=lambda e: e.after_game)  # stable: games in order
        index = {"fps": self.fps, "max_frames": self.max_frames}
        write_json(self.dir / INDEX, {**index, "videos": [asdict(e) for e in self.entries]})
        atomic_write(self.dir / CONTACT_SHEET, sheet_from_entries(self.run_dir, self.entries))
        return new


def load_index(run_dir: Path) -> list[VideoEntry]:
    """The videos of a run folder (``videos/index.json``); empty when there are none."""
    path = Path(run_dir) / VIDEO_DIR / INDEX
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    return [VideoEntry(**e) for e in data.get("videos", [])]


def sheet_from_entries(run_dir: Path, entries: Sequence[VideoEntry]) -> bytes:
    """The contact sheet PNG of a run's videos (rows: after game k; columns: games in order of
    first appearance), from their representative frames."""
    from PIL import Image

    rows = sorted({(e.after_game, e.trained) for e in entries})
    cols = list(dict.fromkeys(e.game for e in sorted(entries, key=lambda e: e.after_game)))
    # (entries keep the order of the sequence's games within each row)
    cells: dict[tuple[int, int], tuple[np.ndarray, str]] = {}
    for e in entries:
        poster = Path(run_dir) / e.poster
        if not poster.is_file():
            continue
        frame = np.asarray(Image.open(poster).convert("RGB"))
        caption = f"score {e.score:g}" + ("" if e.finished else f" (cut at {e.frames})")
        cells[rows.index((e.after_game, e.trained)), cols.index(e.game)] = (frame, caption)
    labels = [f"after game {k}: {name}" for k, name in rows]
    return contact_sheet(labels, cols, cells)


def write_contact_sheet(run_dir: Path, out: Path | None = None) -> Path | None:
    """(Re)write a run folder's contact sheet from its videos (to ``out``, default
    ``videos/contact-sheet.png``); None when the run has no videos."""
    entries = load_index(run_dir)
    if not entries:
        return None
    path = out or Path(run_dir) / VIDEO_DIR / CONTACT_SHEET
    atomic_write(path, sheet_from_entries(run_dir, entries))
    return path


def videos_markdown(run_dir: Path, out_dir: Path, sheet: Path | None = None) -> str:
    """A ``## Videos`` section for a report written in ``out_dir``: the contact sheet
    ``sheet`` (if given) and a table linking every video (rows: after game k, columns: games,
    each cell the episode's score); empty when the run has no videos."""
    entries = load_index(run_dir)
    if not entries:
        return ""
    rows = sorted({(e.after_game, e.trained) for e in entries})
    cols = list(dict.fromkeys(e.game for e in entries))
    link = {(e.after_game, e.game): e for e in entries}
    lines = ["", "## Videos", ""]
    if sheet is not None:
        rel = os.path.relpath(sheet, out_dir)
        lines += [f"![one frame of every video, with its score]({rel})", ""]
    lines += ["| after game | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for k, trained in rows:
        cells = []
        for game in cols:
            e = link.get((k, game))
            if e is None:
                cells.append("")
                continue
            rel = os.path.relpath(Path(run_dir) / e.file, out_dir)
            cut = "" if e.finished else f", cut at {e.frames} frames"
            cells.append(f"[score {e.score:g}{cut}]({rel})")
        lines.append(f"| {k}: {trained} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
