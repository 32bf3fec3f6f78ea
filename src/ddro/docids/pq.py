"""Product-quantization (PQ) docids: M sub-space codes of a document embedding.

The embedding is cut into M sub-vectors; k-means with K = 2^nbits centroids is trained in
each sub-space on all documents, and a document's docid is its M centroid numbers. Code
c of sub-space m becomes the token `vocab_offset + K*m + c`, so every position has its
own K tokens (M*K new vocabulary ids, no EOS: every docid has length M).
"""
from __future__ import annotations

import logging

import numpy as np

from ..errors import DDROError

log = logging.getLogger(__name__)

MIN_POINTS_PER_CENTROID = 39  # faiss's own advice for a well-trained k-means
# --pq-bits auto: at most 2^8 centroids (one byte a code, the paper's), and at least this many
# documents per centroid. Looser than faiss's 39: docids need distinct codes more than finely
# trained centroids, and SciFact's 20 documents a centroid at 8 bits trained its measured models.
AUTO_MAX_BITS = 8
AUTO_MIN_POINTS_PER_CENTROID = 16


class int_or_auto:  # noqa: N801 -- named like `int`: argparse names the type in its error message
    """An argument type: a whole number, or the word 'auto'."""

    def __new__(cls, value):
        if str(value).strip().lower() == "auto":
            return "auto"
        return int(value)


def auto_pq_bits(n_docs: int) -> tuple[int, str]:
    """The largest bits <= AUTO_MAX_BITS giving every centroid AUTO_MIN_POINTS_PER_CENTROID documents
    (at least 1 bit, and never more centroids than documents); returns (bits, why)."""
    bits = AUTO_MAX_BITS
    while bits > 1 and n_docs < AUTO_MIN_POINTS_PER_CENTROID << bits:
        bits -= 1
    if n_docs < 1 << bits:
        raise DDROError(f"--pq-bits auto: {n_docs} documents are too few for PQ docids (2 needed)")
    k = 1 << bits
    faiss_met = "met" if n_docs >= MIN_POINTS_PER_CENTROID * k else "not met"
    why = (f"{n_docs} documents: {n_docs / k:.1f} per centroid at {bits} bits ({k} centroids); auto takes the "
           f"largest bits <= {AUTO_MAX_BITS} with >= {AUTO_MIN_POINTS_PER_CENTROID} documents per centroid "
           f"(faiss advises >= {MIN_POINTS_PER_CENTROID}: {faiss_met})")
    return bits, why


def resolve_pq_bits(requested: int | str, n_docs: int) -> tuple[int, str]:
    """--pq-bits as a number: `auto` chosen from the collection size, a number taken as given."""
    if requested == "auto":
        return auto_pq_bits(n_docs)
    if isinstance(requested, str):
        raise DDROError(f"--pq-bits must be a number of bits or 'auto', got {requested!r}")
    return requested, "given"


def check_pq(n_docs: int, dim: int | None, subspaces: int, nbits: int) -> None:
    """Refuse settings faiss cannot train (called before any embedding work when possible)."""
    if subspaces < 1:
        raise DDROError(f"--pq-subspaces must be >= 1, got {subspaces}")
    if not 1 <= nbits <= 16:
        raise DDROError(f"--pq-bits must be in 1..16, got {nbits}")
    k = 1 << nbits
    if n_docs < k:
        raise DDROError(f"--pq-bits {nbits} asks for {k} centroids per sub-space but the collection "
                        f"has only {n_docs} documents; use --pq-bits <= {max(n_docs.bit_length() - 1, 0)} "
                        "or --pq-bits auto")
    if dim is not None and dim % subspaces:
        divisors = [m for m in range(1, dim + 1) if dim % m == 0 and m <= 64]
        raise DDROError(f"--pq-subspaces {subspaces} does not divide the embedding dimension {dim} "
                        f"(choose one of {divisors})")


def unpack_codes(packed: np.ndarray, subspaces: int, nbits: int) -> np.ndarray:
    """faiss packs the M codes of a vector as a little-endian bit string; -> (n, M) int64."""
    bits = np.unpackbits(packed, axis=1, bitorder="little")[:, :subspaces * nbits]
    bits = bits.reshape(len(packed), subspaces, nbits).astype(np.int64)
    return bits @ (1 << np.arange(nbits, dtype=np.int64))


def pq_codes(x: np.ndarray, subspaces: int, nbits: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train a product quantizer on all rows of `x`: (codes (n, M) int64, centroids (M, K, d/M)).

    faiss's own `ProductQuantizer.train` seeds every sub-space's k-means alike, so all
    start from the same documents and the M codes come out correlated (on a small
    corpus, often identical in every position); sub-space m is seeded `seed + m`
    instead. Deterministic: seeded, and trained on one OpenMP thread (the thread count
    can change the order of floating-point sums and so the centroids).
    """
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    n, dim = x.shape
    check_pq(n, dim, subspaces, nbits)
    k, dsub = 1 << nbits, dim // subspaces
    if n < MIN_POINTS_PER_CENTROID * k:
        log.warning("PQ: %d documents for %d centroids per sub-space (faiss advises >= %d); "
                    "codes will be coarse", n, k, MIN_POINTS_PER_CENTROID * k)
    centroids = np.empty((subspaces, k, dsub), dtype=np.float32)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        for m in range(subspaces):
            cp = faiss.ClusteringParameters()
            cp.seed = seed + m
            cp.min_points_per_centroid = 1          # we warned above; keeps faiss quiet
            cp.max_points_per_centroid = 1 << 30    # no subsampling: train on every document
            clustering = faiss.Clustering(dsub, k, cp)
            clustering.train(np.ascontiguousarray(x[:, m * dsub:(m + 1) * dsub]), faiss.IndexFlatL2(dsub))
            centroids[m] = faiss.vector_to_array(clustering.centroids).reshape(k, dsub)
    finally:
        faiss.omp_set_num_threads(threads)
    pq = faiss.ProductQuantizer(dim, subspaces, nbits)
    faiss.copy_array_to_vector(centroids.ravel(), pq.centroids)
    pq.sync_transposed_centroids()
    return unpack_codes(pq.compute_codes(x), subspaces, nbits), centroids


def pq_tokens(codes: np.ndarray, vocab_offset: int, nbits: int) -> list[tuple[int, ...]]:
    """Sub-space m, code c -> token vocab_offset + K*m + c."""
    k = 1 << nbits
    tokens = vocab_offset + k * np.arange(codes.shape[1], dtype=np.int64) + codes
    return [tuple(row) for row in tokens.tolist()]


def dedup_pq(tokens: list[tuple[int, ...]], first_extra: int) -> tuple[list[tuple[int, ...]], dict]:
    """Append token first_extra + j to the j-th member (collection order) of every colliding group.

    Every member gets the extra token, so no docid of a group is a prefix of another;
    unique docids keep length M and cannot be a prefix of a length-M+1 docid of a group
    (that one's first M tokens are a different, shared docid).
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, toks in enumerate(tokens):
        groups.setdefault(toks, []).append(i)
    out = list(tokens)
    colliding = [members for members in groups.values() if len(members) > 1]
    for members in colliding:
        for j, i in enumerate(members):
            out[i] = tokens[i] + (first_extra + j,)
    extra = max(map(len, colliding), default=0)
    return out, {"method": "position-in-group token appended to every member", "groups_resolved": len(colliding),
                 "docs_changed": sum(map(len, colliding)), "extra_tokens": extra}
