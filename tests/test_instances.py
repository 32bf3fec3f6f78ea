"""`ddro instances`: passages, TF-IDF terms, enhanced docids, the three stages, eval files, refusals."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from ddro import pseudo_queries as pq
from ddro.data.collection import Collection, write_collection
from ddro.docids.table import DocidTable
from ddro.errors import DDROError, InputError
from ddro.instances import InstancesArguments, run
from ddro.instances.encode import InputEncoder, special_tokens
from ddro.instances.passages import chunk_passages
from ddro.instances.tfidf import DocumentFrequency, idf_from_df, sample_terms
from ddro.manifest import manifest_hash, read_manifest, write_manifest
from ddro.tokenizer import load_tokenizer, tokenizer_identity
from raw_fixtures import WORDS, t5_tokenizer


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def minilm():
    return load_tokenizer("offline:minilm")


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t5tok")
    t5_tokenizer(folder)
    return folder


def text(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 5 + j * 3) % len(WORDS)] for j in range(n))


DOCS = [{"_id": f"d{i}", "title": f"Title {WORDS[i]}",
         "text": " ".join(f"{text(i + k, 9)}." for k in range(3)),
         "sents": [f"{text(i + k, 9)}." for k in range(3)]} for i in range(6)]
QUERIES = {f"q{i}": f"Query {text(i, 4)}" for i in range(8)}
QRELS = {"train": {"q0": {"d0": 1, "d1": 1}, "q1": {"d2": 1, "d3": 0}, "q2": {"d4": 2}},
         "test": {"q3": {"d0": 2, "d1": 1, "d2": 0}, "q4": {"d5": 1}, "q5": {"d3": 0}},
         "dev": {"q6": {"d1": 1}}}


def make_collection(folder, docs=DOCS, qrels=QRELS):
    folder.mkdir()
    write_collection(folder, docs, QUERIES, qrels, source="test")
    return folder


def make_docids(folder, coll, tokens, encoding="atomic", **manifest):
    """A docid folder as `ddro docids` writes it (built by hand: that stage is tested elsewhere)."""
    folder.mkdir()
    doc_ids = Collection(coll).doc_ids()
    table = DocidTable(doc_ids, [tuple(t) for t in tokens], {})
    table.save(folder)
    fields = dict(encoding=encoding, params={}, vocab_offset=3, add_doc_num=len(doc_ids),
                  max_docid_len=max(map(len, tokens)), eos_token_id=None, collection=manifest_hash(coll),
                  tokenizer=None, target_vocab="own", collisions=table.collisions(),
                  dedup={"enabled": False, "extra_tokens": 0})
    write_manifest(folder, "docids", **{**fields, **manifest})
    return folder


def atomic(folder, collection):
    return make_docids(folder, collection, [(3 + i,) for i in range(len(Collection(collection)))])


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def build(tmp_path, coll, docids, tokenizer="offline:minilm", out="inst", **kw):
    run(InstancesArguments(collection=str(coll), docids=str(docids), tokenizer=str(tokenizer),
                           out=str(tmp_path / out), **kw))
    return tmp_path / out


# ---------------------------------------------------------------- passages
def test_passages_pack_sentences_after_the_title_up_to_the_budget():
    title, sents = [1, 2], [[3, 4], [5, 6, 7], [8], [9] * 8]
    assert chunk_passages(title, sents, budget=6) == [[1, 2, 3, 4, 5, 6], [1, 2, 8, 9, 9, 9]]
    assert chunk_passages(title, sents, budget=6, max_passages=1) == [[1, 2, 3, 4, 5, 6]]
    assert chunk_passages(title, [[3]] * 30, budget=4, max_passages=10) == [[1, 2, 3, 3]] * 10
    assert chunk_passages(title, [], budget=6) == [[1, 2]]  # no text: the title alone
    assert chunk_passages([], [[3, 4, 5, 6, 7, 8, 9]], budget=3) == [[3, 4, 5]]  # long sentence cut


def test_special_tokens_of_t5_and_bert(t5_folder, minilm):
    t5 = load_tokenizer(str(t5_folder))
    assert special_tokens(t5) == ([], [t5.eos_token_id])
    assert special_tokens(minilm) == ([minilm.cls_token_id], [minilm.sep_token_id])
    enc = InputEncoder(t5, lowercase=True)
    ids = enc.encode(["PROTEIN cell " + "gene " * 20], max_length=8)[0]
    assert len(ids) == 8 and ids[-1] == t5.eos_token_id
    assert ids[0] == t5.convert_tokens_to_ids("▁protein")
    cased = InputEncoder(t5, lowercase=False).encode(["PROTEIN"], max_length=8)[0]
    assert t5.convert_tokens_to_ids("▁protein") not in cased
    assert enc.wrap([5, 6, 7, 8, 9, 10, 11, 12, 13], 4) == [5, 6, 7, t5.eos_token_id]


# ---------------------------------------------------------------- tf-idf
def test_idf_formula_and_document_frequency():
    assert np.allclose(idf_from_df([0, 1, 3], 4), [math.log(4), math.log(2), 0.0])
    df = DocumentFrequency(5)
    df.add([1, 1, 2])
    df.add([2, 3])
    assert df.df.tolist() == [0, 1, 2, 1, 0] and df.n_docs == 2
    assert np.allclose(df.idf(), [math.log(2 / 1), math.log(2 / 2), math.log(2 / 3), math.log(2 / 2), math.log(2)])


def test_sampled_terms_keep_top_scores_in_document_order():
    # 16 tokens; scores tf*idf: token 4 -> 1/16*8 = .5; tokens 1, 2 -> 4/16*1 = 2/16*2 = .25;
    # token 3 -> 2/16*.5 = .0625; token 0 -> 2/16*.25; token 5 -> 0.
    idf = np.array([0.25, 1.0, 2.0, 0.5, 8.0, 0.0])
    ids = [1, 2, 1, 3, 0, 4, 2, 1, 5, 3, 1, 0, 5, 5, 5, 5]
    assert sample_terms(ids, idf, keep=2) == [1, 2]  # >= the 2nd score (.25): 1,2,1,4,2,1,1, cut to 2
    assert sample_terms(ids, idf, keep=3) == [1, 2, 1]
    assert sample_terms(ids, idf, keep=8) == [1, 2, 1, 3, 4, 2, 1, 3]  # ties at .0625 kept, then cut
    assert sample_terms(ids, idf, keep=1) is None  # only token 4 kept: fewer than 2 distinct
    assert sample_terms(ids[:9], idf, keep=8) is None  # fewer than 10 tokens


# ---------------------------------------------------------------- the stages
def test_stages_counts_labels_and_eval_files(tmp_path, minilm):
    coll = make_collection(tmp_path / "c")
    docids = atomic(tmp_path / "docids", coll)
    pq.run(pq.PseudoQueriesArguments(collection=str(coll), out=str(tmp_path / "pq"), per_doc=4))
    out = build(tmp_path, coll, docids, pseudo_queries=str(tmp_path / "pq"), overwrite=True)
    table = DocidTable.load(docids)

    stage1 = read_jsonl(out / "stage1.jsonl")
    for inst in stage1:
        assert inst["labels"] == list(table.by_doc[inst["doc_id"]])
        assert inst["input_ids"][0] == minilm.cls_token_id and inst["input_ids"][-1] == minilm.sep_token_id
        assert len(inst["input_ids"]) <= 128
    title_ids = {d["_id"]: minilm(d["title"].lower(), add_special_tokens=False)["input_ids"] for d in DOCS}
    passages = [i for i in stage1 if i["source"] == "passage"]
    assert {i["doc_id"] for i in passages} == {d["_id"] for d in DOCS}
    assert all(i["input_ids"][1:1 + len(title_ids[i["doc_id"]])] == title_ids[i["doc_id"]] for i in passages)
    assert sum(i["source"] == "tfidf" for i in stage1) == len(DOCS)

    stage2 = read_jsonl(out / "stage2.jsonl")
    assert len(stage2) == 4 * len(DOCS) and {i["source"] for i in stage2} == {"pseudo"}

    stage3 = read_jsonl(out / "stage3.jsonl")
    positives = [(q, d) for q, judged in QRELS["train"].items() for d, s in judged.items() if s > 0]
    assert len(stage3) == len(positives) == 4
    assert [i["doc_id"] for i in stage3] == [d for _, d in positives]
    q0 = minilm(QUERIES["q0"].lower())["input_ids"]
    assert stage3[0]["input_ids"] == q0 and stage3[0]["labels"] == list(table.by_doc["d0"])

    test = read_jsonl(out / "eval" / "test.jsonl")
    assert [(e["query_id"], e["relevant"]) for e in test] == [("q3", {"d0": 2, "d1": 1}), ("q4", {"d5": 1})]
    assert [e["query_id"] for e in read_jsonl(out / "eval" / "dev.jsonl")] == ["q6"]
    assert not (out / "eval" / "train.jsonl").exists()

    manifest = read_manifest(out, "instances")
    assert manifest["counts"]["stage1"]["tfidf"] == len(DOCS) and manifest["counts"]["stage1"]["enhanced"] == 0
    assert manifest["counts"]["stage3"] == {"query": 4} and manifest["counts"]["eval"] == {"dev": 1, "test": 2}
    assert manifest["skipped"]["train_qrels_not_positive"] == 1
    assert manifest["skipped"]["eval_no_relevant"] == {"dev": 0, "test": 1}
    assert manifest["inputs"]["docids"] == manifest_hash(docids)
    assert manifest["inputs"]["pseudo_queries"] == manifest_hash(tmp_path / "pq")
    assert manifest["tokenizer"] == tokenizer_identity(minilm, "offline:minilm")
    assert manifest["max_lengths"] == {"stage1": 128, "query": 64} and manifest["lowercase"] is True

    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    build(tmp_path, coll, docids, pseudo_queries=str(tmp_path / "pq"), overwrite=True)
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # same command: same bytes


def test_t5_tokenizer_inputs_end_with_eos(tmp_path, t5_folder):
    coll = make_collection(tmp_path / "c")
    out = build(tmp_path, coll, atomic(tmp_path / "docids", coll), tokenizer=t5_folder, stage1_max_length=12,
                query_max_length=5)
    t5 = load_tokenizer(str(t5_folder))
    for name, limit in (("stage1", 12), ("stage3", 5)):
        for inst in read_jsonl(out / f"{name}.jsonl"):
            assert inst["input_ids"][-1] == t5.eos_token_id and len(inst["input_ids"]) <= limit
    passages = [i for i in read_jsonl(out / "stage1.jsonl") if i["source"] == "passage"]
    assert max(sum(1 for p in passages if p["doc_id"] == d["_id"]) for d in DOCS) > 1  # budget forces several
    titles = {d["_id"]: t5(d["title"].lower(), add_special_tokens=False)["input_ids"] for d in DOCS}
    assert all(p["input_ids"][:len(titles[p["doc_id"]])] == titles[p["doc_id"]] for p in passages)


def test_enhanced_docids_from_tu_and_pq(tmp_path, minilm):
    coll = make_collection(tmp_path / "c")
    n = len(DOCS)
    tu_tokens = [minilm(f"{WORDS[i]} {WORDS[i + 1]}", add_special_tokens=False)["input_ids"] + [minilm.sep_token_id]
                 for i in range(n)]
    tu = make_docids(tmp_path / "tu", coll, tu_tokens, encoding="tu", vocab_offset=0, add_doc_num=0,
                     eos_token_id=minilm.sep_token_id, target_vocab="tokenizer",
                     tokenizer=tokenizer_identity(minilm, "offline:minilm"))
    codes = [(i % 4, (i + 1) % 4, 3) for i in range(n)]  # M=3 positions, K=4 codes, offset 3
    pq_tokens = [(3 + c0, 7 + c1, 11 + c2) for c0, c1, c2 in codes]
    pq_tokens[4] += (15 + 1,)  # a dedup token (second member of its group), as `ddro docids --dedup` adds
    pq_ids = make_docids(tmp_path / "pq", coll, pq_tokens, encoding="pq", add_doc_num=12 + 2,
                         params={"subspaces": 3, "centroids": 4})
    out = build(tmp_path, coll, pq_ids, other_docids=str(tu), out="pq_target")
    enhanced = [i for i in read_jsonl(out / "stage1.jsonl") if i["source"] == "enhanced"]
    assert [i["doc_id"] for i in enhanced] == [d["_id"] for d in DOCS]
    assert enhanced[2]["input_ids"] == minilm(f"{WORDS[2]} {WORDS[3]}")["input_ids"]
    assert enhanced[2]["labels"] == [3 + 2, 7 + 3, 11 + 3]

    out = build(tmp_path, coll, tu, other_docids=str(pq_ids), out="tu_target")
    enhanced = [i for i in read_jsonl(out / "stage1.jsonl") if i["source"] == "enhanced"]
    assert enhanced[1]["input_ids"] == minilm("pq 1 2 3")["input_ids"]
    assert enhanced[1]["labels"] == tu_tokens[1]
    assert enhanced[4]["input_ids"] == minilm("pq 0 1 3 1")["input_ids"]
    assert read_manifest(out, "instances")["counts"]["stage1"]["enhanced"] == n


def test_collection_without_train_split(tmp_path):
    coll = make_collection(tmp_path / "c", qrels={"test": QRELS["test"]})
    out = build(tmp_path, coll, atomic(tmp_path / "docids", coll))
    assert (out / "stage3.jsonl").read_text() == "" and (out / "stage2.jsonl").read_text() == ""
    manifest = read_manifest(out, "instances")
    assert manifest["counts"]["stage3"] == {"query": 0} and manifest["counts"]["eval"] == {"test": 2}
    assert any("no 'train' split" in note for note in manifest["notes"])
    assert any("no --pseudo-queries" in note for note in manifest["notes"])


def test_token_cache_does_not_change_stage1(tmp_path):
    coll = make_collection(tmp_path / "c")
    docids = atomic(tmp_path / "docids", coll)
    outs = [build(tmp_path, coll, docids, out=f"cache{n}", cache_tokens=n, batch_size=2) for n in (0, 60, 10**6)]
    first = (outs[0] / "stage1.jsonl").read_bytes()
    assert first and all((o / "stage1.jsonl").read_bytes() == first for o in outs[1:])


# ---------------------------------------------------------------- refusals
def test_refuses_docids_of_another_collection(tmp_path):
    coll = make_collection(tmp_path / "c")
    other = make_collection(tmp_path / "other", docs=[{**d, "text": d["text"] + " more"} for d in DOCS])
    with pytest.raises(DDROError, match="another collection"):
        build(tmp_path, coll, atomic(tmp_path / "docids", other))
    fewer = make_docids(tmp_path / "fewer", coll, [(3 + i,) for i in range(len(DOCS))], collection=None)
    (fewer / "docids.tsv").write_text("".join(f"{d['_id']}\t{3 + i}\n" for i, d in enumerate(DOCS[:-1])))
    with pytest.raises(DDROError, match="rebuild the docids"):
        build(tmp_path, coll, fewer)
    assert not (tmp_path / "inst").exists()


def test_refuses_other_docids_with_the_same_encoding(tmp_path):
    coll = make_collection(tmp_path / "c")
    docids = atomic(tmp_path / "a", coll)
    with pytest.raises(DDROError, match="same encoding"):
        build(tmp_path, coll, docids, other_docids=str(atomic(tmp_path / "b", coll)))


def test_refuses_pseudo_queries_of_another_collection_or_unknown_docs(tmp_path):
    coll = make_collection(tmp_path / "c")
    other = make_collection(tmp_path / "other", docs=DOCS[:3])
    docids = atomic(tmp_path / "docids", coll)
    pq.run(pq.PseudoQueriesArguments(collection=str(other), out=str(tmp_path / "pq_other"), per_doc=2))
    with pytest.raises(DDROError, match="pseudo-queries were made for another collection"):
        build(tmp_path, coll, docids, pseudo_queries=str(tmp_path / "pq_other"))

    pq.run(pq.PseudoQueriesArguments(collection=str(coll), out=str(tmp_path / "pq"), per_doc=2))
    with open(tmp_path / "pq" / pq.FILE, "a", encoding="utf-8") as f:
        f.write('{"doc_id": "nope", "query": "x"}\n')
    with pytest.raises(InputError, match=r"pseudo_queries.jsonl:13: unknown document 'nope'"):
        build(tmp_path, coll, docids, pseudo_queries=str(tmp_path / "pq"))
    assert not (tmp_path / "inst").exists()


# ---------------------------------------------------------------- SciFact
def test_scifact_integration(tmp_path, shared_data):
    from ddro.data.beir import BeirArguments
    from ddro.data.beir import run as import_beir

    start = time.perf_counter()
    coll = tmp_path / "scifact"
    import_beir(BeirArguments(out=str(coll), path=str(shared_data / "scifact")))
    n_docs = len(Collection(coll))
    docids = atomic(tmp_path / "docids", coll)
    pq.run(pq.PseudoQueriesArguments(collection=str(coll), out=str(tmp_path / "pq"), per_doc=5, batch_size=512))
    out = build(tmp_path, coll, docids, pseudo_queries=str(tmp_path / "pq"))
    elapsed = time.perf_counter() - start

    def rows(split):
        lines = (shared_data / "scifact" / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]
        return [line.split("\t") for line in lines if line.strip()]

    counts = read_manifest(out, "instances")["counts"]
    assert n_docs == 5183
    assert counts["stage3"]["query"] == sum(int(s) > 0 for _, _, s in rows("train"))
    assert counts["eval"] == {"test": len({q for q, _, s in rows("test") if int(s) > 0})}
    assert counts["stage2"]["pseudo"] == 5 * n_docs
    assert counts["stage1"]["tfidf"] <= n_docs and n_docs <= counts["stage1"]["passage"] <= 10 * n_docs
    assert sum(1 for _ in open(out / "stage1.jsonl")) == sum(counts["stage1"].values())
    print(f"scifact: {counts} in {elapsed:.1f}s")

