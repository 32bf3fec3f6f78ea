"""Semantic docids (hierarchical k-means): the tree against a direct computation, leaves, prefix-freeness,
determinism, tokens and the table the trie and a model read."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ddro.docids.semantic import semantic_codes, semantic_tokens
from ddro.errors import DDROError
from ddro.eval.trie import DocidTrie
from test_docids import build, make_collection, make_docs


def blobs(n: int = 600, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((7, dim)) * 4
    return (centers[rng.integers(0, 7, n)] + rng.standard_normal((n, dim))).astype(np.float32)


def reference_tree(x: np.ndarray, k: int, c: int, seed: int) -> dict[int, tuple[int, ...]]:
    """Independent hierarchical k-means: faiss.Kmeans per cluster, numpy nearest-centroid assignment."""
    import faiss

    faiss.omp_set_num_threads(1)
    out: dict[int, tuple[int, ...]] = {}

    def visit(rows, prefix):
        if len(rows) <= c:
            out.update({int(i): (*prefix, j) for j, i in enumerate(rows)})
            return
        km = faiss.Kmeans(x.shape[1], min(k, len(rows)), niter=25, seed=seed, min_points_per_centroid=1,
                          max_points_per_centroid=1 << 30)
        km.train(x[rows])
        labels = ((x[rows][:, None, :] - km.centroids[None]) ** 2).sum(-1).argmin(1)
        for q in np.unique(labels):
            visit(rows[labels == q], (*prefix, int(q)))

    visit(np.arange(len(x)), ())
    return out


def is_prefix_free(docids) -> bool:
    ordered = sorted(map(tuple, docids))  # a prefix sorts right before the first docid it starts
    return all(b[:len(a)] != a for a, b in zip(ordered, ordered[1:]))


@pytest.mark.parametrize("k, c", [(4, 10), (3, 25)])
def test_tree_equals_a_direct_computation_with_small_leaves(k, c):
    x = blobs()
    codes = semantic_codes(x, k, c, seed=5)
    ref = reference_tree(x, k, c, seed=5)
    assert codes == [ref[i] for i in range(len(x))]
    leaves: dict[tuple, list[int]] = {}
    for i, code in enumerate(codes):
        leaves.setdefault(code[:-1], []).append(i)
    assert all(len(rows) <= c for rows in leaves.values())
    # the last position is the index in the leaf, in collection order
    assert all([codes[i][-1] for i in rows] == list(range(len(rows))) for rows in leaves.values())
    assert all(q < k for code in codes for q in code[:-1])
    assert len(set(codes)) == len(x) and is_prefix_free(codes)
    assert len(set(map(len, codes))) > 1  # depths differ: variable-length docids


def test_documents_sharing_a_prefix_share_the_cluster():
    """The first code is one k-means of all documents: two documents share it iff that k-means
    puts them together (checked as a partition, independent of the cluster numbering)."""
    import faiss

    x = blobs(seed=1)
    codes = semantic_codes(x, 5, 20, seed=2)
    km = faiss.Kmeans(x.shape[1], 5, niter=25, seed=2, min_points_per_centroid=1, max_points_per_centroid=1 << 30)
    km.train(x)
    labels = km.index.search(x, 1)[1][:, 0]
    first = np.array([code[0] for code in codes])
    assert (first[:, None] == first[None]).tolist() == (labels[:, None] == labels[None]).tolist()


def test_deterministic_under_seed_and_terminates_on_duplicates():
    x = blobs(300)
    assert semantic_codes(x, 4, 10, seed=1) == semantic_codes(x, 4, 10, seed=1)
    assert semantic_codes(x, 4, 10, seed=1) != semantic_codes(x, 4, 10, seed=2)
    same = np.repeat(x[:3], 40, axis=0)  # k-means cannot split identical vectors: split in order instead
    codes = semantic_codes(same, 4, 5, seed=0)
    assert len(set(codes)) == len(same) and is_prefix_free(codes)
    assert max(np.unique([c[:-1] for c in codes], axis=0, return_counts=True)[1]) <= 5


def test_tokens_give_every_position_its_own_band():
    assert semantic_tokens([(0, 2, 1), (1, 0)], vocab_offset=3, width=5) == [(3, 10, 14), (4, 8)]
    with pytest.raises(DDROError, match="--semantic-k must be >= 2"):
        semantic_codes(blobs(20), 1, 5, seed=0)
    with pytest.raises(DDROError, match="--semantic-c must be >= 1"):
        semantic_codes(blobs(20), 3, 0, seed=0)


@pytest.mark.parametrize("target", ["own", "tokenizer"])
def test_built_table_loads_and_the_trie_holds_every_document(tmp_path, target):
    from ddro.docids.table import DocidTable
    from ddro.tokenizer import load_tokenizer

    coll = make_collection(tmp_path / "c", make_docs(40))
    kw = {"tokenizer": "offline:minilm"} if target == "tokenizer" else {"target_vocab": "own"}
    cache = tmp_path / "cache"
    table = build(coll, tmp_path / "sem", cache, encoding="semantic", semantic_k=3, semantic_c=4, seed=7,
                  dedup=True, **kw)
    m = table.manifest
    offset = 3 if target == "own" else len(load_tokenizer("offline:minilm"))
    assert (m["encoding"], m["vocab_offset"], m["params"]["width"]) == ("semantic", offset, 4)
    assert m["add_doc_num"] == 4 * table.max_len and table.required_vocab == offset + 4 * table.max_len
    assert m["dedup"]["method"] == "nothing to resolve" and m["collisions"]["colliding_groups"] == 0
    assert sum(m["params"]["lengths"].values()) == 40
    vectors = np.load(cache / f"{m['params']['embedding']['cache_key']}.npy").astype(np.float32)
    assert table.tokens == semantic_tokens(semantic_codes(vectors, 3, 4, seed=7), offset, 4)
    assert DocidTable.load(tmp_path / "sem").tokens == table.tokens
    trie = DocidTrie(list(table.groups), end_token=m["eos_token_id"])
    assert len(trie) == 40 and trie.free_end  # no EOS: the trie's own end edge, free
    assert all(trie.contains(t) and trie.allowed(t) == [trie.end_token] for t in table.tokens)
    again = build(coll, tmp_path / "again", cache, encoding="semantic", semantic_k=3, semantic_c=4, seed=7,
                  dedup=True, **kw)
    assert (tmp_path / "again" / "docids.tsv").read_bytes() == (tmp_path / "sem" / "docids.tsv").read_bytes()
    assert again.manifest["params"] == m["params"]


def test_refuses_bad_settings_before_any_work(tmp_path: Path):
    coll = make_collection(tmp_path / "c", make_docs(5))
    with pytest.raises(DDROError, match="--semantic-k must be >= 2"):
        build(coll, tmp_path / "out", tmp_path / "cache", encoding="semantic", target_vocab="own", semantic_k=1)
    assert not (tmp_path / "cache").exists()
