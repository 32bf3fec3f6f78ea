"""`ddro instances`: the three SFT stages' training files and the evaluation files.

Output folder (format in .notes/CONVENTIONS.md)::

    stage1.jsonl      document -> docid: passages (<= 10 per document), TF-IDF sampled
                      terms (1), enhanced docid (1, with --other-docids)
    stage2.jsonl      pseudo-query -> docid (one per pseudo-query)
    stage3.jsonl      query -> docid (one per train qrel with score > 0)
    eval/<split>.jsonl  every other split: query id, query input ids, {doc id: grade > 0}
    manifest.json     kind "instances": counts per stage and source, skipped counts, notes,
                      tokenizer identity, input hashes, max lengths, lowercase

Input ids carry the input tokenizer's own special tokens (T5: `</s>` appended; BERT:
`[CLS] ... [SEP]`) and are at most the stage's max length. Labels are the docid table's
tokens unchanged. Nothing is random: a rebuild is byte-identical.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from tqdm.auto import tqdm

from ..config import as_dict, entry_point, parse_args
from ..data.collection import Collection
from ..docids.table import DocidTable
from ..errors import DDROError
from ..io import atomic_dir, check_output, dumps_line
from ..manifest import manifest_hash, manifest_hash_or_none, write_manifest
from ..pseudo_queries import batches, check_pseudo_queries, iter_pseudo_queries
from ..tokenizer import load_tokenizer, tokenizer_identity
from .encode import InputEncoder
from .enhanced import docid_renderer
from .passages import chunk_passages
from .tfidf import DocumentFrequency, sample_terms

log = logging.getLogger(__name__)

KIND = "instances"


@dataclass
class InstancesArguments:
    collection: str = field(metadata={"help": "collection folder"})
    docids: str = field(metadata={"help": "docid folder (`ddro docids`): the labels"})
    tokenizer: str = field(metadata={"help": "input tokenizer: a folder, a Hub name or offline:minilm"})
    out: str = field(metadata={"help": "output folder"})
    pseudo_queries: Optional[str] = field(default=None, metadata={
        "help": "pseudo-queries folder (`ddro pseudo-queries`) for stage 2"})
    other_docids: Optional[str] = field(default=None, metadata={
        "help": "a docid folder with another encoding, for the stage-1 enhanced-docid instances"})
    train_split: str = field(default="train", metadata={
        "help": "qrels split for stage 3; the others become eval files"})
    lowercase: bool = field(default=True, metadata={"help": "lowercase every input text"})
    stage1_max_length: int = field(default=128, metadata={"help": "input tokens of stage-1 instances"})
    query_max_length: int = field(default=64, metadata={"help": "input tokens of stages 2-3 and eval queries"})
    passages_per_doc: int = field(default=10, metadata={"help": "most passages per document"})
    tfidf_window: int = field(default=1024, metadata={"help": "document tokens scored for the sampled terms"})
    batch_size: int = field(default=256, metadata={"help": "documents (x8 queries) per tokenizer call"})
    cache_tokens: int = field(default=50_000_000, metadata={
        "help": "document tokens kept in memory (4 bytes each) between the two stage-1 passes; 0 = re-tokenize"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --out"})


@dataclass
class Tally:
    counts: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def skip(self, key: str, n: int, why: str) -> None:
        self.skipped[key] = self.skipped.get(key, 0) + n
        if n:
            log.warning("skipped %d: %s", n, why)

    def note(self, text: str) -> None:
        self.notes.append(text)
        log.warning(text)


def line(doc_id: str, input_ids: list[int], labels: tuple[int, ...], source: str) -> str:
    return dumps_line({"doc_id": doc_id, "input_ids": input_ids, "labels": list(labels), "source": source})


class PieceCache:
    """Token ids from the first stage-1 pass (int32, up to `max_tokens`), so the second needn't re-tokenize."""

    def __init__(self, max_tokens: int):
        self.max_tokens, self.tokens, self.batches = max_tokens, 0, []

    def put(self, index: int, pieces: list[list[int]]) -> None:
        size = sum(map(len, pieces))
        if index == len(self.batches) and self.tokens + size <= self.max_tokens:
            self.batches.append((np.fromiter((t for p in pieces for t in p), np.int32, size),
                                 np.cumsum([0, *map(len, pieces)])))
            self.tokens += size

    def get(self, index: int) -> list[list[int]] | None:
        if index >= len(self.batches):
            return None
        flat, bounds = self.batches[index]
        flat = flat.tolist()
        return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def tokenized_docs(collection: Collection, encoder: InputEncoder, batch_size: int, desc: str,
                   cache: PieceCache, fill: bool):
    """Batches of (doc, title ids, [sentence ids]): one tokenizer call per batch, no truncation."""
    from ..data.sentences import split_sentences

    for index, batch in enumerate(tqdm(batches(collection.iter_docs(), batch_size), desc=desc, unit="batch",
                                       total=-(-len(collection) // batch_size), mininterval=2)):
        sentences = [d["sents"] if "sents" in d else split_sentences(d["text"]) for d in batch]
        pieces = cache.get(index)
        if pieces is None:
            pieces = encoder.pieces([t for d, s in zip(batch, sentences) for t in (d["title"].strip(), *s)])
            if fill:
                cache.put(index, pieces)
        it = iter(pieces)
        yield [(doc, next(it), [next(it) for _ in sents]) for doc, sents in zip(batch, sentences)]


def concat(title: list[int], sentences: list[list[int]]) -> list[int]:
    """The document's tokens (title then sentences), as the TF-IDF sampler sees them."""
    return [t for piece in (title, *sentences) for t in piece]


def write_stage1(f, collection: Collection, table: DocidTable, other: DocidTable | None,
                 encoder: InputEncoder, args: InstancesArguments, tally: Tally) -> None:
    max_len = args.stage1_max_length
    budget = encoder.budget(max_len)
    df, cache = DocumentFrequency(len(encoder.tokenizer)), PieceCache(args.cache_tokens)
    for batch in tokenized_docs(collection, encoder, args.batch_size, "stage1 idf", cache, fill=True):
        for _, title, sentences in batch:
            df.add(concat(title, sentences))
    idf = df.idf()
    render = docid_renderer(other, encoder.tokenizer) if other else None
    n = dict.fromkeys(("passage", "tfidf", "enhanced"), 0)
    too_short = 0
    for batch in tokenized_docs(collection, encoder, args.batch_size, "stage1", cache, fill=False):
        enhanced = encoder.encode([render(other.by_doc[d["_id"]]) for d, _, _ in batch], max_len) if other else None
        for i, (doc, title, sentences) in enumerate(batch):
            doc_id, labels = doc["_id"], table.by_doc[doc["_id"]]
            for passage in chunk_passages(title, sentences, budget, args.passages_per_doc):
                f.write(line(doc_id, encoder.wrap(passage, max_len), labels, "passage"))
                n["passage"] += 1
            terms = sample_terms(concat(title, sentences)[:args.tfidf_window], idf, budget)
            if terms is None:
                too_short += 1
            else:
                f.write(line(doc_id, encoder.wrap(terms, max_len), labels, "tfidf"))
                n["tfidf"] += 1
            if enhanced:
                f.write(line(doc_id, enhanced[i], labels, "enhanced"))
                n["enhanced"] += 1
    tally.counts["stage1"] = n
    tally.skip("tfidf_too_short", too_short, "documents too short for sampled terms")
    if other is None:
        tally.note("no --other-docids: stage 1 has no enhanced-docid instances")


def write_queries(f, pairs: Iterable[tuple[str, str]], table: DocidTable, encoder: InputEncoder,
                  max_len: int, source: str, batch_size: int) -> int:
    """One instance per (doc id, text) pair, in order; texts tokenized in batches."""
    n = 0
    for batch in batches(iter(pairs), batch_size):
        for (doc_id, _), ids in zip(batch, encoder.encode([text for _, text in batch], max_len)):
            f.write(line(doc_id, ids, table.by_doc[doc_id], source))
            n += 1
    return n


def write_stage2(f, folder: str | None, table: DocidTable, encoder: InputEncoder,
                 args: InstancesArguments, tally: Tally) -> None:
    if folder is None:
        tally.counts["stage2"] = {"pseudo": 0}
        tally.note("no --pseudo-queries: stage 2 is empty")
        return
    empty = 0

    def non_empty():
        nonlocal empty
        for doc_id, query in tqdm(iter_pseudo_queries(folder), desc="stage2", unit="query", mininterval=2):
            if query.strip():
                yield doc_id, query
            else:
                empty += 1

    n = write_queries(f, non_empty(), table, encoder, args.query_max_length, "pseudo", 8 * args.batch_size)
    tally.counts["stage2"] = {"pseudo": n}
    tally.skip("pseudo_empty", empty, "empty pseudo-queries")


def write_stage3(f, collection: Collection, table: DocidTable, encoder: InputEncoder,
                 args: InstancesArguments, tally: Tally) -> None:
    if not collection.has_split(args.train_split):
        tally.counts["stage3"] = {"query": 0}
        tally.note(f"collection has no '{args.train_split}' split (splits: {', '.join(collection.splits) or 'none'}): "
                   "stage 3 is empty; train on stages 1-2 (pseudo-queries) only")
        return
    qrels, queries = collection.qrels(args.train_split), collection.queries()
    pairs = [(doc_id, queries[qid]) for qid, judged in qrels.items() for doc_id, score in judged.items() if score > 0]
    n = write_queries(f, pairs, table, encoder, args.query_max_length, "query", 8 * args.batch_size)
    tally.counts["stage3"] = {"query": n}
    tally.skip("train_qrels_not_positive", sum(map(len, qrels.values())) - n,
               f"'{args.train_split}' qrels with score <= 0")


def write_eval(folder: Path, collection: Collection, encoder: InputEncoder, args: InstancesArguments,
               tally: Tally) -> None:
    folder.mkdir()
    queries = collection.queries()
    tally.counts["eval"], tally.skipped["eval_no_relevant"] = {}, {}
    for split in collection.splits:
        if split == args.train_split:
            continue
        qrels = {qid: {d: s for d, s in judged.items() if s > 0} for qid, judged in collection.qrels(split).items()}
        qids = [qid for qid, relevant in qrels.items() if relevant]
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for qid, ids in zip(qids, encoder.encode([queries[q] for q in qids], args.query_max_length)):
                f.write(dumps_line({"query_id": qid, "input_ids": ids, "relevant": qrels[qid]}))
        tally.counts["eval"][split] = len(qids)
        tally.skipped["eval_no_relevant"][split] = len(qrels) - len(qids)
        if len(qrels) > len(qids):
            log.warning("skipped %d %s queries without a relevant document", len(qrels) - len(qids), split)
    if not tally.counts["eval"]:
        tally.note("collection has no split besides the train split: no eval files")


def load_docids(folder: str, collection: Collection, what: str) -> DocidTable:
    table = DocidTable.load(folder)
    table.check_collection(collection)
    log.info("%s: %s, %d documents (%s)", what, folder, len(table), table.encoding)
    return table


def run(args: InstancesArguments) -> dict:
    for name in ("stage1_max_length", "query_max_length", "passages_per_doc", "tfidf_window", "batch_size"):
        if getattr(args, name) < 1:
            raise DDROError(f"--{name.replace('_', '-')} must be at least 1")
    out = check_output(args.out, args.overwrite)
    collection = Collection(args.collection)
    table = load_docids(args.docids, collection, "docids")
    other = load_docids(args.other_docids, collection, "other docids") if args.other_docids else None
    if other is not None and other.encoding == table.encoding:
        raise DDROError(f"--other-docids {args.other_docids} has the same encoding ({table.encoding}) "
                        f"as --docids; enhanced-docid instances need another encoding")
    if args.pseudo_queries:
        check_pseudo_queries(args.pseudo_queries, collection)
    tokenizer = load_tokenizer(args.tokenizer)
    encoder = InputEncoder(tokenizer, args.lowercase)

    tally = Tally()
    with atomic_dir(out, args.overwrite) as tmp:
        with open(tmp / "stage1.jsonl", "w", encoding="utf-8") as f:
            write_stage1(f, collection, table, other, encoder, args, tally)
        with open(tmp / "stage2.jsonl", "w", encoding="utf-8") as f:
            write_stage2(f, args.pseudo_queries, table, encoder, args, tally)
        with open(tmp / "stage3.jsonl", "w", encoding="utf-8") as f:
            write_stage3(f, collection, table, encoder, args, tally)
        write_eval(tmp / "eval", collection, encoder, args, tally)
        inputs = {"collection": manifest_hash_or_none(collection.path),
                  "docids": manifest_hash(args.docids),
                  "other_docids": manifest_hash(args.other_docids) if other else None,
                  "pseudo_queries": manifest_hash(args.pseudo_queries) if args.pseudo_queries else None}
        manifest = write_manifest(
            tmp, KIND, counts=tally.counts, config=as_dict(args), inputs=inputs, skipped=tally.skipped,
            notes=tally.notes, tokenizer=tokenizer_identity(tokenizer, args.tokenizer),
            special_tokens={"prefix": encoder.prefix, "suffix": encoder.suffix},
            max_lengths={"stage1": args.stage1_max_length, "query": args.query_max_length},
            lowercase=args.lowercase, train_split=args.train_split,
            labels={"encoding": table.encoding, "max_docid_len": table.max_len,
                    "required_vocab": table.required_vocab, "target_vocab": table.manifest.get("target_vocab")})
    log.info("instances written to %s: %s", out, tally.counts)
    return manifest


@entry_point
def main(argv=None):
    """Build the three SFT stages' training instances and the evaluation files."""
    (args,) = parse_args([InstancesArguments], argv, prog="ddro instances", description=main.__doc__)
    run(args)
