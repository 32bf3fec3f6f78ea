"""`ddro bm25`: the BM25 baseline on one split: a TREC run, its metrics, per-query scores.

Output folder: `run.trec` (`qid Q0 docid rank score tag`), `metrics.json` (means over
the split's queries with a relevant document, see `ddro.eval.metrics`), `per_query.csv`,
`manifest.json` (kind "run").
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..config import as_dict, entry_point, parse_args
from ..data.collection import Collection
from ..errors import DDROError
from ..eval.metrics import write_run_folder
from ..io import atomic_dir, check_output
from ..manifest import MANIFEST, manifest_hash_or_none, write_manifest
from .backends import ANSERINI_B, ANSERINI_K1, BACKENDS, build_index, doc_text

log = logging.getLogger(__name__)


@dataclass
class BM25Arguments:
    collection: str = field(metadata={"help": "collection folder (see `ddro data beir`)"})
    out: str = field(metadata={"help": "output folder: run.trec, metrics.json, per_query.csv, manifest.json"})
    split: str = field(default="test", metadata={"help": "qrels split whose queries are searched and evaluated"})
    k: int = field(default=100, metadata={"help": "documents retrieved per query"})
    backend: str = field(default="bm25s", metadata={"help": f"one of: {', '.join(BACKENDS)}"})
    k1: float = field(default=ANSERINI_K1, metadata={
        "help": "BM25 k1 (Anserini's default; the DDRO paper uses 0.82 for train queries)"})
    b: float = field(default=ANSERINI_B, metadata={
        "help": "BM25 b (Anserini's default; the DDRO paper uses 0.68 for train queries)"})
    stem: bool = field(default=True, metadata={"help": "English stemming (bm25s: Snowball; pyserini: Porter)"})
    stopwords: bool = field(default=True, metadata={"help": "remove English stop words"})
    threads: int = field(default=0, metadata={"help": "search threads (0: every core)"})
    tag: str = field(default="bm25", metadata={"help": "run tag (last column of run.trec)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --out"})


def run(args: BM25Arguments) -> dict:
    if args.backend not in BACKENDS:
        raise DDROError(f"unknown --backend {args.backend!r} (choose from {', '.join(BACKENDS)})")
    if not args.tag or any(c.isspace() for c in args.tag):
        raise DDROError(f"--tag {args.tag!r} must be one word")
    check_output(args.out, args.overwrite)
    collection = Collection(args.collection)
    qrels = collection.qrels(args.split)
    all_queries = collection.queries()
    queries = {qid: all_queries[qid] for qid in qrels}  # read_qrels has checked every id is known
    index = build_index(args.backend, ((d["_id"], doc_text(d)) for d in collection.iter_docs()),
                        k1=args.k1, b=args.b, stem=args.stem, stopwords=args.stopwords, threads=args.threads)
    hits = index.search(queries, args.k)
    collection_hash = manifest_hash_or_none(collection.path)
    if collection_hash is None:
        log.warning("%s has no %s: the run cannot record which collection it came from", collection.path, MANIFEST)
    with atomic_dir(args.out, args.overwrite) as tmp:
        metrics, _ = write_run_folder(tmp, hits, qrels, args.tag, depth=args.k)
        manifest = write_manifest(
            tmp, "run", config=as_dict(args),
            inputs={"collection": collection_hash},
            counts={"docs": len(index), "queries": len(queries), "evaluated_queries": metrics["queries"],
                    "hits": sum(len(h) for h in hits.values())},
            split=args.split, metrics=metrics)
    log.info("%s %s: %s", args.backend, args.split,
             ", ".join(f"{m} {v:.4f}" if isinstance(v, float) else f"{m} {v}" for m, v in metrics.items()))
    log.info("run written to %s", args.out)
    return manifest


@entry_point
def main(argv=None):
    """BM25 baseline: search a split's queries, write a TREC run and its metrics."""
    (args,) = parse_args([BM25Arguments], argv, prog="ddro bm25", description=main.__doc__)
    run(args)


if __name__ == "__main__":
    main()
