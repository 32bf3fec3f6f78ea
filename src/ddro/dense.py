"""`ddro dense`: the dense-retrieval baseline on one split: a TREC run, its metrics, per-query scores.

Documents are embedded exactly as `ddro docids --encoding pq` embeds them, through the same
cache (`ddro.docids.embed`: same model, corpus, fields and length => same cache entry), so
a pipeline that built PQ docids pays nothing for the document side. Queries are encoded by the
same sentence-transformers model, normalised, and searched exhaustively by inner product
(faiss `IndexFlatIP`: exact, cosine on unit vectors) over the cached float16-rounded vectors.

Output folder: `run.trec` (`qid Q0 docid rank score tag`), `metrics.json`, `per_query.csv`
(see `ddro.eval.metrics`), `manifest.json` (kind "run").
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .config import as_dict, entry_point, parse_args
from .data.collection import Collection
from .distributed import device_for_rank
from .errors import DDROError
from .eval.metrics import write_run_folder
from .io import atomic_dir, check_output
from .manifest import MANIFEST, manifest_hash, write_manifest
from .tokenizer import OFFLINE_MINILM

log = logging.getLogger(__name__)


@dataclass
class DenseArguments:
    collection: str = field(metadata={"help": "collection folder with a manifest (see `ddro data beir`)"})
    out: str = field(metadata={"help": "output folder: run.trec, metrics.json, per_query.csv, manifest.json"})
    split: str = field(default="test", metadata={"help": "qrels split whose queries are searched and evaluated"})
    k: int = field(default=100, metadata={"help": "documents retrieved per query"})
    embedder: str = field(default=OFFLINE_MINILM, metadata={
        "help": "sentence-transformers encoder of documents and queries (folder, hub name, or offline:minilm)"})
    embed_fields: list[str] = field(default_factory=lambda: ["title", "text"], metadata={
        "help": "document fields embedded, joined by a space"})
    embed_max_length: int = field(default=128, metadata={
        "help": "max tokens read per document (the presets' docids embed_max_length); 0: the model's own, "
                "as `ddro docids` reads with its embed_max_length unset"})
    query_max_length: int = field(default=64, metadata={"help": "max tokens read per query"})
    embed_batch_size: int = field(default=64, metadata={"help": "documents or queries per encoding batch"})
    embed_cache: str = field(default="resources/cache/embeddings", metadata={
        "help": "document embedding cache, shared with `ddro docids --encoding pq` (same arguments => same entry)"})
    device: Optional[str] = field(default=None, metadata={"help": "device; unset: cuda if available"})
    tag: str = field(default="dense", metadata={"help": "run tag (last column of run.trec)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --out"})


def query_encoder(embedder: str, device: str | None, max_length: int):
    """The sentence-transformers model that embeds queries, reading at most `max_length` tokens."""
    from .docids.embed import load_embedder

    model = load_embedder(embedder, device_for_rank(device))
    model.max_seq_length = max_length
    return model


def encode_queries(model, texts: list[str], batch_size: int, progress: bool = True) -> np.ndarray:
    """(n, dim) float32 unit vectors of the queries, in order."""
    return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=progress).astype(np.float32)


def flat_index(doc_vectors: np.ndarray):
    """An exact inner-product index (faiss `IndexFlatIP`) of the document vectors."""
    import faiss

    index = faiss.IndexFlatIP(doc_vectors.shape[1])
    index.add(np.ascontiguousarray(doc_vectors, dtype=np.float32))
    return index


def search(index, query_vectors: np.ndarray, qids: list[str], doc_ids: list[str],
           k: int) -> dict[str, list[tuple[str, float]]]:
    """The k highest inner products per query, best first: {qid: [(doc id, score), ...]}."""
    scores, rows = index.search(np.ascontiguousarray(query_vectors, dtype=np.float32), min(k, index.ntotal))
    return {qid: [(doc_ids[r], float(s)) for r, s in zip(rows[i], scores[i]) if r >= 0]
            for i, qid in enumerate(qids)}


def require_manifest(collection: Collection) -> None:
    if not (collection.path / MANIFEST).is_file():  # the embedding cache key reads corpus.jsonl's hash from it
        raise DDROError(f"{collection.path}: no {MANIFEST}; import it first: "
                        f"ddro data beir --path {collection.path} --out DIR")


def check_args(args: DenseArguments) -> None:
    if args.k < 1:
        raise DDROError(f"--k must be at least 1, got {args.k}")
    if args.query_max_length < 1 or args.embed_max_length < 0:
        raise DDROError("--query_max_length must be at least 1 and --embed_max_length at least 0")
    if not args.tag or any(c.isspace() for c in args.tag):
        raise DDROError(f"--tag {args.tag!r} must be one word")


def run(args: DenseArguments) -> dict:
    from .docids.embed import embed_collection

    check_args(args)
    check_output(args.out, args.overwrite)
    collection = Collection(args.collection)
    require_manifest(collection)
    qrels = collection.qrels(args.split)
    all_queries = collection.queries()
    qids = sorted(qrels)  # read_qrels has checked every id is known
    doc_vectors, embedding = embed_collection(
        collection, args.embedder, args.embed_fields, args.embed_cache, max_length=args.embed_max_length or None,
        batch_size=args.embed_batch_size, device=args.device)
    model = query_encoder(args.embedder, args.device, args.query_max_length)
    query_vectors = encode_queries(model, [all_queries[q] for q in qids], args.embed_batch_size)
    doc_ids = collection.doc_ids()
    hits = search(flat_index(doc_vectors), query_vectors, qids, doc_ids, args.k)
    with atomic_dir(args.out, args.overwrite) as tmp:
        metrics, _ = write_run_folder(tmp, hits, qrels, args.tag, depth=args.k)
        manifest = write_manifest(
            tmp, "run", config=as_dict(args),
            inputs={"collection": manifest_hash(collection.path)},
            counts={"docs": len(doc_ids), "queries": len(qids), "evaluated_queries": metrics["queries"],
                    "hits": sum(len(h) for h in hits.values())},
            split=args.split, metrics=metrics, embedding=embedding)
    log.info("dense %s: %s", args.split,
             ", ".join(f"{m} {v:.4f}" if isinstance(v, float) else f"{m} {v}" for m, v in metrics.items()))
    log.info("run written to %s", args.out)
    return manifest


@entry_point
def main(argv=None):
    """Dense baseline: exact inner-product search of a split's queries over the cached document
    embeddings; write a TREC run and its metrics."""
    (args,) = parse_args([DenseArguments], argv, prog="ddro dense", description=main.__doc__)
    run(args)


if __name__ == "__main__":
    main()
