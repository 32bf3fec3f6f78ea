"""`ddro data msmarco`: MS MARCO v1 document ranking -> the "top-300k" collection.

Raw files (in --raw-dir, each `<name>.gz` or plain `<name>`; see
scripts/data/download_msmarco.sh):

    msmarco-docs.tsv               docid<TAB>url<TAB>title<TAB>body (22 GB)
    msmarco-doc{train,dev}-queries.tsv   qid<TAB>text
    msmarco-doc{train,dev}-qrels.tsv     TREC: "qid 0 docid rel" (white-space separated)

Top-300k, as in the DDRO reference pipeline (`sample_msmarco_dataset.py`): every
document with at least one train qrel (its "click count"), sorted by click count
descending; ties are broken by document id (string order), where the reference left them
to thread scheduling. Train and dev qrels are restricted to those documents, and
queries.jsonl holds the train then dev queries that keep at least one qrel.

How the raw files are treated:
- docs lines without exactly four tab-separated fields are skipped and counted, as the
  reference does (`len(cols) != 4: continue`); a kept document whose title and body are
  both empty is skipped and counted (the collection format forbids empty documents);
- a repeated document id: the first line wins, later ones are counted (only among the
  candidate documents, so the set of seen ids stays small);
- qrels naming a document that is not in the collection (absent from the docs file,
  skipped, or for dev: without a train click) are dropped and counted per split, as in
  the reference; qrels naming a query absent from the queries file likewise;
- queries and qrels files are small and strict: a malformed line is an InputError.

Bounded memory: the qrels (a few hundred thousand ids) are read first, so the docs file
is streamed once keeping only candidate ids. Each kept document is appended as a JSON
line to a spool file next to --out, remembering only (offset, length) per id; the
collection is then written by reading the spool back in click-count order. Memory holds
the ids and offsets, never the bodies.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..config import as_dict, entry_point, parse_args
from ..errors import DDROError, InputError
from ..io import atomic_dir, check_output, iter_lines
from .collection import Qrels, clean, write_collection
from .raw import DocSpool, raw_file, spool_beside

log = logging.getLogger(__name__)

SOURCE = "msmarco-top300k"
DOCS = "msmarco-docs.tsv"
QUERIES = {"train": "msmarco-doctrain-queries.tsv", "dev": "msmarco-docdev-queries.tsv"}
QRELS = {"train": "msmarco-doctrain-qrels.tsv", "dev": "msmarco-docdev-qrels.tsv"}


@dataclass
class MsmarcoArguments:
    raw_dir: str = field(metadata={"help": "folder with the raw MS MARCO document files (.gz or plain)"})
    out: str = field(metadata={"help": "folder to write the collection to"})
    sentences: bool = field(default=True, metadata={"help": "add Punkt sentence splits (`sents`)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --out"})


def read_queries_tsv(path: Path) -> dict[str, str]:
    """`qid<TAB>text` lines; blank lines ignored, anything else malformed is an error."""
    queries: dict[str, str] = {}
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 2:
            raise InputError(path, f"expected 'qid<TAB>text', got {len(cols)} tab-separated fields", lineno)
        qid, text = cols[0].strip(), clean(cols[1])
        if not qid or not text:
            raise InputError(path, "empty query id or text", lineno)
        if qid in queries:
            raise InputError(path, f"duplicate query id {qid!r}", lineno)
        queries[qid] = text
    return queries


def read_trec_qrels(path: Path) -> tuple[Qrels, int]:
    """TREC qrels `qid iter docid rel`; returns (qrels, number of repeated judgements ignored)."""
    qrels: Qrels = {}
    repeated = 0
    for lineno, line in iter_lines(path):
        cols = line.split()
        if not cols:
            continue
        if len(cols) != 4:
            raise InputError(path, f"expected 'qid 0 docid relevance', got {len(cols)} fields", lineno)
        qid, _, doc_id, rel = cols
        try:
            score = int(rel)
        except ValueError:
            raise InputError(path, f"relevance {rel!r} is not an integer", lineno) from None
        if doc_id in qrels.setdefault(qid, {}):
            repeated += 1
            continue
        qrels[qid][doc_id] = score
    return qrels, repeated


def click_order(train_qrels: Qrels) -> list[str]:
    """Documents with at least one train judgement, most judged first, ties by id."""
    clicks = Counter(doc_id for docs in train_qrels.values() for doc_id in docs)
    return sorted(clicks, key=lambda doc_id: (-clicks[doc_id], doc_id))


def spool_docs(path: Path, wanted: set[str], spool: DocSpool, warnings: Counter) -> None:
    """Stream the docs file once, parking the wanted documents in `spool`."""
    lines = tqdm(iter_lines(path), desc="msmarco docs", unit=" lines", mininterval=5, unit_scale=True)
    for _, line in lines:
        if line.count("\t") != 3:  # the reference skips any line without exactly 4 fields
            warnings["docs_malformed_lines_skipped"] += 1
            continue
        doc_id = line[:line.index("\t")].strip()
        if doc_id not in wanted:
            continue
        if doc_id in spool:
            warnings["docs_duplicate_ids_skipped"] += 1
            continue
        _, url, title, body = line.split("\t")
        doc = {"_id": doc_id, "title": clean(title), "text": clean(body)}
        if not doc["title"] and not doc["text"]:
            warnings["docs_empty_skipped"] += 1
            wanted.discard(doc_id)  # a later duplicate must not resurrect it
            continue
        if url.strip():
            doc["url"] = url.strip()
        spool.add(doc)


def restrict(qrels: Qrels, doc_ids: set[str] | DocSpool, queries: dict[str, str],
             split: str, warnings: Counter) -> Qrels:
    """Keep judgements on collection documents and known queries; count what is dropped."""
    kept: Qrels = {}
    for qid, docs in qrels.items():
        if qid not in queries:
            warnings[f"qrels_unknown_query_dropped.{split}"] += len(docs)
            continue
        on_docs = {d: s for d, s in docs.items() if d in doc_ids}
        if len(on_docs) < len(docs):
            warnings[f"qrels_doc_not_in_collection_dropped.{split}"] += len(docs) - len(on_docs)
        if on_docs:
            kept[qid] = on_docs
    return kept


def run(args: MsmarcoArguments) -> dict:
    check_output(args.out, args.overwrite)
    docs_path = raw_file(args.raw_dir, DOCS)
    query_paths = {s: raw_file(args.raw_dir, n) for s, n in QUERIES.items()}
    qrels_paths = {s: raw_file(args.raw_dir, n) for s, n in QRELS.items()}

    warnings: Counter = Counter()
    raw_qrels: dict[str, Qrels] = {}
    for split, path in qrels_paths.items():
        raw_qrels[split], repeated = read_trec_qrels(path)
        if repeated:
            warnings[f"qrels_repeated_ignored.{split}"] = repeated
    order = click_order(raw_qrels["train"])
    log.info("%d documents have a train qrel; streaming %s", len(order), docs_path)

    queries: dict[str, str] = {}
    for split, path in query_paths.items():
        for qid, text in read_queries_tsv(path).items():
            if queries.setdefault(qid, text) != text:
                raise DDROError(f"{path}: query {qid!r} also appears with a different text in another split")

    with spool_beside(args.out) as spool:
        spool_docs(docs_path, set(order), spool, warnings)
        order = [doc_id for doc_id in order if doc_id in spool]
        qrels = {split: restrict(raw_qrels[split], spool, queries, split, warnings) for split in QRELS}
        judged = {qid for split_qrels in qrels.values() for qid in split_qrels}
        queries = {qid: text for qid, text in queries.items() if qid in judged}
        for key, n in sorted(warnings.items()):
            log.warning("%s: %d", key, n)
        with atomic_dir(args.out, args.overwrite) as tmp:
            manifest = write_collection(
                tmp, spool.read(order), queries, qrels, source=SOURCE, total_docs=len(order),
                warnings=dict(sorted(warnings.items())), config=as_dict(args), sentences=args.sentences)
    log.info("collection written to %s", args.out)
    return manifest


@entry_point
def main(argv=None):
    """Build the MS MARCO document top-300k collection from the raw MS MARCO v1 files."""
    (args,) = parse_args([MsmarcoArguments], argv, prog="ddro data msmarco", description=main.__doc__)
    run(args)


if __name__ == "__main__":
    main()
