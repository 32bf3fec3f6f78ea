"""Residual-quantization (RQ) docids: M codes over the whole embedding, coarse to fine.

faiss's `ResidualQuantizer` learns M codebooks of K = 2^bits centroids: level m quantizes
what levels < m left of the vector (beam search when encoding), so a document's embedding
is approximated by sum_m C_m[code_m], and a docid's prefix is a coarser description of the
same vector (the first code alone is a k-means cluster). Code c of level m becomes the token
`vocab_offset + K*m + c`, as PQ's (M*K new ids, no EOS, length M); colliding docids are
deduplicated as PQ's (`pq.dedup_pq`). The codebooks are saved as `rq_codebook.npy`,
(M, K, d) float32, so that the codes can be decoded (and a model could start from or score
with them; the dense prior reads PQ codebooks only).

Trained on a seeded sample of at most TRAIN_PER_CENTROID * K documents (faiss's own cap per
k-means; RQ training holds a beam of residuals per document), with faiss's default
progressive-dimension k-means, or plain k-means when the sample has fewer documents than
dimensions (the former starts with a PCA of the sample); every document encoded; seeded, on
one thread: deterministic.
"""
from __future__ import annotations

import numpy as np

from .kmeans import one_thread, seeded
from .pq import CodebookScheme, check_codes, unpack_codes

RQ_CODEBOOK = "rq_codebook.npy"
TRAIN_PER_CENTROID = 256


def train_rq(x: np.ndarray, levels: int, nbits: int, seed: int):
    """A trained faiss.ResidualQuantizer (call within `one_thread`)."""
    import faiss

    check_codes(len(x), levels, nbits, "--rq-levels", "--rq-bits", "level")
    rq = faiss.ResidualQuantizer(x.shape[1], levels, nbits)
    seeded(rq.cp, seed)
    cap = TRAIN_PER_CENTROID << nbits
    if len(x) > cap:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), cap, replace=False))]
    if len(x) < x.shape[1]:  # progressive-dim training (faiss's default) starts with a PCA of the sample
        rq.train_type = faiss.ResidualQuantizer.Train_default
    rq.train(np.ascontiguousarray(x, dtype=np.float32))
    return rq


def rq_codes(x: np.ndarray, levels: int, nbits: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes (n, M) int64, codebooks (M, K, d) float32): x ~ sum_m codebooks[m, codes[:, m]]."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    with one_thread():
        rq = train_rq(x, levels, nbits, seed)
        packed = rq.compute_codes(x)  # one thread too: its beam search sums distances with BLAS
    books = faiss.vector_to_array(rq.codebooks).reshape(levels, 1 << nbits, x.shape[1])
    return unpack_codes(packed, levels, nbits), books


class RQScheme(CodebookScheme):
    name = "rq"
    summary = "residual quantization of the document embeddings (M levels, coarse to fine)"
    count_key, count_flag, bits_flag, unit, codebook = "levels", "--rq-levels", "--rq-bits", "level", RQ_CODEBOOK
    required_params = ("levels", "centroids")

    def settings(self, args) -> tuple[int, int | str]:
        return args.rq_levels, args.rq_bits

    def quantize(self, x: np.ndarray, count: int, bits: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return rq_codes(x, count, bits, seed)


SCHEME = RQScheme()
