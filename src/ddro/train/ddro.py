"""`ddro train ddro`: phase 2, direct document relevance optimisation.

The policy starts from the SFT checkpoint and learns, for each (query, relevant docid d+,
BM25 hard negative d-) pair of `ddro negatives`, the pairwise objective of `ddro_loss`:
-log sigmoid(beta * (policy-vs-reference log-ratio of d+ minus that of d-)). The
reference is the same SFT checkpoint, frozen. Its log-probabilities are computed ONCE,
before training, for every (query, docid) the pairs need (one batched no-grad pass,
encoder run once per query) and cached on disk, keyed by the checkpoint, the negatives,
the docid table and the query encoding; training then runs a single model.

Dropout is switched off (as the paper's trainer did), so the policy's first step sees
exactly the reference's log-probabilities (loss = log 2); for the same reason the
reference pass runs at the training precision (bf16/fp16 autocast, part of the cache
key). Queries are encoded like the SFT instances (`ddro instances`: lowercasing, the
tokenizer's special tokens, at most `query_max_length` tokens); pairs whose two
documents share a docid (PQ collisions) carry no signal and are dropped (counted in the
manifest). `--max_pairs N` trains on a seeded sample of N pairs (validation pairs cut in the
same proportion), so that the reference pass and the epochs stay bounded whatever the
number of pairs mined; the manifest records the pairs available and kept.

Built on `transformers.Trainer` (optimiser, schedule, clipping, mixed precision, DDP,
checkpoints and resume): `DDROTrainer` overrides `compute_loss` and logs the implicit
rewards (`rewards/chosen`, `rewards/rejected`, `rewards/margins`, `rewards/accuracies`).
Paper defaults: lr 1e-6, cosine schedule, 1,000 warm-up steps (`--warmup_steps` also
takes a ratio < 1, better for small collections), grad clip 0.5, batch 64, 2 epochs,
beta 0.4.

Folders: `--output_dir` receives the final checkpoint (the SFT layout, loadable with
`ddro.modeling.load_model`, + manifest kind "ddro"), renamed into place when complete.
The trainer's checkpoints live in `--work_dir` (default `<output_dir>.trainer`; `--resume`
continues from the last one) and are removed after success unless
`--keep_work_dir`; the reference cache lives in `--ref_cache_dir` (default
`<output_dir's parent>/ref_cache`, shared by runs that differ only in hyper-parameters).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..config import as_dict, entry_point, parse_args
from ..docids.table import DocidTable
from ..errors import DDROError
from ..io import Journal, atomic_dir, atomic_file, check_output, sha256_file, write_json
from ..manifest import MANIFEST, manifest_hash, write_manifest
from ..negatives import Negatives
from .arguments import SftTrainingArguments
from .ddro_loss import IGNORE, ddro_loss, grouped_logps, pair_logps
from .resume import FaultHook, last_checkpoint

log = logging.getLogger(__name__)

KIND = "ddro"
CACHE_VERSION = 1


@dataclass
class DDROArguments:
    checkpoint: str = field(metadata={"help": "SFT checkpoint folder (or an SFT output folder: its final stage)"})
    docids: str = field(metadata={"help": "docid folder the checkpoint was trained for (labels of d+ and d-)"})
    negatives: str = field(metadata={"help": "negatives folder (`ddro negatives`)"})
    beta: float = field(default=0.4, metadata={"help": "DDRO beta: scale of the policy-vs-reference log-ratios"})
    query_max_length: int = field(default=64, metadata={
        "help": "query tokens (special tokens included); must match `ddro instances --query_max_length`"})
    lowercase: bool = field(default=True, metadata={
        "help": "lowercase queries; must match `ddro instances --lowercase`"})
    max_pairs: Optional[int] = field(default=None, metadata={
        "help": "train on at most N pairs, a seeded sample (--seed); validation pairs are cut in the same "
                "proportion; unset: all"})
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


@dataclass
class DDROTrainingArguments(SftTrainingArguments):
    """`transformers.TrainingArguments` with the paper's DDRO defaults (and SFT's --precision, --report_to)."""
    output_dir: Optional[str] = field(default=None, metadata={"help": "the DDRO checkpoint folder to write (required)"})
    num_train_epochs: float = field(default=2.0, metadata={"help": "epochs (paper: 2)"})
    max_steps: int = field(default=-1, metadata={"help": "if > 0: training steps, overriding the epochs"})
    learning_rate: float = field(default=1e-6, metadata={"help": "peak learning rate (paper: 1e-6)"})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "learning-rate schedule (paper: cosine)"})
    warmup_steps: float = field(default=1000, metadata={
        "help": "warm-up steps (paper: 1000), or a ratio of the total steps when < 1"})
    max_grad_norm: float = field(default=0.5, metadata={"help": "gradient clipping (paper: 0.5)"})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "pairs per batch (paper: 64)"})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "pairs per validation batch"})
    eval_strategy: str = field(default="epoch", metadata={
        "help": "when to evaluate on the validation pairs: no, steps, epoch"})
    save_strategy: str = field(default="epoch", metadata={
        "help": "when to checkpoint (in --work_dir): no, steps, epoch"})
    save_steps: float = field(default=1000, metadata={"help": "checkpoint every N steps (--save_strategy steps)"})
    save_total_limit: Optional[int] = field(default=2, metadata={"help": "keep at most N trainer checkpoints"})
    logging_steps: float = field(default=10, metadata={"help": "log every N steps"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "keep the pair columns (needed)"})


# ----------------------------------------------------------------------------- data

@dataclass
class PairData:
    """Pairs as indices into a query table and the docid table (compact for millions of pairs)."""
    query_ids: list[list[int]]  # encoder input ids per query
    docid_tokens: list[tuple[int, ...]]  # the docid table's tokens, table order
    query: np.ndarray  # [P] query index of each pair
    chosen: np.ndarray  # [P] docid-table index of d+
    rejected: np.ndarray  # [P] docid-table index of d-

    def __len__(self) -> int:
        return len(self.query)


def index_pairs(pairs, query_index: dict[str, int], doc_index: dict[str, int],
                tokens: list[tuple[int, ...]], what: str) -> tuple[np.ndarray, int]:
    """[P, 3] (query, d+, d-) indices; pairs whose two docids are identical are dropped."""
    rows, dropped = [], 0
    for qid, pos, neg in pairs:
        for doc in (pos, neg):
            if doc not in doc_index:
                raise DDROError(f"{what}: document {doc!r} is not in the docid table (negatives built for "
                                "another collection?)")
        p, n = doc_index[pos], doc_index[neg]
        if tokens[p] == tokens[n]:
            dropped += 1
            continue
        rows.append((query_index[qid], p, n))
    return np.array(rows, dtype=np.int64).reshape(-1, 3), dropped


class PairDataset(torch.utils.data.Dataset):
    def __init__(self, data: PairData, ref_chosen: np.ndarray, ref_rejected: np.ndarray):
        self.data, self.ref_chosen, self.ref_rejected = data, ref_chosen, ref_rejected

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        d = self.data
        return {"input_ids": d.query_ids[d.query[i]], "chosen": d.docid_tokens[d.chosen[i]],
                "rejected": d.docid_tokens[d.rejected[i]],
                "ref_chosen": float(self.ref_chosen[i]), "ref_rejected": float(self.ref_rejected[i])}


def pad(rows, value: int) -> torch.Tensor:
    width = max(map(len, rows))
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def pad_queries(queries: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and their attention mask, taken from the lengths (not from the pad id)."""
    lengths = torch.tensor([len(q) for q in queries])
    input_ids = pad(queries, pad_token_id)
    return input_ids, (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()


@dataclass
class PairCollator:
    """Right-pads queries (pad id) and docid labels (-100); carries the reference log-probs."""
    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad_queries([f["input_ids"] for f in features], self.pad_token_id)
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "chosen_labels": pad([f["chosen"] for f in features], IGNORE),
                "rejected_labels": pad([f["rejected"] for f in features], IGNORE),
                "ref_chosen": torch.tensor([f["ref_chosen"] for f in features], dtype=torch.float32),
                "ref_rejected": torch.tensor([f["ref_rejected"] for f in features], dtype=torch.float32)}


def cap_pairs(train: np.ndarray, val: np.ndarray, max_pairs: int | None,
              seed: int) -> tuple[np.ndarray, np.ndarray]:
    """At most `max_pairs` training rows, a seeded sample in file order; validation cut alike."""
    if max_pairs is not None and max_pairs < 1:
        raise DDROError(f"--max_pairs must be at least 1, got {max_pairs}")
    if max_pairs is None or len(train) <= max_pairs:
        return train, val
    rng = np.random.default_rng([seed, max_pairs])
    n_val = min(len(val), -(-len(val) * max_pairs // len(train)))  # rounded up: a validation set stays
    log.info("training on %d of %d pairs (--max_pairs), %d of %d validation pairs", max_pairs, len(train),
             n_val, len(val))
    return (train[np.sort(rng.choice(len(train), max_pairs, replace=False))],
            val[np.sort(rng.choice(len(val), n_val, replace=False))])


# ----------------------------------------------------------------------------- model helpers

def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off everywhere: nn.Dropout modules and float `dropout` attributes (T5 attention)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0


def checkpoint_identity(folder: Path) -> str:
    """The checkpoint's manifest hash, or (a checkpoint without manifest) the hash of its files."""
    if (folder / MANIFEST).is_file():
        return manifest_hash(folder)
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*")):
        if path.is_file() and (path.suffix in (".safetensors", ".json")):
            digest.update(f"{path.name}\t{sha256_file(path)}\n".encode())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- reference log-probs

def query_batches(items: np.ndarray, batch_size: int):
    """Row ranges [lo, hi) of `items` (sorted by query) holding whole queries, at most `batch_size`
    rows each (a query with more rows gets a batch of its own)."""
    ends = np.r_[np.flatnonzero(items[1:, 0] != items[:-1, 0]) + 1, len(items)] if len(items) else []
    lo = prev = 0
    for end in ends:
        if end - lo > batch_size and prev > lo:
            yield lo, prev
            lo = prev
        prev = end
    if prev > lo:
        yield lo, prev


def compute_reference_logps(model, query_ids: list[list[int]], docid_tokens: list[tuple[int, ...]],
                            items: np.ndarray, pad_token_id: int, batch_size: int,
                            autocast: torch.dtype | None = None, journal: Journal | None = None) -> np.ndarray:
    """log p_ref(docid | query) for each (query index, doc index) row of `items` (sorted by query).

    One no-grad pass: each batch runs the encoder once per distinct query and the decoder on
    that query's docids, up to `batch_size` (query, docid) rows per batch; `autocast`: the
    mixed-precision dtype training will use (None: full precision). With a `journal`, each
    batch is committed to it and a pass killed before the end goes on after its last batch.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = np.zeros(len(items), dtype=np.float32)
    done = journal.done if journal is not None else 0
    if done:
        log.info("reference log-probs: resuming %s after %d of %d rows", journal.folder, done, len(items))
        out[:done] = np.frombuffer(journal.read_bytes(), dtype=np.float32)
    amp = torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    with torch.no_grad(), amp, tqdm(total=len(items), initial=done, desc="reference log-probs", unit="pair",
                                    mininterval=2) as bar:
        for lo, hi in query_batches(items, batch_size):
            if hi <= done:
                continue
            queries, owner = np.unique(items[lo:hi, 0], return_inverse=True)
            input_ids, mask = pad_queries([query_ids[q] for q in queries], pad_token_id)
            labels = pad([docid_tokens[d] for d in items[lo:hi, 1]], IGNORE)
            logps = grouped_logps(model, input_ids.to(device), mask.to(device), labels.to(device),
                                  torch.from_numpy(owner).to(device))
            out[lo:hi] = logps.float().cpu().numpy()
            if journal is not None:
                journal.append(out[max(lo, done):hi].tobytes(), hi - max(lo, done))
            bar.update(hi - max(lo, done))
    model.train(was_training)
    return out


def reference_cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cached_reference_logps(cache_dir: Path, key_parts: dict, compute, items: np.ndarray) -> tuple[np.ndarray, bool]:
    """Reference log-probs for `items` from `cache_dir` (keyed by `key_parts`), computing them once.

    Returns (log-probs, whether the cache was reused). The file also stores the items, so a
    cache that does not match them exactly is recomputed.
    """
    from safetensors.numpy import load_file, save

    key = reference_cache_key(key_parts)
    path = cache_dir / f"ref-{key[:24]}.safetensors"
    codes = items.astype(np.int64)
    if path.is_file():
        try:
            cached = load_file(str(path))
            if np.array_equal(cached["items"], codes):
                log.info("reference log-probs: reusing %s", path)
                return cached["logps"], True
            log.warning("reference cache %s does not match the pairs; recomputing", path)
        except Exception as e:  # a truncated or foreign file: recompute, never fail on a cache
            log.warning("reference cache %s unreadable (%s); recomputing", path, e)
    # the pass commits its batches here, so a killed run resumes it
    journal = Journal(path.with_suffix(".partial"), {"key": key, "items": hashlib.sha256(codes.tobytes()).hexdigest()},
                      overwrite=True)
    logps = compute(journal)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, overwrite=True, mode="wb") as f:
        f.write(save({"items": codes, "logps": logps.astype(np.float32)},
                     metadata={"key": key, **{k: str(v) for k, v in key_parts.items()}}))
    journal.discard()
    log.info("reference log-probs: computed %d, cached in %s", len(logps), path)
    return logps, False


# ----------------------------------------------------------------------------- trainer

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
        gathered = {"rewards/chosen": result.chosen_rewards, "rewards/rejected": result.rejected_rewards,
                    "logps/chosen": chosen.detach(), "logps/rejected": rejected.detach()}
        gathered = {k: self.accelerator.gather_for_metrics(v) for k, v in gathered.items()}
        margins = gathered["rewards/chosen"] - gathered["rewards/rejected"]
        values = {**{k: v.mean().item() for k, v in gathered.items()},
                  "rewards/margins": margins.mean().item(), "rewards/accuracies": (margins > 0).float().mean().item()}
        for k, v in values.items():
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


# ----------------------------------------------------------------------------- run

def encode_queries(tokenizer, texts: list[str], lowercase: bool, max_length: int) -> list[list[int]]:
    from ..instances.encode import InputEncoder  # the SFT instances' query encoding, exactly

    encoder = InputEncoder(tokenizer, lowercase)
    out: list[list[int]] = []
    for start in tqdm(range(0, len(texts), 4096), desc="encode queries", unit="batch", mininterval=2):
        out += encoder.encode(texts[start:start + 4096], max_length)
    return out


def prepare(args: DDROArguments, targs: TrainingArguments, model, tokenizer, table: DocidTable,
            negatives: Negatives, checkpoint: Path, cache_dir: Path) -> tuple[PairDataset, PairDataset | None, dict]:
    """Index the pairs, get the reference log-probs (cached), and build the datasets."""
    qids = list(negatives.queries)
    query_index = {q: i for i, q in enumerate(qids)}
    doc_index = {d: i for i, d in enumerate(table.doc_ids)}
    query_ids = encode_queries(tokenizer, [negatives.queries[q] for q in qids], args.lowercase,
                               args.query_max_length)
    train, dropped_train = index_pairs(negatives.train, query_index, doc_index, table.tokens, "pairs.tsv")
    val, dropped_val = index_pairs(negatives.val, query_index, doc_index, table.tokens, "val_pairs.tsv")
    if dropped_train + dropped_val:
        log.warning("dropped %d pairs whose positive and negative share a docid", dropped_train + dropped_val)
    if not len(train):
        raise DDROError(f"{negatives.path}: no training pair left")
    available = {"train_pairs_available": len(train), "val_pairs_available": len(val)}
    train, val = cap_pairs(train, val, args.max_pairs, targs.seed)
    # Every (query, docid) the pairs need, once, grouped by query.
    all_rows = np.concatenate([train, val])
    items = np.unique(np.concatenate([all_rows[:, [0, 1]], all_rows[:, [0, 2]]]), axis=0)
    # The reference runs at the training precision, so that step 0 sees policy == reference.
    precision = "bf16" if targs.bf16 else "fp16" if targs.fp16 else "fp32"
    key_parts = {"version": CACHE_VERSION, "checkpoint": checkpoint_identity(checkpoint),
                 "negatives": manifest_hash(negatives.path), "docids": manifest_hash(table.path),
                 "query_max_length": args.query_max_length, "lowercase": args.lowercase, "precision": precision}
    if len(train) < available["train_pairs_available"]:  # a sample: its own cache file, not another's
        key_parts["sample"] = {"max_pairs": args.max_pairs, "seed": targs.seed}
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    # DDP: rank 0 computes (once, even over several nodes), the others then read the cache file
    with targs.main_process_first(local=False, desc="reference log-probs"):
        logps, reused = cached_reference_logps(cache_dir, key_parts, lambda journal: compute_reference_logps(
            model, query_ids, table.tokens, items, tokenizer.pad_token_id, args.ref_batch_size, autocast,
            journal=journal), items)
    codes = items[:, 0] * len(table) + items[:, 1]  # sorted, as `items` is

    def ref_of(q: np.ndarray, d: np.ndarray) -> np.ndarray:
        return logps[np.searchsorted(codes, q * len(table) + d)].astype(np.float32)

    def dataset(rows: np.ndarray) -> PairDataset:
        data = PairData(query_ids, table.tokens, rows[:, 0], rows[:, 1], rows[:, 2])
        return PairDataset(data, ref_of(rows[:, 0], rows[:, 1]), ref_of(rows[:, 0], rows[:, 2]))

    counts = {"train_pairs": len(train), "val_pairs": len(val), **available, "queries": len(qids),
              "dropped_same_docid": dropped_train + dropped_val, "reference_items": len(items)}
    info = {"counts": counts, "checkpoint": key_parts["checkpoint"],
            "ref_cache": {"key": reference_cache_key(key_parts), "reused": reused}}
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


def run(args: DDROArguments, targs: DDROTrainingArguments) -> dict:
    from ..modeling import load_model, save_model

    if args.resume and args.overwrite:
        raise DDROError("give --resume or --overwrite, not both")
    out = check_output(targs.output_dir, args.overwrite or args.resume)
    work = Path(args.work_dir or f"{out}.trainer")
    cache_dir = Path(args.ref_cache_dir) if args.ref_cache_dir else out.parent / "ref_cache"
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
    if args.beta <= 0:
        raise DDROError(f"--beta must be > 0, got {args.beta}")
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
    trainer = DDROTrainer(model=model, args=targs, data_collator=PairCollator(tokenizer.pad_token_id),
                          train_dataset=train_ds, eval_dataset=val_ds, processing_class=tokenizer,
                          callbacks=[WarmupCheck(), FaultHook()], beta=args.beta)
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
    model_info = {**loaded.info, "ddro": {"beta": args.beta, "sft_checkpoint": inputs["checkpoint"],
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
    """Phase 2: train the SFT checkpoint with the DDRO pairwise objective on BM25 hard negatives."""
    args, targs = parse_args([DDROArguments, DDROTrainingArguments], argv, prog="ddro train ddro",
                             description=main.__doc__)
    run(args, targs)


if __name__ == "__main__":
    main()
