"""`ddro pseudo-queries`: queries generated for every document (training stage 2 input).

Two methods:

- `doc2query` (the paper): a seq2seq doc2query model, by default
  `castorini/doc2query-t5-large-msmarco`, samples `--per-doc` queries per document with
  top-k sampling (k=10) from the first 256 input tokens, at most 32 query tokens.
- `spans` (offline): pseudo-queries cut from the document itself, inverse-cloze style
  (ICT, Lee et al. 2019): whole sentences plus random contiguous spans of 8-16 words.
  No pretrained doc2query model is reachable offline, and a randomly initialised one
  writes noise; sentences and spans are a cheap, known substitute (on SciFact, 5 per
  document of abstract sentences / 8-16 word spans work). Each document has its own
  random stream (seed + a stable hash of its id), so results do not depend on order.

Output: a folder with `pseudo_queries.jsonl` ({"doc_id", "query"} lines in collection
order) and `manifest.json` (kind "pseudo_queries"). Generation is resumable: finished
batches are appended to `.<out>.partial/` beside the output, with a state file recording
how many documents and bytes are complete; a restart with the same settings truncates
anything after that point and goes on. Only a complete run is renamed to `--out`.

Several processes (torchrun ranks, or `--num_shards K --shard_index i` tasks, see
`ddro.distributed`) each generate a contiguous block of batches, resumably, into
`<out>.shards/`; the last to finish concatenates them in order. Sampling is seeded per
global batch, so the merged file equals a single process's byte for byte.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm.auto import tqdm

from .config import as_dict, entry_point, parse_args
from .distributed import (
    INDEX_HELP,
    SHARD_HELP,
    Shard,
    ShardSet,
    barrier,
    default_num_shards,
    default_shard_index,
    device_for_rank,
    is_main_process,
    plan_shard,
)
from .errors import DDROError, InputError
from .io import Journal, atomic_dir, check_output, dumps_line, iter_jsonl, partial_dir
from .manifest import MANIFEST, manifest_hash_or_none, read_manifest, write_manifest

log = logging.getLogger(__name__)

KIND = "pseudo_queries"
FILE = "pseudo_queries.jsonl"
METHODS = ("spans", "doc2query")


@dataclass
class PseudoQueriesArguments:
    collection: str = field(metadata={"help": "collection folder"})
    out: str = field(metadata={"help": f"output folder ({FILE} + {MANIFEST})"})
    method: str = field(default="spans", metadata={"help": "spans (offline) or doc2query (a seq2seq model)",
                                                   "choices": list(METHODS)})
    per_doc: int = field(default=10, metadata={"help": "pseudo-queries per document"})
    seed: int = field(default=42, metadata={"help": "random seed (sampling, span positions)"})
    sentence_fraction: float = field(default=0.5, metadata={
        "help": "spans: share of the queries that are whole sentences (the rest are word spans)"})
    span_min_words: int = field(default=8, metadata={"help": "spans: shortest span, in words"})
    span_max_words: int = field(default=16, metadata={"help": "spans: longest span, in words"})
    model: str = field(default="castorini/doc2query-t5-large-msmarco",
                       metadata={"help": "doc2query: model name or folder"})
    top_k: int = field(default=10, metadata={"help": "doc2query: top-k sampling"})
    max_input_length: int = field(default=256, metadata={"help": "doc2query: document tokens read"})
    max_query_length: int = field(default=32, metadata={"help": "doc2query: longest query, in tokens"})
    batch_size: int = field(default=16, metadata={"help": "documents per generation batch"})
    device: str = field(default="auto", metadata={"help": "doc2query: torch device (auto = cuda if available)"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace an existing --out, and discard an unfinished run made with other settings"})
    num_shards: int = field(default_factory=default_num_shards, metadata={"help": SHARD_HELP})
    shard_index: int = field(default_factory=default_shard_index, metadata={"help": INDEX_HELP})
    merge_shards: bool = field(default=False, metadata={
        "help": "only merge the finished shards in <out>.shards/ into --out (same arguments as the shard "
                "runs; needed only when the automatic merge did not happen)"})


def stable_seed(seed: int, doc_id: str) -> int:
    """A per-document seed that does not depend on the order or sharding of the corpus."""
    return int.from_bytes(hashlib.sha256(f"{seed}\t{doc_id}".encode()).digest()[:8], "little")


def span_queries(doc: dict, n: int, seed: int, sentence_fraction: float = 0.5,
                 min_words: int = 8, max_words: int = 16) -> list[str]:
    """`n` queries from the document: sentences (in document order), then random word spans."""
    from .data.sentences import split_sentences

    rng = np.random.default_rng(stable_seed(seed, doc["_id"]))
    sentences = doc["sents"] if "sents" in doc else split_sentences(doc["text"])
    words = f"{doc['title']} {doc['text']}".split()
    n_sentences = min(len(sentences), int(n * sentence_fraction))
    picked = np.sort(rng.choice(len(sentences), n_sentences, replace=False)) if n_sentences else []
    queries = [sentences[i] for i in picked]
    for _ in range(n - n_sentences):
        length = min(int(rng.integers(min_words, max_words + 1)), len(words))
        start = int(rng.integers(0, len(words) - length + 1))
        queries.append(" ".join(words[start:start + length]))
    return queries


class Doc2Query:
    """Batched top-k sampling from a seq2seq doc2query model."""

    def __init__(self, args: PseudoQueriesArguments):
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.torch, self.args = torch, args
        self.device = device_for_rank(None if args.device == "auto" else args.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(args.model)
            # doc2query models on the Hub ship pytorch_model.bin: read with the restricted (weights-only)
            # unpickler, never the full one; safetensors are preferred when present
            self.model = AutoModelForSeq2SeqLM.from_pretrained(args.model, weights_only=True,
                                                               trust_remote_code=False).to(self.device).eval()
        except (OSError, ValueError) as e:
            raise DDROError(f"cannot load doc2query model {args.model!r}: {e}") from None
        log.info("doc2query model %s on %s", args.model, self.device)

    def __call__(self, docs: list[dict], batch_index: int) -> list[list[str]]:
        a = self.args
        # One seed per batch: batches always start at multiples of batch_size, so a resumed
        # run samples exactly what an uninterrupted one would.
        self.torch.manual_seed(stable_seed(a.seed, f"batch {batch_index}") % 2**63)
        texts = [f"{d['title']} {d['text']}".strip() for d in docs]
        enc = self.tokenizer(texts, max_length=a.max_input_length, truncation=True, padding=True,
                             return_tensors="pt").to(self.device)
        with self.torch.inference_mode():
            out = self.model.generate(**enc, do_sample=True, top_k=a.top_k, top_p=1.0, temperature=1.0,
                                      max_new_tokens=a.max_query_length, num_return_sequences=a.per_doc)
        decoded = [q.strip() for q in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
        return [decoded[i * a.per_doc:(i + 1) * a.per_doc] for i in range(len(docs))]


def make_generator(args: PseudoQueriesArguments) -> Callable[[list[dict], int], list[list[str]]]:
    if args.method == "doc2query":
        return Doc2Query(args)
    if not 1 <= args.span_min_words <= args.span_max_words:
        raise DDROError("need 1 <= --span-min-words <= --span-max-words")
    if not 0 <= args.sentence_fraction <= 1:
        raise DDROError("--sentence-fraction must be between 0 and 1")
    return lambda docs, _: [span_queries(d, args.per_doc, args.seed, args.sentence_fraction,
                                         args.span_min_words, args.span_max_words) for d in docs]


def batches(docs: Iterator[dict], size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


SHARD_ARGS = ("num_shards", "shard_index", "merge_shards")


def generate_block(args: PseudoQueriesArguments, collection, generate, partial: Path, identity: dict,
                   batch_range: range) -> Journal:
    """Generate the documents of batches `batch_range` into a journal in `partial` (its file is
    `partial`/FILE), resuming an unfinished run with the same identity; returns the journal."""
    journal = Journal(partial, identity, args.overwrite, name=FILE)
    if journal.done:
        log.info("resuming %s after %d documents", partial, journal.done)
    first = batch_range.start * args.batch_size
    n_docs = max(0, min(len(collection), batch_range.stop * args.batch_size) - first)
    done, empty_dropped = journal.done, journal.stats.get("empty_dropped", 0)
    with tqdm(total=n_docs, initial=done, desc="pseudo-queries", unit="doc", mininterval=2) as bar:
        docs = itertools.islice(collection.iter_docs(), first + done, first + n_docs)
        # batch numbers are global, so every batch samples as in a single process
        for index, batch in enumerate(batches(docs, args.batch_size), start=(first + done) // args.batch_size):
            lines = []
            for doc, queries in zip(batch, generate(batch, index)):
                kept = [q for q in queries if q.strip()]
                empty_dropped += len(queries) - len(kept)
                lines += [dumps_line({"doc_id": doc["_id"], "query": q}) for q in kept]
            journal.append("".join(lines).encode("utf-8"), len(batch), {"empty_dropped": empty_dropped})
            bar.update(len(batch))
    if not journal.path.is_file():  # an empty block (more shards than batches): an empty file
        journal.append(b"", 0, {"empty_dropped": 0})
    return journal


def generate_shard(args: PseudoQueriesArguments, collection, identity: dict, shard: Shard) -> ShardSet | None:
    """Write this process's shard to <out>.shards/; the shards when this process is the one to merge them."""
    shards = ShardSet(args.out, {k: v for k, v in identity.items() if k != "device"}, shard.count, "jsonl")
    if args.merge_shards:
        if shard.count == 1:
            raise DDROError("--merge_shards needs --num_shards: the number of shards to merge")
        return shards if is_main_process() else None
    if shards.done(shard) is not None and not args.overwrite:
        log.info("shard %d of %d: already done, reused", shard.index, shard.count)
    else:
        partial = shards.payload(shard).with_suffix(".partial")
        block = shard.block(-(-len(collection) // args.batch_size))
        journal = generate_block(args, collection, make_generator(args), partial,
                                 {**identity, "shard": shard.index, "num_shards": shard.count}, block)
        shards.marker(shard).unlink(missing_ok=True)
        os.replace(journal.path, shards.payload(shard))
        shards.finish(shard, docs=journal.done, empty_dropped=journal.stats["empty_dropped"])
        shutil.rmtree(partial, ignore_errors=True)
    barrier()
    if is_main_process() and shards.claim_merge():
        return shards
    log.info("shard %d of %d written to %s", shard.index, shard.count, shards.folder)
    return None


def run(args: PseudoQueriesArguments) -> dict:
    from .data.collection import Collection

    if args.per_doc < 1 or args.batch_size < 1:
        raise DDROError("--per-doc and --batch-size must be at least 1")
    out = check_output(args.out, args.overwrite)
    collection = Collection(args.collection)
    collection_hash = manifest_hash_or_none(collection.path)
    config = {k: v for k, v in as_dict(args).items() if k not in SHARD_ARGS}
    identity = {k: v for k, v in config.items() if k not in ("out", "overwrite")}
    identity["collection_manifest"] = collection_hash
    n_docs = len(collection)
    shard = plan_shard(args.num_shards, args.shard_index)
    if shard.count == 1 and not args.merge_shards:
        partial, shards = partial_dir(out), None
        journal = generate_block(args, collection, make_generator(args), partial, identity,
                                 range(-(-n_docs // args.batch_size)))
        empty_dropped = journal.stats["empty_dropped"]
    else:
        shards = generate_shard(args, collection, identity, shard)
        if shards is None:  # another process merges
            return {}
        stats = shards.require_complete()
        partial = shards.folder / f"{shards.tag}.merged"
        partial.mkdir(exist_ok=True)
        with open(partial / FILE, "wb") as f:  # the shards in order: the documents in collection order
            for part in shards.shards():
                with open(shards.payload(part), "rb") as src:
                    shutil.copyfileobj(src, f)
        empty_dropped = sum(s["empty_dropped"] for s in stats)

    n_queries, with_queries = 0, set()
    for _, obj in iter_jsonl(partial / FILE):
        n_queries += 1
        with_queries.add(obj["doc_id"])
    counts = {"docs": n_docs, "queries": n_queries, "docs_without_queries": n_docs - len(with_queries),
              "empty_dropped": empty_dropped}
    with atomic_dir(out, args.overwrite) as tmp:
        os.replace(partial / FILE, tmp / FILE)
        manifest = write_manifest(tmp, KIND, counts=counts, config=config,
                                  inputs={"collection": collection_hash}, method=args.method)
    shutil.rmtree(partial, ignore_errors=True)
    if shards is not None:
        shards.cleanup()
    log.info("%d pseudo-queries for %d documents written to %s", n_queries, n_docs, out)
    return manifest


def check_pseudo_queries(folder: str | Path, collection) -> dict:
    """Refuse pseudo-queries made for another collection or naming unknown documents."""
    folder = Path(folder)
    manifest = read_manifest(folder, KIND)
    want = manifest.get("inputs", {}).get("collection")
    have = manifest_hash_or_none(collection.path)
    if want and have and want != have:
        raise DDROError(f"{folder}: pseudo-queries were made for another collection "
                        f"(manifest {want[:12]}), not {collection.path} ({have[:12]})")
    known = set(collection.doc_ids())
    for lineno, obj in iter_jsonl(folder / FILE):
        doc_id, query = obj.get("doc_id"), obj.get("query")
        if not isinstance(doc_id, str) or not isinstance(query, str):
            raise InputError(folder / FILE, "expected string fields 'doc_id' and 'query'", lineno)
        if doc_id not in known:
            raise InputError(folder / FILE, f"unknown document {doc_id!r} (not in {collection.path})", lineno)
    return manifest


def iter_pseudo_queries(folder: str | Path) -> Iterator[tuple[str, str]]:
    for _, obj in iter_jsonl(Path(folder) / FILE):
        yield obj["doc_id"], obj["query"]


@entry_point
def main(argv=None):
    """Generate pseudo-queries for every document (doc2query model, or sentences and spans offline)."""
    (args,) = parse_args([PseudoQueriesArguments], argv, prog="ddro pseudo-queries", description=main.__doc__)
    run(args)


if __name__ == "__main__":
    main()
