"""Document embeddings with a sentence-transformers model, cached on disk.

The cache file is `<cache_dir>/<key>.npy` (float16, one row per document in collection
order) beside `<key>.json` describing it; the key hashes the model name, the documents
(corpus.jsonl's sha256 from the collection manifest: every import of one corpus shares the
entry), the fields embedded and the sequence length. Every caller
gets the float16-rounded vectors, computed now or read back, so a cold and a warm run
quantize exactly the same numbers.

Several processes fill the cache together (`python -m ddro.docids.embed` with torchrun or
`--num_shards K --shard_index i`; `ddro docids` under torchrun): each embeds a contiguous
block of chunks, and the merged matrix equals a single process's (same chunks, same batches).

Resumable: each chunk's vectors are committed to `<cache_dir>/<key>.partial/` (per shard:
beside the shard), so a killed run goes on after its last chunk; only a complete matrix
becomes `<key>.npy`.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm.auto import tqdm

from ..config import entry_point, parse_args
from ..distributed import (
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
    world_size,
)
from ..errors import DDROError
from ..io import Journal, atomic_file, read_json
from ..manifest import manifest_hash
from ..tokenizer import OFFLINE_MINILM, resolve_model_path

log = logging.getLogger(__name__)

FIELDS = ("title", "text", "url")
INFO_KEYS = ("model", "cache_key", "dim", "fields", "max_seq_length", "normalized", "dtype")
CHUNK_DOCS = 256       # documents handed to model.encode at a time (bounded memory, live progress)
CHARS_PER_TOKEN = 16   # text is cut to max_seq_length * this before tokenizing: never shorter than
                       # what the model reads, and MS MARCO's long bodies are not tokenized in full


def doc_text(doc: dict, fields: list[str]) -> str:
    return " ".join(doc[f] for f in fields if doc.get(f))


def load_embedder(name: str, device: str | None = None):
    from sentence_transformers import SentenceTransformer

    path = resolve_model_path(name)
    try:  # HF_HUB_OFFLINE=1 makes a hub name that is not cached fail here, with the hub's reason
        return SentenceTransformer(path, device=device)
    except Exception as e:  # OSError, ValueError, hub errors: all mean "this model cannot be loaded"
        reason = " ".join(str(e).split())  # hub messages span lines; the CLI prints one
        raise DDROError(f"cannot load embedding model {name!r}: {e.__class__.__name__}: {reason}") from None


def corpus_identity(path: Path) -> str:
    """What the embeddings depend on: the documents in order, i.e. corpus.jsonl's sha256 as the collection
    manifest records it, so two imports of one source (other output folders, other qrels) share the cache;
    the manifest's own hash for a collection whose manifest lists no files."""
    files = read_json(Path(path) / "manifest.json").get("files") or {}
    return files.get("corpus.jsonl") or manifest_hash(path)


def cache_key(model: str, collection_hash: str, fields: list[str], max_length: int | None) -> str:
    spec = json.dumps({"model": model, "collection": collection_hash, "fields": list(fields),
                       "max_seq_length": max_length, "normalize": True}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:24]


def read_cache(cache_dir: Path, key: str, n_docs: int) -> tuple[np.ndarray, dict] | None:
    npy, meta = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if npy.is_file() and meta.is_file():
        info = read_json(meta)
        vectors = np.load(npy)
        if vectors.shape == (n_docs, info.get("dim")):
            log.info("embeddings: cache hit %s", npy)
            return vectors, info
        log.warning("embeddings: %s does not match the collection, recomputing", npy)
    return None


def write_cache(cache_dir: Path, key: str, vectors: np.ndarray, info: dict) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(cache_dir / f"{key}.npy", overwrite=True, mode="wb") as f:
        np.save(f, vectors)
    with atomic_file(cache_dir / f"{key}.json", overwrite=True) as f:
        f.write(json.dumps(info, indent=2) + "\n")
    log.info("embeddings: %d x %d written to %s", *vectors.shape, cache_dir / f"{key}.npy")


def encode_docs(collection, model_name: str, fields: list[str], chunks: range, *, max_length: int | None,
                batch_size: int, device: str | None, check_dim,
                journal: Journal | None = None) -> tuple[np.ndarray, dict]:
    """float16 unit vectors of the documents in chunks `chunks` (CHUNK_DOCS documents each).

    With a `journal`, each chunk's vectors are committed to it, and a run killed before the end
    restarts after its last committed chunk (same chunks, same batches: the same vectors)."""
    model = load_embedder(model_name, device_for_rank(device))
    if max_length is not None:
        model.max_seq_length = max_length
    dim_of = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dim = dim_of()
    check_dim(dim)
    seq_len = model.max_seq_length
    limit = CHARS_PER_TOKEN * seq_len if seq_len else None
    first, stop = chunks.start * CHUNK_DOCS, min(len(collection), chunks.stop * CHUNK_DOCS)
    parts, chunk = [np.zeros((0, dim), dtype=np.float16)], []
    done = journal.done if journal is not None else 0
    if done:
        log.info("embeddings: resuming %s after %d documents", journal.folder, done)

    def flush():
        if chunk:
            vectors = model.encode(chunk, batch_size=batch_size, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=False).astype(np.float16)
            if journal is not None:
                journal.append(vectors.tobytes(), len(chunk))
            else:
                parts.append(vectors)
            chunk.clear()

    docs = itertools.islice(collection.iter_docs(), first + done, max(first, stop))
    for doc in tqdm(docs, total=max(0, stop - first), initial=done, desc="embed", unit="doc", mininterval=2):
        chunk.append(doc_text(doc, fields)[:limit])
        if len(chunk) == CHUNK_DOCS:
            flush()
    flush()
    if journal is not None:
        parts.append(np.frombuffer(journal.read_bytes(), dtype=np.float16).reshape(-1, dim))
    info = {"model": model_name, "cache_key": None, "dim": int(dim), "fields": list(fields),
            "max_seq_length": seq_len, "normalized": True, "dtype": "float16"}
    return np.concatenate(parts), info


def embed_collection(collection, model_name: str, fields: list[str], cache_dir: str | Path, *,
                     max_length: int | None = None, batch_size: int = 64,
                     device: str | None = None, check_dim=None,
                     shard: Shard | None = None, merge_only: bool = False) -> tuple[np.ndarray, dict] | None:
    """(n_docs, dim) float32 unit vectors (float16-rounded) and a description for the manifest.

    `check_dim(dim)` is called as soon as the dimension is known, before any encoding.
    Several processes: each embeds `shard`'s block of chunks (default: its torchrun rank's) into
    `<cache_dir>/<key>.shards/`; the one that completes the set (torchrun: rank 0) writes the
    cache; under torchrun every rank then returns the vectors, otherwise the processes that did
    not merge return None. `merge_only`: only merge finished shards.
    """
    check_dim = check_dim or (lambda dim: None)
    unknown = [f for f in fields if f not in FIELDS]
    if unknown or not fields:
        raise DDROError(f"--embed-fields must be among {', '.join(FIELDS)}, got {fields}")
    key = cache_key(model_name, corpus_identity(collection.path), fields, max_length)
    cache_dir = Path(cache_dir)
    cached = read_cache(cache_dir, key, len(collection))
    if cached is not None:
        check_dim(cached[1]["dim"])
        return cached[0].astype(np.float32), cached[1]

    shard = shard or plan_shard(1, 0)
    n_chunks = -(-len(collection) // CHUNK_DOCS)
    kwargs = dict(max_length=max_length, batch_size=batch_size, device=device, check_dim=check_dim)
    resume = {"cache_key": key, "chunk_docs": CHUNK_DOCS, "batch_size": batch_size}  # a journal's identity
    if shard.count == 1 and not merge_only:
        journal = Journal(cache_dir / f"{key}.partial", resume, overwrite=True)
        vectors, info = encode_docs(collection, model_name, fields, range(n_chunks), journal=journal, **kwargs)
        info["cache_key"] = key
        write_cache(cache_dir, key, vectors, info)
        journal.discard()
        return vectors.astype(np.float32), info

    shards = ShardSet(cache_dir / key, {"cache_key": key}, shard.count, "npy")
    merge = is_main_process()
    if not merge_only:
        if shards.done(shard) is None:
            journal = Journal(shards.payload(shard).with_suffix(".partial"),
                              {**resume, "shard": shard.index, "num_shards": shard.count}, overwrite=True)
            vectors, info = encode_docs(collection, model_name, fields, shard.block(n_chunks), journal=journal,
                                        **kwargs)
            with shards.writing(shard, mode="wb") as f:
                np.save(f, vectors)
            shards.finish(shard, rows=len(vectors), info=info)
            journal.discard()
        barrier()
        merge = is_main_process() and shards.claim_merge()
    if merge:
        stats = shards.require_complete()
        vectors = np.concatenate([np.load(shards.payload(s)) for s in shards.shards()])
        info = {**dict.fromkeys(INFO_KEYS), **stats[0]["info"], "cache_key": key}  # the single-process order
        write_cache(cache_dir, key, vectors, info)
        shards.cleanup()
    barrier()  # torchrun: every rank reads what rank 0 wrote
    cached = read_cache(cache_dir, key, len(collection)) if merge or world_size() > 1 else None
    if cached is None:  # another task completes the set
        log.info("embeddings: shard %d of %d written to %s", shard.index, shard.count, shards.folder)
        return None
    vectors, info = cached
    check_dim(info["dim"])
    return vectors.astype(np.float32), info


@dataclass
class EmbedArguments:
    collection: str = field(metadata={"help": "collection folder"})
    embedder: str = field(default=OFFLINE_MINILM, metadata={
        "help": "sentence-transformers model (folder, hub name, or offline:minilm)"})
    embed_fields: list[str] = field(default_factory=lambda: ["title", "text"], metadata={
        "help": "document fields embedded, joined by a space"})
    embed_max_length: Optional[int] = field(default=None, metadata={
        "help": "max tokens the embedder reads; unset: the model's own"})
    embed_batch_size: int = field(default=64, metadata={"help": "documents per embedding batch"})
    embed_cache: str = field(default="resources/cache/embeddings", metadata={
        "help": "the embedding cache `ddro docids --encoding pq/rq/semantic` reads (same arguments => same "
                "cache entry)"})
    device: Optional[str] = field(default=None, metadata={"help": "device; unset: cuda (this rank's) if available"})
    num_shards: int = field(default_factory=default_num_shards, metadata={"help": SHARD_HELP.replace(
        "<out>.shards/", "<embed_cache>/<key>.shards/").replace("into --out", "into the cache")})
    shard_index: int = field(default_factory=default_shard_index, metadata={"help": INDEX_HELP})
    merge_shards: bool = field(default=False, metadata={
        "help": "only merge the finished shards into the cache (when the automatic merge did not happen)"})


def run(args: EmbedArguments):
    from ..data.collection import Collection

    if args.merge_shards and args.num_shards == 1:
        raise DDROError("--merge_shards needs --num_shards: the number of shards to merge")
    return embed_collection(Collection(args.collection), args.embedder, args.embed_fields, args.embed_cache,
                            max_length=args.embed_max_length, batch_size=args.embed_batch_size,
                            device=args.device, shard=plan_shard(args.num_shards, args.shard_index),
                            merge_only=args.merge_shards)


@entry_point
def main(argv=None):
    """Fill the embedding cache of `ddro docids` (pq, rq, semantic), sharded over torchrun ranks or array tasks."""
    (args,) = parse_args([EmbedArguments], argv, prog="ddro docids embed", description=main.__doc__)
    run(args)


if __name__ == "__main__":
    main()
