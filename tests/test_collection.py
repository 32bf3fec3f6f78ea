"""The canonical collection format: readers validate, the BEIR importer is exact and atomic."""
import gzip
import json
from pathlib import Path

import pytest

from ddro.data.beir import BeirArguments, run
from ddro.data.collection import Collection, iter_corpus, read_qrels, read_queries
from ddro.errors import DDROError, InputError
from ddro.io import sha256_file


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def make_beir(root: Path, corpus=None, queries=None, qrels=None) -> Path:
    corpus = corpus if corpus is not None else [
        {"_id": "d1", "title": "Cats", "text": "Cats  purr.\nThey sleep."},
        {"_id": "d2", "title": "", "text": "Dogs bark."},
        {"_id": 3, "title": "Birds", "text": "Birds sing."},
    ]
    queries = queries if queries is not None else [{"_id": "q1", "text": "why do cats purr"},
                                                   {"_id": "q2", "text": "barking"}]
    qrels = qrels if qrels is not None else "query-id\tcorpus-id\tscore\nq1\td1\t2\nq2\td2\t1\n"
    write(root / "corpus.jsonl", "".join(json.dumps(d) + "\n" for d in corpus))
    write(root / "queries.jsonl", "".join(json.dumps(q) + "\n" for q in queries))
    write(root / "qrels" / "test.tsv", qrels)
    return root


def test_import_normalises_and_counts(tmp_path):
    src = make_beir(tmp_path / "src")
    manifest = run(BeirArguments(path=str(src), out=str(tmp_path / "out")))
    assert manifest["counts"]["corpus"] == 3
    assert manifest["counts"]["queries"] == 2
    assert manifest["counts"]["qrels"] == {"test": 2}
    col = Collection(tmp_path / "out")
    docs = col.load_docs()
    assert docs["d1"]["text"] == "Cats purr. They sleep."  # white space collapsed
    assert docs["3"]["_id"] == "3"  # integer ids become strings
    assert docs["d1"]["sents"] == ["Cats purr.", "They sleep."]
    assert col.qrels("test") == {"q1": {"d1": 2}, "q2": {"d2": 1}}  # graded scores kept
    assert col.splits == ["test"]
    for rel, digest in manifest["files"].items():
        assert sha256_file(tmp_path / "out" / rel) == digest


def test_import_refuses_existing_output_and_keeps_it(tmp_path):
    src = make_beir(tmp_path / "src")
    out = tmp_path / "out"
    run(BeirArguments(path=str(src), out=str(out)))
    before = sha256_file(out / "corpus.jsonl")
    with pytest.raises(DDROError, match="already exists"):
        run(BeirArguments(path=str(src), out=str(out)))
    assert sha256_file(out / "corpus.jsonl") == before


def test_failed_import_leaves_no_output(tmp_path):
    src = make_beir(tmp_path / "src", qrels="query-id\tcorpus-id\tscore\nq1\tnope\t1\n")
    with pytest.raises(InputError, match=r"test.tsv:2: unknown document 'nope'"):
        run(BeirArguments(path=str(src), out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no temporary folder left behind


def test_skip_unknown_qrels_is_counted(tmp_path):
    src = make_beir(tmp_path / "src", qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tnope\t1\n")
    manifest = run(BeirArguments(path=str(src), out=str(tmp_path / "out"), skip_unknown_qrels=True))
    assert manifest["warnings"] == {"qrels_skipped.test": 1}
    assert manifest["counts"]["qrels"] == {"test": 1}


def test_empty_documents_are_skipped_and_counted_or_refused(tmp_path):
    src = make_beir(tmp_path / "src", corpus=[{"_id": "d1", "title": "Cats", "text": "purr"},
                                              {"_id": "d2", "title": "", "text": "Dogs bark."},
                                              {"_id": "e", "title": " ", "text": ""}],
                    qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\te\t1\n")
    manifest = run(BeirArguments(path=str(src), out=str(tmp_path / "out")))
    assert manifest["counts"]["corpus"] == 2
    assert manifest["warnings"] == {"empty_documents_skipped": 1, "qrels_skipped.test": 1}
    with pytest.raises(InputError, match=r"corpus.jsonl:3: document 'e' is empty"):
        run(BeirArguments(path=str(src), out=str(tmp_path / "strict"), skip_empty=False))


@pytest.mark.parametrize("line, message", [
    ('{"_id": "a", "title": "t"', "invalid JSON"),
    ('["a", "b"]', "expected a JSON object"),
    ('{"title": "t", "text": "x"}', "missing or empty '_id'"),
    ('{"_id": "a", "title": "t"}', "missing field 'text'"),
    ('{"_id": "a", "title": "", "text": "  "}', "is empty"),
    ('{"_id": "a", "title": 5, "text": "x"}', "field 'title' must be a string"),
    ('{"_id": "a b", "text": "x"}', "contains white space"),
])
def test_corpus_errors_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path / "corpus.jsonl", '{"_id": "ok", "text": "fine"}\n' + line + "\n")
    with pytest.raises(InputError, match=message) as err:
        list(iter_corpus(path))
    assert err.value.line == 2 and err.value.path == str(path)


def test_duplicate_ids_are_refused(tmp_path):
    path = write(tmp_path / "corpus.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n')
    with pytest.raises(InputError, match="duplicate document id 'a'"):
        list(iter_corpus(path))
    qpath = write(tmp_path / "queries.jsonl", '{"_id": "q", "text": "x"}\n{"_id": "q", "text": "y"}\n')
    with pytest.raises(InputError, match=r"queries.jsonl:2: duplicate query id"):
        read_queries(qpath)


def test_invalid_utf8_and_truncated_gzip(tmp_path):
    bad = tmp_path / "corpus.jsonl"
    bad.write_bytes(b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "\xff\xfe"}\n')
    with pytest.raises(InputError, match="invalid UTF-8"):
        list(iter_corpus(bad))
    gz = tmp_path / "corpus.jsonl.gz"
    data = gzip.compress("".join(f'{{"_id": "d{i}", "text": "ok"}}\n' for i in range(1000)).encode())
    gz.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="unreadable"):
        list(iter_corpus(gz))


@pytest.mark.parametrize("text, message", [
    ("qid\tdocid\tscore\nq1\td1\t1\n", "expected the header"),
    ("query-id\tcorpus-id\tscore\nq1\td1\n", "expected 3 tab-separated columns, got 2"),
    ("query-id\tcorpus-id\tscore\nq1\td1\thigh\n", "is not an integer"),
    ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t2\n", "duplicate judgement"),
    ("query-id\tcorpus-id\tscore\nq9\td1\t1\n", "unknown query 'q9'"),
])
def test_qrels_errors(tmp_path, text, message):
    path = write(tmp_path / "qrels" / "test.tsv", text)
    with pytest.raises(InputError, match=message):
        read_qrels(path, doc_ids={"d1"}, query_ids={"q1"})


def test_collection_refuses_unknown_split(tmp_path):
    run(BeirArguments(path=str(make_beir(tmp_path / "src")), out=str(tmp_path / "out")))
    with pytest.raises(DDROError, match=r"no qrels for split 'train' \(splits: test\)"):
        Collection(tmp_path / "out").qrels("train")


def test_scifact_import_counts_and_is_reproducible(shared_data, tmp_path):
    outs = []
    for name in ("a", "b"):
        manifest = run(BeirArguments(path=str(shared_data / "scifact"), out=str(tmp_path / name)))
        outs.append(manifest)
    counts = outs[0]["counts"]
    assert counts["corpus"] == 5183 and counts["queries"] == 1109
    assert counts["qrels"] == {"train": 919, "test": 339}
    assert outs[0]["files"] == outs[1]["files"]  # byte-identical on a second run


@pytest.mark.parametrize("name", ["cranfield", "cisi", "med", "time", "adi"])
def test_every_shared_collection_imports(shared_data, tmp_path, name):
    manifest = run(BeirArguments(path=str(shared_data / name), out=str(tmp_path / name), sentences=False))
    n_lines = sum(1 for _ in open(shared_data / name / "corpus.jsonl"))
    assert manifest["counts"]["corpus"] + manifest["warnings"].get("empty_documents_skipped", 0) == n_lines
    assert Collection(tmp_path / name).qrels("test")


def make_train_beir(root: Path, n_train: int = 20, dev: bool = False) -> Path:
    """A source with test queries q0, q1, `n_train` train queries t0.. (two judgements each), and
    optionally its own dev split."""
    corpus = [{"_id": f"d{i}", "title": "", "text": f"doc {i}"} for i in range(5)]
    qids = ["q0", "q1", *(f"t{i}" for i in range(n_train))]
    make_beir(root, corpus=corpus, queries=[{"_id": q, "text": f"query {q}"} for q in qids],
              qrels="query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t1\n")
    write(root / "qrels" / "train.tsv", "query-id\tcorpus-id\tscore\n" +
          "".join(f"t{i}\td{i % 5}\t1\nt{i}\td{(i + 1) % 5}\t2\n" for i in range(n_train)))
    if dev:
        write(root / "qrels" / "dev.tsv", "query-id\tcorpus-id\tscore\nq1\td2\t1\n")
    return root


@pytest.mark.parametrize("spec, expected", [(0.25, 5), (3, 3)])
def test_dev_split_is_carved_from_train_seeded_and_recorded(tmp_path, spec, expected):
    src = make_train_beir(tmp_path / "src")
    original = Collection(src).qrels("train")
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        manifest = run(BeirArguments(path=str(src), out=str(tmp_path / name), dev_from_train=spec, seed=seed,
                                     sentences=False))
        col = Collection(tmp_path / name)
        dev, train = col.qrels("dev"), col.qrels("train")
        assert len(dev) == expected and not set(dev) & set(train)  # training never sees a dev query
        assert {**dev, **train} == original  # every judgement kept, in one split or the other
        assert col.qrels("test") == {"q0": {"d0": 1}, "q1": {"d1": 1}}
        record = manifest["dev_split"]
        assert (record["queries"], record["seed"], record["train_queries_before"]) == (expected, seed, 20)
        assert record["fraction"] == pytest.approx(expected / 20)
        runs[name] = sorted(dev)
    assert runs["a"] == runs["b"]  # the same seed draws the same queries
    assert runs["a"] != runs["c"]


@pytest.mark.parametrize("dev, n_train, why", [(True, 20, "own dev split"), (False, 0, "no train split")])
def test_dev_split_is_left_alone_when_the_source_has_one_or_no_train(tmp_path, dev, n_train, why):
    src = make_train_beir(tmp_path / "src", n_train=n_train, dev=dev)
    if not n_train:
        (src / "qrels" / "train.tsv").unlink()
    manifest = run(BeirArguments(path=str(src), out=str(tmp_path / "out"), dev_from_train=0.1, sentences=False))
    assert why in manifest["dev_split"]["not_carved"]
    assert Collection(tmp_path / "out").splits == sorted(p.stem for p in (src / "qrels").glob("*.tsv"))
    if dev:
        assert Collection(tmp_path / "out").qrels("dev") == {"q1": {"d2": 1}}


@pytest.mark.parametrize("spec, message", [(20, "leaving none to train on"), (0, "fraction"), (2.5, "whole count")])
def test_dev_split_refuses_impossible_sizes_and_writes_nothing(tmp_path, spec, message):
    src = make_train_beir(tmp_path / "src")
    with pytest.raises(DDROError, match=message):
        run(BeirArguments(path=str(src), out=str(tmp_path / "out"), dev_from_train=spec, sentences=False))
    assert not (tmp_path / "out").exists()
