"""`ddro data nq`: NQ320k from raw Natural Questions files written in their real formats."""
import gzip
import json
import subprocess
from pathlib import Path

import pytest

from ddro.data.collection import Collection
from ddro.data.nq import main
from raw_fixtures import nq_full_line, nq_simplified_line, run_with_fake_curl, wiki_page_tokens, write_jsonl

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "data" / "download_nq.sh"

ALPHA = wiki_page_tokens("Alpha Centauri", "Alpha Centauri is a <b> star </b> system .",
                         ["It is the closest system ."],
                         [["History item"], ["See also item"], ["Navigation item"]])
ALPHA_AGAIN = wiki_page_tokens("alpha   CENTAURI", "A later revision .", ["Other words ."], [])
BETA = wiki_page_tokens("Beta", "Beta is a letter .", ["Greek alphabet ."], [["Beta list"]])
CAFE = wiki_page_tokens("Café Society", "A film .", ["Directed by someone ."], [])


def make_raw(raw: Path, gz: bool = True) -> Path:
    ext = ".gz" if gz else ""
    write_jsonl(raw / f"simplified-nq-train.jsonl{ext}", [
        nq_simplified_line(-101, "where is alpha centauri", ALPHA, url="https://en.wikipedia.org/alpha"),
        nq_simplified_line(102, "what is beta", BETA),
        nq_simplified_line(103, "how far is  alpha centauri", ALPHA_AGAIN),  # same page, other revision
        nq_simplified_line(104, "who directed cafe society", CAFE),
    ])
    write_jsonl(raw / f"nq-dev-all.jsonl{ext}", [
        nq_full_line(201, "cafe society cast", "Cafe Society", CAFE),  # accents: same title key
        nq_full_line(202, "what is gamma", "Gamma", wiki_page_tokens("Gamma", "Gamma rays .", [], [])),
        nq_full_line(203, "beta in greek", "Beta", BETA),
    ])
    return raw


@pytest.mark.parametrize("gz", [True, False])
def test_nq320k_dedup_ids_and_queries(tmp_path, gz):
    raw = make_raw(tmp_path / "raw", gz)
    main(["--raw-dir", str(raw), "--out", str(tmp_path / "out"), "--sentences", "false"])
    coll = Collection(tmp_path / "out")
    docs = list(coll.iter_docs())
    # ids = title index in order of first appearance, train file first
    assert [(d["_id"], d["title"]) for d in docs] == [("0", "Alpha Centauri"), ("1", "Beta"),
                                                      ("2", "Café Society"), ("3", "Gamma")]
    alpha = docs[0]
    assert alpha["url"] == "https://en.wikipedia.org/alpha"
    assert "<" not in alpha["text"] and "Alpha Centauri is a star system ." in alpha["text"]
    assert "It is the closest system" in alpha["text"] and "later revision" not in alpha["text"]
    # content ends at the second-to-last </Ul>: the last list is dropped, the infobox before <P> too
    assert "See also item" in alpha["text"] and "Navigation item" not in alpha["text"]
    assert "Infobox" not in alpha["text"] and "Jump to" not in alpha["text"]
    assert coll.qrels("train") == {"-101": {"0": 1}, "102": {"1": 1}, "103": {"0": 1}, "104": {"2": 1}}
    assert coll.qrels("dev") == {"201": {"2": 1}, "202": {"3": 1}, "203": {"1": 1}}
    assert list(coll.queries()) == ["-101", "102", "103", "104", "201", "202", "203"]
    assert coll.queries()["103"] == "how far is alpha centauri"
    manifest = coll.manifest
    assert manifest["source"] == "nq320k" and manifest["warnings"] == {}
    assert manifest["counts"]["queries"] == 7 and manifest["config"]["title_tokenizer"] == "offline:minilm"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_page_without_paragraph_is_counted(tmp_path):
    raw = make_raw(tmp_path / "raw")
    bare = "Delta - Wikipedia <H1> Delta </H1> <Table> <Tr> <Td> only a table </Td> </Tr> </Table>".split()
    write_jsonl(raw / "nq-dev-all.jsonl.gz", [nq_full_line(301, "delta", "Delta", bare)])
    main(["--raw-dir", str(raw), "--out", str(tmp_path / "out"), "--sentences", "false"])
    coll = Collection(tmp_path / "out")
    assert coll.load_docs()["3"]["text"] == "Delta - Wikipedia Delta only a table"
    assert coll.manifest["warnings"] == {"pages_without_paragraph": 1}


def test_bad_json_line_is_pinned(tmp_path, capsys):
    raw = make_raw(tmp_path / "raw")
    write_jsonl(raw / "nq-dev-all.jsonl.gz", [nq_full_line(201, "q", "Beta", BETA), '{"example_id": 5,'])
    with pytest.raises(SystemExit) as e:
        main(["--raw-dir", str(raw), "--out", str(tmp_path / "out")])
    assert e.value.code == 2 and "nq-dev-all.jsonl.gz:2: invalid JSON" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_repeated_example_id_and_missing_field_are_errors(tmp_path, capsys):
    raw = make_raw(tmp_path / "raw", gz=False)
    write_jsonl(raw / "nq-dev-all.jsonl", [nq_full_line(102, "again", "Beta", BETA)])
    with pytest.raises(SystemExit):
        main(["--raw-dir", str(raw), "--out", str(tmp_path / "out")])
    assert "nq-dev-all.jsonl:1: repeated example_id 102" in capsys.readouterr().err
    line = nq_full_line(301, "q", "Beta", BETA)
    del line["question_text"]
    write_jsonl(raw / "nq-dev-all.jsonl", [line])
    with pytest.raises(SystemExit):
        main(["--raw-dir", str(raw), "--out", str(tmp_path / "out")])
    assert "nq-dev-all.jsonl:1: missing or mistyped field 'question_text'" in capsys.readouterr().err


def test_missing_raw_file_and_existing_out(tmp_path, capsys):
    raw = make_raw(tmp_path / "raw")
    (raw / "simplified-nq-train.jsonl.gz").unlink()
    with pytest.raises(SystemExit) as e:
        main(["--raw-dir", str(raw), "--out", str(tmp_path / "out")])
    assert e.value.code == 2 and "simplified-nq-train.jsonl" in capsys.readouterr().err
    out = tmp_path / "exists"
    out.mkdir()
    with pytest.raises(SystemExit):
        main(["--raw-dir", str(make_raw(tmp_path / "raw2")), "--out", str(out)])
    assert "already exists; pass --overwrite" in capsys.readouterr().err


def test_download_script_syntax():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_download_script_concatenates_dev_shards(tmp_path):
    """Run the script against a stand-in `curl`: official URLs, dev shards joined in order."""
    dest = tmp_path / "dl"
    # each download is a one-line gzip member naming the file it was asked for
    proc, urls = run_with_fake_curl(SCRIPT, dest, tmp_path,
                                    'printf \'{"shard": "%s"}\\n\' "$(basename "$url")" | gzip -c > "$out"')
    assert proc.returncode == 0, proc.stderr
    base = "https://storage.googleapis.com/natural_questions/"
    shards = [f"nq-dev-0{i}.jsonl.gz" for i in range(5)]
    assert urls == [base + "v1.0-simplified/simplified-nq-train.jsonl.gz",
                                       *(base + "v1.0/dev/" + s for s in shards)]
    with gzip.open(dest / "nq-dev-all.jsonl.gz", "rt") as f:
        assert [json.loads(line)["shard"] for line in f] == shards
    assert (dest / "simplified-nq-train.jsonl.gz").is_file()


@pytest.mark.parametrize("title, key", [
    ("  Café   Society ", "cafe society"),          # lowercased, accents stripped, spaces collapsed
    ("Tom & Jerry, Inc.", "tom & jerry, inc."),     # old decode clean-up: no space before , .
    ("C++", "c + +"),                                # punctuation split off
    ("Don't Stop", "don't stop"),                    # " ' " joined again by the clean-up
    ("Ǝ", "[UNK]"),                                  # outside the uncased vocabulary
])
def test_title_key_is_bert_uncased_lower(title, key):
    from ddro.data.nq import TitleKey

    assert TitleKey("offline:minilm")(title) == key
