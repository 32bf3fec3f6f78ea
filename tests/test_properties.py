"""Property-based tests (hypothesis): parsers never crash on arbitrary input and round-trip valid
data; the docid trie allows exactly the valid docids, and constrained beam search returns only them."""
from __future__ import annotations

import gzip
import json
import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ddro.data.collection import read_qrels, read_queries, write_collection
from ddro.data.msmarco import read_queries_tsv, read_trec_qrels
from ddro.docids.table import TABLE, DocidTable
from ddro.errors import DDROError, InputError
from ddro.eval.constrained import constrained_generate
from ddro.eval.evaluate import read_eval_file
from ddro.eval.runs import canonical_run, read_run, write_run
from ddro.eval.trie import DocidTrie
from ddro.io import dumps_line, iter_jsonl, iter_lines
from ddro.manifest import write_manifest
from ddro.negatives import read_pairs

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# text that often looks like our formats: tabs, spaces, digits, ids, JSON punctuation, odd characters
FORMAT_CHARS = list("qd0123456789 \t\n\r,-.eQ{}[]\":_x") + ["\x00", "é", "\u2028", "nan", "inf", "Q0",
                                                            '"query_id"', '"input_ids"', '"relevant"']
format_text = st.lists(st.sampled_from(FORMAT_CHARS), max_size=80).map("".join) | st.text(max_size=60)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("props")


def write_bytes(folder, name: str, data: bytes):
    path = folder / name
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------- never another exception

@SETTINGS
@given(data=st.binary(max_size=200), gz=st.booleans(), cut=st.integers(0, 400))
def test_line_readers_give_records_or_input_error(scratch, data, gz, cut):
    if gz:
        data = gzip.compress(data, mtime=0)[:cut]       # possibly truncated mid-stream
    for name, reader in (("f.jsonl", iter_jsonl), ("f.txt", iter_lines)):
        path = write_bytes(scratch, name + (".gz" if gz else ""), data)
        try:
            for lineno, record in reader(path):
                assert lineno >= 1 and isinstance(record, (dict, str))
        except InputError as e:
            assert e.path == str(path) and "\n" not in str(e)


@SETTINGS
@given(data=st.binary(max_size=200).filter(lambda b: b"\r" not in b))
def test_invalid_utf8_is_reported_at_its_own_line(scratch, data):
    path = write_bytes(scratch, "lines.txt", data)
    bad = [i for i, raw in enumerate(data.split(b"\n"), start=1) if not _decodes(raw)]
    try:
        lines = [line for _, line in iter_lines(path)]
    except InputError as e:
        assert bad and e.line == bad[0]
    else:
        assert not bad and lines == data.decode("utf-8").split("\n")[:len(lines)]


def _decodes(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


TEXT_READERS = {
    "qrels.tsv": lambda p: read_qrels(p, {"d0", "d1"}, {"q0", "q1"}),
    "qrels-any.tsv": lambda p: read_qrels(p),
    "queries.jsonl": read_queries,
    "queries.tsv": read_queries_tsv,
    "trec-qrels.txt": read_trec_qrels,
    "run.trec": read_run,
    "eval.jsonl": read_eval_file,
    "pairs.tsv": lambda p: read_pairs(p, {"q0", "q1"}),
}


@SETTINGS
@given(reader=st.sampled_from(sorted(TEXT_READERS)), header=st.booleans(), text=format_text)
def test_text_parsers_give_records_or_input_error(scratch, reader, header, text):
    prefix = "query-id\tcorpus-id\tscore\n" if header else ""
    path = write_bytes(scratch, reader, (prefix + text).encode("utf-8"))
    try:
        TEXT_READERS[reader](path)
    except InputError as e:
        assert e.path == str(path) and "\n" not in str(e)


manifest_value = st.none() | st.booleans() | st.integers(-2, 40) | st.text(max_size=3) | st.just(8)


@SETTINGS
@given(text=format_text, vocab_offset=manifest_value, add_doc_num=manifest_value, max_len=manifest_value,
       encoding=st.sampled_from(["pq", "tu", "atomic", "bogus", None]))
def test_docid_tables_load_or_give_ddro_error(scratch, text, vocab_offset, add_doc_num, max_len, encoding):
    folder = scratch / "docids"
    folder.mkdir(exist_ok=True)
    (folder / TABLE).write_bytes(text.encode("utf-8"))
    (folder / "manifest.json").write_text(json.dumps({
        "kind": "docids", "encoding": encoding, "vocab_offset": vocab_offset, "add_doc_num": add_doc_num,
        "max_docid_len": max_len}), encoding="utf-8")
    try:
        table = DocidTable.load(folder)
    except DDROError as e:
        assert "\n" not in str(e)
        return
    assert len(set(table.doc_ids)) == len(table) and all(t and min(t) >= 0 for t in table.tokens)
    assert all(len(t) <= max_len for t in table.tokens)


# ----------------------------------------------------------------------------- round trips

word = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), min_size=1,
               max_size=8)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@SETTINGS
@given(run=st.dictionaries(word, st.dictionaries(word, finite, min_size=1, max_size=5), max_size=5))
def test_run_files_round_trip_exactly(scratch, run):
    path = scratch / "rt.trec"
    write_run(path, {q: hits.items() for q, hits in run.items()}, "tag", overwrite=True)
    assert read_run(path) == canonical_run({q: hits.items() for q, hits in run.items()})


@SETTINGS
@given(docids=st.dictionaries(word.filter(lambda w: "\t" not in w), st.lists(st.integers(0, 2**31 - 1),
                                                                           min_size=1, max_size=6),
                              min_size=1, max_size=8))
def test_docid_tables_round_trip(scratch, docids):
    folder = scratch / "rt-docids"
    folder.mkdir(exist_ok=True)
    table = DocidTable(list(docids), [tuple(t) for t in docids.values()])
    table.save(folder)
    write_manifest(folder, "docids", encoding="tu", vocab_offset=0, add_doc_num=0,
                   max_docid_len=max(map(len, table.tokens)), command=["test"])
    loaded = DocidTable.load(folder)
    assert loaded.doc_ids == table.doc_ids and loaded.tokens == table.tokens


json_value = st.recursive(st.none() | st.booleans() | st.integers() | finite | st.text(max_size=10),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3),
                          max_leaves=8)


@SETTINGS
@given(objs=st.lists(st.dictionaries(st.text(max_size=6), json_value, max_size=4), max_size=5))
def test_jsonl_round_trips(scratch, objs):
    path = scratch / "rt.jsonl"
    path.write_text("".join(map(dumps_line, objs)), encoding="utf-8", newline="")
    assert [o for _, o in iter_jsonl(path)] == objs


@SETTINGS
@given(qrels=st.dictionaries(st.sampled_from(["q0", "q1", "q-2", "Q3"]),
                             st.dictionaries(st.sampled_from(["d0", "d1", "doc:2"]), st.integers(-3, 5),
                                             min_size=1, max_size=3), max_size=4))
def test_collections_round_trip_through_their_readers(scratch, qrels):
    import shutil

    folder = scratch / "rt-coll"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    docs = [{"_id": d, "title": "", "text": f"text of {d}"} for d in ("d0", "d1", "doc:2")]
    queries = {q: f"query {q}" for q in ("q0", "q1", "q-2", "Q3")}
    write_collection(folder, iter(docs), queries, {"test": qrels}, source="test")
    assert read_qrels(folder / "qrels" / "test.tsv", {d["_id"] for d in docs}, set(queries)) == (qrels, 0)
    assert read_queries(folder / "queries.jsonl") == queries


# ----------------------------------------------------------------------------- the docid trie

END = 1
docid = st.lists(st.integers(2, 7), min_size=1, max_size=5).map(tuple)
docid_sets = st.lists(st.tuples(docid, st.booleans()), min_size=1, max_size=25).map(
    lambda ds: [(*d, END) if with_end else d for d, with_end in ds])   # some end with EOS (TU), repeats allowed


def valid_set(docids) -> set[tuple[int, ...]]:
    return {d[:-1] if d[-1] == END else d for d in docids}


def allowed_paths(trie: DocidTrie) -> set[tuple[int, ...]]:
    """Every docid the constraint lets a decoder finish, by walking the allowed-token sets."""
    finished, stack = set(), [()]
    while stack:
        prefix = stack.pop()
        allowed = trie.allowed(prefix)
        assert allowed, f"dead end after {prefix}"                 # a beam can never get stuck
        assert len(prefix) < trie.max_depth
        for token in allowed:
            if token == END:
                finished.add(prefix)
                assert trie.allowed((*prefix, END)) == [END]     # a finished docid stays finished
            else:
                stack.append((*prefix, token))
    return finished


@settings(max_examples=100, deadline=None)
@given(docids=docid_sets)
def test_trie_allows_exactly_the_valid_docids(docids):
    trie = DocidTrie(docids, end_token=END)
    valid = valid_set(docids)
    assert allowed_paths(trie) == valid
    assert len(trie) == len(valid)
    assert all(trie.contains(d) for d in docids)
    for d in valid:                                               # prefixes and extensions
        assert not trie.contains((*d, 7, 7, 7, 7, 7, 7))
        assert all(trie.contains(d[:i]) == (d[:i] in valid) for i in range(1, len(d)))


VOCAB = 12


@pytest.fixture(scope="module")
def tiny_t5():
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(vocab_size=VOCAB, d_model=16, d_kv=8, num_heads=2, d_ff=32, num_layers=1,
                      num_decoder_layers=1, decoder_start_token_id=0, pad_token_id=0, eos_token_id=END)
    return T5ForConditionalGeneration(config).eval()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docids=docid_sets, beams=st.integers(1, 6), seed=st.integers(0, 1000))
def test_constrained_beams_are_valid_distinct_docids(tiny_t5, docids, beams, seed):
    trie = DocidTrie(docids, end_token=END)
    valid = valid_set(docids)
    assume(len(valid) >= 1)
    queries = torch.randint(2, VOCAB, (2, 5), generator=torch.Generator().manual_seed(seed))
    results = constrained_generate(tiny_t5, queries, torch.ones_like(queries), trie, num_beams=beams)
    assert len(results) == 2
    for result in results:
        assert 1 <= len(result) <= beams
        got = [b.docid[:-1] if b.docid[-1] == END else b.docid for b in result]
        assert set(got) <= valid and len(set(got)) == len(got)
        assert all(b.docid in docids for b in result)             # returned as given in the table
        scores = [b.score for b in result]
        assert all(math.isfinite(s) for s in scores) and scores == sorted(scores, reverse=True)
