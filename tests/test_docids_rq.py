"""RQ docids (residual quantization): codes against faiss's decode, error by level, determinism,
tokens, codebook, dedup and the table the trie reads."""
from __future__ import annotations

import numpy as np
import pytest

from ddro.docids.rq import RQ_CODEBOOK, rq_codes, train_rq
from ddro.errors import DDROError
from ddro.eval.trie import DocidTrie
from test_docids import build, make_collection, make_docs
from test_docids_semantic import blobs, is_prefix_free


def faiss_decode(x: np.ndarray, levels: int, nbits: int, seed: int) -> np.ndarray:
    from ddro.docids.kmeans import one_thread

    with one_thread():
        rq = train_rq(x, levels, nbits, seed)
        return rq.decode(rq.compute_codes(x))


def reconstruct(codes: np.ndarray, books: np.ndarray) -> np.ndarray:
    return books[np.arange(books.shape[0]), codes].sum(1)


def test_codes_and_codebooks_reconstruct_faiss_decode():
    x = blobs(500, 24)
    codes, books = rq_codes(x, 3, 4, seed=1)
    assert codes.shape == (500, 3) and books.shape == (3, 16, 24) and codes.max() < 16
    np.testing.assert_allclose(reconstruct(codes, books), faiss_decode(x, 3, 4, seed=1), atol=1e-5)


def test_error_falls_with_levels_and_codes_are_deterministic():
    x = blobs(500, 24)
    errors = [((x - reconstruct(*rq_codes(x, m, 4, seed=1))) ** 2).sum(1).mean() for m in (1, 2, 4)]
    assert errors[0] > errors[1] > errors[2]
    first = rq_codes(x, 2, 4, seed=1)
    again = rq_codes(x, 2, 4, seed=1)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[1], rq_codes(x, 2, 4, seed=2)[1])


@pytest.mark.parametrize("target", ["own", "tokenizer"])
def test_built_table_tokens_codebook_and_dedup(tmp_path, target):
    from ddro.docids.table import DocidTable
    from ddro.tokenizer import load_tokenizer

    docs = make_docs(30, seed=4)
    docs += [{**docs[2], "_id": "copy2a"}, {**docs[2], "_id": "copy2b"}]  # identical embeddings: one docid
    coll = make_collection(tmp_path / "c", docs)
    kw = {"tokenizer": "offline:minilm"} if target == "tokenizer" else {"target_vocab": "own"}
    cache, (levels, k) = tmp_path / "cache", (3, 4)
    plain = build(coll, tmp_path / "plain", cache, encoding="rq", rq_levels=levels, rq_bits=2, seed=3, **kw)
    m = plain.manifest
    offset = 3 if target == "own" else len(load_tokenizer("offline:minilm"))
    assert (m["vocab_offset"], m["add_doc_num"], m["max_docid_len"]) == (offset, levels * k, levels)
    assert m["params"]["codebook"] == RQ_CODEBOOK and m["params"]["levels"] == levels
    codes = np.array(plain.tokens) - offset - k * np.arange(levels)
    assert codes.min() >= 0 and codes.max() < k
    books = np.load(tmp_path / "plain" / RQ_CODEBOOK)
    vectors = np.load(cache / f"{m['params']['embedding']['cache_key']}.npy").astype(np.float32)
    assert books.shape == (levels, k, vectors.shape[1])
    np.testing.assert_allclose(reconstruct(codes, books), faiss_decode(vectors, levels, 2, seed=3), atol=1e-5)
    assert plain.by_doc["d2"] == plain.by_doc["copy2a"] == plain.by_doc["copy2b"]

    table = build(coll, tmp_path / "dedup", cache, encoding="rq", rq_levels=levels, rq_bits=2, seed=3, dedup=True,
                  **kw)
    largest = plain.collisions()["largest_group"]
    assert table.manifest["add_doc_num"] == levels * k + largest and len(table.groups) == len(table) == 32
    assert is_prefix_free(table.tokens)
    assert table.required_vocab == offset + levels * k + largest
    assert DocidTable.load(tmp_path / "dedup").tokens == table.tokens
    trie = DocidTrie(list(table.groups), end_token=table.manifest["eos_token_id"])
    assert len(trie) == 32 and trie.free_end and all(trie.contains(t) for t in table.tokens)


def test_bits_auto_and_refusals(tmp_path):
    coll = make_collection(tmp_path / "c", make_docs(40, seed=3))
    cache = tmp_path / "cache"
    table = build(coll, tmp_path / "auto", cache, encoding="rq", target_vocab="own", rq_levels=2, rq_bits="auto")
    assert table.manifest["params"]["bits"] == 1 and "40 documents" in table.manifest["params"]["bits_auto"]
    with pytest.raises(DDROError, match="--rq-bits 6 asks for 64 centroids per level .* only 40 documents"):
        build(coll, tmp_path / "big", cache, encoding="rq", target_vocab="own", rq_bits=6)
    with pytest.raises(DDROError, match="--rq-levels must be >= 1"):
        build(coll, tmp_path / "none", cache, encoding="rq", target_vocab="own", rq_levels=0, rq_bits=2)
