"""Phase-2 training data: (query, d+, d-) pairs as index rows, their datasets and collators.

The negatives folder's pairs become int rows (query index, docid-table index of d+, of d-);
queries are encoded once, as the SFT instances were. Pairs whose two documents share a docid
(PQ collisions) carry no signal and are dropped.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DDROError
from .ddro_loss import IGNORE

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
