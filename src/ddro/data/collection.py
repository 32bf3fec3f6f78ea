"""The one canonical collection format and the only code that reads or writes it.

A collection is a folder in BEIR layout::

    corpus.jsonl        {"_id", "title", "text"[, "url"][, "sents"]} per line
    queries.jsonl       {"_id", "text"} per line
    qrels/<split>.tsv   header "query-id<TAB>corpus-id<TAB>score", one judgement per line
    manifest.json       source, counts, sha256 of every file, the command that built it

Readers validate as they read and raise `InputError` naming the file and line.
Rules: `_id` is a non-empty string (integers are accepted and turned into strings) and
unique; a document needs a `text` field and must not be empty in both title and text; a
query needs a non-empty `text`; qrels have exactly that header, three columns, an
integer score, no repeated (query, document) pair, and name only known queries and
documents.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Iterator

from tqdm.auto import tqdm

from ..errors import DDROError, InputError
from ..io import dumps_line, iter_jsonl, iter_lines
from ..manifest import MANIFEST, read_json, write_manifest

log = logging.getLogger(__name__)

CORPUS, QUERIES, QRELS = "corpus.jsonl", "queries.jsonl", "qrels"
QRELS_HEADER = ("query-id", "corpus-id", "score")

Qrels = dict[str, dict[str, int]]  # query id -> {doc id: score}


def clean(text: str) -> str:
    """Collapse runs of white space (newlines, tabs, non-breaking spaces) into one space."""
    return " ".join(text.split())


def _field_id(obj: dict, path: Path, lineno: int) -> str:
    value = obj.get("_id")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise InputError(path, "missing or empty '_id'", lineno)
    if any(c in value for c in "\t\n\r "):
        raise InputError(path, f"'_id' {value!r} contains white space", lineno)
    return value


def _field_str(obj: dict, key: str, path: Path, lineno: int, required: bool) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise InputError(path, f"missing field '{key}'", lineno)
        return ""
    if not isinstance(value, str):
        raise InputError(path, f"field '{key}' must be a string, got {type(value).__name__}", lineno)
    return value


class EmptyDocumentError(InputError):
    """A document with neither title nor text (Cranfield has two)."""


def parse_document(obj: dict, path: Path, lineno: int) -> dict:
    """Validate one corpus line and return it in canonical form."""
    doc = {"_id": _field_id(obj, path, lineno),
           "title": _field_str(obj, "title", path, lineno, required=False),
           "text": _field_str(obj, "text", path, lineno, required=True)}
    if not doc["title"].strip() and not doc["text"].strip():
        raise EmptyDocumentError(path, f"document {doc['_id']!r} is empty (no title, no text)", lineno)
    url = obj.get("url")
    if url:
        doc["url"] = _field_str(obj, "url", path, lineno, required=False)
    if "sents" in obj:
        sents = obj["sents"]
        if not isinstance(sents, list) or not all(isinstance(s, str) for s in sents):
            raise InputError(path, "field 'sents' must be a list of strings", lineno)
        doc["sents"] = sents
    return doc


def iter_corpus(path: Path, skipped_empty: list[str] | None = None) -> Iterator[dict]:
    """Stream and validate a corpus file (duplicate ids are refused).

    Empty documents are an error, unless `skipped_empty` is given: then their ids are
    appended to it and they are left out (importers count them in the manifest).
    """
    seen: set[str] = set()
    for lineno, obj in iter_jsonl(path):
        try:
            doc = parse_document(obj, path, lineno)
        except EmptyDocumentError:
            if skipped_empty is None:
                raise
            skipped_empty.append(_field_id(obj, path, lineno))
            continue
        if doc["_id"] in seen:
            raise InputError(path, f"duplicate document id {doc['_id']!r}", lineno)
        seen.add(doc["_id"])
        yield doc


def read_queries(path: Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    for lineno, obj in iter_jsonl(path):
        qid = _field_id(obj, path, lineno)
        text = _field_str(obj, "text", path, lineno, required=True)
        if not text.strip():
            raise InputError(path, f"query {qid!r} has an empty text", lineno)
        if qid in queries:
            raise InputError(path, f"duplicate query id {qid!r}", lineno)
        queries[qid] = text
    return queries


def _parse_score(score: str, path: Path, lineno: int) -> int:
    """Relevance grades are integers; "1.0" is accepted, "0.5" or "high" is not."""
    try:
        return int(score)
    except ValueError:
        pass
    try:
        value = float(score)
    except ValueError:
        value = float("nan")
    if not value.is_integer():
        raise InputError(path, f"score {score!r} is not an integer", lineno)
    return int(value)


def read_qrels(path: Path, doc_ids: set[str] | None = None, query_ids: set[str] | None = None,
               skip_unknown: bool = False, dropped_docs: set[str] = frozenset()) -> tuple[Qrels, int]:
    """Read a BEIR qrels file; returns (qrels, number of rows skipped).

    Rows naming a document in `dropped_docs` (left out on purpose, e.g. empty) are skipped
    and counted; other unknown ids are an error unless `skip_unknown`.
    """
    qrels: Qrels = {}
    skipped = 0
    lines = iter_lines(path)
    first = next(lines, None)
    if first is None or tuple(first[1].split("\t")) != QRELS_HEADER:
        raise InputError(path, "expected the header 'query-id<TAB>corpus-id<TAB>score'", 1)
    for lineno, line in lines:
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 3:
            raise InputError(path, f"expected 3 tab-separated columns, got {len(cols)}", lineno)
        qid, did, score = (c.strip() for c in cols)
        value = _parse_score(score, path, lineno)
        if did in dropped_docs:
            skipped += 1
            continue
        unknown = ([f"query {qid!r}"] if query_ids is not None and qid not in query_ids else []) + \
                  ([f"document {did!r}"] if doc_ids is not None and did not in doc_ids else [])
        if unknown:
            if skip_unknown:
                skipped += 1
                continue
            raise InputError(path, f"unknown {' and '.join(unknown)}", lineno)
        if did in qrels.setdefault(qid, {}):
            raise InputError(path, f"duplicate judgement for query {qid!r}, document {did!r}", lineno)
        qrels[qid][did] = value
    return qrels, skipped


class Collection:
    """Read access to a collection folder; every downstream stage goes through this class."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / CORPUS).is_file():
            raise DDROError(f"{self.path}: not a collection (no {CORPUS})")
        self._queries: dict[str, str] | None = None
        self._doc_ids: list[str] | None = None

    def __repr__(self) -> str:
        return f"Collection({str(self.path)!r})"

    @property
    def manifest(self) -> dict | None:
        path = self.path / MANIFEST
        return read_json(path) if path.is_file() else None

    @property
    def splits(self) -> list[str]:
        return sorted(p.stem for p in (self.path / QRELS).glob("*.tsv"))

    def iter_docs(self) -> Iterator[dict]:
        return iter_corpus(self.path / CORPUS)

    def doc_ids(self) -> list[str]:
        if self._doc_ids is None:
            self._doc_ids = [d["_id"] for d in self.iter_docs()]
        return self._doc_ids

    def load_docs(self) -> dict[str, dict]:
        return {d["_id"]: d for d in self.iter_docs()}

    def __len__(self) -> int:
        return len(self.doc_ids())

    def queries(self) -> dict[str, str]:
        if self._queries is None:
            path = self.path / QUERIES
            self._queries = read_queries(path) if path.is_file() else {}
        return self._queries

    def qrels(self, split: str) -> Qrels:
        path = self.path / QRELS / f"{split}.tsv"
        if not path.is_file():
            have = ", ".join(self.splits) or "none"
            raise DDROError(f"{self.path}: no qrels for split '{split}' (splits: {have})")
        return read_qrels(path, set(self.doc_ids()), set(self.queries()))[0]

    def has_split(self, split: str) -> bool:
        return (self.path / QRELS / f"{split}.tsv").is_file()


def write_collection(folder: Path, docs: Iterable[dict], queries: dict[str, str],
                     qrels: dict[str, Qrels], *, source: str, total_docs: int | None = None,
                     warnings: dict[str, int] | None = None, config: dict | None = None,
                     sentences: bool = False, **extra) -> dict:
    """Write a collection in canonical form into `folder` (normally a temporary one).

    `docs` may be a stream (MS MARCO is 22 GB); it is written in the order given.
    Queries are written in the order given; qrels per split sorted by query then
    document id so that a rebuild is byte-identical. `extra` goes into the manifest as is.
    Returns the manifest.
    """
    if sentences:
        from .sentences import split_sentences
    (folder / QRELS).mkdir(parents=True, exist_ok=True)
    n_docs = 0
    with open(folder / CORPUS, "w", encoding="utf-8") as f:
        for doc in tqdm(docs, total=total_docs, desc="corpus", unit="doc", mininterval=2):
            if sentences:
                doc = {**doc, "sents": split_sentences(doc["text"])}
            f.write(dumps_line(doc))
            n_docs += 1
    with open(folder / QUERIES, "w", encoding="utf-8") as f:
        for qid, text in queries.items():
            f.write(dumps_line({"_id": qid, "text": text}))
    counts: dict = {"corpus": n_docs, "queries": len(queries), "qrels": {}, "qrels_queries": {}}
    for split, judged in sorted(qrels.items()):
        rows = sorted((q, d, s) for q, docs_ in judged.items() for d, s in docs_.items())
        with open(folder / QRELS / f"{split}.tsv", "w", encoding="utf-8") as f:
            f.write("\t".join(QRELS_HEADER) + "\n")
            f.writelines(f"{q}\t{d}\t{s}\n" for q, d, s in rows)
        counts["qrels"][split] = len(rows)
        counts["qrels_queries"][split] = len(judged)
    log.info("wrote %s: %d docs, %d queries, qrels %s", folder, n_docs, len(queries), counts["qrels"])
    return write_manifest(folder, "collection", counts=counts, config=config, source=source,
                          warnings=warnings or {}, sentences=sentences, **extra)
