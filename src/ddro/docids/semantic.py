"""Semantic docids: hierarchical k-means over the document embeddings (DSI's semantic ids; NCI).

The documents are clustered into k clusters; every cluster holding more than c documents
is clustered into k again, recursively. A document's docid is the cluster number at each
level, then its index (collection order) in its leaf cluster of at most c documents.
Defaults k = c = 30, NCI's (DSI: k 10, c 100).

Depths differ, so docids have different lengths, but none is a prefix of another: all the
documents of a cluster either end there (its leaf indices) or all go on (cluster numbers a
level down). So they need no EOS (the trie adds its own end edge, free, as for PQ), and the
leaf index makes them unique (no dedup). Clusters of one position are siblings only under
a shared prefix, so documents sharing a prefix share every cluster on the way.

Token of code q at position p: vocab_offset + W*p + q, W = max(k, c): every position has its
own W tokens (like PQ's K*m + code), which a cluster number and a leaf index at that position
share (the prefix tells which one it is); W * (longest docid) new ids.

Every k-means has seed `--seed`, one thread: deterministic. A cluster that k-means does not
split (identical embeddings: duplicate documents) is split in collection order instead, so the
recursion always ends.
"""
from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from ..errors import DDROError
from .kmeans import kmeans, nearest, one_thread
from .scheme import Built, Scheme, document_vectors

log = logging.getLogger(__name__)


def check_semantic(k: int, c: int) -> None:
    if k < 2:
        raise DDROError(f"--semantic-k must be >= 2 (clusters per level), got {k}")
    if c < 1:
        raise DDROError(f"--semantic-c must be >= 1 (documents a leaf cluster holds at most), got {c}")


def split(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cluster numbers (n,) of k-means with min(k, n) clusters; in collection order when it does not split."""
    k = min(k, len(x))
    labels = nearest(x, kmeans(x, k, seed))
    if np.bincount(labels).max() == len(x):
        labels = np.arange(len(x)) * k // len(x)
    return labels


def semantic_codes(x: np.ndarray, k: int, c: int, seed: int) -> list[tuple[int, ...]]:
    """Each row's codes: cluster numbers from the root down, then its index in its leaf."""
    check_semantic(k, c)
    codes: list[tuple[int, ...]] = [()] * len(x)
    pending = [(np.arange(len(x)), ())]  # (rows of a cluster, its prefix); every cluster is seeded alike,
    with one_thread():                   # so the order they are taken in does not matter
        while pending:
            rows, prefix = pending.pop()
            if len(rows) <= c:
                for j, i in enumerate(rows):
                    codes[i] = (*prefix, j)
                continue
            labels = split(x[rows], k, seed)
            pending.extend((rows[labels == q], (*prefix, int(q))) for q in np.unique(labels))
    return codes


def semantic_tokens(codes: list[tuple[int, ...]], vocab_offset: int, width: int) -> list[tuple[int, ...]]:
    """Code q at position p -> vocab_offset + width*p + q."""
    return [tuple(vocab_offset + width * p + q for p, q in enumerate(row)) for row in codes]


class SemanticScheme(Scheme):
    name = "semantic"
    summary = "hierarchical k-means of the document embeddings (variable length, prefix-free)"
    required_params = ("width",)

    def build(self, args, collection, target, n_docs: int) -> Built:
        k, c = args.semantic_k, args.semantic_c
        check_semantic(k, c)
        vectors, embedding = document_vectors(args, collection)
        log.info("semantic: hierarchical k-means, %d clusters a level, leaves of <= %d documents, on %d documents",
                 k, c, n_docs)
        codes = semantic_codes(vectors, k, c, args.seed)
        width = max(k, c)
        lengths = Counter(map(len, codes))
        params = {"k": k, "c": c, "width": width, "seed": args.seed, "embedding": embedding,
                  "lengths": {str(n): lengths[n] for n in sorted(lengths)}}
        return Built(semantic_tokens(codes, target.vocab_offset, width), width * max(lengths), params)

    def layout(self, params: dict) -> tuple[int, None]:
        return params["width"], None


SCHEME = SemanticScheme()
