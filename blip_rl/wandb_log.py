"""Weights & Biases tracking (``--track``): the run's TensorBoard log, mirrored to W&B.

Like CleanRL's ``--track``, the run's TensorBoard writer is patched by W&B's own TensorBoard
integration before it is created, so everything the run logs reaches W&B under the same tags
(``eval/<game>/return``, ``forgetting/<game>``, ``loss/...``, the forgetting matrix as an
image, the videos of ``--capture-video`` as W&B videos), with the global env step as
``global_step``. The run's configuration is the W&B run's config (the hyper-parameters), and at
the end the summary scalars become the W&B run summary and the matrix a W&B table.

* ``--wandb-project`` (default ``blip-rl``) and ``--wandb-entity``; the W&B run is named after
  the run folder.
* The local W&B files go to ``<run>/wandb/`` (or to ``$WANDB_DIR``). The TensorBoard event
  files are not copied into them (``save=False``), so ``tensorboard --logdir runs`` does not
  show each run twice.
* ``WANDB_MODE=offline`` works without a network: ``wandb sync <run>/wandb/offline-run-*``
  uploads the run later.
* Resume: the W&B run id is kept in ``<run>/wandb-run.json``; ``--resume`` continues the same
  W&B run. Events logged between the last checkpoint and a kill were already sent, and are sent
  again by the resumed run (TensorBoard drops its own copies of them; W&B keeps both).

The extra: ``pip install 'blip-rl[wandb]'``. Without it, ``--track`` stops before any work with
one ``error:`` line (:func:`require`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from blip_rl.errors import UsageError
from blip_rl.files import write_json

__all__ = ["ID_FILE", "WandbTracker", "require"]

ID_FILE = "wandb-run.json"
"""The W&B run of a run folder (id, project, entity), for ``--resume``."""


def require() -> None:
    """UsageError (one line) unless the ``wandb`` package can be imported."""
    if importlib.util.find_spec("wandb") is None:
        raise UsageError(
            "--track needs Weights & Biases, which is not installed; install the extra: "
            "pip install 'blip-rl[wandb]' (or run without --track)"
        )


def _wandb() -> Any:
    """The ``wandb`` module, untyped (its stubs omit the TensorBoard integration)."""
    return importlib.import_module("wandb")


class WandbTracker:
    """One W&B run mirroring one blip-rl run folder; create it before the run's
    TensorBoard writer (its integration hooks writers created after it).

    Args:
        run_dir: the run folder.
        config: the run's configuration as JSON data (``RunConfig.to_json()``): the W&B config.
        project: W&B project.
        entity: W&B entity, or None for the default one.

    Raises:
        UsageError: wandb is not installed, or W&B refused to start the run (e.g. no API key
            in online mode); one line.
    """

    def __init__(
        self,
        run_dir: Path,
        config: Mapping[str, Any],
        project: str,
        entity: str | None = None,
    ) -> None:
        require()
        wandb = _wandb()
        self.run_dir = Path(run_dir)
        id_file = self.run_dir / ID_FILE
        run_id = json.loads(id_file.read_text())["id"] if id_file.is_file() else None
        wandb.tensorboard.patch(root_logdir=str(self.run_dir), save=False)
        try:
            self.run = wandb.init(
                project=project,
                entity=entity,
                name=self.run_dir.name,
                id=run_id,
                resume="allow",
                config=dict(config),
                dir=None if os.environ.get("WANDB_DIR") else str(self.run_dir),
                tags=[str(config.get("agent", "")), str(config.get("method", ""))],
            )
        except Exception as exc:  # noqa: BLE001 - W&B's errors (login, network) are the user's
            wandb.tensorboard.unpatch()
            first = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise UsageError(f"--track: W&B could not start the run: {first}") from None
        if run_id is None:  # a new W&B run: --resume continues it
            write_json(id_file, {"id": self.run.id, "project": project, "entity": entity})

    def summary(self, scalars: Mapping[str, float], games: Sequence[str], matrix: Any) -> None:
        """The run's final summary scalars and its forgetting matrix (a W&B table: one row per
        "after game k", one column per game)."""
        wandb = _wandb()
        self.run.summary.update({f"summary/{k}": v for k, v in scalars.items()})
        rows = [[f"{i + 1}:{games[i]}", *map(float, row)] for i, row in enumerate(matrix)]
        if rows:
            table = wandb.Table(columns=["after_game", *games], data=rows)
            self.run.log({"matrix/eval_return_table": table})

    def finish(self) -> None:
        """Close the W&B run (after the TensorBoard writer is closed, so that every event has
        been read) and remove the TensorBoard hooks."""
        wandb = _wandb()
        try:
            self.run.finish()
        finally:
            if wandb.patched.get("tensorboard"):
                wandb.tensorboard.unpatch()
