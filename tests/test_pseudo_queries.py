"""`ddro pseudo-queries`: sentence/span sampling, doc2query on a tiny random T5, resuming, output folder."""
from __future__ import annotations

import json

import pytest

from ddro import pseudo_queries as pq
from ddro.data.collection import write_collection
from ddro.errors import DDROError
from ddro.io import Journal
from ddro.manifest import manifest_hash, read_manifest
from raw_fixtures import WORDS, t5_tokenizer


def words(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(n))


def make_docs(n: int = 5) -> list[dict]:
    return [{"_id": f"d{i}", "title": f"title {i}",
             "text": " ".join(f"{words(i + k, 12)}." for k in range(4)),
             "sents": [f"{words(i + k, 12)}." for k in range(4)]} for i in range(n)]


def make_collection(folder, docs):
    folder.mkdir()
    write_collection(folder, docs, {"q1": "a query"}, {"test": {"q1": {docs[0]["_id"]: 1}}}, source="test")
    return folder


def read_queries(folder) -> list[tuple[str, str]]:
    with open(folder / pq.FILE, encoding="utf-8") as f:
        return [(o["doc_id"], o["query"]) for o in map(json.loads, f)]


# ---------------------------------------------------------------- spans
def test_spans_are_sentences_then_contiguous_word_spans():
    doc = {"_id": "x", "title": "a short title", "text": " ".join(f"s{k} w{k} v{k} u{k}." for k in range(8)),
           "sents": [f"s{k} w{k} v{k} u{k}." for k in range(8)]}
    all_words = f"{doc['title']} {doc['text']}".split()
    queries = pq.span_queries(doc, 6, seed=1, sentence_fraction=0.5, min_words=8, max_words=16)
    assert len(queries) == 6
    sentences, spans = queries[:3], queries[3:]
    assert len(set(sentences)) == 3 and all(s in doc["sents"] for s in sentences)
    assert sentences == sorted(sentences, key=doc["sents"].index)  # in document order
    for span in spans:
        tokens = span.split()
        assert 8 <= len(tokens) <= 16
        starts = [i for i in range(len(all_words)) if all_words[i:i + len(tokens)] == tokens]
        assert starts, f"{span!r} is not a contiguous piece of the document"


def test_spans_seeded_per_document():
    doc = make_docs(1)[0]
    a = pq.span_queries(doc, 10, seed=3)
    assert a == pq.span_queries(dict(doc), 10, seed=3)
    assert a != pq.span_queries(doc, 10, seed=4)
    assert a != pq.span_queries({**doc, "_id": "other"}, 10, seed=3)


def test_spans_without_sents_split_text_and_short_documents():
    doc = {"_id": "x", "title": "", "text": "Cells divide quickly. Proteins fold slowly."}
    queries = pq.span_queries(doc, 4, seed=0, sentence_fraction=0.5)
    assert queries[:2] == ["Cells divide quickly.", "Proteins fold slowly."]
    assert queries[2:] == ["Cells divide quickly. Proteins fold slowly."] * 2  # 6 words < 8: the whole text


def test_spans_run_is_independent_of_collection_order(tmp_path):
    docs = make_docs(6)
    a = make_collection(tmp_path / "a", docs)
    b = make_collection(tmp_path / "b", docs[::-1])
    for name, coll in (("out_a", a), ("out_b", b)):
        pq.run(pq.PseudoQueriesArguments(collection=str(coll), out=str(tmp_path / name), per_doc=5, batch_size=4))
    qa, qb = read_queries(tmp_path / "out_a"), read_queries(tmp_path / "out_b")
    assert [d for d, _ in qa] == [d["_id"] for d in docs for _ in range(5)]  # collection order
    assert sorted(qa) == sorted(qb)
    manifest = read_manifest(tmp_path / "out_a", "pseudo_queries")
    assert manifest["counts"]["queries"] == 30 and manifest["counts"]["docs"] == 6
    assert manifest["inputs"]["collection"] == manifest_hash(a)
    assert manifest["method"] == "spans"
    assert not pq.partial_dir(tmp_path / "out_a").exists()
    with pytest.raises(DDROError, match="already exists"):
        pq.run(pq.PseudoQueriesArguments(collection=str(a), out=str(tmp_path / "out_a")))


# ---------------------------------------------------------------- doc2query on a tiny random T5
@pytest.fixture(scope="module")
def tiny_doc2query(tmp_path_factory):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    folder = tmp_path_factory.mktemp("doc2query")
    tok = t5_tokenizer(folder)
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tok), d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    return folder


def d2q_args(collection, out, model, **kw):
    return pq.PseudoQueriesArguments(collection=str(collection), out=str(out), method="doc2query", model=str(model),
                                     per_doc=3, batch_size=2, max_query_length=6, device="cpu", **kw)


def test_doc2query_runs_and_is_deterministic(tmp_path, tiny_doc2query):
    coll = make_collection(tmp_path / "c", make_docs(5))
    pq.run(d2q_args(coll, tmp_path / "a", tiny_doc2query))
    pq.run(d2q_args(coll, tmp_path / "b", tiny_doc2query))
    assert (tmp_path / "a" / pq.FILE).read_bytes() == (tmp_path / "b" / pq.FILE).read_bytes()
    queries = read_queries(tmp_path / "a")
    manifest = read_manifest(tmp_path / "a", "pseudo_queries")
    assert len(queries) + manifest["counts"]["empty_dropped"] == 15
    assert [d for d, _ in queries] == sorted(d for d, _ in queries)  # collection order d0..d4
    assert all(q.strip() and len(q.split()) <= 6 for _, q in queries)
    pq.run(d2q_args(coll, tmp_path / "c2", tiny_doc2query, seed=7))
    assert (tmp_path / "c2" / pq.FILE).read_bytes() != (tmp_path / "a" / pq.FILE).read_bytes()


def test_doc2query_resumes_after_a_crash(tmp_path, tiny_doc2query, monkeypatch):
    coll = make_collection(tmp_path / "c", make_docs(5))
    pq.run(d2q_args(coll, tmp_path / "reference", tiny_doc2query))

    calls, crash = [], [True]
    generate = pq.Doc2Query.__call__

    def crash_on_second_batch(self, docs, index):
        calls.append(index)
        if crash[0] and len(calls) == 2:
            raise RuntimeError("simulated crash")
        return generate(self, docs, index)

    monkeypatch.setattr(pq.Doc2Query, "__call__", crash_on_second_batch)
    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="simulated"):
        pq.run(d2q_args(coll, out, tiny_doc2query))
    partial = pq.partial_dir(out)
    assert not out.exists()
    assert json.loads((partial / Journal.STATE).read_text())["done"] == 2
    with open(partial / pq.FILE, "a", encoding="utf-8") as f:  # a torn write after the last saved state
        f.write('{"doc_id": "d2", "que')

    calls.clear()
    crash[0] = False
    pq.run(d2q_args(coll, out, tiny_doc2query))
    assert calls == [1, 2]  # batches 1 and 2 (0-based): batch 0 was not redone
    assert (out / pq.FILE).read_bytes() == (tmp_path / "reference" / pq.FILE).read_bytes()
    assert not partial.exists()


def test_doc2query_refuses_a_partial_run_with_other_settings(tmp_path, tiny_doc2query, monkeypatch):
    coll = make_collection(tmp_path / "c", make_docs(5))
    monkeypatch.setattr(pq.Doc2Query, "__call__", lambda self, docs, index: 1 / 0 if index else [["q"]] * len(docs))
    out = tmp_path / "out"
    with pytest.raises(ZeroDivisionError):
        pq.run(d2q_args(coll, out, tiny_doc2query))
    with pytest.raises(DDROError, match="other settings"):
        pq.run(d2q_args(coll, out, tiny_doc2query, seed=9))
    monkeypatch.undo()
    pq.run(d2q_args(coll, out, tiny_doc2query, seed=9, overwrite=True))  # discards the old partial run
    assert len({d for d, _ in read_queries(out)}) == 5
    assert all(q != "q" for _, q in read_queries(out))


def test_doc2query_missing_model_is_a_clear_error(tmp_path):
    coll = make_collection(tmp_path / "c", make_docs(2))
    with pytest.raises(DDROError, match="cannot load doc2query model"):
        pq.run(d2q_args(coll, tmp_path / "out", tmp_path / "no-such-model"))
