"""`ddro negatives`: band sampling, validation hold-out, short queries, pseudo mode, split refusal; the sources
(model: a tiny checkpoint's beams; dense: the dense baseline's ranking; mixed quotas), bad arguments, and
pseudo-queries joined to the training queries (--queries both, --pseudo_share)."""
import json
import logging
from pathlib import Path

import numpy as np
import pytest

import test_ddro
from ddro.data.collection import write_collection
from ddro.errors import DDROError
from ddro.io import dumps_line
from ddro.manifest import read_manifest, write_manifest
from ddro.negatives import (
    Negatives,
    NegativesArguments,
    band_quotas,
    main,
    parse_bands,
    read_pairs,
    run,
    sample_negatives,
)

t5_ckpt = test_ddro.t5_ckpt  # a fixture: (a T5 "SFT checkpoint" over model_fixtures.DOCS, its docid table)

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


# ----------------------------------------------------------------------------- sources

def test_mix_parsing_and_quota_split():
    from fractions import Fraction

    from ddro.negatives import parse_mix, split_quota

    assert parse_mix("bm25:0.5,model:0.5") == {"bm25": Fraction(1, 2), "model": Fraction(1, 2)}
    assert parse_mix("bm25:1/3, dense:1/3, model:1/3") == dict.fromkeys(("bm25", "dense", "model"), Fraction(1, 3))
    for bad, says in (("bm25=0.5", "not 'source:share'"), ("bm25:0.5,foo:0.5", "unknown source 'foo'"),
                      ("bm25:0.5,model:0.4", "sum to 0.9"), ("bm25:0.5,bm25:0.5", "each source once"),
                      ("bm25:1,model:0", "above 0"), ("mixed:1", "unknown source")):
        with pytest.raises(DDROError, match=says):
            parse_mix(bad)
    rng = np.random.default_rng(0)
    assert split_quota(16, [Fraction(1, 4), Fraction(3, 4)], rng) == [4, 12]
    assert split_quota(5, [Fraction(1, 5), Fraction(4, 5)], rng) == [1, 4]
    assert split_quota(10, [Fraction(3, 10), Fraction(7, 10)], rng) == [3, 7]
    thirds = [split_quota(16, [Fraction(1, 3)] * 3, np.random.default_rng(s)) for s in range(30)]
    assert all(sorted(q) == [5, 5, 6] for q in thirds)  # largest remainder: one of the tied three gets the 16th
    assert {q.index(6) for q in thirds} == {0, 1, 2}  # which one is a seeded draw


def two_rankings(n_docs: int = N_DOCS) -> tuple[FakeIndex, FakeIndex]:
    """Two fake sources over disjoint halves of the documents: even and odd ids, each query its own order."""
    texts = [f"query text {j}" for j in range(20)]
    even = FakeIndex({t: [d for d in ranking(j) if int(d[1:]) % 2 == 0] for j, t in enumerate(texts)})
    odd = FakeIndex({t: [d for d in ranking(100 + j) if int(d[1:]) % 2] for j, t in enumerate(texts)})
    return even, odd


def test_mixed_source_splits_each_pairs_negatives_by_share(tmp_path):
    coll, train, _ = make_collection(tmp_path)
    even, odd = two_rankings()
    args = args_for(coll, tmp_path / "neg", source="mixed", mix="bm25:0.2,dense:0.8", negatives=5, bands="1-20",
                    val_fraction=0)
    manifest = run(args, index={"bm25": even, "dense": odd})
    pairs = read_pairs(tmp_path / "neg" / "pairs.tsv")
    for qid, judged in train.items():
        relevant = {d for d, s in judged.items() if s > 0}
        for pos in relevant:
            negs = [n for q, p, n in pairs if q == qid and p == pos]
            assert [int(n[1:]) % 2 for n in negs] == [0, 1, 1, 1, 1]  # 1 from bm25, then 4 from dense
            assert not set(negs) & relevant
    assert manifest["params"]["source"] == "mixed"
    assert {k: v["share"] for k, v in manifest["params"]["sources"].items()} == {"bm25": 0.2, "dense": 0.8}
    # a tie (5 x 1/2): one source gets 3, by a seeded draw per query, so both ways occur
    run(args_for(coll, tmp_path / "half", source="mixed", mix="bm25:1/2,dense:1/2", negatives=5, bands="1-20",
                 val_fraction=0), index={"bm25": even, "dense": odd})
    from_bm25 = {}
    for q, p, n in read_pairs(tmp_path / "half" / "pairs.tsv"):
        from_bm25[q, p] = from_bm25.get((q, p), 0) + (int(n[1:]) % 2 == 0)
    assert set(from_bm25.values()) == {2, 3}


def test_mixed_sources_never_draw_a_document_twice(tmp_path):
    coll, train, index = make_collection(tmp_path)
    args = args_for(coll, tmp_path / "neg", source="mixed", mix="bm25:0.5,dense:0.5", negatives=8, bands="1-10",
                    val_fraction=0)
    manifest = run(args, index={"bm25": index, "dense": index})  # the same ranking twice
    pairs = read_pairs(tmp_path / "neg" / "pairs.tsv")
    for qid, judged in train.items():
        relevant = {d for d, s in judged.items() if s > 0}
        eligible = [d for d in ranking(int(qid[1:]))[:10] if d not in relevant]
        for pos in relevant:
            negs = [n for q, p, n in pairs if q == qid and p == pos]
            assert len(negs) == len(set(negs)) == min(8, len(eligible)) and set(negs) <= set(eligible)
    assert manifest["counts"]["queries_short"] == sum(len(eligible) < 8 for eligible in [
        [d for d in ranking(int(q[1:]))[:10] if d not in {d for d, s in j.items() if s > 0}] for q, j in train.items()])


def model_collection(tmp_path: Path) -> tuple[Path, dict[str, str], dict[str, set[str]]]:
    """The documents of the tiny checkpoint's docid table (model_fixtures.DOCS) and train queries in its
    tokenizer's words, capitalised: only lowercased (as phase 2 encodes them) are they the words it knows."""
    from model_fixtures import DOCS, WORDS

    docs = [{"_id": d, "title": "", "text": f"{WORDS[i]} {WORDS[i + 7]}"} for i, d in enumerate(DOCS)]
    queries = {f"q{i}": f"{WORDS[i].capitalize()} {WORDS[i + 5]} {WORDS[(3 * i) % 20]}" for i in range(8)}
    positives = {f"q{i}": {DOCS[i % 6]} for i in range(8)}
    positives["q0"] = {"d0", "d3"}
    folder = tmp_path / "coll"
    folder.mkdir()
    write_collection(folder, docs, queries, {"train": {q: dict.fromkeys(p, 1) for q, p in positives.items()}},
                     source="test")
    return folder, queries, positives


def model_args(coll: Path, out: Path, ckpt, table, **kw) -> NegativesArguments:
    return args_for(coll, out, **{"source": "model", "checkpoint": str(ckpt), "docids": str(table.path),
                                  "bands": "1-5", "negatives": 5, "val_fraction": 0, "device": "cpu", **kw})


def test_model_source_refuses_docids_built_for_another_collection(t5_ckpt, tmp_path):
    """The docids' manifest names another collection: refused before any model is loaded, nothing written."""
    import json
    import shutil

    ckpt, table = t5_ckpt
    coll, _, _ = model_collection(tmp_path)
    docids = tmp_path / "docids-other"
    shutil.copytree(table.path, docids)
    manifest = json.loads((docids / "manifest.json").read_text())
    (docids / "manifest.json").write_text(json.dumps({**manifest, "collection": "0" * 64}))
    with pytest.raises(DDROError, match="another collection"):
        run(model_args(coll, tmp_path / "neg", ckpt, table, docids=str(docids)))
    assert not (tmp_path / "neg").exists()


def test_model_source_mines_the_checkpoints_own_beams(t5_ckpt, tmp_path):
    """Negatives = the evaluator's top beams for the query (encoded as phase 2 encodes it) minus its positives."""
    import torch

    from ddro.eval.decoding import DecodingArguments
    from ddro.eval.evaluate import generate_run
    from ddro.manifest import manifest_hash
    from ddro.modeling import load_model
    from ddro.train.pairs import encode_queries
    from ddro.train.reference import checkpoint_identity

    ckpt, table = t5_ckpt
    coll, queries, positives = model_collection(tmp_path)
    manifest = run(model_args(coll, tmp_path / "neg", ckpt, table, batch_size=8))
    loaded = load_model(ckpt, docids=table)
    ids = encode_queries(loaded.tokenizer, list(queries.values()), lowercase=True, max_length=64)
    hits = generate_run(loaded.model, loaded.tokenizer.pad_token_id, [
        {"query_id": q, "input_ids": i} for q, i in zip(queries, ids)], table, DecodingArguments(beams=5),
        batch_size=8, device=torch.device("cpu"))
    pairs = read_pairs(tmp_path / "neg" / "pairs.tsv")
    for qid, relevant in positives.items():
        top = [d for d, _ in hits[qid]]
        assert len(top) == 5
        for pos in relevant:
            assert [n for q, p, n in pairs if q == qid and p == pos] == [d for d in top if d not in relevant]
    assert manifest["inputs"]["checkpoint"] == checkpoint_identity(ckpt)
    assert manifest["inputs"]["docids"] == manifest_hash(table.path)
    model = manifest["params"]["sources"]["model"]
    assert model["decoding"]["beams"] == 5 and model["lowercase"] is True and model["query_max_length"] == 64
    assert "k1" not in manifest["params"]


def test_dense_source_mines_the_dense_baselines_ranking(adi_train, tmp_path):
    from ddro.data.collection import Collection
    from ddro.dense import DenseArguments
    from ddro.dense import run as dense_run
    from ddro.eval.runs import read_run

    cache = tmp_path / "cache"
    dense = dense_run(DenseArguments(collection=str(adi_train), out=str(tmp_path / "dense"), split="train", k=6,
                                     embed_cache=str(cache), device="cpu"))
    manifest = run(args_for(adi_train, tmp_path / "neg", source="dense", bands="1-6", negatives=6, val_fraction=0,
                            embed_cache=str(cache), device="cpu"))
    ranked = read_run(tmp_path / "dense" / "run.trec")
    qrels = Collection(adi_train).qrels("train")
    pairs = read_pairs(tmp_path / "neg" / "pairs.tsv")
    assert pairs
    for qid, judged in qrels.items():
        relevant = {d for d, s in judged.items() if s > 0}
        top = [d for d, _ in ranked[qid]]  # best first
        for pos in relevant:
            assert [n for q, p, n in pairs if q == qid and p == pos] == [d for d in top if d not in relevant]
    assert manifest["params"]["sources"]["dense"]["embedding"]["cache_key"] == dense["embedding"]["cache_key"]


@pytest.mark.parametrize("change, says", [
    ({"source": "model"}, "--source model needs --checkpoint"),
    ({"source": "model", "checkpoint": "ckpt"}, "needs --checkpoint (the SFT checkpoint) and --docids"),
    ({"source": "model", "checkpoint": "{tmp}", "docids": "{tmp}"}, "not a docid folder"),
    ({"source": "model", "checkpoint": "ckpt", "docids": "d", "beams": 20}, "--beams 20 returns fewer"),
    ({"checkpoint": "ckpt"}, "--checkpoint is only used by the model source"),
    ({"source": "dense", "beams": 30}, "--beams is only used by the model source"),
    ({"source": "mixed"}, "--source mixed needs --mix"),
    ({"mix": "bm25:0.5,model:0.5"}, "--mix is only used with --source mixed"),
    ({"source": "mixed", "mix": "bm25:0.5;model:0.5"}, "not 'source:share'"),
    ({"source": "mixed", "mix": "bm25:0.6,model:0.5"}, "sum to 1.1, not 1"),
    ({"source": "mixed", "mix": "bm25:0.5,splade:0.5"}, "unknown source 'splade'"),
    ({"source": "mixed", "mix": "bm25:1", "docids": "d"}, "--docids is only used by the model source"),
    ({"source": "lexical"}, "--source must be one of bm25, model, dense, mixed"),
    ({"queries": "both"}, "--queries both needs --pseudo-queries"),
    ({"pseudo_share": 0.5}, "--pseudo_share is only used with --queries both"),
    ({"queries": "both", "pseudo_queries": "pq", "pseudo_share": 1.0}, "between 0 and 1"),
])
def test_bad_source_or_query_arguments_fail_before_any_work(change, says, tmp_path, capsys):
    coll, _, index = make_collection(tmp_path)
    change = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in change.items()}
    with pytest.raises(DDROError, match=says.replace("(", r"\(").replace(")", r"\)")):
        run(args_for(coll, tmp_path / "neg", **change), index=index)
    assert index.calls == 0 and not (tmp_path / "neg").exists() and not (tmp_path / ".neg.partial").exists()
    argv = ["--collection", str(coll), "--out", str(tmp_path / "neg")]
    for key, value in change.items():
        argv += [f"--{key}", str(value)]
    with pytest.raises(SystemExit) as e:  # on the command line: one line, exit 2
        main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert e.value.code == 2 and "Traceback" not in err and len(errors) == 1, err


# ----------------------------------------------------------------------------- more queries: --queries both

def pseudo_folder(tmp_path: Path, per_doc: int = 2) -> Path:
    pq = tmp_path / "pq"
    pq.mkdir()
    with open(pq / "pseudo_queries.jsonl", "w") as f:
        for i in range(N_DOCS):
            for k in range(per_doc):
                f.write(dumps_line({"doc_id": f"d{i}", "query": f"pseudo {i} {k}"}))
    write_manifest(pq, "pseudo_queries", inputs={"collection": None})
    return pq


def both_index(index: FakeIndex) -> FakeIndex:
    return FakeIndex({**index.hits, **{f"pseudo {i} {k}": ranking(1000 + i) for i in range(N_DOCS) for k in range(2)}})


def test_both_joins_pseudo_queries_to_the_training_queries(tmp_path):
    coll, train, index = make_collection(tmp_path)
    pq, index = pseudo_folder(tmp_path), both_index(index)
    manifest = run(args_for(coll, tmp_path / "all", queries="both", pseudo_queries=str(pq), val_fraction=0),
                   index=index)
    qids = set(Negatives.load(tmp_path / "all").queries)
    assert qids == set(train) | {f"pq-d{i}-{k}" for i in range(N_DOCS) for k in range(2)}
    assert manifest["counts"]["queries_available"] == 12 + 120
    assert (manifest["counts"]["collection_queries_available"], manifest["counts"]["pseudo_queries_available"]) \
        == (12, 120)
    run(args_for(coll, tmp_path / "capped", queries="both", pseudo_queries=str(pq), max_queries=30), index=index)
    assert len(Negatives.load(tmp_path / "capped").queries) == 30  # a sample of the union


@pytest.mark.parametrize("share, max_queries, kept", [
    (0.25, None, (12, 4)),    # every training query; pseudo-queries a quarter of all: T = 12 / 0.75 = 16
    (0.25, 8, (6, 2)),        # T = 8: 2 pseudo-queries, 6 training queries
    (0.5, 7, (3, 4)),         # 3.5 pseudo-queries round half up
    (0.99, None, (1, 120)),   # the pseudo pool bounds it: T = floor(120 / 0.99) = 121
])
def test_pseudo_share_is_the_share_of_pseudo_queries_among_the_kept(share, max_queries, kept, tmp_path):
    from ddro.negatives import pseudo_split

    assert pseudo_split(12, 120, share, max_queries) == kept
    coll, train, index = make_collection(tmp_path)
    pq, index = pseudo_folder(tmp_path), both_index(index)
    args = dict(queries="both", pseudo_queries=str(pq), pseudo_share=share, max_queries=max_queries, val_fraction=0)
    manifest = run(args_for(coll, tmp_path / "a", **args), index=index)
    qids = list(Negatives.load(tmp_path / "a").queries)
    n_pseudo = sum(q.startswith("pq-") for q in qids)
    assert (len(qids) - n_pseudo, n_pseudo) == kept
    assert qids[:kept[0]] == [q for q in train if q in qids]  # training queries first, in collection order
    assert (manifest["counts"]["collection_queries_kept"], manifest["counts"]["pseudo_queries_kept"]) == kept
    run(args_for(coll, tmp_path / "b", **args), index=index)
    assert list(Negatives.load(tmp_path / "b").queries) == qids  # seeded
