"""Stage-1 "sampled terms": a document's highest-TF-IDF tokens, kept in their original order.

As in DDRO (after ULTRON): idf(t) = ln(N / (df(t) + 1)) over the N documents, tf-idf of
a token = count in the document window / window length * idf, the window being the
first 1,024 tokens of "title text". Every occurrence whose score is at or above the
k-th highest score (k = the stage-1 token budget, 127 for T5 at length 128) is kept in
document order, then cut to k. Documents with fewer than 10 tokens or fewer than two
distinct kept tokens give no instance. Tokens are the input tokenizer's ids and are
used as ids directly (re-tokenizing their text would merge sub-word pieces).
"""
from __future__ import annotations

import numpy as np

MIN_TOKENS = 10
MIN_DISTINCT = 2


class DocumentFrequency:
    """df counts over token ids, accumulated one document at a time."""

    def __init__(self, vocab_size: int):
        self.df = np.zeros(vocab_size, dtype=np.int64)
        self.n_docs = 0

    def add(self, ids) -> None:
        self.df[np.unique(np.asarray(ids, dtype=np.int64))] += 1
        self.n_docs += 1

    def idf(self) -> np.ndarray:
        return idf_from_df(self.df, self.n_docs)


def idf_from_df(df: np.ndarray, n_docs: int) -> np.ndarray:
    return np.log(n_docs / (np.asarray(df, dtype=np.float64) + 1.0))


def sample_terms(ids, idf: np.ndarray, keep: int) -> list[int] | None:
    """The kept token ids in document order, or None when the document is too short."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) < MIN_TOKENS:
        return None
    _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    scores = counts[inverse] / len(ids) * idf[ids]
    threshold = np.sort(scores)[::-1][min(keep, len(ids)) - 1]
    kept = ids[scores >= threshold]
    if len(np.unique(kept)) < MIN_DISTINCT:
        return None
    return kept[:keep].tolist()
