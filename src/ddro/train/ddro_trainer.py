"""The phase-2 trainer: `transformers.Trainer` with a DDRO loss against precomputed reference log-probs.

Optimiser, schedule, clipping, mixed precision, DDP, checkpoints and resume come from the
framework; `DDROTrainer` overrides `compute_loss` and logs, per step, the loss result's
metrics (`rewards/*`, `logps/*`), computed from every rank's rows.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

from .ddro_loss import list_logps, loss_function, pair_logps

log = logging.getLogger(__name__)


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off everywhere: nn.Dropout modules and float `dropout` attributes (T5 attention)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0


class DDROTrainer(Trainer):
    """`Trainer` whose loss is a phase-2 objective (`ddro_loss.LOSSES`) against precomputed reference
    log-probs; batches of pairs (`PairCollator`) or, for grouped losses, of groups (`GroupCollator`)."""

    def __init__(self, *args, beta: float = 0.4, loss_type: str = "sigmoid", rpo_alpha: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.beta, self.loss_type = beta, loss_type
        self.loss_fn = loss_function(loss_type, beta, rpo_alpha)
        self.model_accepts_loss_kwargs = False  # our loss is a mean per batch: let Trainer scale it
        self._metrics: dict[str, dict[str, list[float]]] = {"train": {}, "eval": {}}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The encoder runs once per query when the model is not wrapped (DDP needs the wrapper's
        # own forward for its gradient hooks, so it runs the concatenated batch instead).
        share = self.accelerator.unwrap_model(model) is model
        queries = (model, inputs["input_ids"], inputs["attention_mask"], inputs["chosen_labels"],
                   inputs["rejected_labels"])
        refs = (inputs["ref_chosen"], inputs["ref_rejected"])
        if "rejected_mask" in inputs:  # groups: [d+; its K negatives] per query
            mask = inputs["rejected_mask"]
            chosen, rejected = list_logps(*queries, mask, share_encoder=share)
            result = self.loss_fn(chosen, rejected, *refs, rejected_mask=mask)
        else:
            chosen, rejected = pair_logps(*queries, share_encoder=share)
            result = self.loss_fn(chosen, rejected, *refs)
        split = "train" if model.training else "eval"
        for k, v in result.gathered(self._gather).metrics().items():
            self._metrics[split].setdefault(k, []).append(v)
        return (result.loss, {"chosen_logps": chosen, "rejected_logps": rejected}) if return_outputs else result.loss

    def _gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's rows; [B, K] group tensors first padded to the largest K (zeros: mask False)."""
        return self.accelerator.gather_for_metrics(self.accelerator.pad_across_processes(tensor, dim=1))

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
