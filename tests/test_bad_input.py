"""Bad input, tried systematically: every reader fed malformed files, one table row per case.

A module-scoped *world* holds good inputs and good outputs of every stage. Each case copies
the world, breaks one file, and runs the stage that reads it (through `ddro.cli.main`, or for
readers only the trainer reaches, through the same `entry_point` wrapper). The bar:

- exit status 2 and exactly one line on stderr, naming the file and line (or key) at fault;
- the stage's existing output, targeted with --overwrite, is byte-identical afterwards and
  nothing (temporary folders, spools) is left beside it.
"""
from __future__ import annotations

import gzip
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from ddro.cli import main as cli_main
from ddro.config import entry_point
from ddro.docids.table import DocidTable
from ddro.eval.runs import read_run
from ddro.manifest import manifest_hash, write_manifest
from ddro.negatives import Negatives
from ddro.train.data import read_instances
from model_fixtures import small_args, tiny_bert_encoder
from raw_fixtures import (
    nq_full_line,
    nq_simplified_line,
    wiki_page_tokens,
    write_jsonl,
    write_text,
    write_trec_qrels,
    write_tsv,
)

# ----------------------------------------------------------------------------- the good world

DOCS = {"d0": ("Protein", "protein cell cancer gene"), "d1": ("Gene", "gene study result brain"),
        "d2": ("Blood", "blood drug risk mouse"), "d3": ("Trial", "human patient trial dose")}
QUERIES = {"q0": "protein cell", "q1": "gene study", "q2": "blood drug"}


def write_beir(folder: Path) -> None:
    write_jsonl(folder / "corpus.jsonl", [{"_id": d, "title": t, "text": x} for d, (t, x) in DOCS.items()])
    write_jsonl(folder / "queries.jsonl", [{"_id": q, "text": t} for q, t in QUERIES.items()])
    header = ("query-id", "corpus-id", "score")
    write_tsv(folder / "qrels" / "test.tsv", [header, ("q0", "d0", "1"), ("q1", "d1", "1")])
    write_tsv(folder / "qrels" / "train.tsv", [header, ("q2", "d2", "1"), ("q2", "d3", "1")])


def write_msmarco(folder: Path) -> None:
    write_tsv(folder / "msmarco-docs.tsv.gz", [("D1", "http://a", "Protein", "protein cell"),
                                               ("D2", "http://b", "Gene", "gene study"),
                                               ("D3", "http://c", "Blood", "blood drug")])
    write_tsv(folder / "msmarco-doctrain-queries.tsv", [("1", "protein cell"), ("2", "gene study")])
    write_tsv(folder / "msmarco-docdev-queries.tsv", [("3", "blood drug")])
    write_trec_qrels(folder / "msmarco-doctrain-qrels.tsv.gz", [("1", "D1"), ("2", "D2")])
    write_trec_qrels(folder / "msmarco-docdev-qrels.tsv", [("3", "D1")])


def write_nq(folder: Path) -> None:
    page = wiki_page_tokens("Protein", "A protein is a molecule", ["proteins fold"], [["a"], ["nav"]])
    other = wiki_page_tokens("Gene", "A gene is a unit", ["genes code"], [["b"], ["nav"]])
    write_jsonl(folder / "simplified-nq-train.jsonl.gz", [nq_simplified_line(1, "what is a protein", page),
                                                          nq_simplified_line(2, "what is a gene", other)])
    write_jsonl(folder / "nq-dev-all.jsonl", [nq_full_line(3, "who found proteins", "Protein", page)])


def write_docids(folder: Path, collection: Path) -> None:
    """A PQ-style docid table (M=2, K=4, own target vocabulary) bound to `collection`."""
    folder.mkdir(parents=True)
    table = DocidTable(list(DOCS), [(3 + i % 4, 7 + i // 4) for i in range(len(DOCS))])
    table.save(folder)
    write_manifest(folder, "docids", encoding="pq", params={"subspaces": 2, "bits": 2}, vocab_offset=3,
                   add_doc_num=8, max_docid_len=2, eos_token_id=None, collection=manifest_hash(collection),
                   tokenizer=None, target_vocab="own", collisions=table.collisions(),
                   dedup={"enabled": False, "extra_tokens": 0}, command=["test"])


def write_pseudo_queries(folder: Path, collection: Path) -> None:
    write_jsonl(folder / "pseudo_queries.jsonl",
                [{"doc_id": d, "query": x.split(maxsplit=1)[1]} for d, (_, x) in DOCS.items()])
    write_manifest(folder, "pseudo_queries", inputs={"collection": manifest_hash(collection)}, command=["test"])


def write_negatives(folder: Path) -> None:
    write_tsv(folder / "pairs.tsv", [("q0", "d0", "d1"), ("q0", "d0", "d2"), ("q1", "d1", "d3")])
    write_tsv(folder / "val_pairs.tsv", [("q2", "d2", "d0")])
    write_jsonl(folder / "queries.jsonl", [{"_id": q, "text": t} for q, t in QUERIES.items()])
    write_manifest(folder, "negatives", command=["test"])


def cli_ok(argv: list[str]) -> None:
    try:
        cli_main(argv)
    except SystemExit as e:  # a good input must build
        raise AssertionError(f"ddro {' '.join(argv)} failed with {e.code}") from None


def commands(w: Path) -> dict[str, tuple[str, list[str]]]:
    """Per stage: (its output folder, relative to the world; the command writing it with --overwrite)."""
    return {
        "beir": ("beir_out", ["data", "beir", "--path", str(w / "beir_src"), "--out", str(w / "beir_out"),
                              "--sentences", "false", "--overwrite"]),
        "msmarco": ("msmarco_out", ["data", "msmarco", "--raw_dir", str(w / "msmarco_raw"),
                                    "--out", str(w / "msmarco_out"), "--sentences", "false", "--overwrite"]),
        "nq": ("nq_out", ["data", "nq", "--raw_dir", str(w / "nq_raw"), "--out", str(w / "nq_out"),
                          "--sentences", "false", "--overwrite"]),
        "instances": ("instances_out", [
            "instances", "--collection", str(w / "beir_out"), "--docids", str(w / "docids"),
            "--tokenizer", "offline:minilm", "--pseudo_queries", str(w / "pq"), "--out", str(w / "instances_out"),
            "--overwrite"]),
        "eval": ("eval_out", ["eval", "--model", str(w / "ckpt"), "--docids", str(w / "docids"),
                              "--test_file", str(w / "eval.jsonl"), "--out", str(w / "eval_out"),
                              "--beams", "2", "--device", "cpu", "--overwrite"]),
        "config": ("beir_out", ["data", "beir", "--config", str(w / "cfg.yaml")]),
        "config_json": ("beir_out", ["negatives", "--config", str(w / "cfg.json")]),
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from ddro.modeling import build_model, save_model

    w = tmp_path_factory.mktemp("world")
    write_beir(w / "beir_src")
    write_msmarco(w / "msmarco_raw")
    write_nq(w / "nq_raw")
    cmds = commands(w)
    for stage in ("beir", "msmarco", "nq"):
        cli_ok(cmds[stage][1])
    write_docids(w / "docids", w / "beir_out")
    write_pseudo_queries(w / "pq", w / "beir_out")
    cli_ok(cmds["instances"][1])
    shutil.copyfile(w / "instances_out" / "eval" / "test.jsonl", w / "eval.jsonl")
    tiny_bert_encoder(w / "encoder")
    table = DocidTable.load(w / "docids")
    built = build_model(small_args("minilm-decoder", w / "encoder"), table)
    save_model(built.model, built.tokenizer, built.info, table, w / "ckpt")
    cli_ok(cmds["eval"][1])
    write_negatives(w / "negatives")
    write_text(w / "run.trec", "q0 Q0 d0 1 -0.5 ddro\nq0 Q0 d1 2 -0.75 ddro\nq1 Q0 d2 1 -1.0 ddro\n")
    write_text(w / "cfg.yaml", f"path: {w / 'beir_src'}\nout: {w / 'beir_out'}\nsentences: false\n"
                               "overwrite: true\n")
    write_text(w / "cfg.json", json.dumps({"collection": str(w / "beir_out"), "out": str(w / "neg_out")}))
    return w


# ----------------------------------------------------------------------------- how files are broken

def _read(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def line(n: int, text: str | bytes) -> Callable[[Path], None]:
    """Replace line n (1-based; one past the end appends)."""
    def apply(path: Path) -> None:
        lines = _read(path).split(b"\n")[:-1]
        new = text if isinstance(text, bytes) else text.encode("utf-8")
        lines[n - 1:n] = [new]
        _write(path, b"\n".join(lines) + b"\n")
    return apply


def drop(n: int) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        lines = _read(path).split(b"\n")[:-1]
        del lines[n - 1]
        _write(path, b"\n".join(lines) + b"\n")
    return apply


def content(text: str | bytes) -> Callable[[Path], None]:
    return lambda path: _write(path, text if isinstance(text, bytes) else text.encode("utf-8"))


def truncate(path: Path) -> None:
    """A download cut short: half of the compressed bytes."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def not_gzip(path: Path) -> None:
    path.write_bytes(b"plain text in a .gz file\n")


def json_edit(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        obj = json.loads(path.read_text(encoding="utf-8"))
        edit(obj)
        path.write_text(json.dumps(obj), encoding="utf-8")
    return apply


def obj(**kw) -> str:
    return json.dumps(kw)


BAD_UTF8 = b'{"_id": "d2", "title": "caf\xe9", "text": "x"}'


# ----------------------------------------------------------------------------- readers without a cheap CLI

def direct(reader: Callable[[Path], object]) -> Callable[[Path], None]:
    """Run a reader under the CLI's own `entry_point` wrapper (same message and exit status)."""
    return entry_point(lambda argv: reader(WORLD[0]))


WORLD: list[Path] = []  # the current case's world, for `direct` readers


def train_instances(w: Path):
    return read_instances(w / "instances_out" / "stage1.jsonl", DocidTable.load(w / "docids"))


READERS = {
    "run": lambda w: read_run(w / "run.trec"),
    "negatives": lambda w: Negatives.load(w / "negatives"),
    "train_instances": train_instances,
}


# ----------------------------------------------------------------------------- the table

@dataclass
class Case:
    id: str
    stage: str               # a key of `commands` or of READERS
    file: str                # the file broken, relative to the world
    breaks: Callable[[Path], None]
    line: int | None = None  # the line the message must name (None: the file, or `key`)
    key: str | None = None   # text the message must contain besides the file (a key, a reason)
    extra: list[str] = field(default_factory=list)
    where: str | None = None  # the path the message names, when not `file` itself ("": none, see `key`)


def beir(id, file, breaks, line=None, **kw):
    return Case(f"beir-{id}", "beir", f"beir_src/{file}", breaks, line, **kw)


def coll(id, file, breaks, line=None, **kw):
    return Case(f"collection-{id}", "instances", f"beir_out/{file}", breaks, line, **kw)


CASES = [
    # BEIR import: corpus.jsonl
    beir("corpus-bad-json", "corpus.jsonl", line(2, '{"_id": "d1", "text": '), 2, key="invalid JSON"),
    beir("corpus-bad-utf8", "corpus.jsonl", line(3, BAD_UTF8), 3, key="UTF-8"),
    beir("corpus-not-object", "corpus.jsonl", line(2, '["d1", "text"]'), 2),
    beir("corpus-missing-id", "corpus.jsonl", line(2, obj(text="gene")), 2, key="_id"),
    beir("corpus-empty-id", "corpus.jsonl", line(2, obj(_id=" ", text="gene")), 2, key="_id"),
    beir("corpus-id-with-space", "corpus.jsonl", line(2, obj(_id="d 1", text="gene")), 2, key="white space"),
    beir("corpus-id-is-list", "corpus.jsonl", line(2, obj(_id=["d1"], text="gene")), 2, key="_id"),
    beir("corpus-missing-text", "corpus.jsonl", line(2, obj(_id="d1", title="Gene")), 2, key="text"),
    beir("corpus-text-not-string", "corpus.jsonl", line(2, obj(_id="d1", text=5)), 2, key="text"),
    beir("corpus-title-not-string", "corpus.jsonl", line(2, obj(_id="d1", title=[], text="x")), 2, key="title"),
    beir("corpus-sents-not-list", "corpus.jsonl", line(2, obj(_id="d1", text="x", sents="x")), 2, key="sents"),
    beir("corpus-duplicate-id", "corpus.jsonl", line(3, obj(_id="d0", text="again")), 3, key="duplicate"),
    beir("corpus-empty-document", "corpus.jsonl", line(4, obj(_id="d3", title="", text=" ")), 4,
         key="empty", extra=["--skip_empty", "false"]),
    beir("queries-bad-json", "queries.jsonl", line(2, "{"), 2),
    beir("queries-bad-utf8", "queries.jsonl", line(1, b'{"_id": "q0", "text": "\xff"}'), 1),
    beir("queries-missing-text", "queries.jsonl", line(2, obj(_id="q1")), 2, key="text"),
    beir("queries-empty-text", "queries.jsonl", line(2, obj(_id="q1", text="  ")), 2, key="empty"),
    beir("queries-missing-id", "queries.jsonl", line(3, obj(text="x")), 3, key="_id"),
    beir("queries-duplicate-id", "queries.jsonl", line(3, obj(_id="q0", text="x")), 3, key="duplicate"),
    beir("qrels-bad-header", "qrels/test.tsv", line(1, "qid\tdocid\tscore"), 1, key="header"),
    beir("qrels-empty-file", "qrels/test.tsv", content(""), 1, key="header"),
    beir("qrels-two-columns", "qrels/test.tsv", line(2, "q0\td0"), 2, key="columns"),
    beir("qrels-four-columns", "qrels/test.tsv", line(3, "q1\td1\t1\t0"), 3, key="columns"),
    beir("qrels-score-word", "qrels/test.tsv", line(2, "q0\td0\thigh"), 2, key="score"),
    beir("qrels-score-fraction", "qrels/test.tsv", line(2, "q0\td0\t0.5"), 2, key="score"),
    beir("qrels-empty-score", "qrels/test.tsv", line(2, "q0\td0\t"), 2, key="score"),
    beir("qrels-unknown-query", "qrels/test.tsv", line(2, "q9\td0\t1"), 2, key="q9"),
    beir("qrels-unknown-document", "qrels/train.tsv", line(3, "q2\td9\t1"), 3, key="d9"),
    beir("qrels-empty-ids", "qrels/test.tsv", line(2, "\t\t1"), 2, key="unknown"),
    beir("qrels-duplicate", "qrels/test.tsv", line(3, "q0\td0\t2"), 3, key="duplicate"),
    beir("qrels-bad-utf8", "qrels/test.tsv", line(3, b"q1\td\xc3\t1"), 3, key="UTF-8"),

    # MS MARCO raw files
    Case("msmarco-docs-truncated-gzip", "msmarco", "msmarco_raw/msmarco-docs.tsv.gz", truncate, key="unreadable"),
    Case("msmarco-docs-not-gzip", "msmarco", "msmarco_raw/msmarco-docs.tsv.gz", not_gzip, 1, key="unreadable"),
    Case("msmarco-docs-bad-utf8", "msmarco", "msmarco_raw/msmarco-docs.tsv.gz", line(2, b"D2\tu\tt\tb\xe9"), 2),
    Case("msmarco-queries-three-fields", "msmarco", "msmarco_raw/msmarco-doctrain-queries.tsv",
         line(2, "2\tgene\tstudy"), 2, key="fields"),
    Case("msmarco-queries-no-tab", "msmarco", "msmarco_raw/msmarco-doctrain-queries.tsv", line(1, "1 protein"), 1),
    Case("msmarco-queries-empty-text", "msmarco", "msmarco_raw/msmarco-doctrain-queries.tsv", line(2, "2\t "), 2),
    Case("msmarco-queries-duplicate", "msmarco", "msmarco_raw/msmarco-docdev-queries.tsv",
         line(2, "3\tblood again"), 2, key="duplicate"),
    Case("msmarco-queries-bad-utf8", "msmarco", "msmarco_raw/msmarco-docdev-queries.tsv", line(1, b"3\t\xff"), 1),
    Case("msmarco-queries-conflict", "msmarco", "msmarco_raw/msmarco-docdev-queries.tsv",
         line(1, "1\tnot the train text"), key="different text"),
    Case("msmarco-qrels-three-fields", "msmarco", "msmarco_raw/msmarco-doctrain-qrels.tsv.gz",
         line(2, "2 0 D2"), 2, key="fields"),
    Case("msmarco-qrels-relevance-word", "msmarco", "msmarco_raw/msmarco-docdev-qrels.tsv",
         line(1, "3 0 D1 yes"), 1, key="relevance"),
    Case("msmarco-qrels-truncated-gzip", "msmarco", "msmarco_raw/msmarco-doctrain-qrels.tsv.gz", truncate),
    Case("msmarco-docs-missing", "msmarco", "msmarco_raw/msmarco-docs.tsv.gz", Path.unlink,
         key="not found", where="msmarco_raw/msmarco-docs.tsv"),

    # Natural Questions raw files
    Case("nq-train-truncated-gzip", "nq", "nq_raw/simplified-nq-train.jsonl.gz", truncate, key="unreadable"),
    Case("nq-train-bad-json", "nq", "nq_raw/simplified-nq-train.jsonl.gz", line(2, '{"example_id": 2,'), 2),
    Case("nq-train-text-not-string", "nq", "nq_raw/simplified-nq-train.jsonl.gz",
         line(2, obj(example_id=2, question_text="q", document_text=7)), 2, key="document_text"),
    Case("nq-dev-missing-question", "nq", "nq_raw/nq-dev-all.jsonl",
         line(1, obj(example_id=3, document_title="T", document_tokens=[])), 1, key="question_text"),
    Case("nq-dev-empty-question", "nq", "nq_raw/nq-dev-all.jsonl",
         line(1, obj(example_id=3, question_text=" ", document_title="T", document_tokens=[])), 1, key="empty"),
    Case("nq-dev-id-is-list", "nq", "nq_raw/nq-dev-all.jsonl",
         line(1, obj(example_id=[3], question_text="q", document_title="T", document_tokens=[])), 1,
         key="example_id"),
    Case("nq-dev-id-with-space", "nq", "nq_raw/nq-dev-all.jsonl",
         line(1, obj(example_id="3 4", question_text="q", document_title="T", document_tokens=[])), 1),
    Case("nq-dev-repeated-id", "nq", "nq_raw/nq-dev-all.jsonl",
         line(1, obj(example_id=1, question_text="q", document_title="Protein", document_tokens=[])), 1,
         key="repeated"),
    Case("nq-dev-bad-tokens", "nq", "nq_raw/nq-dev-all.jsonl",
         line(1, obj(example_id=3, question_text="q", document_title="New", document_tokens=[1, 2])), 1,
         key="document_tokens"),
    Case("nq-dev-title-not-string", "nq", "nq_raw/nq-dev-all.jsonl",
         line(1, obj(example_id=3, question_text="q", document_title=None, document_tokens=[])), 1,
         key="document_title"),
    Case("nq-dev-bad-utf8", "nq", "nq_raw/nq-dev-all.jsonl", line(1, b'{"example_id": "\xff"}'), 1),

    # a collection read by a downstream stage (`ddro instances`)
    coll("corpus-bad-json", "corpus.jsonl", line(2, "{"), 2),
    coll("corpus-duplicate-id", "corpus.jsonl", line(4, obj(_id="d1", text="x")), 4, key="duplicate"),
    coll("corpus-truncated-line", "corpus.jsonl", line(4, '{"_id": "d3", "title": "Tri'), 4),
    coll("queries-missing-text", "queries.jsonl", line(1, obj(_id="q0")), 1, key="text"),
    coll("qrels-unknown-document", "qrels/train.tsv", line(2, "q2\td7\t1"), 2, key="d7"),
    coll("qrels-wrong-columns", "qrels/test.tsv", line(2, "q0 d0 1"), 2, key="columns"),

    # docid tables
    Case("docids-one-column", "instances", "docids/docids.tsv", line(2, "d1"), 2),
    Case("docids-empty-tokens", "instances", "docids/docids.tsv", line(2, "d1\t"), 2),
    Case("docids-three-columns", "instances", "docids/docids.tsv", line(2, "d1\t4,7\t9"), 2),
    Case("docids-not-integers", "instances", "docids/docids.tsv", line(3, "d2\t5,x"), 3, key="integers"),
    Case("docids-negative-token", "instances", "docids/docids.tsv", line(3, "d2\t-1,7"), 3, key="range"),
    Case("docids-token-out-of-range", "instances", "docids/docids.tsv", line(3, "d2\t5,11"), 3, key="range"),
    Case("docids-too-long", "instances", "docids/docids.tsv", line(3, "d2\t5,7,9"), 3, key="tokens"),
    Case("docids-duplicate-doc", "instances", "docids/docids.tsv", line(4, "d0\t6,8"), 4, key="twice"),
    Case("docids-bad-utf8", "instances", "docids/docids.tsv", line(2, b"d\xe91\t4,7"), 2),
    Case("docids-missing-document", "instances", "docids/docids.tsv", drop(4), key="documents", where="docids"),
    Case("docids-unknown-document", "instances", "docids/docids.tsv", line(4, "d9\t6,7"),
         key="documents", where="docids"),
    Case("docids-another-collection", "instances", "docids/manifest.json",
         json_edit(lambda m: m.update(collection="0" * 64)), key="another collection", where="docids"),
    Case("docids-manifest-missing-key", "instances", "docids/manifest.json",
         json_edit(lambda m: m.pop("vocab_offset")), key="vocab_offset"),
    Case("docids-manifest-wrong-type", "instances", "docids/manifest.json",
         json_edit(lambda m: m.update(add_doc_num="8")), key="add_doc_num"),
    Case("docids-manifest-wrong-kind", "instances", "docids/manifest.json",
         json_edit(lambda m: m.update(kind="negatives")), key="docids"),
    Case("docids-manifest-bad-json", "instances", "docids/manifest.json", content('{\n"kind": "docids",\n'), 3),
    Case("docids-table-missing", "instances", "docids/docids.tsv", Path.unlink, key="not found"),

    # pseudo-queries
    Case("pq-bad-json", "instances", "pq/pseudo_queries.jsonl", line(2, '{"doc_id": "d1"'), 2),
    Case("pq-missing-query", "instances", "pq/pseudo_queries.jsonl", line(2, obj(doc_id="d1")), 2, key="query"),
    Case("pq-query-not-string", "instances", "pq/pseudo_queries.jsonl", line(3, obj(doc_id="d2", query=3)), 3),
    Case("pq-unknown-document", "instances", "pq/pseudo_queries.jsonl", line(3, obj(doc_id="d8", query="x")), 3,
         key="d8"),
    Case("pq-another-collection", "instances", "pq/manifest.json",
         json_edit(lambda m: m["inputs"].update(collection="0" * 64)), key="another collection", where="pq"),

    # evaluation JSONL (`ddro eval --test_file`)
    Case("eval-bad-json", "eval", "eval.jsonl", line(1, '{"query_id": "q0", '), 1),
    Case("eval-missing-query-id", "eval", "eval.jsonl", line(1, obj(input_ids=[5], relevant={"d0": 1})), 1),
    Case("eval-empty-input-ids", "eval", "eval.jsonl", line(1, obj(query_id="q0", input_ids=[], relevant={})), 1),
    Case("eval-input-ids-not-ints", "eval", "eval.jsonl",
         line(1, obj(query_id="q0", input_ids=["a", 5], relevant={"d0": 1})), 1, key="input_ids"),
    Case("eval-negative-input-id", "eval", "eval.jsonl",
         line(1, obj(query_id="q0", input_ids=[-4], relevant={"d0": 1})), 1, key="input_ids"),
    Case("eval-relevant-not-dict", "eval", "eval.jsonl", line(1, obj(query_id="q0", input_ids=[5],
                                                                      relevant=["d0"])), 1),
    Case("eval-relevant-score-word", "eval", "eval.jsonl",
         line(1, obj(query_id="q0", input_ids=[5], relevant={"d0": "high"})), 1, key="relevant"),
    Case("eval-duplicate-query", "eval", "eval.jsonl",
         line(2, obj(query_id="q0", input_ids=[5], relevant={"d0": 1})), 2, key="q0"),
    Case("eval-input-id-beyond-vocab", "eval", "eval.jsonl",
         line(1, obj(query_id="q0", input_ids=[10**6], relevant={"d0": 1})), key="'q0'", where=""),
    Case("eval-bad-utf8", "eval", "eval.jsonl", line(1, b'{"query_id": "\xe9"}'), 1),

    # checkpoints
    Case("ckpt-vocab-too-small", "eval", "docids/manifest.json", json_edit(lambda m: m.update(add_doc_num=4000)),
         key="vocabulary rows", where="ckpt"),
    Case("ckpt-other-docid-table", "eval", "docids/manifest.json", json_edit(lambda m: m.update(note="x")),
         key="another docid table", where="ckpt"),
    Case("ckpt-info-bad-json", "eval", "ckpt/ddro_model.json", content('{\n  "construction": \n'), 3),
    Case("ckpt-truncated-weights", "eval", "ckpt/model.safetensors", truncate, where="ckpt"),
    Case("ckpt-garbage-weights", "eval", "ckpt/model.safetensors", content(b"\x00" * 64), where="ckpt"),
    Case("ckpt-config-bad-json", "eval", "ckpt/config.json", content("{"), where="ckpt"),

    # config files
    Case("config-unknown-key", "config", "cfg.yaml", line(3, "sentense: false"), key="'sentense'"),
    Case("config-bool-wrong-type", "config", "cfg.yaml", line(3, "sentences: maybe"), key="sentences"),
    Case("config-list-for-scalar", "config", "cfg.yaml", line(3, "sentences: [true, false]"), key="sentences"),
    Case("config-mapping-for-scalar", "config", "cfg.yaml", line(3, "sentences: {a: 1}"), key="sentences"),
    Case("config-bad-yaml", "config", "cfg.yaml", line(3, "sentences: [unclosed"), 4),
    Case("config-tab-yaml", "config", "cfg.yaml", line(3, "\tsentences: false"), 3),
    Case("config-not-mapping", "config", "cfg.yaml", content("- path\n- out\n"), key="mapping"),
    Case("config-bad-utf8", "config", "cfg.yaml", line(3, b"sentences: \xff"), key="UTF-8"),
    Case("config-nul-in-value", "config", "cfg.yaml", line(3, 'download_dir: "a\\0b"'), key="download_dir"),
    Case("config-bool-key", "config", "cfg.yaml", line(3, "on: true"), key="True"),
    Case("config-int-wrong-type", "config_json", "cfg.json",
         json_edit(lambda c: c.update(negatives="many")), key="negatives"),
    Case("config-float-wrong-type", "config_json", "cfg.json", json_edit(lambda c: c.update(k1=[1])), key="k1"),
    Case("config-bad-choice", "config_json", "cfg.json", json_edit(lambda c: c.update(queries="bogus")),
         key="queries"),
    Case("config-bad-json", "config_json", "cfg.json", content('{"collection": "x",\n "out": }'), 2),

    # readers only the trainers reach
    Case("run-five-columns", "run", "run.trec", line(2, "q0 Q0 d1 2 -0.75"), 2, key="columns"),
    Case("run-rank-word", "run", "run.trec", line(2, "q0 Q0 d1 two -0.75 ddro"), 2, key="rank"),
    Case("run-score-word", "run", "run.trec", line(3, "q1 Q0 d2 1 high ddro"), 3, key="score"),
    Case("run-score-nan", "run", "run.trec", line(3, "q1 Q0 d2 1 nan ddro"), 3, key="finite"),
    Case("run-duplicate-document", "run", "run.trec", line(2, "q0 Q0 d0 2 -0.75 ddro"), 2, key="twice"),
    Case("run-bad-utf8", "run", "run.trec", line(1, b"q0 Q0 d\xff 1 -0.5 ddro"), 1),
    Case("negatives-two-columns", "negatives", "negatives/pairs.tsv", line(2, "q0\td0"), 2),
    Case("negatives-empty-field", "negatives", "negatives/val_pairs.tsv", line(1, "q2\t\td0"), 1),
    Case("negatives-unknown-query", "negatives", "negatives/pairs.tsv", line(3, "q7\td1\td3"), 3, key="q7"),
    Case("negatives-query-missing-id", "negatives", "negatives/queries.jsonl", line(2, obj(text="x")), 2,
         key="_id"),
    Case("negatives-query-text-not-string", "negatives", "negatives/queries.jsonl", line(2, obj(_id="q1", text=1)),
         2, key="text"),
    Case("negatives-duplicate-query", "negatives", "negatives/queries.jsonl", line(2, obj(_id="q0", text="x")), 2,
         key="duplicate"),
    Case("negatives-wrong-kind", "negatives", "negatives/manifest.json", json_edit(lambda m: m.update(kind="x")),
         key="negatives"),
    Case("train-instances-bad-json", "train_instances", "instances_out/stage1.jsonl", line(1, "{"), 1),
    Case("train-instances-unknown-doc", "train_instances", "instances_out/stage1.jsonl",
         line(1, obj(doc_id="d9", input_ids=[5], labels=[3, 7])), 1, key="d9"),
    Case("train-instances-wrong-labels", "train_instances", "instances_out/stage1.jsonl",
         line(1, obj(doc_id="d0", input_ids=[5], labels=[4, 7])), 1, key="docid"),
    Case("train-instances-ids-not-ints", "train_instances", "instances_out/stage1.jsonl",
         line(1, obj(doc_id="d0", input_ids=[5, "x"], labels=[3, 7])), 1, key="input_ids"),
]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_table_has_no_repeated_case():
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_one_line_naming_the_file_and_leaves_outputs_alone(case, world, tmp_path, capsys):
    w = tmp_path / "w"
    shutil.copytree(world, w, symlinks=True)
    target = w / case.file
    case.breaks(target)
    if case.stage in READERS:
        WORLD[:] = [w]
        run, out = direct(READERS[case.stage]), None
    else:
        out, argv = commands(w)[case.stage]
        run = lambda argv_=argv + case.extra: cli_main(argv_)  # noqa: E731
        out = w / out
    before = snapshot(out) if out else None
    beside = sorted(p.name for p in w.iterdir())
    capsys.readouterr()

    with pytest.raises(SystemExit) as exit_info:
        run()
    err = capsys.readouterr().err
    # progress bars share stderr; the message is the one line starting with "error: ", and the last
    lines = [x for x in err.splitlines() if x.startswith("error")]

    assert exit_info.value.code == 2, err
    assert len(lines) == 1 and "Traceback" not in err and err.rstrip("\n").endswith(lines[0]), err
    where = str(target) if case.where is None else str(w / case.where) if case.where else ""
    located = f"{where}:{case.line}" if case.line else where
    assert located in lines[0], f"{located!r} not in {lines[0]!r}"
    if case.key:
        assert case.key in lines[0], f"{case.key!r} not in {lines[0]!r}"
    if out is not None:
        assert snapshot(out) == before, "the existing output changed"
    assert sorted(p.name for p in w.iterdir()) == beside, "something was left beside the outputs"
