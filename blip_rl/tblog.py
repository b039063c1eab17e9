"""TensorBoard logging with the project's one tag scheme.

Tags (global step = env steps summed over the whole sequence, so every game's curve overlays):

    eval/<game>/return        eval/<game>/normalized      train/<game>/episode_return
    forgetting/<game>         loss/<name>                 blip/<layer>/frozen_bits
    blip/<layer>/frac_frozen  blip/memory_bytes_per_param perf/steps_per_s
    matrix/eval_return (image and text)                   summary/<metric>
    video/<game>/after_<k> (an animated GIF; ``--capture-video``)
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from blip_rl.plots import matrix_markdown, matrix_png
from blip_rl.quant import layer_stats

__all__ = ["TBLogger"]


class TBLogger:
    """A ``SummaryWriter`` in the run folder that knows the tag scheme.

    ``purge_step``: on resume, events at or after this step from the killed run are discarded
    by TensorBoard, so curves continue without duplicates.
    """

    def __init__(self, log_dir: str, purge_step: int | None = None) -> None:
        self.writer = SummaryWriter(log_dir=log_dir, purge_step=purge_step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            if value is not None and math.isfinite(float(value)):
                self.writer.add_scalar(tag, float(value), step)

    def eval_return(self, game: str, score: float, normalized: float | None, step: int) -> None:
        self.writer.add_scalar(f"eval/{game}/return", score, step)
        if normalized is not None:
            self.writer.add_scalar(f"eval/{game}/normalized", normalized, step)

    def losses(self, losses: Mapping[str, float], step: int) -> None:
        self.scalars({f"loss/{k}": v for k, v in losses.items()}, step)

    def blip(self, net: nn.Module, step: int, memory_bytes_per_param: float) -> None:
        for layer, stats in layer_stats(net).items():
            self.writer.add_scalar(f"blip/{layer}/frozen_bits", stats["frozen_bits"], step)
            self.writer.add_scalar(f"blip/{layer}/frac_frozen", stats["frac_frozen"], step)
        self.writer.add_scalar("blip/memory_bytes_per_param", memory_bytes_per_param, step)

    def matrix(self, matrix: Sequence[Sequence[float]], games: Sequence[str], step: int) -> None:
        from PIL import Image

        png = matrix_png(matrix, games, "eval return: row = after game, column = game")
        img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        self.writer.add_image("matrix/eval_return", img, step, dataformats="HWC")
        self.writer.add_text("matrix/eval_return", matrix_markdown(matrix, games), step)

    def video(self, tag: str, frames: np.ndarray, step: int, fps: float) -> None:
        """An animated GIF of ``uint8 (T, H, W, 3)`` frames (what ``SummaryWriter.add_video``
        writes, encoded here by imageio: torch's own encoder needs moviepy 1.x)."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        from blip_rl.video import encode_gif

        _, h, w, c = frames.shape
        image = Summary.Image(
            height=h, width=w, colorspace=c, encoded_image_string=encode_gif(frames, fps)
        )
        summary = Summary(value=[Summary.Value(tag=tag, image=image)])
        self.writer._get_file_writer().add_summary(summary, step)

    def hparams(self, params: Mapping[str, Any], metrics: Sequence[str]) -> None:
        """Write the run's hyper-parameters into this run's own event file (the HParams tab)."""
        clean = {
            k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in params.items()
        }
        exp, ssi, sei = hparams(clean, {m: 0.0 for m in metrics})
        fw = self.writer._get_file_writer()
        fw.add_summary(exp)
        fw.add_summary(ssi)
        fw.add_summary(sei)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self.writer.add_text(tag, text, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
