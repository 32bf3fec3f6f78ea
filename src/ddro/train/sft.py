"""`ddro train sft`: Phase 1, supervised fine-tuning of a model to generate docids.

Sequential schedule (the paper): stage 1 (document text -> docid), stage 2 (pseudo-query
-> docid), stage 3 (query -> docid), each started from the previous stage's final
checkpoint. Mixed schedule: one run over all requested stages' instances, resampled each
epoch (what trained best offline with the MiniLM construction).

Output layout::

    OUT/stage1/ OUT/stage2/ OUT/stage3/    (sequential) or OUT/mixed/
        model + tokenizer + docids.json + ddro_model.json   a loadable checkpoint folder
        manifest.json   kind "sft_stage": stage, inputs (instances, docids, init manifest
                        hashes), init (path, stage), skipped stages, training summary
        checkpoints/    Trainer checkpoints every --save_steps (not covered by the manifest)
    OUT/final.json      {"folder": "stage3", ...}: the last completed stage

Stage verification: stage n reads its init's manifest and refuses one that is not the
stage just before it (stages without instances in between are skipped and recorded), or
that was trained for another docid table. `load_model(OUT)` follows final.json.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from transformers import Trainer

from ..config import as_dict, entry_point, parse_args
from ..docids.table import DocidTable
from ..errors import DDROError
from ..io import atomic_file, dumps_line, read_json, write_json
from ..manifest import MANIFEST, manifest_hash, manifest_hash_or_none, read_manifest, write_manifest
from ..modeling import build_model, freeze_encoder, freeze_encoder_embeddings, load_model, output_rows, save_model
from ..modeling.checkpoint import POINTER, resolve_checkpoint
from ..tokenizer import check_tokenizer
from .arguments import SCHEDULES, DataArguments, ModelArguments, SftArguments, SftTrainingArguments
from .data import InstanceDataset, Seq2SeqCollator, check_input_vocab, read_instances
from .resume import FaultHook, last_checkpoint

log = logging.getLogger(__name__)

STAGES = (1, 2, 3)
STAGE_KIND = "sft_stage"
# Training settings that must match for --resume to reuse a completed stage.
TRAINING_KEYS = ("seed", "gradient_accumulation_steps", "max_steps", "weight_decay", "max_grad_norm",
                 "lr_scheduler_type", "warmup_steps", "adam_beta1", "adam_beta2", "adam_epsilon", "optim")
RUN_KEYS = ("resume", "overwrite", "stages")  # may change between a run and its --resume
PER_STAGE = ("stage_epochs", "stage_learning_rates", "stage_batch_sizes")
RUN_FILE = "ddro_run.json"  # in stageN/checkpoints/: what the interrupted stage was training


class SftTrainer(Trainer):
    """Trainer with an optional separate learning rate for the encoder-only parameters."""

    def __init__(self, *args, encoder_learning_rate: float | None = None, **kwargs):
        self.encoder_learning_rate = encoder_learning_rate
        super().__init__(*args, **kwargs)
        # T5 and EncoderDecoderModel take **kwargs but average their loss themselves; were
        # num_items_in_batch passed, the Trainer would not divide by the accumulation steps.
        self.model_accepts_loss_kwargs = False

    def create_optimizer(self, model=None):
        if self.encoder_learning_rate is None or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        encoder_only = encoder_only_parameters(opt_model)
        groups = []
        # the main groups first: the Trainer logs the first group's learning rate
        for in_encoder, lr in ((False, self.args.learning_rate), (True, self.encoder_learning_rate)):
            for decays, wd in ((True, self.args.weight_decay), (False, 0.0)):
                params = [p for n, p in opt_model.named_parameters()
                          if p.requires_grad and (id(p) in encoder_only) == in_encoder and (n in decay) == decays]
                if params:
                    groups.append({"params": params, "weight_decay": wd, "lr": lr})
        optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(groups, **kwargs)
        return self.optimizer


def encoder_only_parameters(model) -> set[int]:
    """ids of the parameters used only by the encoder (T5's shared embedding is not one)."""
    outside = {id(p) for n, p in model.named_parameters(remove_duplicate=False) if not n.startswith("encoder.")}
    return {id(p) for p in model.get_encoder().parameters()} - outside


# ---------------------------------------------------------------- the run's fixed context
@dataclass
class Context:
    model_args: ModelArguments
    data_args: DataArguments
    sft: SftArguments
    training: SftTrainingArguments
    out: Path
    table: DocidTable
    instances_manifest: dict
    hashes: dict  # instances, docids: manifest hashes

    @property
    def config(self) -> dict:
        training = {k: v for k, v in self.training.to_dict().items() if not k.startswith("_")}
        return {**as_dict(self.model_args, self.data_args, self.sft), **training}

    def stage_settings(self, stage) -> dict:
        """Epochs, learning rate and per-device batch size of one stage."""
        t, sft = self.training, self.sft
        if stage == "mixed":  # the mix's epochs are materialised in its dataset: one pass
            return {"epochs": 1.0, "learning_rate": t.learning_rate, "batch_size": t.per_device_train_batch_size}

        def pick(values, default):
            return default if values is None else values[stage - 1]

        return {"epochs": sft.stage_epochs[stage - 1],
                "learning_rate": pick(sft.stage_learning_rates, t.learning_rate),
                "batch_size": pick(sft.stage_batch_sizes, t.per_device_train_batch_size)}

    def signature(self, stage) -> dict:
        """The settings a completed or interrupted stage must share with this run to be reused."""
        # a sequential stage depends on its own epochs/lr/batch only; a mix depends on its stages
        free = RUN_KEYS + PER_STAGE if self.sft.schedule == "sequential" else ("resume", "overwrite")
        keep = {k: v for k, v in as_dict(self.model_args, self.data_args, self.sft).items() if k not in free}
        training = {k: getattr(self.training, k) for k in TRAINING_KEYS}
        return {**keep, **training, **self.stage_settings(stage)}


def _state():
    from accelerate import PartialState

    return PartialState()


def stage_dir(out: Path, stage) -> Path:
    return out / ("mixed" if stage == "mixed" else f"stage{stage}")


def prepare_output(out: Path, sft: SftArguments) -> None:
    exists = out.is_dir() and any(out.iterdir())
    if exists and not (sft.resume or sft.overwrite):
        raise DDROError(f"{out}: already exists; pass --resume to continue it or --overwrite to start over")
    state = _state()
    if exists and sft.overwrite and not sft.resume and state.is_main_process:
        shutil.rmtree(out)
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()


def check_instances(instances: Path, manifest: dict, docids_hash: str) -> None:
    """Refuse instances whose manifest names another docid table."""
    recorded = manifest.get("docids") or manifest.get("inputs", {}).get("docids")
    if isinstance(recorded, dict):
        recorded = recorded.get("manifest")
    if isinstance(recorded, str) and recorded != docids_hash:
        raise DDROError(f"{instances}: instances were built for another docid table "
                        f"(manifest {recorded[:12]}, not {docids_hash[:12]})")


# ---------------------------------------------------------------- stage chain
def init_stage(init: Path | None) -> int | str:
    """The stage an init checkpoint completed: 0 for a model that is not an SFT stage."""
    if init is None or not (Path(init) / MANIFEST).is_file():
        return 0
    manifest = read_manifest(init)
    return manifest.get("stage", 0) if manifest.get("kind") == STAGE_KIND else 0


def verify_init(stage: int, init: Path | None, skipped: list[int], docids_hash: str) -> dict:
    """Stage `stage` may only start from the stage just before it (or, when the stages in
    between had no instances, the last one that trained); returns the init's record."""
    have = init_stage(init)
    if have == "mixed":
        raise DDROError(f"stage {stage} cannot start from {init}: a mixed-schedule model, not an SFT stage")
    missing = [k for k in range(have + 1, stage) if k not in skipped]
    if have >= stage or missing:
        what = f"stage {have}'s checkpoint" if have else "a model that is no SFT stage"
        raise DDROError(f"stage {stage} must start from stage {stage - 1}'s checkpoint, but "
                        f"{init if init is not None else 'the fresh model'} is {what}")
    record = {"path": str(init) if init is not None else None, "stage": have,
              "manifest": manifest_hash_or_none(init)}
    if have:
        recorded = read_manifest(init, STAGE_KIND)["inputs"].get("docids")
        if recorded != docids_hash:
            raise DDROError(f"{init}: trained for another docid table (manifest {str(recorded)[:12]}, "
                            f"not {docids_hash[:12]})")
    return record


def reusable(ctx: Context, stage, init_record: dict) -> Path | None:
    """A completed stage folder from an earlier run, verified to match this run (--resume)."""
    folder = stage_dir(ctx.out, stage)
    if not (folder / MANIFEST).is_file():
        return None
    if not ctx.sft.resume:
        raise DDROError(f"{folder}: already exists; pass --resume or --overwrite")
    m = read_manifest(folder, STAGE_KIND)
    if m.get("stage") != stage:
        raise DDROError(f"{folder}: its manifest says stage {m.get('stage')}, not {stage}")
    for key in ("instances", "docids"):
        if m["inputs"].get(key) != ctx.hashes[key]:
            raise DDROError(f"{folder}: trained from other {key}; pass --overwrite or use another --output_dir")
    if m["init"].get("manifest") != init_record.get("manifest"):
        raise DDROError(f"{folder}: started from another checkpoint than {init_record.get('path')}; "
                        "pass --overwrite")
    check_signature(ctx, stage, m.get("signature", {}), folder)
    log.info("%s: complete, reused", folder)
    return folder


def check_signature(ctx: Context, stage, old: dict, what) -> None:
    changed = sorted(k for k, v in ctx.signature(stage).items() if old.get(k) != v)
    if changed:
        raise DDROError(f"{what}: trained with other settings ({', '.join(changed)}); pass --overwrite "
                        "or use another --output_dir")


def resume_point(ctx: Context, stage, checkpoints: Path, init_record: dict) -> str | None:
    """The last Trainer checkpoint of an interrupted stage, if it was training what this run asks."""
    if not (ctx.sft.resume and checkpoints.is_dir()):
        return None
    last = last_checkpoint(checkpoints)  # a checkpoint half-written when the run was killed is skipped
    if last and (checkpoints / RUN_FILE).is_file():
        run_record = read_json(checkpoints / RUN_FILE)
        check_signature(ctx, stage, run_record["signature"], checkpoints)
        if run_record["init"] != init_record.get("manifest"):
            raise DDROError(f"{checkpoints}: started from another checkpoint than "
                            f"{init_record.get('path') or 'a fresh model'}; pass --overwrite")
    return last


# ---------------------------------------------------------------- one stage
def initial_model(ctx: Context, init: Path | None):
    if init is None:
        built = build_model(ctx.model_args, ctx.table, seed=ctx.training.seed)
        return built.model, built.tokenizer, built.info
    loaded = load_model(init, docids=ctx.table)
    if loaded.info["construction"] != ctx.model_args.construction:
        raise DDROError(f"{init} is a {loaded.info['construction']} model, but --construction is "
                        f"{ctx.model_args.construction}")
    return loaded.model, loaded.tokenizer, loaded.info


def stage_training_args(ctx: Context, folder: Path, epochs: float, lr: float, batch: int, sequential: bool):
    import torch

    return dataclasses.replace(
        ctx.training, output_dir=str(folder / "checkpoints"), num_train_epochs=epochs, learning_rate=lr,
        per_device_train_batch_size=batch, remove_unused_columns=False,
        dataloader_pin_memory=ctx.training.dataloader_pin_memory and torch.cuda.is_available(),
        # a mixed run's dataset is already its shuffled epochs in order
        train_sampling_strategy="sequential" if sequential else ctx.training.train_sampling_strategy)


def write_stage(ctx: Context, folder: Path, model, tokenizer, info: dict, *, stage, dataset: InstanceDataset,
                init: dict, skipped: list[int], training: dict) -> None:
    """Write the stage folder under a temporary name, manifest last, then move the Trainer
    checkpoints into it and rename it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=ctx.out))
    try:
        save_model(model, tokenizer, info, ctx.table, tmp)
        write_manifest(tmp, STAGE_KIND, counts={"instances": len(dataset), **dataset.counts},
                       config=ctx.config, inputs={**ctx.hashes, "init": init["manifest"]},
                       stage=stage, schedule=ctx.sft.schedule, init=init, skipped=skipped,
                       training=training, signature=ctx.signature(stage))
        if (folder / "checkpoints").is_dir():
            os.replace(folder / "checkpoints", tmp / "checkpoints")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def write_pointer(ctx: Context, folder: Path, stage, complete: bool) -> None:
    pointer = {"folder": folder.name, "stage": stage, "manifest": manifest_hash(folder),
               "schedule": ctx.sft.schedule, "complete": complete}
    with atomic_file(ctx.out / POINTER, overwrite=True) as f:
        f.write(dumps_line(pointer))


def train_stage(ctx: Context, stage, dataset: InstanceDataset, init: Path | None, init_record: dict,
                skipped: list[int]) -> Path:
    settings = ctx.stage_settings(stage)
    epochs, lr, batch = settings["epochs"], settings["learning_rate"], settings["batch_size"]
    folder = stage_dir(ctx.out, stage)
    model, tokenizer, info = initial_model(ctx, init)
    check_tokenizer(ctx.instances_manifest.get("tokenizer") or {}, tokenizer, f"instances {ctx.data_args.instances}")
    check_input_vocab(dataset, len(tokenizer), f"{ctx.data_args.instances} stage {stage}")
    if ctx.model_args.freeze_encoder:
        log.info("froze %s encoder parameters", f"{freeze_encoder(model):,}")
    elif ctx.model_args.freeze_encoder_embeddings:
        log.info("froze %s encoder embedding parameters", f"{freeze_encoder_embeddings(model):,}")
    args = stage_training_args(ctx, folder, epochs, lr, batch, sequential=stage == "mixed")
    trainer = SftTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=Seq2SeqCollator(tokenizer.pad_token_id),
        processing_class=tokenizer, encoder_learning_rate=ctx.sft.encoder_learning_rate, callbacks=[FaultHook()])
    if args.fp16 and info["construction"].startswith("t5"):
        log.warning("fp16 is known to overflow in T5; prefer --precision bf16 or fp32")
    checkpoints = folder / "checkpoints"
    last = resume_point(ctx, stage, checkpoints, init_record)
    state = _state()
    if last:
        log.info("stage %s: resuming from %s", stage, last)
    elif state.is_main_process:
        checkpoints.mkdir(parents=True, exist_ok=True)
        write_json(checkpoints / RUN_FILE, {"signature": ctx.signature(stage), "init": init_record.get("manifest")})
    log.info("stage %s: %s instances, %s epochs, lr %g, batch %d, from %s", stage, f"{len(dataset):,}", epochs,
             lr, batch, init or "a fresh model")
    result = trainer.train(resume_from_checkpoint=last)
    if state.is_main_process:
        summary = {"global_step": result.global_step, "train_loss": round(float(result.training_loss), 6),
                   "epochs": epochs, "learning_rate": lr, "encoder_learning_rate": ctx.sft.encoder_learning_rate,
                   "per_device_batch_size": batch, "world_size": args.world_size,
                   "resumed_from": Path(last).name if last else None, "decoder_rows": output_rows(trainer.model)}
        write_stage(ctx, folder, trainer.model, tokenizer, info, stage=stage, dataset=dataset, init=init_record,
                    skipped=skipped, training=summary)
    state.wait_for_everyone()
    return folder


# ---------------------------------------------------------------- schedules
def run_sequential(ctx: Context) -> Path | None:
    stages = ctx.data_args.stages
    init = resolve_checkpoint(ctx.sft.init_from) if ctx.sft.init_from else None
    skipped: list[int] = []
    last = None
    for stage in stages:
        dataset = read_instances(Path(ctx.data_args.instances) / f"stage{stage}.jsonl", ctx.table, part=stage,
                                 max_source_length=ctx.data_args.max_source_length)
        if len(dataset) == 0:
            log.warning("stage %d: no instances in %s, skipped; the next stage starts from %s", stage,
                        ctx.data_args.instances, init or "a fresh model")
            skipped.append(stage)
            continue
        record = verify_init(stage, init, skipped, ctx.hashes["docids"])
        folder = reusable(ctx, stage, record) or train_stage(ctx, stage, dataset, init, record, list(skipped))
        if _state().is_main_process:
            write_pointer(ctx, folder, stage, complete=False)
        init, last, skipped = folder, folder, []
    if last is None:
        raise DDROError(f"{ctx.data_args.instances}: no instances in stages {', '.join(map(str, stages))}")
    if _state().is_main_process:
        write_pointer(ctx, last, read_manifest(last)["stage"], complete=True)
    return last


def run_mixed(ctx: Context) -> Path:
    sft, stages = ctx.sft, ctx.data_args.stages
    parts = [read_instances(Path(ctx.data_args.instances) / f"stage{s}.jsonl", ctx.table, part=s,
                            max_source_length=ctx.data_args.max_source_length) for s in stages]
    base = InstanceDataset.concat(parts)
    dataset = base.resampled({s: sft.mix_repeats[s - 1] for s in stages}, sft.mix_epochs, ctx.training.seed,
                             group_batch=ctx.training.per_device_train_batch_size if sft.group_by_length else None)
    if len(dataset) == 0:
        raise DDROError(f"{ctx.data_args.instances}: the mix of stages {stages} has no instances")
    init = resolve_checkpoint(sft.init_from) if sft.init_from else None
    record = {"path": str(init) if init else None, "stage": init_stage(init),
              "manifest": manifest_hash_or_none(init)}
    # the resampled epochs are one index array, so the Trainer makes a single pass over it
    folder = reusable(ctx, "mixed", record) or train_stage(ctx, "mixed", dataset, init, record, [])
    if _state().is_main_process:
        write_pointer(ctx, folder, "mixed", complete=True)
    return folder


def validate(data_args: DataArguments, sft: SftArguments) -> None:
    stages = data_args.stages
    if sft.schedule not in SCHEDULES:
        raise DDROError(f"unknown schedule {sft.schedule!r} (choose from {', '.join(SCHEDULES)})")
    if not stages or any(s not in STAGES for s in stages) or stages != list(range(stages[0], stages[-1] + 1)):
        raise DDROError(f"--stages must be ascending and contiguous among 1 2 3, got {stages}")
    for name in ("stage_epochs", "stage_learning_rates", "stage_batch_sizes", "mix_repeats"):
        values = getattr(sft, name)
        if values is not None and len(values) != 3:
            raise DDROError(f"--{name} takes one value per stage (3), got {len(values)}")
    if sft.schedule == "sequential" and not sft.init_from and stages[0] != 1:
        raise DDROError(f"stage {stages[0]} needs stage {stages[0] - 1}'s checkpoint: pass --init_from")
    if sft.resume and sft.overwrite:
        raise DDROError("give --resume or --overwrite, not both")


def run(model_args: ModelArguments, data_args: DataArguments, sft: SftArguments,
        training: SftTrainingArguments) -> Path:
    """Train the requested stages; returns the last completed stage folder."""
    validate(data_args, sft)
    table = DocidTable.load(data_args.docids)
    instances = Path(data_args.instances)
    instances_manifest = read_manifest(instances, "instances")
    hashes = {"instances": manifest_hash(instances), "docids": manifest_hash(table.path)}
    check_instances(instances, instances_manifest, hashes["docids"])
    out = Path(training.output_dir)
    training.device  # set up the (torchrun) process group first: `_state()` reads it
    prepare_output(out, sft)
    ctx = Context(model_args, data_args, sft, training, out, table, instances_manifest, hashes)
    last = run_sequential(ctx) if sft.schedule == "sequential" else run_mixed(ctx)
    log.info("SFT done: %s", last)
    return last


@entry_point
def main(argv=None):
    """Phase 1: supervised fine-tuning (doc -> docid, pseudo-query -> docid, query -> docid)."""
    model_args, data_args, sft, training = parse_args(
        [ModelArguments, DataArguments, SftArguments, SftTrainingArguments], argv,
        prog="ddro train sft", description=main.__doc__)
    last = run(model_args, data_args, sft, training)
    print(f"final model: {last}")


if __name__ == "__main__":
    main()
