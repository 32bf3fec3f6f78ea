"""`ddro data msmarco`: top-300k from raw MS MARCO files written in their real formats."""
import subprocess
from pathlib import Path

import pytest

from ddro.data.collection import Collection
from ddro.data.msmarco import main
from raw_fixtures import run_with_fake_curl, write_trec_qrels, write_tsv

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "data" / "download_msmarco.sh"

# Train clicks: D7 x3, D10 x2, D2 x2, D1 x1, D5 x1; D6's line is malformed, D9 is absent
# from the docs file, D4 has dev judgements only.
TRAIN_QRELS = [("q1", "D7"), ("q2", "D7"), ("q3", "D7"), ("q3", "D10"), ("q4", "D10"), ("q4", "D2"),
               ("q5", "D2"), ("q6", "D1"), ("q7", "D9"), ("q8", "D6"), ("q9", "D5")]
DEV_QRELS = [("q101", "D7"), ("q102", "D4"), ("q103", "D2"), ("q103", "D4")]


def make_raw(raw: Path, gz: bool = True) -> Path:
    ext = ".gz" if gz else ""
    write_tsv(raw / f"msmarco-docs.tsv{ext}", [
        ("D1", "http://one.example/", "One", "The first document. It has two sentences."),
        ("D4", "http://four.example/", "Four", "Judged on dev only."),
        "D6\thttp://six.example/\tSix without a body",  # 3 fields: skipped like the reference
        ("D7", "http://seven.example/", "Seven", "Most clicked document."),
        ("D99", "http://never.example/", "Never", "No judgement at all."),
        ("D2", "http://two.example/", "Two", "Second  document\u00a0body."),
        ("D10", "http://ten.example/", "Ten", "Tenth document."),
        ("D5", "http://five.example/", "Five", "First copy wins."),
        ("D5", "http://five.example/", "Five", "Second copy loses."),
    ])
    write_tsv(raw / f"msmarco-doctrain-queries.tsv{ext}",
              [(f"q{i}", f"train question {i}") for i in range(1, 11)])
    write_tsv(raw / "msmarco-docdev-queries.tsv", [(q, f"dev question {q}") for q in ("q101", "q102", "q103")])
    write_trec_qrels(raw / f"msmarco-doctrain-qrels.tsv{ext}", TRAIN_QRELS)
    write_trec_qrels(raw / "msmarco-docdev-qrels.tsv", DEV_QRELS)
    return raw


@pytest.mark.parametrize("gz", [True, False])
def test_top300k_order_restriction_and_warnings(tmp_path, gz):
    raw = make_raw(tmp_path / "raw", gz)
    main(["--raw-dir", str(raw), "--out", str(tmp_path / "out"), "--sentences", "false"])
    coll = Collection(tmp_path / "out")
    # most clicked first; equal counts ordered by id string ("D10" < "D2", "D1" < "D5")
    assert coll.doc_ids() == ["D7", "D10", "D2", "D1", "D5"]
    docs = coll.load_docs()
    assert docs["D5"]["text"] == "First copy wins."
    assert docs["D2"] == {"_id": "D2", "title": "Two", "text": "Second document body.", "url": "http://two.example/"}
    assert coll.splits == ["dev", "train"]
    train, dev = coll.qrels("train"), coll.qrels("dev")
    assert set(train) == {"q1", "q2", "q3", "q4", "q5", "q6", "q9"}  # q7 (D9) and q8 (D6) lose every qrel
    assert train["q3"] == {"D7": 1, "D10": 1}
    assert dev == {"q101": {"D7": 1}, "q103": {"D2": 1}}  # D4 has no train click
    assert list(coll.queries()) == ["q1", "q2", "q3", "q4", "q5", "q6", "q9", "q101", "q103"]
    assert coll.queries()["q101"] == "dev question q101"
    manifest = coll.manifest
    assert manifest["source"] == "msmarco-top300k"
    assert manifest["warnings"] == {"docs_duplicate_ids_skipped": 1, "docs_malformed_lines_skipped": 1,
                                    "qrels_doc_not_in_collection_dropped.dev": 2,
                                    "qrels_doc_not_in_collection_dropped.train": 2}
    assert manifest["counts"]["corpus"] == 5 and manifest["config"]["sentences"] is False
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # spool and temp folder gone


def test_sentences_passed_through_and_rebuild_identical(tmp_path):
    raw = make_raw(tmp_path / "raw")
    for out in ("a", "b"):
        main(["--raw-dir", str(raw), "--out", str(tmp_path / out)])
    docs = Collection(tmp_path / "a").load_docs()
    assert docs["D1"]["sents"] == ["The first document.", "It has two sentences."]
    assert (tmp_path / "a" / "corpus.jsonl").read_bytes() == (tmp_path / "b" / "corpus.jsonl").read_bytes()


def test_refuses_existing_out_unless_overwrite(tmp_path, capsys):
    raw = make_raw(tmp_path / "raw")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as e:
        main(["--raw-dir", str(raw), "--out", str(out), "--sentences", "false"])
    assert e.value.code == 2 and "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    main(["--raw-dir", str(raw), "--out", str(out), "--sentences", "false", "--overwrite"])
    assert len(Collection(out)) == 5 and not (out / "keep.txt").exists()


def test_missing_raw_file_is_named(tmp_path, capsys):
    raw = make_raw(tmp_path / "raw")
    (raw / "msmarco-docdev-qrels.tsv").unlink()
    with pytest.raises(SystemExit) as e:
        main(["--raw-dir", str(raw), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "msmarco-docdev-qrels.tsv" in err and "not found" in err
    assert not (tmp_path / "out").exists()


def test_malformed_qrels_line_is_pinned(tmp_path, capsys):
    raw = make_raw(tmp_path / "raw", gz=False)
    with open(raw / "msmarco-doctrain-qrels.tsv", "a") as f:
        f.write("q11 0 D7\n")
    with pytest.raises(SystemExit):
        main(["--raw-dir", str(raw), "--out", str(tmp_path / "out")])
    assert f"msmarco-doctrain-qrels.tsv:{len(TRAIN_QRELS) + 1}:" in capsys.readouterr().err


def test_malformed_queries_line_is_pinned(tmp_path, capsys):
    raw = make_raw(tmp_path / "raw")
    write_tsv(raw / "msmarco-docdev-queries.tsv", [("q101", "fine"), "q102 no tab here"])
    with pytest.raises(SystemExit):
        main(["--raw-dir", str(raw), "--out", str(tmp_path / "out")])
    assert "msmarco-docdev-queries.tsv:2:" in capsys.readouterr().err


def test_download_script_syntax():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_download_script_fetches_official_urls(tmp_path):
    """Run the script against a stand-in `curl` that records its URL and writes the file."""
    dest = tmp_path / "dl"
    proc, urls = run_with_fake_curl(SCRIPT, dest, tmp_path, 'printf data > "$out"')
    assert proc.returncode == 0, proc.stderr
    base = "https://msmarco.z22.web.core.windows.net/msmarcoranking/"
    names = ["msmarco-docs.tsv.gz", "msmarco-doctrain-queries.tsv.gz", "msmarco-doctrain-qrels.tsv.gz",
             "msmarco-docdev-queries.tsv.gz", "msmarco-docdev-qrels.tsv.gz"]
    assert urls == [base + n for n in names]
    assert sorted(p.name for p in dest.iterdir()) == sorted(names)
    assert "+ curl" in proc.stderr  # prints what it runs
    # a second run downloads nothing
    proc, urls = run_with_fake_curl(SCRIPT, dest, tmp_path, 'printf data > "$out"')
    assert proc.returncode == 0 and len(urls) == len(names)
