"""Phase-2 training data: (query, d+, d-) pairs as index rows, their datasets and collators.

The negatives folder's pairs become int rows (query index, docid-table index of d+, of d-);
queries are encoded once, as the SFT instances were. Pairs whose two documents share a docid
(PQ collisions) carry no signal and are dropped. Pairwise losses train on pairs
(`PairDataset`, `PairCollator`: one item per pair); grouped losses (listwise) on groups: the
rows of one (query, d+) made contiguous (`group_rows`), one item per group with its K
negatives (`GroupDataset`, `GroupCollator`: K padded to the batch's largest group).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DDROError
from ..padding import IGNORE, pad_queries, pad_rows

log = logging.getLogger(__name__)


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


def encode_queries(tokenizer, texts: list[str], lowercase: bool, max_length: int) -> list[list[int]]:
    from ..instances.encode import InputEncoder  # the SFT instances' query encoding, exactly

    encoder = InputEncoder(tokenizer, lowercase)
    out: list[list[int]] = []
    for start in tqdm(range(0, len(texts), 4096), desc="encode queries", unit="batch", mininterval=2):
        out += encoder.encode(texts[start:start + 4096], max_length)
    return out


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


def group_rows(rows: np.ndarray) -> np.ndarray:
    """The [P, 3] rows reordered so that each (query, d+) group's rows are contiguous: groups in
    order of first appearance, negatives in file order."""
    if not len(rows):
        return rows
    _, first, group = np.unique(rows[:, :2], axis=0, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))  # group id -> its place by first appearance
    return rows[np.argsort(rank[group.reshape(-1)], kind="stable")]


def group_bounds(rows: np.ndarray) -> np.ndarray:
    """[G + 1]: where each (query, d+) group of grouped rows starts, then len(rows)."""
    change = np.flatnonzero((rows[1:, :2] != rows[:-1, :2]).any(axis=1)) + 1
    return np.r_[0, change, len(rows)] if len(rows) else np.zeros(1, dtype=np.int64)


class GroupDataset(torch.utils.data.Dataset):
    """One item per (query, d+) group of grouped pair rows: d+, its negatives, their reference log-probs."""

    def __init__(self, data: PairData, ref_chosen: np.ndarray, ref_rejected: np.ndarray):
        self.data, self.ref_chosen, self.ref_rejected = data, ref_chosen, ref_rejected
        self.bounds = group_bounds(np.stack([data.query, data.chosen], axis=1))

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, i: int) -> dict:
        d, lo, hi = self.data, self.bounds[i], self.bounds[i + 1]
        return {"input_ids": d.query_ids[d.query[lo]], "chosen": d.docid_tokens[d.chosen[lo]],
                "rejected": [d.docid_tokens[j] for j in d.rejected[lo:hi]],
                "ref_chosen": float(self.ref_chosen[lo]), "ref_rejected": self.ref_rejected[lo:hi].tolist()}


def query_and_positive(features: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """The batch's queries (right-padded, with their mask), d+ labels (-100-padded), d+ reference log-probs."""
    input_ids, attention_mask = pad_queries([f["input_ids"] for f in features], pad_token_id)
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "chosen_labels": pad_rows([f["chosen"] for f in features], IGNORE),
            "ref_chosen": torch.tensor([f["ref_chosen"] for f in features], dtype=torch.float32)}


@dataclass
class PairCollator:
    """Right-pads queries (pad id) and docid labels (-100); carries the reference log-probs."""
    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        return {**query_and_positive(features, self.pad_token_id),
                "rejected_labels": pad_rows([f["rejected"] for f in features], IGNORE),
                "ref_rejected": torch.tensor([f["ref_rejected"] for f in features], dtype=torch.float32)}


@dataclass
class GroupCollator:
    """Groups: queries and d+ as `PairCollator`; negatives as [B, K, L] labels, K the batch's largest
    group, the missing slots padded (labels -100, `rejected_mask` False, reference log-prob 0)."""
    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        k = max(len(f["rejected"]) for f in features)
        missing = [k - len(f["rejected"]) for f in features]
        slots = [d for f, m in zip(features, missing) for d in [*f["rejected"], *[()] * m]]
        return {**query_and_positive(features, self.pad_token_id),
                "rejected_labels": pad_rows(slots, IGNORE).reshape(len(features), k, -1),
                "rejected_mask": torch.tensor([[True] * (k - m) + [False] * m for m in missing]),
                "ref_rejected": torch.tensor([[*f["ref_rejected"], *[0.0] * m] for f, m in zip(features, missing)],
                                             dtype=torch.float32)}


def sample_rows(rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return rows[np.sort(rng.choice(len(rows), n, replace=False))]


def sample_groups(rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Whole (query, d+) groups of grouped rows, a seeded sample kept in order, holding at most n rows
    (at least one group, even a larger one)."""
    if n < 1 or not len(rows):
        return rows[:0]
    bounds = group_bounds(rows)
    order = rng.permutation(len(bounds) - 1)
    count = max(1, int(np.searchsorted(np.cumsum(np.diff(bounds)[order]), n, side="right")))
    return np.concatenate([rows[bounds[g]:bounds[g + 1]] for g in np.sort(order[:count])])


def cap_pairs(train: np.ndarray, val: np.ndarray, max_pairs: int | None, seed: int,
              grouped: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """At most `max_pairs` training rows, a seeded sample in file order; validation cut alike.

    `grouped`: the rows are grouped (`group_rows`) and whole groups are sampled, as many as fit
    in `max_pairs` rows, so that every kept d+ keeps all its negatives.
    """
    if max_pairs is not None and max_pairs < 1:
        raise DDROError(f"--max_pairs must be at least 1, got {max_pairs}")
    if max_pairs is None or len(train) <= max_pairs:
        return train, val
    rng = np.random.default_rng([seed, max_pairs])
    n_val = min(len(val), -(-len(val) * max_pairs // len(train)))  # rounded up: a validation set stays
    sample = sample_groups if grouped else sample_rows
    kept, kept_val = sample(train, max_pairs, rng), sample(val, n_val, rng)
    log.info("training on %d of %d pairs (--max_pairs%s), %d of %d validation pairs", len(kept), len(train),
             ", whole (query, positive) groups" if grouped else "", len(kept_val), len(val))
    return kept, kept_val
