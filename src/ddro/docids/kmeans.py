"""Seeded, single-threaded faiss k-means: the one clustering every embedding scheme trains with."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np


@contextmanager
def one_thread():
    """faiss on one OpenMP thread: the thread count can change the order of floating-point sums,
    and so the centroids; one thread makes a docid table byte-identical from run to run."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def seeded(cp, seed: int):
    """`cp` (faiss ClusteringParameters or a subclass) seeded, training on every row it is given."""
    cp.seed = seed
    cp.min_points_per_centroid = 1          # callers check (or warn about) the documents per centroid
    cp.max_points_per_centroid = 1 << 30    # no subsampling
    return cp


def kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(k, d) float32 centroids of k-means on every row of `x` (call within `one_thread`)."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    clustering = faiss.Clustering(x.shape[1], k, seeded(faiss.ClusteringParameters(), seed))
    clustering.train(x, faiss.IndexFlatL2(x.shape[1]))
    return faiss.vector_to_array(clustering.centroids).reshape(k, x.shape[1])


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(n,) int64: the index of each row's nearest centroid (L2)."""
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index.search(np.ascontiguousarray(x, dtype=np.float32), 1)[1][:, 0].astype(np.int64)
