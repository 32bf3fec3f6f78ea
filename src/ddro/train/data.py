"""SFT data: instance files held in memory as flat arrays, resampled mixes, and the collator.

An instance line is {"doc_id", "input_ids", "labels", "source"}; `labels` must be the
document's docid exactly as in the docid table (checked here, so instances built for
another table are refused). Token ids are stored as one flat int32 array plus offsets,
which keeps a few million instances cheap.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..docids.table import DocidTable
from ..errors import DDROError, InputError
from ..io import iter_jsonl
from ..padding import IGNORE, pad_queries, pad_rows

log = logging.getLogger(__name__)

def _is_ids(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) and t >= 0 for t in value)


def _ragged(seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in seqs], out=offsets[1:])
    values = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(offsets[-1]))
    return values, offsets


@dataclass
class InstanceDataset(torch.utils.data.Dataset):
    """Instances as flat arrays; `index` picks (and may repeat) the instances an epoch sees."""
    inputs: np.ndarray
    input_offsets: np.ndarray
    labels: np.ndarray
    label_offsets: np.ndarray
    parts: np.ndarray  # which file (stage) each instance came from
    counts: dict = field(default_factory=dict)
    index: np.ndarray | None = None

    def __post_init__(self):
        if self.index is None:
            self.index = np.arange(len(self.parts), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        j = self.index[i]
        return {"input_ids": self.inputs[self.input_offsets[j]:self.input_offsets[j + 1]].tolist(),
                "labels": self.labels[self.label_offsets[j]:self.label_offsets[j + 1]].tolist()}

    @property
    def max_input_id(self) -> int:
        return int(self.inputs.max()) if len(self.inputs) else -1

    @classmethod
    def concat(cls, datasets: list["InstanceDataset"]) -> "InstanceDataset":
        def join(name, offsets_name):
            values = np.concatenate([getattr(d, name) for d in datasets])
            shifts = np.cumsum([0] + [len(getattr(d, name)) for d in datasets[:-1]])
            offsets = np.concatenate([getattr(datasets[0], offsets_name)[:1]] + [
                getattr(d, offsets_name)[1:] + s for d, s in zip(datasets, shifts)])
            return values, offsets

        inputs, input_offsets = join("inputs", "input_offsets")
        labels, label_offsets = join("labels", "label_offsets")
        parts = np.concatenate([d.parts for d in datasets])
        return cls(inputs, input_offsets, labels, label_offsets, parts,
                   {k: v for d in datasets for k, v in d.counts.items()})

    def resampled(self, repeats: dict[int, float], epochs: int, seed: int,
                  group_batch: int | None = None) -> "InstanceDataset":
        """`epochs` shuffled epochs, each drawing every instance of part p `repeats[p]` times on average.

        The whole part of a repeat is taken as is; the fraction is a fresh random subset each
        epoch. The epochs are materialised, in order, as one index array (deterministic from
        `seed`): the Trainer reads it sequentially in one pass, and a resumed run sees the same data.
        group_batch: order each epoch in batches of this size holding inputs of similar length
        (see `group_by_length`).
        """
        rng = np.random.default_rng(seed)
        epochs_index = []
        for _ in range(epochs):
            chosen = []
            for part, repeat in sorted(repeats.items()):
                members = np.flatnonzero(self.parts == part)
                whole, frac = int(repeat), repeat - int(repeat)
                chosen += [members] * whole
                if frac > 0 and len(members):
                    chosen.append(rng.choice(members, size=int(round(frac * len(members))), replace=False))
            if chosen:
                epoch = rng.permutation(np.concatenate(chosen))
                if group_batch:
                    epoch = self.group_by_length(epoch, group_batch, rng)
                epochs_index.append(epoch)
        index = np.concatenate(epochs_index) if epochs_index else np.zeros(0, dtype=np.int64)
        return InstanceDataset(self.inputs, self.input_offsets, self.labels, self.label_offsets, self.parts,
                               self.counts, index.astype(np.int64))


    def group_by_length(self, order: np.ndarray, batch: int, rng: np.random.Generator,
                        window: int = 50) -> np.ndarray:
        """`order` regrouped so that each run of `batch` instances has inputs of similar length.

        Passages (64+ tokens) and queries (~15) mixed in one batch pad every query to the
        passage length, so a batch costs what its longest input costs. Within windows of
        `window` batches of the shuffled order the instances are sorted by input length and
        cut into batches; the batches are then shuffled, so the data seen per epoch is unchanged
        and only its grouping into batches differs.
        """
        lengths = np.diff(self.input_offsets)[order]
        size = batch * window
        grouped = [chunk[np.argsort(-lengths[i:i + size], kind="stable")]
                   for i, chunk in ((i, order[i:i + size]) for i in range(0, len(order), size))]
        flat = np.concatenate(grouped)
        batches = [flat[i:i + batch] for i in range(0, len(flat), batch)]
        return np.concatenate([batches[i] for i in rng.permutation(len(batches))])


def read_instances(path: str | Path, table: DocidTable, *, part: int = 0,
                   max_source_length: int | None = None) -> InstanceDataset:
    """Read one instances JSONL file (a missing file is an empty stage), checked against `table`."""
    path = Path(path)
    inputs, labels, sources = [], [], Counter()
    truncated = 0
    if path.is_file():
        for lineno, obj in tqdm(iter_jsonl(path), desc=f"reading {path.name}", unit=" lines", leave=False):
            doc_id, input_ids, label = obj.get("doc_id"), obj.get("input_ids"), obj.get("labels")
            if not _is_ids(input_ids) or not _is_ids(label):
                raise InputError(path, "'input_ids' and 'labels' must be non-empty lists of token ids", lineno)
            docid = table.by_doc.get(doc_id)
            if docid is None:
                raise InputError(path, f"document {doc_id!r} is not in the docid table {table.path}", lineno)
            if tuple(label) != docid:
                raise InputError(path, f"labels {label} are not document {doc_id!r}'s docid {list(docid)} in "
                                       f"{table.path}; rebuild the instances for this docid table", lineno)
            if max_source_length and len(input_ids) > max_source_length:
                input_ids, truncated = input_ids[:max_source_length], truncated + 1
            inputs.append(input_ids)
            labels.append(label)
            sources[str(obj.get("source"))] += 1
    input_values, input_offsets = _ragged(inputs)
    label_values, label_offsets = _ragged(labels)
    counts = {f"stage{part}": {"instances": len(inputs), "sources": dict(sorted(sources.items())),
                               "truncated": truncated}}
    return InstanceDataset(input_values, input_offsets, label_values, label_offsets,
                           np.full(len(inputs), part, dtype=np.int8), counts)


def check_input_vocab(dataset: InstanceDataset, rows: int, what: str) -> None:
    if dataset.max_input_id >= rows:
        raise DDROError(f"{what}: input token id {dataset.max_input_id:,} is outside the encoder's vocabulary "
                        f"({rows:,} tokens); the instances were built with another tokenizer")


@dataclass
class Seq2SeqCollator:
    """Pad inputs with the tokenizer's pad id (+ attention mask) and labels with -100.

    The model builds its decoder inputs from the labels (shifted right behind the decoder
    start token, -100 replaced by pad), so no decoder_input_ids are made here.
    """
    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        input_ids, attention = pad_queries([f["input_ids"] for f in features], self.pad_token_id)
        return {"input_ids": input_ids, "attention_mask": attention,
                "labels": pad_rows([f["labels"] for f in features], IGNORE)}
