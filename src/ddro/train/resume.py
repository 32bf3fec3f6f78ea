"""Resuming training after a kill: the last completely written Trainer checkpoint, and the test hook."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from transformers import TrainerCallback

from ..io import fault_point

log = logging.getLogger(__name__)


def last_checkpoint(folder: str | os.PathLike) -> str | None:
    """The newest Trainer `checkpoint-N` folder that was completely written, or None.

    The Trainer writes a checkpoint's `trainer_state.json` last; a folder without a readable
    one (a kill while saving) is skipped, so a resumed run starts from the one before it.
    """
    folder = Path(folder)
    steps = sorted((int(p.name.split("-")[1]), p) for p in folder.glob("checkpoint-*")
                   if p.is_dir() and p.name.split("-")[1].isdigit()) if folder.is_dir() else []
    for step, path in reversed(steps):
        try:
            if json.loads((path / "trainer_state.json").read_text(encoding="utf-8")).get("global_step") == step:
                return str(path)
        except (OSError, ValueError):
            pass
        log.warning("%s: incompletely written (killed while saving?), skipped", path)
    return None


class FaultHook(TrainerCallback):
    """Tests only: `DDRO_FAULT=train_step:N` SIGKILLs the run at the end of step N, before that
    step's checkpoint is saved (see `ddro.io.fault_point`)."""

    def on_step_end(self, args, state, control, **kwargs):
        fault_point("train_step")
