"""The phase-2 trainer: `transformers.Trainer` with the DDRO loss against precomputed reference log-probs.

Optimiser, schedule, clipping, mixed precision, DDP, checkpoints and resume come from the
framework; `DDROTrainer` overrides `compute_loss` and logs, per step, the loss result's
metrics (`rewards/*`, `logps/*`), computed from every rank's rows.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

from .ddro_loss import ddro_loss, pair_logps

log = logging.getLogger(__name__)


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off everywhere: nn.Dropout modules and float `dropout` attributes (T5 attention)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0


class DDROTrainer(Trainer):
    """`Trainer` whose loss is the DDRO pairwise objective against precomputed reference log-probs."""

    def __init__(self, *args, beta: float = 0.4, **kwargs):
        super().__init__(*args, **kwargs)
        self.beta = beta
        self.model_accepts_loss_kwargs = False  # our loss is a mean per batch: let Trainer scale it
        self._metrics: dict[str, dict[str, list[float]]] = {"train": {}, "eval": {}}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The encoder runs once per query when the model is not wrapped (DDP needs the wrapper's
        # own forward for its gradient hooks, so it runs the concatenated batch instead).
        unwrapped = self.accelerator.unwrap_model(model)
        chosen, rejected = pair_logps(model, inputs["input_ids"], inputs["attention_mask"],
                                      inputs["chosen_labels"], inputs["rejected_labels"],
                                      share_encoder=unwrapped is model)
        result = ddro_loss(chosen, rejected, inputs["ref_chosen"], inputs["ref_rejected"], self.beta)
        split = "train" if model.training else "eval"
        for k, v in result.gathered(self.accelerator.gather_for_metrics).metrics().items():
            self._metrics[split].setdefault(k, []).append(v)
        return (result.loss, {"chosen_logps": chosen, "rejected_logps": rejected}) if return_outputs else result.loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        split = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if split == "eval" else ""
        for k, v in self._metrics[split].items():
            logs[f"{prefix}{k}"] = float(np.mean(v))
        self._metrics[split] = {}
        super().log(logs, start_time)


class WarmupCheck(TrainerCallback):
    """Warn when the warm-up never ends (1,000 paper steps on a small collection)."""

    def on_train_begin(self, args, state, control, **kwargs):
        warmup = args.get_warmup_steps(state.max_steps)
        if warmup >= state.max_steps:
            log.warning("warm-up (%d steps) covers the whole run (%d steps): the learning rate never reaches its "
                        "peak; use a ratio, e.g. --warmup_steps 0.1", warmup, state.max_steps)
