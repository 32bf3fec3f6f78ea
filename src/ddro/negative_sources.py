"""The ranked lists `ddro negatives` samples from: one searcher class per `--source`.

A source class is used in three steps. Before anything is read or built,
`check(args, collection, k)` refuses bad input in one line and `inputs(args)` names what the
negatives will depend on besides the collection (hashes, for the manifest and the resume
journal). Then the searcher is built once (`Source(args, collection, k)`: the expensive part, a
BM25 index, a model, document embeddings) and searched chunk after chunk:
`.search({qid: text}, k)` returns {qid: [(doc id, score), ...]}, best first, at most k (a
`ddro.bm25` index has the same method, so a caller may hand one in). `chunk` is the number of
queries per journal commit (None: `ddro.negatives.SEARCH_CHUNK`), `uses` the arguments no other
source reads (given without this source, they are refused), `info()` what the manifest records.

A new source is one class added to SOURCES.
"""
from __future__ import annotations

from pathlib import Path

from .data.collection import Collection
from .docids.table import check_built_for
from .errors import DDROError
from .manifest import manifest_hash, manifest_hash_or_none, read_manifest


class Source:
    chunk: int | None = None
    uses: tuple[str, ...] = ()

    @classmethod
    def check(cls, args, collection: Collection, k: int) -> None:
        """One-line errors for bad arguments, before anything expensive."""

    @classmethod
    def inputs(cls, args) -> dict[str, str | None]:
        return {}

    def search(self, queries: dict[str, str], k: int, progress: bool = False) -> dict[str, list[tuple[str, float]]]:
        raise NotImplementedError

    def info(self) -> dict:
        return {}


class BM25Source(Source):
    """BM25 over the collection (the paper: k1 0.82, b 0.68), rebuilt on each start; its settings are the
    manifest's top-level params (backend, k1, b), as before sources existed."""

    def __init__(self, args, collection: Collection, k: int):
        from .bm25 import build_index, doc_text

        docs = ((d["_id"], doc_text(d)) for d in collection.iter_docs())
        self.index = build_index(args.backend, docs, k1=args.k1, b=args.b, threads=args.threads)

    def search(self, queries, k, progress=False):
        return self.index.search(queries, k, progress=progress)


def model_path(checkpoint: str) -> Path:
    """The folder a checkpoint argument loads from (as `ddro eval` resolves it)."""
    from .modeling.checkpoint import is_plain_checkpoint, resolve_checkpoint

    return Path(checkpoint) if is_plain_checkpoint(checkpoint) else resolve_checkpoint(checkpoint)


class ModelSource(Source):
    """The checkpoint's own ranking: `ddro eval`'s trie-constrained beam search (`generate_run`), with
    queries encoded as phase 2 and the SFT instances encode them; colliding documents of a docid
    come in the evaluator's order. A chunk is small: beam search is slow, and a kill loses one chunk."""
    chunk = 256
    uses = ("checkpoint", "docids", "beams")

    @classmethod
    def check(cls, args, collection, k):
        if not args.checkpoint or not args.docids:
            raise DDROError("--source model needs --checkpoint (the SFT checkpoint) and --docids (its docid folder)")
        if args.beams is not None and args.beams < k:
            raise DDROError(f"--beams {args.beams} returns fewer documents than the last band's end ({k}); "
                            "leave it unset (beams = the last band's end) or tighten --bands")
        if args.batch_size < 1 or args.query_max_length < 1:
            raise DDROError("--batch_size and --query_max_length must be at least 1")
        if manifest_hash_or_none(args.docids) is None:
            raise DDROError(f"--docids {args.docids}: not a docid folder (no manifest.json)")
        model_path(args.checkpoint)  # a missing or unfinished checkpoint fails here, not after BM25 or embedding
        check_built_for(args.docids, read_manifest(args.docids, "docids"), collection)

    @classmethod
    def inputs(cls, args):
        from .train.reference import checkpoint_identity  # what phase 2's reference cache keys the checkpoint by

        return {"checkpoint": checkpoint_identity(model_path(args.checkpoint)), "docids": manifest_hash(args.docids)}

    def __init__(self, args, collection, k):
        import torch

        from .distributed import device_for_rank
        from .docids.table import DocidTable
        from .eval.decoding import DecodingArguments
        from .eval.evaluate import docid_trie
        from .modeling.checkpoint import load_model

        self.table = DocidTable.load(args.docids)
        loaded = load_model(args.checkpoint, docids=self.table)
        self.device = torch.device(device_for_rank(args.device))
        self.model, self.tokenizer = loaded.model.to(self.device), loaded.tokenizer
        self.trie = docid_trie(self.model, self.table)
        self.decoding = DecodingArguments(beams=args.beams or k)
        self.args = args

    def search(self, queries, k, progress=False):
        from .eval.evaluate import generate_run
        from .train.pairs import encode_queries  # phase 2's query encoding: the SFT instances', exactly

        ids = encode_queries(self.tokenizer, list(queries.values()), self.args.lowercase, self.args.query_max_length)
        batch = [{"query_id": qid, "input_ids": row} for qid, row in zip(queries, ids)]
        hits = generate_run(self.model, self.tokenizer.pad_token_id or 0, batch, self.table, self.decoding,
                            self.args.batch_size, self.device, trie=self.trie)
        return {qid: ranked[:k] for qid, ranked in hits.items()}

    def info(self) -> dict:
        return {"decoding": self.decoding.resolved(self.trie), "query_max_length": self.args.query_max_length,
                "lowercase": self.args.lowercase}


class DenseSource(Source):
    """The dense baseline's ranking (`ddro dense`): the same embedder and embedding cache as the PQ
    docids, exact inner-product search (faiss) over the documents."""

    @classmethod
    def check(cls, args, collection, k):
        from .dense import require_manifest

        require_manifest(collection)
        if args.dense_query_max_length < 1 or args.embed_max_length < 0:
            raise DDROError("--dense_query_max_length must be at least 1 and --embed_max_length at least 0")

    def __init__(self, args, collection, k):
        from .dense import flat_index, query_encoder
        from .docids.embed import embed_collection

        vectors, self.embedding = embed_collection(
            collection, args.embedder, args.embed_fields, args.embed_cache, max_length=args.embed_max_length or None,
            batch_size=args.embed_batch_size, device=args.device)
        self.index = flat_index(vectors)
        self.model = query_encoder(args.embedder, args.device, args.dense_query_max_length)
        self.doc_ids, self.batch_size = collection.doc_ids(), args.embed_batch_size

    def search(self, queries, k, progress=False):
        from .dense import encode_queries, search

        vectors = encode_queries(self.model, list(queries.values()), self.batch_size, progress=progress)
        return search(self.index, vectors, list(queries), self.doc_ids, k)

    def info(self) -> dict:
        return {"embedding": self.embedding}


SOURCES: dict[str, type[Source]] = {"bm25": BM25Source, "model": ModelSource, "dense": DenseSource}
