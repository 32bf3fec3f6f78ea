"""Arguments of the training stages, parsed with `ddro.config.parse_args`.

`ModelArguments` (the construction) lives in `ddro.modeling` and is re-exported here.
`BaseTrainingArguments` is `transformers.TrainingArguments` plus what both training stages
add (--precision, --report_to auto, a required --output_dir); `SftTrainingArguments` sets
SFT's defaults from the paper (learning rate 1e-3, linear decay, gradient clipping 5.0), which
per-stage epochs, learning rates and batch sizes override stage by stage. DDRO's defaults are
`ddro.train.ddro.DDROTrainingArguments`.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Optional

from transformers import TrainingArguments

from ..distributed import world_size
from ..errors import DDROError
from ..modeling.build import ModelArguments

SCHEDULES = ("sequential", "mixed")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

__all__ = ["ModelArguments", "DataArguments", "SftArguments", "BaseTrainingArguments", "SftTrainingArguments",
           "SCHEDULES"]


@dataclass
class DataArguments:
    instances: str = field(metadata={"help": "instances folder (`ddro instances`: stage1/2/3.jsonl)"})
    docids: str = field(metadata={"help": "docid folder the instances were built for"})
    stages: list[int] = field(default_factory=lambda: [1, 2, 3], metadata={
        "help": "stages to run (1 doc->docid, 2 pseudo-query->docid, 3 query->docid), ascending, contiguous"})
    max_source_length: Optional[int] = field(default=None, metadata={
        "help": "truncate longer inputs (default: keep them as the instances were built)"})


@dataclass
class SftArguments:
    schedule: str = field(default="sequential", metadata={
        "help": "sequential: one stage after another, each from the previous one's checkpoint; mixed: one run "
                "over all stages' instances, resampled each epoch"})
    stage_epochs: list[float] = field(default_factory=lambda: [10.0, 20.0, 10.0], metadata={
        "help": "epochs of stages 1, 2, 3 (sequential schedule)"})
    stage_learning_rates: Optional[list[float]] = field(default=None, metadata={
        "help": "learning rate of stages 1, 2, 3 (default: --learning_rate for all)"})
    stage_batch_sizes: Optional[list[int]] = field(default=None, metadata={
        "help": "per-device batch size of stages 1, 2, 3 (default: --per_device_train_batch_size)"})
    mix_epochs: int = field(default=10, metadata={"help": "epochs of the mixed schedule"})
    mix_repeats: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0], metadata={
        "help": "mixed schedule: how often each instance of stage 1, 2, 3 is drawn per epoch (0.5 = a fresh "
                "random half every epoch, 4 = four times)"})
    group_by_length: bool = field(default=False, metadata={
        "help": "mixed schedule: batch inputs of similar length together (shuffled batches of sorted windows "
                "of 50 batches), so short queries are not padded to passage length; same data per epoch"})
    encoder_learning_rate: Optional[float] = field(default=None, metadata={
        "help": "learning rate of the encoder-only parameters (default: the same as the rest); the stage "
                "learning rate applies to the decoder, head and shared embeddings"})
    init_from: Optional[str] = field(default=None, metadata={
        "help": "start the first requested stage from this checkpoint (an SFT stage folder must be the stage "
                "just before it); default: a fresh model built from the model arguments"})
    resume: bool = field(default=False, metadata={
        "help": "continue in an existing --output_dir: reuse completed stages, resume the running stage from "
                "its last checkpoint"})
    overwrite: bool = field(default=False, metadata={"help": "delete an existing --output_dir and start over"})


def _default_report_to() -> str:
    return "tensorboard" if importlib.util.find_spec("tensorboard") else "none"


@dataclass
class BaseTrainingArguments(TrainingArguments):
    """What both training stages (SFT, DDRO) add to `transformers.TrainingArguments`."""
    output_dir: Optional[str] = field(default=None, metadata={"help": "output folder (required)"})
    report_to: Optional[str] = field(default="auto", metadata={
        "help": "auto: tensorboard when installed, else none; or any Trainer integration"})
    precision: str = field(default="auto", metadata={
        "help": "auto: bf16 on a CUDA GPU that has it, fp16 on other GPUs, fp32 on CPU; or fp32/bf16/fp16"})

    def __post_init__(self):
        if self.output_dir is None:
            raise DDROError("--output_dir is required")
        if self.report_to == "auto":
            self.report_to = _default_report_to()
        if self.precision not in PRECISIONS:
            raise DDROError(f"unknown precision {self.precision!r} (choose from {', '.join(PRECISIONS)})")
        if self.precision == "auto" and not (self.bf16 or self.fp16):
            import torch

            if torch.cuda.is_available():
                self.bf16 = torch.cuda.is_bf16_supported()
                self.fp16 = not self.bf16
        elif self.precision != "auto":
            self.bf16, self.fp16 = self.precision == "bf16", self.precision == "fp16"
        if not self.use_cpu and world_size() > 1 and not _has_accelerator():
            # torchrun on CPUs: accelerate only distributes CPU processes (gloo) when told to use the CPU
            self.use_cpu = True
        super().__post_init__()


@dataclass
class SftTrainingArguments(BaseTrainingArguments):
    """SFT's defaults (the paper's)."""
    output_dir: Optional[str] = field(default=None, metadata={
        "help": "output folder: stage1/, stage2/, stage3/ (or mixed/) and final.json (required)"})
    num_train_epochs: float = field(default=3.0, metadata={
        "help": "not used: epochs are --stage_epochs (sequential) or --mix_epochs (mixed)"})
    max_steps: int = field(default=-1, metadata={"help": "if > 0: steps per stage, overriding the epochs"})
    learning_rate: float = field(default=1e-3, metadata={"help": "peak learning rate (paper: 1e-3)"})
    max_grad_norm: float = field(default=5.0, metadata={"help": "gradient clipping (paper: 5.0)"})
    logging_steps: float = field(default=50, metadata={"help": "log every N steps"})
    save_steps: float = field(default=1000, metadata={"help": "checkpoint every N steps (stageN/checkpoints/)"})
    save_total_limit: Optional[int] = field(default=2, metadata={"help": "keep at most N checkpoints per stage"})


def _has_accelerator() -> bool:
    import torch

    accelerator = getattr(torch, "accelerator", None)
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
