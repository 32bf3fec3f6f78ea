"""Product-quantization (PQ) docids: M sub-space codes of a document embedding.

The embedding is cut into M sub-vectors; k-means with K = 2^nbits centroids is trained in
each sub-space on all documents, and a document's docid is its M centroid numbers. Code
c of sub-space m becomes the token `vocab_offset + K*m + c`, so every position has its
own K tokens (M*K new vocabulary ids, no EOS: every docid has length M). The centroids are
saved as `codebook.npy`, (M, K, d/M) float32. `CodebookScheme` is the construction PQ and
RQ (`rq.py`) share: M codes of K centroids, tokens, codebook file and dedup.
"""
from __future__ import annotations

import functools
import logging
from typing import ClassVar

import numpy as np

from ..errors import DDROError
from .kmeans import kmeans, one_thread
from .scheme import CODEBOOK, Built, Scheme, document_vectors

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


def auto_pq_bits(n_docs: int, flag: str = "--pq-bits") -> tuple[int, str]:
    """The largest bits <= AUTO_MAX_BITS giving every centroid AUTO_MIN_POINTS_PER_CENTROID documents
    (at least 1 bit, and never more centroids than documents); returns (bits, why)."""
    bits = AUTO_MAX_BITS
    while bits > 1 and n_docs < AUTO_MIN_POINTS_PER_CENTROID << bits:
        bits -= 1
    if n_docs < 1 << bits:
        raise DDROError(f"{flag} auto: {n_docs} documents are too few for quantized docids (2 needed)")
    k = 1 << bits
    faiss_met = "met" if n_docs >= MIN_POINTS_PER_CENTROID * k else "not met"
    why = (f"{n_docs} documents: {n_docs / k:.1f} per centroid at {bits} bits ({k} centroids); auto takes the "
           f"largest bits <= {AUTO_MAX_BITS} with >= {AUTO_MIN_POINTS_PER_CENTROID} documents per centroid "
           f"(faiss advises >= {MIN_POINTS_PER_CENTROID}: {faiss_met})")
    return bits, why


def resolve_pq_bits(requested: int | str, n_docs: int, flag: str = "--pq-bits") -> tuple[int, str]:
    """--pq-bits (or `flag`) as a number: `auto` chosen from the collection size, a number taken as given."""
    if requested == "auto":
        return auto_pq_bits(n_docs, flag)
    if isinstance(requested, str):
        raise DDROError(f"{flag} must be a number of bits or 'auto', got {requested!r}")
    return requested, "given"


def check_codes(n_docs: int, count: int, nbits: int, count_flag: str = "--pq-subspaces",
                bits_flag: str = "--pq-bits", unit: str = "sub-space") -> None:
    """Refuse M codes of 2^nbits centroids that faiss cannot train on n_docs documents."""
    if count < 1:
        raise DDROError(f"{count_flag} must be >= 1, got {count}")
    if not 1 <= nbits <= 16:
        raise DDROError(f"{bits_flag} must be in 1..16, got {nbits}")
    k = 1 << nbits
    if n_docs < k:
        raise DDROError(f"{bits_flag} {nbits} asks for {k} centroids per {unit} but the collection "
                        f"has only {n_docs} documents; use {bits_flag} <= {max(n_docs.bit_length() - 1, 0)} "
                        f"or {bits_flag} auto")


def check_pq(n_docs: int, dim: int | None, subspaces: int, nbits: int) -> None:
    """Refuse settings faiss cannot train (called before any embedding work when possible)."""
    check_codes(n_docs, subspaces, nbits)
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
    with one_thread():
        for m in range(subspaces):
            centroids[m] = kmeans(x[:, m * dsub:(m + 1) * dsub], k, seed + m)
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


class CodebookScheme(Scheme):
    """M codes of K = 2^bits centroids quantizing a document's embedding, code c at position m the
    token vocab_offset + K*m + c, the centroids saved beside the table (PQ, RQ). Colliding
    docids are deduplicated with `dedup_pq`."""
    count_key: ClassVar[str]   # the manifest param holding M
    count_flag: ClassVar[str]
    bits_flag: ClassVar[str]
    unit: ClassVar[str]        # what each of the M codes quantizes
    codebook: ClassVar[str]    # file name of the saved centroids

    def settings(self, args) -> tuple[int, int | str]:
        """(M, requested bits: a number or 'auto') from the arguments."""
        raise NotImplementedError

    def check(self, n_docs: int, dim: int | None, count: int, bits: int) -> None:
        check_codes(n_docs, count, bits, self.count_flag, self.bits_flag, self.unit)

    def quantize(self, x: np.ndarray, count: int, bits: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(codes (n, M) int64, the centroids to save)."""
        raise NotImplementedError

    def build(self, args, collection, target, n_docs: int) -> Built:
        count, requested = self.settings(args)
        bits, why = resolve_pq_bits(requested, n_docs, self.bits_flag)
        self.check(n_docs, None, count, bits)
        vectors, embedding = document_vectors(args, collection,
                                              check_dim=lambda dim: self.check(n_docs, dim, count, bits))
        log.info("%s: training %d %ss x %d centroids on %d documents%s", self.name.upper(), count, self.unit,
                 1 << bits, n_docs, f" ({self.bits_flag} auto: {why})" if requested == "auto" else "")
        codes, centroids = self.quantize(vectors, count, bits, args.seed)
        new_tokens = count << bits
        params = {self.count_key: count, "bits": bits, "centroids": 1 << bits, "seed": args.seed,
                  "embedding": embedding}
        if requested == "auto":
            params["bits_auto"] = why
        params["codebook"] = self.codebook
        return Built(pq_tokens(codes, target.vocab_offset, bits), new_tokens, params, {self.codebook: centroids},
                     functools.partial(dedup_pq, first_extra=target.vocab_offset + new_tokens))

    def layout(self, params: dict) -> tuple[int, int]:
        # a dedup token sits at position M: offset + K*M + its index in the group
        return params["centroids"], params[self.count_key]


class PQScheme(CodebookScheme):
    name = "pq"
    summary = "product quantization of the document embeddings (M sub-space codes)"
    subspace_codebook = True
    count_key, count_flag, bits_flag, unit, codebook = "subspaces", "--pq-subspaces", "--pq-bits", "sub-space", CODEBOOK
    required_params = ("subspaces", "centroids")

    def settings(self, args) -> tuple[int, int | str]:
        return args.pq_subspaces, args.pq_bits

    def check(self, n_docs: int, dim: int | None, count: int, bits: int) -> None:
        check_pq(n_docs, dim, count, bits)

    def quantize(self, x: np.ndarray, count: int, bits: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return pq_codes(x, count, bits, seed)


SCHEME = PQScheme()
