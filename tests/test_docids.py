"""`ddro docids`: the TU string rule, PQ/atomic token arithmetic, collisions and dedup, refusals."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ddro.data.collection import Collection, write_collection
from ddro.docids.build import DocidArguments, main, run
from ddro.docids.table import DocidTable
from ddro.docids.tu import tu_string
from ddro.errors import DDROError
from ddro.tokenizer import load_tokenizer

WORDS = ("protein cell gene mouse brain cancer virus drug dose trial heart blood liver lung immune "
         "receptor signal pathway enzyme tissue kidney bone muscle neuron plasma").split()


def make_docs(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"_id": f"d{i}", "title": " ".join(rng.choice(WORDS, 3)), "text": " ".join(rng.choice(WORDS, 30))}
            for i in range(n)]


def make_collection(folder: Path, docs: list[dict]) -> Path:
    folder.mkdir(parents=True)
    write_collection(folder, docs, {"q1": "a query"}, {"test": {"q1": {docs[0]["_id"]: 1}}}, source="test")
    return folder


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One embedding cache for the module: each tiny collection is embedded once."""
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture(scope="module")
def minilm():
    return load_tokenizer("offline:minilm")


def build(collection: Path, out: Path, cache: Path | None = None, **kw) -> DocidTable:
    if cache is not None:
        kw["embed_cache"] = str(cache)
    run(DocidArguments(collection=str(collection), out=str(out), **kw))
    return DocidTable.load(out)


# --- TU string rule -----------------------------------------------------------------------

@pytest.mark.parametrize("title, url, expected", [
    # long title: title + domain
    ("The History of Coffee - Wikipedia", "http://en.wikipedia.org/wiki/History_of_coffee",
     "the history of coffee - wikipedia en.wikipedia.org"),
    # short title: reversed path segments (most specific first), dashes and suffix dropped, then domain
    ("Arabica", "https://www.example.com/food-drink/coffee-beans/arabica.html",
     "arabica coffee beans food drink www.example.com"),
    # digits are removed from the path, punctuation becomes space
    ("", "http://www.answers.com/Q/What_is_2+2", "what is q www.answers.com"),
    ("Search", "http://example.com/search?q=cheap-flights", "search q cheap flights example.com"),
    # scheme and case are normalised, a bare domain stays a domain
    ("NASA", "HTTPS://WWW.NASA.GOV/", "www.nasa.gov"),
    ("Two Words", "http://www.mayoclinic.org/diseases-conditions/flu/symptoms-causes/syc-20351719",
     "syc symptoms causes flu diseases conditions www.mayoclinic.org"),
])
def test_tu_string_with_url(title, url, expected):
    assert tu_string(title, url) == expected


def test_tu_string_without_url_uses_title_then_text():
    assert tu_string("Microstructural  Development of White Matter", None, "ignored") == \
        "microstructural development of white matter"
    assert tu_string("", "", "The  FIRST words of the body " + "x " * 200).startswith("the first words of the body x")
    assert len(tu_string("", None, "w " * 500).split()) == 64


def test_tu_docids_end_with_eos_and_are_truncated(tmp_path, minilm):
    docs = [{"_id": "a", "title": "word " * 300, "text": "t"}, {"_id": "b", "title": "Short", "text": "t",
                                                             "url": "http://x.org/some-page"}]
    table = build(make_collection(tmp_path / "c", docs), tmp_path / "tu", encoding="tu", tokenizer="offline:minilm")
    assert table.by_doc["a"] == tuple(minilm("word " * 99, add_special_tokens=False)["input_ids"]) + (102,)
    assert table.by_doc["b"] == tuple(minilm("some page x.org", add_special_tokens=False)["input_ids"]) + (102,)
    m = table.manifest
    assert (m["eos_token_id"], m["vocab_offset"], m["add_doc_num"], m["max_docid_len"]) == (102, len(minilm), 0, 100)
    assert m["tokenizer"]["vocab_sha256"] and m["target_vocab"] == "tokenizer"


def test_tu_dedup_numbers_duplicates_without_new_collisions(tmp_path, minilm):
    titles = ["Coffee", "Coffee", "Tea", "Coffee", "Coffee 2", "Tea"]
    docs = [{"_id": f"d{i}", "title": t, "text": "body"} for i, t in enumerate(titles)]
    coll = make_collection(tmp_path / "c", docs)
    plain = build(coll, tmp_path / "plain", encoding="tu", tokenizer="offline:minilm")
    assert plain.collisions() == {"distinct_docids": 3, "colliding_groups": 2, "docs_in_collisions": 5,
                                  "largest_group": 3}
    assert plain.manifest["collisions"] == plain.collisions() and len(plain) == 6
    table = build(coll, tmp_path / "dedup", encoding="tu", tokenizer="offline:minilm", dedup=True)
    names = [minilm.decode(table.by_doc[d][:-1]) for d in table.doc_ids]
    # the first keeps its name; "coffee 2" is taken by d4, so later duplicates skip to 3, 4
    assert names == ["coffee", "coffee 3", "tea", "coffee 4", "coffee 2", "tea 2"]
    assert all(t[-1] == 102 for t in table.tokens)
    dedup = table.manifest["dedup"]
    assert dedup["enabled"] and dedup["groups_resolved"] == 2 and dedup["docs_changed"] == 3
    assert dedup["extra_tokens"] == 0 and dedup["collisions_before"]["colliding_groups"] == 2
    assert table.manifest["collisions"]["colliding_groups"] == 0


# --- PQ -----------------------------------------------------------------------------------

def reference_codes(x: np.ndarray, subspaces: int, nbits: int, seed: int) -> np.ndarray:
    """Independent PQ: faiss.Kmeans per sub-space (seed + m), numpy nearest-centroid assignment."""
    import faiss

    faiss.omp_set_num_threads(1)
    dsub, codes = x.shape[1] // subspaces, []
    for m in range(subspaces):
        sub = np.ascontiguousarray(x[:, m * dsub:(m + 1) * dsub])
        km = faiss.Kmeans(dsub, 1 << nbits, niter=25, seed=seed + m, min_points_per_centroid=1,
                          max_points_per_centroid=1 << 30)
        km.train(sub)
        codes.append(((sub[:, None, :] - km.centroids[None]) ** 2).sum(-1).argmin(1))
    return np.stack(codes, 1)


@pytest.mark.parametrize("nbits, target", [(3, "own"), (2, "tokenizer")])
def test_pq_tokens_are_offset_plus_k_m_plus_code(tmp_path, cache, minilm, nbits, target):
    coll = make_collection(tmp_path / "c", make_docs(40))
    kw = {"tokenizer": "offline:minilm"} if target == "tokenizer" else {"target_vocab": "own"}
    table = build(coll, tmp_path / "pq", cache, encoding="pq", pq_subspaces=8, pq_bits=nbits, seed=7, **kw)
    m = table.manifest
    offset, k = (3, 1 << nbits) if target == "own" else (len(minilm), 1 << nbits)
    assert (m["vocab_offset"], m["add_doc_num"], m["max_docid_len"]) == (offset, 8 * k, 8)
    assert m["eos_token_id"] == (2 if target == "own" else 102)
    emb = m["params"]["embedding"]
    vectors = np.load(cache / f"{emb['cache_key']}.npy")
    assert vectors.dtype == np.float16 and vectors.shape == (40, 384) and emb["model"] == "offline:minilm"
    codes = reference_codes(vectors.astype(np.float32), 8, nbits, seed=7)
    expected = offset + k * np.arange(8) + codes
    assert np.array_equal(np.array(table.tokens), expected)
    assert table.doc_ids == [f"d{i}" for i in range(40)]
    # the saved codebook is what the codes index: each sub-vector's nearest centroid
    codebook = np.load(tmp_path / "pq" / m["params"]["codebook"])
    assert codebook.shape == (8, k, 384 // 8)
    sub = vectors.astype(np.float32).reshape(40, 8, 1, 48)
    nearest = ((sub - codebook[None]) ** 2).sum(-1).argmin(-1)
    assert np.array_equal(nearest, codes)


def test_two_imports_of_one_corpus_share_the_embedding_cache(tmp_path, cache):
    """The cache is keyed by the documents (corpus.jsonl), not by where or how the collection was written."""
    docs = make_docs(40)
    a = make_collection(tmp_path / "a", docs)
    b = tmp_path / "b"
    b.mkdir()
    write_collection(b, docs, {"q9": "another query"}, {"dev": {"q9": {docs[1]["_id"]: 1}}}, source="other")
    other = make_collection(tmp_path / "c", make_docs(40, seed=1))
    keys = [build(c, tmp_path / f"pq-{c.name}", cache, encoding="pq", pq_subspaces=8, pq_bits=2,
                  target_vocab="own").manifest["params"]["embedding"]["cache_key"] for c in (a, b, other)]
    assert keys[0] == keys[1] != keys[2]


def test_pq_collisions_are_kept_and_reported_then_deduped(tmp_path, cache):
    docs = make_docs(24, seed=1)
    docs += [{**docs[3], "_id": "copy3a"}, {**docs[5], "_id": "copy5"}, {**docs[3], "_id": "copy3b"}]
    coll = make_collection(tmp_path / "c", docs)
    kw = dict(encoding="pq", target_vocab="own", pq_subspaces=4, pq_bits=2)
    plain = build(coll, tmp_path / "plain", cache, **kw)
    assert len(plain) == 27  # every document keeps a row, duplicates included
    assert plain.by_doc["d3"] == plain.by_doc["copy3a"] == plain.by_doc["copy3b"]
    assert plain.by_doc["d5"] == plain.by_doc["copy5"]
    groups = [set(g) for g in plain.groups.values() if len(g) > 1]
    assert any(g >= {"d3", "copy3a", "copy3b"} for g in groups) and any(g >= {"d5", "copy5"} for g in groups)
    assert plain.manifest["collisions"] == plain.collisions()
    assert plain.manifest["collisions"]["colliding_groups"] >= 2
    assert plain.manifest["dedup"] == {"enabled": False, "extra_tokens": 0}

    table = build(coll, tmp_path / "dedup", cache, dedup=True, **kw)
    k, first_extra = 4, 3 + 4 * 4
    largest = plain.collisions()["largest_group"]
    assert table.manifest["add_doc_num"] == 4 * k + largest
    assert table.manifest["dedup"]["extra_tokens"] == largest
    assert len(table.groups) == len(table) == 27
    assert all(not b[:len(a)] == a for a in table.tokens for b in table.tokens if a != b)  # prefix-free
    for group in plain.groups.values():
        for j, doc in enumerate(group):
            want = plain.by_doc[doc] + ((first_extra + j,) if len(group) > 1 else ())
            assert table.by_doc[doc] == want
    assert max(map(max, table.tokens)) < table.required_vocab == 3 + 4 * k + largest


def test_pq_rebuild_is_byte_identical_cold_and_warm(tmp_path):
    coll = make_collection(tmp_path / "c", make_docs(20, seed=2))
    out, cache = tmp_path / "pq", tmp_path / "cache"
    kw = dict(encoding="pq", target_vocab="own", pq_subspaces=8, pq_bits=2, dedup=True, overwrite=True)
    build(coll, out, cache, **kw)  # cold: embeds and fills the cache
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    build(coll, out, cache, **kw)  # warm: reads the cache, same command
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    assert len(list(cache.glob("*.npy"))) == 1


# --- atomic, table round trip -------------------------------------------------------------

def test_atomic_docids(tmp_path, minilm):
    coll = make_collection(tmp_path / "c", make_docs(5))
    own = build(coll, tmp_path / "own", encoding="atomic", target_vocab="own")
    assert own.tokens == [(3,), (4,), (5,), (6,), (7,)]
    assert (own.manifest["add_doc_num"], own.required_vocab, own.manifest["tokenizer"]) == (5, 8, None)
    t5_like = build(coll, tmp_path / "tok", encoding="atomic", tokenizer="offline:minilm", vocab_offset=32128)
    assert t5_like.tokens == [(32128 + i,) for i in range(5)]
    default = build(coll, tmp_path / "default", encoding="atomic", tokenizer="offline:minilm")
    assert default.tokens[0] == (len(minilm),) and default.manifest["collisions"]["colliding_groups"] == 0


def test_docid_table_load_round_trip(tmp_path):
    coll_path = make_collection(tmp_path / "c", make_docs(6))
    table = build(coll_path, tmp_path / "a", encoding="atomic", target_vocab="own")
    lines = (tmp_path / "a" / "docids.tsv").read_text().splitlines()
    assert lines[0] == "d0\t3" and len(lines) == 6
    collection = Collection(coll_path)
    table.check_collection(collection)
    assert table.manifest["collection"] == table.manifest["inputs"]["collection"]
    other = make_collection(tmp_path / "other", make_docs(6, seed=9))
    with pytest.raises(DDROError, match="another collection"):
        table.check_collection(Collection(other))


# --- refusals -----------------------------------------------------------------------------

@pytest.fixture
def small(tmp_path) -> Path:
    return make_collection(tmp_path / "c", make_docs(10))


@pytest.mark.parametrize("kw, message", [
    (dict(encoding="bm25", target_vocab="own"), "unknown --encoding 'bm25'"),
    (dict(encoding="tu"), "TU docids need --tokenizer"),
    (dict(encoding="tu", target_vocab="own"), "TU docids are the tokenizer's own token ids"),
    (dict(encoding="pq"), "need --tokenizer .* or --target-vocab own"),
    (dict(encoding="pq", target_vocab="own", pq_bits=4), "asks for 16 centroids .* only 10 documents"),
    (dict(encoding="pq", target_vocab="own", pq_bits=2, pq_subspaces=7), "does not divide the embedding dimension 384"),
    (dict(encoding="atomic", tokenizer="offline:minilm", vocab_offset=100), "would reuse ids"),
    (dict(encoding="atomic", target_vocab="own", vocab_offset=2), "overlaps the own vocabulary"),
])
def test_refusals(tmp_path, small, cache, kw, message):
    with pytest.raises(DDROError, match=message):
        build(small, tmp_path / "out", cache, **kw)
    assert not (tmp_path / "out").exists()


def test_refuses_collection_without_manifest_and_existing_out(tmp_path, small, capsys):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "corpus.jsonl").write_text(json.dumps({"_id": "1", "title": "", "text": "x"}) + "\n")
    with pytest.raises(SystemExit) as exit_:
        main(["--collection", str(tmp_path / "raw"), "--encoding", "atomic", "--target-vocab", "own",
              "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2 and "no manifest.json" in capsys.readouterr().err
    (tmp_path / "out").mkdir()
    with pytest.raises(DDROError, match="already exists; pass --overwrite"):
        build(small, tmp_path / "out", encoding="atomic", target_vocab="own")


# --- integration on a real collection ------------------------------------------------------

def test_adi_pq_and_tu(tmp_path, shared_data, cache, minilm):
    from ddro.data.beir import main as beir_main

    beir_main(["--path", str(shared_data / "adi"), "--out", str(tmp_path / "adi"), "--sentences", "false"])
    collection = Collection(tmp_path / "adi")
    pq = build(tmp_path / "adi", tmp_path / "pq", cache, encoding="pq", target_vocab="own",
               pq_subspaces=8, pq_bits=4, dedup=True)
    assert pq.doc_ids == collection.doc_ids() and len(pq) == 82
    assert len(pq.groups) == 82 and pq.max_len <= 9
    pq.check_collection(collection)
    tu = build(tmp_path / "adi", tmp_path / "tu", encoding="tu", tokenizer="offline:minilm")
    assert tu.manifest["params"]["named_by"] == {"url": 0, "title": 82, "text": 0}
    first = next(collection.iter_docs())
    assert minilm.decode(tu.tokens[0][:-1]) == minilm.decode(minilm(first["title"].lower())["input_ids"][1:-1])


# --- --pq-bits auto -----------------------------------------------------------------------

@pytest.mark.parametrize("n_docs", [2, 40, 82, 1400, 4095, 4096, 5183, 16316, 10**6])
def test_auto_pq_bits_is_the_largest_the_collection_supports(n_docs):
    from ddro.docids.pq import AUTO_MAX_BITS, AUTO_MIN_POINTS_PER_CENTROID, auto_pq_bits

    bits, why = auto_pq_bits(n_docs)
    assert 1 <= bits <= AUTO_MAX_BITS and (1 << bits) <= n_docs
    if bits > 1:  # enough documents for every centroid ...
        assert n_docs >= AUTO_MIN_POINTS_PER_CENTROID << bits
    if bits < AUTO_MAX_BITS:  # ... and one bit more would leave too few
        assert n_docs < AUTO_MIN_POINTS_PER_CENTROID << (bits + 1)
    assert f"{n_docs} documents" in why and f"{bits} bits" in why


def test_auto_pq_bits_refuses_a_single_document():
    from ddro.docids.pq import auto_pq_bits

    with pytest.raises(DDROError, match="too few"):
        auto_pq_bits(1)


def test_pq_bits_auto_builds_and_records_its_choice(tmp_path, cache):
    """40 documents: 1 bit (20 a centroid; 4 centroids would leave 10 each): tokens, vocabulary and
    codebook all follow the chosen bits."""
    coll = make_collection(tmp_path / "c", make_docs(40, seed=3))
    table = build(coll, tmp_path / "pq", cache, encoding="pq", target_vocab="own", pq_subspaces=4, pq_bits="auto")
    params = table.manifest["params"]
    assert (params["bits"], params["centroids"]) == (1, 2)
    assert "40 documents" in params["bits_auto"] and table.manifest["config"]["pq_bits"] == "auto"
    assert np.load(tmp_path / "pq" / "codebook.npy").shape[:2] == (4, 2)
    assert all(3 + 2 * m <= t < 3 + 2 * (m + 1) for toks in table.tokens for m, t in enumerate(toks[:4]))
    given = build(coll, tmp_path / "given", cache, encoding="pq", target_vocab="own", pq_subspaces=4, pq_bits=1)
    assert given.tokens == table.tokens and "bits_auto" not in given.manifest["params"]


@pytest.mark.parametrize("value, ok", [("auto", True), ("AUTO", True), ("3", True), ("eight", False)])
def test_pq_bits_flag_takes_a_number_or_auto(value, ok, capsys):
    from ddro.config import parse_args

    if ok:
        (args,) = parse_args([DocidArguments], ["--collection", "c", "--encoding", "pq", "--out", "o",
                                                "--pq_bits", value])
        assert args.pq_bits == ("auto" if value.lower() == "auto" else int(value))
    else:
        with pytest.raises(SystemExit):
            parse_args([DocidArguments], ["--collection", "c", "--encoding", "pq", "--out", "o", "--pq_bits", value])
        assert "eight" in capsys.readouterr().err
