"""The frozen reference of phase 2: its log-probabilities, computed once and cached on disk.

The reference is the SFT checkpoint itself. Its log p_ref(docid | query) is needed for every
(query, docid) the training pairs use; one batched no-grad pass (encoder once per query)
computes them before training, and a cache file keyed by the checkpoint, the negatives, the
docid table, the query encoding and the precision keeps them for later runs, so training
runs a single model.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..io import Journal, atomic_file, sha256_file
from ..manifest import MANIFEST, manifest_hash
from ..padding import IGNORE, pad_queries, pad_rows
from .ddro_loss import grouped_logps

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def checkpoint_identity(folder: Path) -> str:
    """The checkpoint's manifest hash, or (a checkpoint without manifest) the hash of its files."""
    if (folder / MANIFEST).is_file():
        return manifest_hash(folder)
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*")):
        if path.is_file() and (path.suffix in (".safetensors", ".json")):
            digest.update(f"{path.name}\t{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def query_batches(items: np.ndarray, batch_size: int):
    """Row ranges [lo, hi) of `items` (sorted by query) holding whole queries, at most `batch_size`
    rows each (a query with more rows gets a batch of its own)."""
    ends = np.r_[np.flatnonzero(items[1:, 0] != items[:-1, 0]) + 1, len(items)] if len(items) else []
    lo = prev = 0
    for end in ends:
        if end - lo > batch_size and prev > lo:
            yield lo, prev
            lo = prev
        prev = end
    if prev > lo:
        yield lo, prev


def compute_reference_logps(model, query_ids: list[list[int]], docid_tokens: list[tuple[int, ...]],
                            items: np.ndarray, pad_token_id: int, batch_size: int,
                            autocast: torch.dtype | None = None, journal: Journal | None = None) -> np.ndarray:
    """log p_ref(docid | query) for each (query index, doc index) row of `items` (sorted by query).

    One no-grad pass: each batch runs the encoder once per distinct query and the decoder on
    that query's docids, up to `batch_size` (query, docid) rows per batch; `autocast`: the
    mixed-precision dtype training will use (None: full precision). With a `journal`, each
    batch is committed to it and a pass killed before the end goes on after its last batch.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = np.zeros(len(items), dtype=np.float32)
    done = journal.done if journal is not None else 0
    if done:
        log.info("reference log-probs: resuming %s after %d of %d rows", journal.folder, done, len(items))
        out[:done] = np.frombuffer(journal.read_bytes(), dtype=np.float32)
    amp = torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    with torch.no_grad(), amp, tqdm(total=len(items), initial=done, desc="reference log-probs", unit="pair",
                                    mininterval=2) as bar:
        for lo, hi in query_batches(items, batch_size):
            if hi <= done:
                continue
            queries, owner = np.unique(items[lo:hi, 0], return_inverse=True)
            input_ids, mask = pad_queries([query_ids[q] for q in queries], pad_token_id)
            labels = pad_rows([docid_tokens[d] for d in items[lo:hi, 1]], IGNORE)
            logps = grouped_logps(model, input_ids.to(device), mask.to(device), labels.to(device),
                                  torch.from_numpy(owner).to(device))
            out[lo:hi] = logps.float().cpu().numpy()
            if journal is not None:
                journal.append(out[max(lo, done):hi].tobytes(), hi - max(lo, done))
            bar.update(hi - max(lo, done))
    model.train(was_training)
    return out


def reference_cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cached_reference_logps(cache_dir: Path, key_parts: dict, compute, items: np.ndarray) -> tuple[np.ndarray, bool]:
    """Reference log-probs for `items` from `cache_dir` (keyed by `key_parts`), computing them once.

    Returns (log-probs, whether the cache was reused). The file also stores the items, so a
    cache that does not match them exactly is recomputed.
    """
    from safetensors.numpy import load_file, save

    key = reference_cache_key(key_parts)
    path = cache_dir / f"ref-{key[:24]}.safetensors"
    codes = items.astype(np.int64)
    if path.is_file():
        try:
            cached = load_file(str(path))
            if np.array_equal(cached["items"], codes):
                log.info("reference log-probs: reusing %s", path)
                return cached["logps"], True
            log.warning("reference cache %s does not match the pairs; recomputing", path)
        except Exception as e:  # a truncated or foreign file: recompute, never fail on a cache
            log.warning("reference cache %s unreadable (%s); recomputing", path, e)
    # the pass commits its batches here, so a killed run resumes it
    journal = Journal(path.with_suffix(".partial"), {"key": key, "items": hashlib.sha256(codes.tobytes()).hexdigest()},
                      overwrite=True)
    logps = compute(journal)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, overwrite=True, mode="wb") as f:
        f.write(save({"items": codes, "logps": logps.astype(np.float32)},
                     metadata={"key": key, **{k: str(v) for k, v in key_parts.items()}}))
    journal.discard()
    log.info("reference log-probs: computed %d, cached in %s", len(logps), path)
    return logps, False


def lookup(items: np.ndarray, logps: np.ndarray, n_docs: int):
    """ref(q, d): the reference log-probs of index arrays q, d, every pair of which is one of `items`
    (sorted (query, doc) rows) with log-probs `logps`."""
    codes = items[:, 0] * n_docs + items[:, 1]  # sorted, as `items` is

    def ref(q: np.ndarray, d: np.ndarray) -> np.ndarray:
        return logps[np.searchsorted(codes, q * n_docs + d)].astype(np.float32)
    return ref
