"""`ddro negatives`: band sampling, validation hold-out, short queries, pseudo mode, split refusal."""
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from ddro.data.collection import write_collection
from ddro.errors import DDROError
from ddro.io import dumps_line
from ddro.manifest import read_manifest, write_manifest
from ddro.negatives import (NegativesArguments, Negatives, band_quotas, main, parse_bands, read_pairs, run,
                            sample_negatives)

N_DOCS = 60


class FakeIndex:
    """A BM25 stand-in with a fixed ranking per query text (d<j> ranked by a per-query permutation)."""

    def __init__(self, hits: dict[str, list[str]]):
        self.hits = hits
        self.calls = 0

    def search(self, queries, k, progress=True):
        self.calls += 1
        return {qid: [(d, 100.0 - r) for r, d in enumerate(self.hits[text][:k])] for qid, text in queries.items()}


def ranking(seed: int, n: int = N_DOCS) -> list[str]:
    return [f"d{i}" for i in np.random.default_rng(seed).permutation(n)]


def make_collection(tmp_path: Path, query_order=None, name="coll") -> tuple[Path, dict, FakeIndex]:
    docs = [{"_id": f"d{i}", "title": "", "text": f"document {i} words w{i}"} for i in range(N_DOCS)]
    queries = {f"q{j}": f"query text {j}" for j in range(20)}
    if query_order is not None:
        queries = {q: queries[q] for q in query_order}
    train = {f"q{j}": {f"d{j}": 1, f"d{j + 20}": 2, f"d{j + 40}": 0} for j in range(12)}
    test = {f"q{j}": {f"d{j}": 1} for j in range(12, 20)}
    folder = tmp_path / name
    folder.mkdir()
    write_collection(folder, docs, queries, {"train": train, "test": test}, source="test")
    index = FakeIndex({f"query text {j}": ranking(j) for j in range(20)})
    return folder, train, index


def args_for(coll: Path, out: Path, **kw) -> NegativesArguments:
    base = dict(collection=str(coll), out=str(out), negatives=6, bands="1-10,11-20,21-30", val_fraction=0.25)
    return NegativesArguments(**{**base, **kw})


# ----------------------------------------------------------------------------- sampling unit

def test_parse_bands_and_quotas():
    assert parse_bands("1-100,101-500,501-1000") == [(1, 100), (101, 500), (501, 1000)]
    assert band_quotas(16, 3) == [5, 5, 6]
    assert band_quotas(7, 2) == [3, 4]
    for bad in ("1-100,50-200", "0-10", "10-5", "a-b", "1-10,11"):
        with pytest.raises(DDROError):
            parse_bands(bad)


def test_band_sampling_sizes_bands_exclusions_and_determinism():
    ranked = [f"doc{i}" for i in range(1000)]
    rank_of = {d: i + 1 for i, d in enumerate(ranked)}
    relevant = {"doc0", "doc5", "doc150", "doc700"}
    bands = [(1, 100), (101, 500), (501, 1000)]
    negs = sample_negatives(ranked, relevant, bands, [5, 5, 6], np.random.default_rng(7))
    assert len(negs) == 16 == len(set(negs))
    assert not set(negs) & relevant
    per_band = [sum(lo <= rank_of[d] <= hi for d in negs) for lo, hi in bands]
    assert per_band == [5, 5, 6]
    assert negs == sample_negatives(ranked, relevant, bands, [5, 5, 6], np.random.default_rng(7))
    assert negs != sample_negatives(ranked, relevant, bands, [5, 5, 6], np.random.default_rng(8))


def test_band_sampling_is_spread_within_a_band():
    ranked = [f"doc{i}" for i in range(1000)]
    drawn = set()
    for seed in range(50):
        drawn |= set(sample_negatives(ranked, set(), [(101, 500)], [5], np.random.default_rng(seed)))
    ranks = sorted(int(d[3:]) + 1 for d in drawn)
    assert ranks[0] >= 101 and ranks[-1] <= 500
    assert ranks[0] < 150 and ranks[-1] > 450  # the whole band is used, not just its top


def test_short_band_gives_what_it_has():
    ranked = ["a", "b", "c", "d"]
    negs = sample_negatives(ranked, {"b"}, [(1, 2), (3, 10)], [2, 3], np.random.default_rng(0))
    assert sorted(negs) == ["a", "c", "d"]


# ----------------------------------------------------------------------------- run

def test_run_writes_pairs_with_band_and_relevance_rules(tmp_path):
    coll, train, index = make_collection(tmp_path)
    manifest = run(args_for(coll, tmp_path / "neg"), index=index)
    neg = Negatives.load(tmp_path / "neg")
    pairs = neg.train + neg.val
    qids_train, qids_val = {q for q, _, _ in neg.train}, {q for q, _, _ in neg.val}
    assert not qids_train & qids_val
    assert qids_train | qids_val == set(train)  # every train query, no test query
    assert len(qids_val) == 3  # round(0.25 * 12)
    for qid, judged in train.items():
        relevant = {d for d, s in judged.items() if s > 0}
        rank_of = {d: r + 1 for r, d in enumerate(ranking(int(qid[1:])))}
        for pos in relevant:
            negs = [n for q, p, n in pairs if q == qid and p == pos]
            assert len(negs) == 6 == len(set(negs))
            assert not set(negs) & relevant
            assert [sum(lo <= rank_of[n] <= hi for n in negs) for lo, hi in [(1, 10), (11, 20), (21, 30)]] == [2, 2, 2]
    assert {p for q, p, _ in pairs} <= {d for j in train.values() for d, s in j.items() if s > 0}
    assert manifest["counts"]["pairs"] == len(neg.train) and manifest["counts"]["val_pairs"] == len(neg.val)
    assert manifest["counts"]["queries_short"] == 0
    queries = [json.loads(line) for line in (tmp_path / "neg" / "queries.jsonl").read_text().splitlines()]
    assert {q["_id"] for q in queries} == set(train)
    assert all(q["text"] == f"query text {q['_id'][1:]}" for q in queries)


def test_run_is_deterministic_and_independent_of_query_order(tmp_path):
    coll, _, index = make_collection(tmp_path)
    run(args_for(coll, tmp_path / "a", val_fraction=0), index=index)
    run(args_for(coll, tmp_path / "b", val_fraction=0), index=index)
    a = (tmp_path / "a" / "pairs.tsv").read_bytes()
    assert a == (tmp_path / "b" / "pairs.tsv").read_bytes()
    shuffled, _, index2 = make_collection(tmp_path, query_order=[f"q{j}" for j in reversed(range(20))], name="rev")
    run(args_for(shuffled, tmp_path / "c", val_fraction=0), index=index2)
    assert sorted(read_pairs(tmp_path / "a" / "pairs.tsv")) == sorted(read_pairs(tmp_path / "c" / "pairs.tsv"))
    run(args_for(coll, tmp_path / "d", val_fraction=0, seed=1), index=index)
    assert a != (tmp_path / "d" / "pairs.tsv").read_bytes()


def test_too_few_candidates_are_reported(tmp_path, caplog):
    coll, train, index = make_collection(tmp_path)
    index.hits["query text 3"] = ["d3", "d23", "d50", "d51"]  # 2 non-relevant candidates
    index.hits["query text 4"] = ["d4", "d24"]  # only its own positives
    with caplog.at_level(logging.WARNING):
        manifest = run(args_for(coll, tmp_path / "neg", val_fraction=0), index=index)
    counts = manifest["counts"]
    assert counts["queries_short"] == 2
    assert counts["queries_without_candidates"] == 1
    assert counts["negatives_missing"] == 2 * (6 - 2) + 2 * 6
    pairs = read_pairs(tmp_path / "neg" / "pairs.tsv")
    assert sorted(n for q, _, n in pairs if q == "q3") == ["d50", "d50", "d51", "d51"]
    assert not [p for p in pairs if p[0] == "q4"]
    assert "fewer than 6 negatives" in caplog.text and "q3" in caplog.text


def test_pseudo_query_mode(tmp_path):
    coll, _, _ = make_collection(tmp_path)
    pq = tmp_path / "pq"
    pq.mkdir()
    with open(pq / "pseudo_queries.jsonl", "w") as f:
        for i in range(N_DOCS):
            for k in range(2):
                f.write(dumps_line({"doc_id": f"d{i}", "query": f"pseudo {i} {k}"}))
    write_manifest(pq, "pseudo_queries", inputs={"collection": None})
    index = FakeIndex({f"pseudo {i} {k}": ranking(1000 + i) for i in range(N_DOCS) for k in range(2)})
    manifest = run(args_for(coll, tmp_path / "neg", queries="pseudo", pseudo_queries=str(pq), val_fraction=0.1),
                   index=index)
    neg = Negatives.load(tmp_path / "neg")
    assert {q for q, _, _ in neg.train + neg.val} == {f"pq-d{i}-{k}" for i in range(N_DOCS) for k in range(2)}
    assert len(neg.val) == 12 * 6
    for qid, pos, n in neg.train + neg.val:
        assert pos == qid.rsplit("-", 1)[0][3:] and n != pos
    assert neg.queries["pq-d7-1"] == "pseudo 7 1"
    assert manifest["inputs"]["pseudo_queries"] is not None
    with pytest.raises(DDROError, match="--pseudo-queries"):
        run(args_for(coll, tmp_path / "neg2", queries="pseudo"), index=index)


@pytest.mark.parametrize("split", ["test", "dev"])
def test_non_train_split_is_refused(tmp_path, split, capsys):
    coll, _, index = make_collection(tmp_path)
    with pytest.raises(DDROError, match="never be used for training"):
        run(args_for(coll, tmp_path / "neg", split=split), index=index)
    assert index.calls == 0 and not (tmp_path / "neg").exists()
    with pytest.raises(SystemExit) as e:
        main(["--collection", str(coll), "--out", str(tmp_path / "neg"), "--split", split])
    assert e.value.code == 2 and "never be used for training" in capsys.readouterr().err


def test_real_bm25s_backend_end_to_end(tmp_path):
    """Through the CLI with the real bm25s index: negatives sit in the bands of a BM25 ranking."""
    from ddro.bm25 import build_index, doc_text
    from ddro.data.collection import Collection

    vocab = [f"t{i}" for i in range(30)]
    rng = np.random.default_rng(0)
    docs = [{"_id": f"d{i}", "title": "", "text": " ".join(rng.choice(vocab, 12))} for i in range(80)]
    queries = {f"q{j}": " ".join(rng.choice(vocab, 4)) for j in range(6)}
    qrels = {f"q{j}": {f"d{j}": 1} for j in range(6)}
    coll = tmp_path / "coll"
    coll.mkdir()
    write_collection(coll, docs, queries, {"train": qrels}, source="test")
    main(["--collection", str(coll), "--out", str(tmp_path / "neg"), "--negatives", "4", "--bands", "1-5,6-20",
          "--val-fraction", "0", "--threads", "1"])
    manifest = read_manifest(tmp_path / "neg", "negatives")
    assert manifest["params"]["k1"] == 0.82 and manifest["params"]["b"] == 0.68
    index = build_index("bm25s", [(d["_id"], doc_text(d)) for d in Collection(coll).iter_docs()],
                        k1=0.82, b=0.68, threads=1, progress=False)
    run_ = index.search(queries, 20, progress=False)
    pairs = read_pairs(tmp_path / "neg" / "pairs.tsv")
    assert pairs and len(pairs) == manifest["counts"]["pairs"]
    for qid, pos, n in pairs:
        ranked = [d for d, _ in run_[qid]]
        assert n in ranked and n != pos


def test_max_queries_mines_a_seeded_sample_and_records_it(tmp_path):
    coll, train, index = make_collection(tmp_path)
    kept = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        manifest = run(args_for(coll, tmp_path / name, max_queries=5, val_fraction=0.2, seed=seed), index=index)
        neg = Negatives.load(tmp_path / name)
        qids = {q for q, _, _ in neg.train + neg.val}
        assert len(qids) == 5 and qids <= set(train)
        assert len({q for q, _, _ in neg.val}) == 1  # the validation share is of the kept queries
        assert manifest["counts"]["queries"] + manifest["counts"]["val_queries"] == 5
        assert manifest["counts"]["queries_available"] == 12
        assert manifest["params"]["max_queries"] == 5
        kept[name] = qids
    assert kept["a"] == kept["b"] and kept["a"] != kept["c"]
    run(args_for(coll, tmp_path / "all", max_queries=50), index=index)  # a cap above the pool keeps it all
    assert {q for q, _, _ in Negatives.load(tmp_path / "all").train + Negatives.load(tmp_path / "all").val} == \
        set(train)
    with pytest.raises(DDROError, match="--max_queries must be at least 1"):
        run(args_for(coll, tmp_path / "zero", max_queries=0), index=index)
