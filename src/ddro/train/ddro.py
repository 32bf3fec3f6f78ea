"""`ddro train ddro`: phase 2, direct document relevance optimisation.

The policy starts from the SFT checkpoint and learns, for each (query, relevant docid d+,
BM25 hard negative d-) pair of `ddro negatives`, the pairwise objective of `ddro_loss`:
-log sigmoid(beta * (policy-vs-reference log-ratio of d+ minus that of d-)). The
reference is the same SFT checkpoint, frozen. Its log-probabilities are computed ONCE,
before training, for every (query, docid) the pairs need (one batched no-grad pass,
encoder run once per query; `reference.py`) and cached on disk, keyed by the checkpoint,
the negatives, the docid table and the query encoding; training then runs a single model.

`--loss_type` (see `ddro_loss`): `sigmoid` (default) is the paper's loss above; `rpo` adds
`--rpo_alpha` times the positive's NLL (-log p(d+|q), summed over the docid tokens) per
pair, so that the positive's likelihood does not drift down; `listwise` trains on
(query, d+) groups, the pairs' rows of one (query, d+) with their K negatives, with one
softmax over [d+; negatives] per group (multi-negative DPO): each batch item is then a
group (`--per_device_train_batch_size` counts groups, each decoding 1 + K docids, the
encoder still run once per query), and `--max_pairs N` samples whole groups holding at
most N pairs (at least one group), so that every kept positive keeps all its negatives.

Dropout is switched off (as the paper's trainer did), so the policy's first step sees
exactly the reference's log-probabilities (sigmoid loss = log 2, listwise = log(1 + K));
for the same reason the reference pass runs at the training precision (bf16/fp16
autocast, part of the cache key). Queries are encoded like the SFT instances
(`ddro instances`: lowercasing, the tokenizer's special tokens, at most `query_max_length`
tokens); pairs whose two documents share a docid (PQ collisions) carry no signal and are
dropped (counted in the manifest). `--max_pairs N` trains on a seeded sample of N pairs
(validation pairs cut in the same proportion), so that the reference pass and the epochs
stay bounded whatever the number of pairs mined; the manifest records the pairs available
and kept (and, for listwise, the groups).

Built on `transformers.Trainer` (optimiser, schedule, clipping, mixed precision, DDP,
checkpoints and resume): `DDROTrainer` (`ddro_trainer.py`) overrides `compute_loss` and
logs, for every loss, the implicit rewards (`rewards/chosen`, `rewards/rejected`,
`rewards/margins`, `rewards/accuracies`) and the summed docid log-probs of the positive
(`logps/chosen`) and of the negatives (`logps/rejected`, their mean), written to
`log_history.json`. Paper defaults: lr 1e-6, cosine schedule, 1,000 warm-up steps
(`--warmup_steps` also takes a ratio < 1, better for small collections), grad clip 0.5,
batch 64, 2 epochs, beta 0.4, sigmoid loss.

Folders: `--output_dir` receives the final checkpoint (the SFT layout, loadable with
`ddro.modeling.load_model`, + manifest kind "ddro"), renamed into place when complete.
The trainer's checkpoints live in `--work_dir` (default `<output_dir>.trainer`; `--resume`
continues from the last one) and are removed after success unless
`--keep_work_dir`; the reference cache lives in `--ref_cache_dir` (default
`<output_dir's parent>/ref_cache`, shared by runs that differ only in hyper-parameters).
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import TrainingArguments

from ..config import as_dict, entry_point, parse_args
from ..docids.table import DocidTable
from ..errors import DDROError
from ..io import atomic_dir, check_output, write_json
from ..manifest import manifest_hash, write_manifest
from ..negatives import Negatives
from . import reference
from .arguments import BaseTrainingArguments
from .ddro_loss import GROUPED, LOSSES, check_loss
from .ddro_trainer import DDROTrainer, WarmupCheck, disable_dropout
from .pairs import (
    GroupCollator,
    GroupDataset,
    PairCollator,
    PairData,
    PairDataset,
    cap_pairs,
    encode_queries,
    group_bounds,
    group_rows,
    index_pairs,
)
from .resume import FaultHook, last_checkpoint

log = logging.getLogger(__name__)

KIND = "ddro"


@dataclass
class DDROArguments:
    checkpoint: str = field(metadata={"help": "SFT checkpoint folder (or an SFT output folder: its final stage)"})
    docids: str = field(metadata={"help": "docid folder the checkpoint was trained for (labels of d+ and d-)"})
    negatives: str = field(metadata={"help": "negatives folder (`ddro negatives`)"})
    beta: float = field(default=0.4, metadata={"help": "DDRO beta: scale of the policy-vs-reference log-ratios"})
    loss_type: str = field(default="sigmoid", metadata={
        "help": f"one of {', '.join(LOSSES)}. sigmoid: the paper's pairwise loss, -log sigmoid(beta * reward "
                "margin), per pair; rpo: sigmoid + rpo_alpha * NLL of the positive docid, per pair (keeps "
                "the positive's likelihood from falling; RPO, Pang et al. 2024); listwise: -log softmax of "
                "the positive against all its negatives, per (query, positive) group (multi-negative DPO; "
                "--per_device_train_batch_size then counts groups)"})
    rpo_alpha: float = field(default=1.0, metadata={
        "help": "--loss_type rpo: weight of the positive's NLL, -log p(d+|q) summed over the docid tokens "
                "(TRL's rpo_alpha averages it per token)"})
    query_max_length: int = field(default=64, metadata={
        "help": "query tokens (special tokens included); must match `ddro instances --query_max_length`"})
    lowercase: bool = field(default=True, metadata={
        "help": "lowercase queries; must match `ddro instances --lowercase`"})
    max_pairs: Optional[int] = field(default=None, metadata={
        "help": "train on at most N pairs, a seeded sample (--seed); validation pairs are cut in the same "
                "proportion; --loss_type listwise samples whole (query, positive) groups holding at most N "
                "pairs (= negatives); unset: all"})
    ref_batch_size: int = field(default=256, metadata={"help": "(query, docid) rows per reference batch"})
    ref_cache_dir: Optional[str] = field(default=None, metadata={
        "help": "where reference log-probabilities are cached (default: <output_dir's parent>/ref_cache)"})
    work_dir: Optional[str] = field(default=None, metadata={
        "help": "trainer checkpoints and logs (default: <output_dir>.trainer)"})
    keep_work_dir: bool = field(default=False, metadata={"help": "keep the trainer checkpoints after success"})
    resume: bool = field(default=False, metadata={
        "help": "continue from the last trainer checkpoint in --work_dir (an existing --output_dir is replaced)"})
    overwrite: bool = field(default=False, metadata={
        "help": "start over: replace an existing --output_dir and delete earlier trainer checkpoints"})

    def __post_init__(self):  # bad loss settings fail here, before any model is loaded
        check_loss(self.loss_type, self.beta, self.rpo_alpha)


@dataclass
class DDROTrainingArguments(BaseTrainingArguments):
    """`transformers.TrainingArguments` with the paper's DDRO defaults (and the shared --precision, --report_to)."""
    output_dir: Optional[str] = field(default=None, metadata={"help": "the DDRO checkpoint folder to write (required)"})
    num_train_epochs: float = field(default=2.0, metadata={"help": "epochs (paper: 2)"})
    max_steps: int = field(default=-1, metadata={"help": "if > 0: training steps, overriding the epochs"})
    learning_rate: float = field(default=1e-6, metadata={"help": "peak learning rate (paper: 1e-6)"})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "learning-rate schedule (paper: cosine)"})
    warmup_steps: float = field(default=1000, metadata={
        "help": "warm-up steps (paper: 1000), or a ratio of the total steps when < 1"})
    max_grad_norm: float = field(default=0.5, metadata={"help": "gradient clipping (paper: 0.5)"})
    per_device_train_batch_size: int = field(default=64, metadata={
        "help": "pairs per batch (paper: 64); (query, positive) groups with --loss_type listwise, each "
                "decoding 1 + K docids"})
    per_device_eval_batch_size: int = field(default=64, metadata={
        "help": "pairs (listwise: groups) per validation batch"})
    eval_strategy: str = field(default="epoch", metadata={
        "help": "when to evaluate on the validation pairs: no, steps, epoch"})
    save_strategy: str = field(default="epoch", metadata={
        "help": "when to checkpoint (in --work_dir): no, steps, epoch"})
    save_steps: float = field(default=1000, metadata={"help": "checkpoint every N steps (--save_strategy steps)"})
    save_total_limit: Optional[int] = field(default=2, metadata={"help": "keep at most N trainer checkpoints"})
    logging_steps: float = field(default=10, metadata={"help": "log every N steps"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "keep the pair columns (needed)"})


# ----------------------------------------------------------------------------- run

def pair_rows(args: DDROArguments, seed: int, negatives: Negatives, table: DocidTable,
              query_index: dict[str, int]) -> tuple[np.ndarray, np.ndarray, dict]:
    """The training and validation pair rows (grouped by (query, d+) for grouped losses), capped by
    --max_pairs, and their counts."""
    doc_index = {d: i for i, d in enumerate(table.doc_ids)}
    train, dropped_train = index_pairs(negatives.train, query_index, doc_index, table.tokens, "pairs.tsv")
    val, dropped_val = index_pairs(negatives.val, query_index, doc_index, table.tokens, "val_pairs.tsv")
    if dropped_train + dropped_val:
        log.warning("dropped %d pairs whose positive and negative share a docid", dropped_train + dropped_val)
    if not len(train):
        raise DDROError(f"{negatives.path}: no training pair left")
    grouped = args.loss_type in GROUPED
    if grouped:
        train, val = group_rows(train), group_rows(val)
    available = {"train_pairs_available": len(train), "val_pairs_available": len(val)}
    train, val = cap_pairs(train, val, args.max_pairs, seed, grouped)
    counts = {"train_pairs": len(train), "val_pairs": len(val), **available,
              "dropped_same_docid": dropped_train + dropped_val}
    if grouped:
        counts.update(train_groups=len(group_bounds(train)) - 1, val_groups=len(group_bounds(val)) - 1)
    return train, val, counts


def prepare(args: DDROArguments, targs: TrainingArguments, model, tokenizer, table: DocidTable,
            negatives: Negatives, checkpoint: Path, cache_dir: Path) -> tuple[Dataset, Dataset | None, dict]:
    """Index the pairs, get the reference log-probs (cached), and build the datasets."""
    qids = list(negatives.queries)
    query_ids = encode_queries(tokenizer, [negatives.queries[q] for q in qids], args.lowercase,
                               args.query_max_length)
    train, val, counts = pair_rows(args, targs.seed, negatives, table, {q: i for i, q in enumerate(qids)})
    # Every (query, docid) the pairs need, once, grouped by query.
    all_rows = np.concatenate([train, val])
    items = np.unique(np.concatenate([all_rows[:, [0, 1]], all_rows[:, [0, 2]]]), axis=0)
    # The reference runs at the training precision, so that step 0 sees policy == reference.
    precision = "bf16" if targs.bf16 else "fp16" if targs.fp16 else "fp32"
    key_parts = {"version": reference.CACHE_VERSION, "checkpoint": reference.checkpoint_identity(checkpoint),
                 "negatives": manifest_hash(negatives.path), "docids": manifest_hash(table.path),
                 "query_max_length": args.query_max_length, "lowercase": args.lowercase, "precision": precision}
    grouped = args.loss_type in GROUPED
    if counts["train_pairs"] < counts["train_pairs_available"]:  # a sample: its own cache file, not another's
        key_parts["sample"] = {"max_pairs": args.max_pairs, "seed": targs.seed}
        if grouped:  # whole groups: another sample of pairs
            key_parts["sample"]["groups"] = True
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    # DDP: rank 0 computes (once, even over several nodes), the others then read the cache file
    with targs.main_process_first(local=False, desc="reference log-probs"):
        logps, reused = reference.cached_reference_logps(
            cache_dir, key_parts, lambda journal: reference.compute_reference_logps(
                model, query_ids, table.tokens, items, tokenizer.pad_token_id, args.ref_batch_size, autocast,
                journal=journal), items)
    ref_of = reference.lookup(items, logps, len(table))

    def dataset(rows: np.ndarray) -> Dataset:
        data = PairData(query_ids, table.tokens, rows[:, 0], rows[:, 1], rows[:, 2])
        return (GroupDataset if grouped else PairDataset)(data, ref_of(rows[:, 0], rows[:, 1]),
                                                          ref_of(rows[:, 0], rows[:, 2]))

    counts.update(queries=len(qids), reference_items=len(items))
    info = {"counts": counts, "checkpoint": key_parts["checkpoint"],
            "ref_cache": {"key": reference.reference_cache_key(key_parts), "reused": reused}}
    return dataset(train), (dataset(val) if len(val) else None), info


def check_inputs(table: DocidTable, negatives: Negatives) -> None:
    want, have = table.manifest.get("collection"), negatives.manifest.get("inputs", {}).get("collection")
    if want and have and want != have:
        raise DDROError(f"{negatives.path}: negatives were mined on another collection ({have[:12]}) than the "
                        f"docid table {table.path} was built for ({want[:12]})")


def training_config(targs: TrainingArguments) -> dict:
    config = json.loads(targs.to_json_string())
    config.pop("hub_token", None)
    return config


def resume_point(args: DDROArguments, targs: DDROTrainingArguments, work: Path) -> Optional[str]:
    """The trainer checkpoint to continue from (None: a fresh start, earlier checkpoints removed with
    --overwrite, refused otherwise)."""
    resume = targs.resume_from_checkpoint  # an explicit checkpoint folder, if given
    if args.resume and not resume:
        resume = last_checkpoint(work)  # one half-written when the run was killed is skipped
        if resume is None:
            raise DDROError(f"--resume: no trainer checkpoint in {work}")
    elif not resume and work.is_dir() and any(work.glob("checkpoint-*")):
        if not args.overwrite:
            raise DDROError(f"{work} holds checkpoints of an earlier run: pass --resume to continue it, "
                            "or --overwrite to start again")
        if targs.should_save:  # the main process
            shutil.rmtree(work)
    return resume


def run(args: DDROArguments, targs: DDROTrainingArguments) -> dict:
    from ..modeling import load_model, save_model

    check_loss(args.loss_type, args.beta, args.rpo_alpha)  # again: the arguments may have changed since
    if args.resume and args.overwrite:
        raise DDROError("give --resume or --overwrite, not both")
    out = check_output(targs.output_dir, args.overwrite or args.resume)
    work = Path(args.work_dir or f"{out}.trainer")
    cache_dir = Path(args.ref_cache_dir) if args.ref_cache_dir else out.parent / "ref_cache"
    resume = resume_point(args, targs, work)
    final_dir = str(out)
    config = {**as_dict(args), **training_config(targs)}

    table = DocidTable.load(args.docids)
    negatives = Negatives.load(args.negatives)
    check_inputs(table, negatives)
    loaded = load_model(args.checkpoint, docids=table)
    model, tokenizer = loaded.model, loaded.tokenizer
    disable_dropout(model)
    model.to(targs.device)
    train_ds, val_ds, info = prepare(args, targs, model, tokenizer, table, negatives, loaded.path, cache_dir)

    if val_ds is None and targs.eval_strategy != "no":
        log.warning("no validation pairs (--val-fraction 0 in `ddro negatives`): no evaluation")
        targs.eval_strategy = "no"
    targs.output_dir = str(work)  # the trainer's checkpoints; the final model goes to final_dir
    collator = (GroupCollator if args.loss_type in GROUPED else PairCollator)(tokenizer.pad_token_id)
    trainer = DDROTrainer(model=model, args=targs, data_collator=collator, train_dataset=train_ds,
                          eval_dataset=val_ds, processing_class=tokenizer, callbacks=[WarmupCheck(), FaultHook()],
                          beta=args.beta, loss_type=args.loss_type, rpo_alpha=args.rpo_alpha)
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = {k: v for k, v in result.metrics.items() if not k.endswith(("_runtime", "_per_second"))}
    if val_ds is not None and targs.eval_strategy != "no":
        metrics.update({k: v for k, v in trainer.evaluate().items()
                        if not k.endswith(("_runtime", "_per_second"))})
    history = [{k: v for k, v in entry.items() if not k.endswith(("_runtime", "_per_second"))}
               for entry in trainer.state.log_history]
    targs.output_dir = final_dir
    if not trainer.is_world_process_zero():  # DDP: rank 0 writes the result
        return {}

    inputs = {"checkpoint": info["checkpoint"], "docids": manifest_hash(table.path),
              "negatives": manifest_hash(negatives.path)}
    loss = {"loss_type": args.loss_type, **({"rpo_alpha": args.rpo_alpha} if args.loss_type == "rpo" else {})}
    model_info = {**loaded.info, "ddro": {"beta": args.beta, **loss, "sft_checkpoint": inputs["checkpoint"],
                                          "negatives": inputs["negatives"]}}
    with atomic_dir(out, args.overwrite or args.resume) as tmp:
        save_model(trainer.accelerator.unwrap_model(model), tokenizer, model_info, table, tmp)
        write_json(tmp / "log_history.json", history)
        manifest = write_manifest(tmp, KIND, counts={**info["counts"], "steps": trainer.state.global_step},
                                  config=config, inputs=inputs, metrics=metrics,
                                  reference_cache=info["ref_cache"]["key"], world_size=targs.world_size)
    if not args.keep_work_dir:
        shutil.rmtree(work, ignore_errors=True)
    log.info("DDRO checkpoint written to %s (%s)", out, metrics)
    return manifest


@entry_point
def main(argv=None):
    """Phase 2: train the SFT checkpoint with a DDRO objective (default: the paper's pairwise loss) on BM25
    hard negatives."""
    args, targs = parse_args([DDROArguments, DDROTrainingArguments], argv, prog="ddro train ddro",
                             description=main.__doc__)
    run(args, targs)


if __name__ == "__main__":
    main()
