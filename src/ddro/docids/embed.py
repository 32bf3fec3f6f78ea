"""Document embeddings with a sentence-transformers model, cached on disk.

The cache file is `<cache_dir>/<key>.npy` (float16, one row per document in collection
order) beside `<key>.json` describing it; the key hashes the model name, the
collection's manifest hash, the fields embedded and the sequence length. Every caller
gets the float16-rounded vectors, computed now or read back, so a cold and a warm run
quantize exactly the same numbers.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import DDROError
from ..io import atomic_file, read_json
from ..manifest import manifest_hash
from ..tokenizer import resolve_model_path

log = logging.getLogger(__name__)

FIELDS = ("title", "text", "url")
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


def cache_key(model: str, collection_hash: str, fields: list[str], max_length: int | None) -> str:
    spec = json.dumps({"model": model, "collection": collection_hash, "fields": list(fields),
                       "max_seq_length": max_length, "normalize": True}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:24]


def embed_collection(collection, model_name: str, fields: list[str], cache_dir: str | Path, *,
                     max_length: int | None = None, batch_size: int = 64,
                     device: str | None = None, check_dim=None) -> tuple[np.ndarray, dict]:
    """(n_docs, dim) float32 unit vectors (float16-rounded) and a description for the manifest.

    `check_dim(dim)` is called as soon as the dimension is known, before any encoding.
    """
    check_dim = check_dim or (lambda dim: None)
    unknown = [f for f in fields if f not in FIELDS]
    if unknown or not fields:
        raise DDROError(f"--embed-fields must be among {', '.join(FIELDS)}, got {fields}")
    key = cache_key(model_name, manifest_hash(collection.path), fields, max_length)
    cache_dir = Path(cache_dir)
    npy, meta = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if npy.is_file() and meta.is_file():
        info = read_json(meta)
        vectors = np.load(npy)
        if vectors.shape == (len(collection), info.get("dim")):
            log.info("embeddings: cache hit %s", npy)
            check_dim(info["dim"])
            return vectors.astype(np.float32), info
        log.warning("embeddings: %s does not match the collection, recomputing", npy)

    model = load_embedder(model_name, device)
    if max_length is not None:
        model.max_seq_length = max_length
    dim_of = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    check_dim(dim_of())
    seq_len = model.max_seq_length
    limit = CHARS_PER_TOKEN * seq_len if seq_len else None
    parts, chunk = [], []

    def flush():
        if chunk:
            parts.append(model.encode(chunk, batch_size=batch_size, normalize_embeddings=True,
                                      convert_to_numpy=True, show_progress_bar=False).astype(np.float16))
            chunk.clear()

    for doc in tqdm(collection.iter_docs(), total=len(collection), desc="embed", unit="doc", mininterval=2):
        chunk.append(doc_text(doc, fields)[:limit])
        if len(chunk) == CHUNK_DOCS:
            flush()
    flush()
    vectors = np.concatenate(parts)
    info = {"model": model_name, "cache_key": key, "dim": int(vectors.shape[1]), "fields": list(fields),
            "max_seq_length": seq_len, "normalized": True, "dtype": "float16"}
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(npy, overwrite=True, mode="wb") as f:
        np.save(f, vectors)
    with atomic_file(meta, overwrite=True) as f:
        f.write(json.dumps(info, indent=2) + "\n")
    log.info("embeddings: %d x %d written to %s", *vectors.shape, npy)
    return vectors.astype(np.float32), info
