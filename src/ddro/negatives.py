"""`ddro negatives`: BM25 hard negatives for phase 2 (DDRO), sampled from rank bands.

For every training query, BM25 retrieves the top `max(band end)` documents (paper: top
1000, k1 0.82, b 0.68). For each (query, positive) judgement with score > 0, `n`
negatives are drawn without replacement from rank bands, by default 1-100, 101-500 and
501-1000 with n//3, n//3 and n//3 + n%3 of them (paper: n = 16). A judged-relevant
document of the query is never a negative. Small corpora should use tighter bands
(`--bands 1-20,21-50,51-100`): on SciFact 1000 candidates are a fifth of the corpus.

Only documents sharing a term with the query are BM25 candidates; a band with fewer
eligible candidates than its quota gives what it has, and such queries are counted in
the manifest (`queries_short`) and logged. Sampling uses one random stream per query
(seed + a stable hash of the query id), so the output does not depend on query order.

Only the train split is mined: test and dev queries must never be used for training.
`--max_queries N` keeps a seeded sample of N training queries (collection order) before
anything is mined, so the BM25 searches and the phase-2 pairs stay bounded however large the
collection or its pseudo-query set (the manifest records how many were available). A
seeded fraction of the kept queries (`--val-fraction`) is held out as `val_pairs.tsv` for
the trainer's validation.

`--queries pseudo --pseudo-queries DIR` (goes beyond the paper, for collections without
training queries): every pseudo-query from `ddro pseudo-queries` becomes a training query
`pq-<doc id>-<i>` (i = its position among that document's pseudo-queries) whose only
positive is its source document.

Resumable: each chunk of SEARCH_CHUNK queries is committed to `.<out>.partial/` (a
`ddro.io.Journal`) as it is mined; a killed run rerun with the same arguments goes on after
the last committed chunk and writes the same files (another run's leftovers are refused
unless --overwrite). The BM25 index itself is rebuilt on each start.

Output folder::

    pairs.tsv       "qid<TAB>positive doc id<TAB>negative doc id", one line per pair
    val_pairs.tsv   the same for the held-out validation queries
    queries.jsonl   {"_id", "text"} of every query in either file
    manifest.json   kind "negatives": counts, sampling params, input hashes
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from tqdm.auto import tqdm

from .config import as_dict, entry_point, parse_args
from .data.collection import Collection
from .errors import DDROError, InputError
from .io import Journal, atomic_dir, check_output, dumps_line, iter_jsonl, iter_lines, partial_dir
from .manifest import MANIFEST, manifest_hash, manifest_hash_or_none, read_manifest, write_manifest
from .pseudo_queries import check_pseudo_queries, iter_pseudo_queries, stable_seed

log = logging.getLogger(__name__)

KIND = "negatives"
PAIRS, VAL_PAIRS, QUERIES = "pairs.tsv", "val_pairs.tsv", "queries.jsonl"
QUERY_SOURCES = ("collection", "pseudo")
SEARCH_CHUNK = 4096  # queries per BM25 call: bounds memory (a MS MARCO run holds 367k x 1000 hits)

Band = tuple[int, int]  # 1-based inclusive ranks


@dataclass
class NegativesArguments:
    collection: str = field(metadata={"help": "collection folder"})
    out: str = field(metadata={"help": f"output folder ({PAIRS}, {VAL_PAIRS}, {QUERIES}, {MANIFEST})"})
    split: str = field(default="train", metadata={
        "help": "qrels split of the training queries; only train splits are accepted (test/dev queries "
                "must never be used for training)"})
    queries: str = field(default="collection", metadata={
        "help": "collection: the split's queries and qrels (the paper); pseudo: pseudo-queries as training "
                "queries, positive = their source document (beyond the paper, for collections without "
                "training queries)", "choices": list(QUERY_SOURCES)})
    pseudo_queries: Optional[str] = field(default=None, metadata={
        "help": "pseudo-queries folder (`ddro pseudo-queries`), with --queries pseudo"})
    negatives: int = field(default=16, metadata={"help": "negatives per (query, positive) pair"})
    bands: str = field(default="1-100,101-500,501-1000", metadata={
        "help": "BM25 rank bands to sample from, 'a-b,c-d,...'; each gets negatives//bands, the last "
                "also the remainder"})
    backend: str = field(default="bm25s", metadata={"help": "BM25 backend: bm25s or pyserini"})
    k1: float = field(default=0.82, metadata={"help": "BM25 k1 (paper, train queries: 0.82)"})
    b: float = field(default=0.68, metadata={"help": "BM25 b (paper, train queries: 0.68)"})
    threads: int = field(default=0, metadata={"help": "BM25 search threads (0: every core)"})
    max_queries: Optional[int] = field(default=None, metadata={
        "help": "mine at most N training queries, a seeded sample (bounds phase 2's work on any collection); "
                "unset: all"})
    val_fraction: float = field(default=0.05, metadata={
        "help": "share of the training queries held out for validation (val_pairs.tsv)"})
    seed: int = field(default=42, metadata={"help": "random seed (negative sampling, validation split)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --out"})


# ----------------------------------------------------------------------------- sampling

def parse_bands(spec: str) -> list[Band]:
    """'1-100,101-500' -> [(1, 100), (101, 500)]; bands must be increasing and disjoint."""
    bands: list[Band] = []
    for part in spec.split(","):
        try:
            lo, hi = (int(x) for x in part.strip().split("-"))
        except ValueError:
            raise DDROError(f"--bands: {part.strip()!r} is not 'first-last' (e.g. 1-100)") from None
        if lo < 1 or hi < lo:
            raise DDROError(f"--bands: {part.strip()!r} must satisfy 1 <= first <= last")
        if bands and lo <= bands[-1][1]:
            raise DDROError(f"--bands: {part.strip()!r} overlaps or precedes the band before it")
        bands.append((lo, hi))
    return bands


def band_quotas(n: int, n_bands: int) -> list[int]:
    """n//B negatives per band, the last band also takes the remainder (16 -> 5, 5, 6)."""
    quotas = [n // n_bands] * n_bands
    quotas[-1] += n % n_bands
    return quotas


def sample_negatives(ranked: list[str], exclude: set[str], bands: list[Band], quotas: list[int],
                     rng: np.random.Generator) -> list[str]:
    """Negatives drawn without replacement from each band of `ranked` (best first).

    Documents in `exclude` (the query's judged-relevant ones) are never drawn. A band with
    fewer eligible documents than its quota gives all it has; the caller counts the shortfall.
    Negatives come out in rank order.
    """
    out: list[str] = []
    for (lo, hi), quota in zip(bands, quotas):
        candidates = [d for d in ranked[lo - 1:hi] if d not in exclude]
        take = min(quota, len(candidates))
        if take:
            out += [candidates[i] for i in np.sort(rng.choice(len(candidates), take, replace=False))]
    return out


def validation_queries(qids: list[str], fraction: float, seed: int) -> set[str]:
    """A seeded random `fraction` of the query ids (at least one training query stays)."""
    n_val = int(round(fraction * len(qids)))
    if n_val >= len(qids) and qids:
        raise DDROError(f"--val-fraction {fraction} leaves no training query out of {len(qids)}")
    rng = np.random.default_rng(stable_seed(seed, "validation split"))
    return {qids[i] for i in rng.choice(len(qids), n_val, replace=False)}


def sample_queries(queries: dict[str, str], positives: dict[str, set[str]], max_queries: int | None,
                   seed: int) -> tuple[dict[str, str], dict[str, set[str]]]:
    """At most `max_queries` of the queries, a seeded sample kept in their original order."""
    if max_queries is not None and max_queries < 1:
        raise DDROError(f"--max_queries must be at least 1, got {max_queries}")
    if max_queries is None or len(queries) <= max_queries:
        return queries, positives
    qids = list(queries)
    rng = np.random.default_rng(stable_seed(seed, "max queries"))
    kept = [qids[i] for i in np.sort(rng.choice(len(qids), max_queries, replace=False))]
    log.info("mining %d of %d training queries (--max_queries, seed %d)", max_queries, len(qids), seed)
    return {q: queries[q] for q in kept}, {q: positives[q] for q in kept}


# ----------------------------------------------------------------------------- inputs

def check_split(split: str) -> None:
    if not split.startswith("train"):
        raise DDROError(f"--split {split!r} refused: negatives are training data, and {split} queries must "
                        "never be used for training (evaluate on them instead); validation queries are held "
                        "out of the train split with --val-fraction")


def collection_queries(collection: Collection, split: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    """Training queries (collection order) and their positives (qrels score > 0)."""
    if not collection.has_split(split):
        raise DDROError(f"{collection.path}: no '{split}' split (splits: {', '.join(collection.splits) or 'none'}); "
                        "for a collection without training queries use --queries pseudo --pseudo-queries DIR")
    qrels, texts = collection.qrels(split), collection.queries()
    positives = {qid: {d for d, s in judged.items() if s > 0} for qid, judged in qrels.items()}
    queries = {qid: text for qid, text in texts.items() if positives.get(qid)}
    return queries, {qid: positives[qid] for qid in queries}


def pseudo_training_queries(folder: str, collection: Collection) -> tuple[dict[str, str], dict[str, set[str]]]:
    """Pseudo-queries as training queries: `pq-<doc id>-<i>`, positive = the source document."""
    check_pseudo_queries(folder, collection)
    queries: dict[str, str] = {}
    positives: dict[str, set[str]] = {}
    seen: dict[str, int] = {}
    for doc_id, text in iter_pseudo_queries(folder):
        i = seen.get(doc_id, 0)
        seen[doc_id] = i + 1
        if not text.strip():
            continue
        qid = f"pq-{doc_id}-{i}"
        queries[qid], positives[qid] = text, {doc_id}
    return queries, positives


def build_bm25(collection: Collection, args: NegativesArguments):
    from .bm25 import build_index, doc_text

    docs = ((d["_id"], doc_text(d)) for d in collection.iter_docs())
    return build_index(args.backend, docs, k1=args.k1, b=args.b, threads=args.threads)


def search_chunks(index, queries: dict[str, str], k: int,
                  first_chunk: int = 0) -> Iterator[list[tuple[str, list[str]]]]:
    """Chunks of (qid, ranked doc ids), SEARCH_CHUNK queries each, from chunk `first_chunk` on."""
    qids = list(queries)
    start = first_chunk * SEARCH_CHUNK
    with tqdm(total=len(qids), initial=min(start, len(qids)), desc="bm25 negatives", unit="query",
              mininterval=2) as bar:
        for start in range(start, len(qids), SEARCH_CHUNK):
            chunk = qids[start:start + SEARCH_CHUNK]
            run = index.search({q: queries[q] for q in chunk}, k, progress=False)
            yield [(qid, [doc_id for doc_id, _ in run.get(qid, [])]) for qid in chunk]
            bar.update(len(chunk))


# ----------------------------------------------------------------------------- run

def journal_identity(args: NegativesArguments, collection: Collection) -> dict:
    """What the chunks depend on: a rerun resumes an unfinished run only when all of it matches."""
    config = {k: v for k, v in as_dict(args).items() if k not in ("out", "overwrite", "threads")}
    return {**config, "search_chunk": SEARCH_CHUNK, "collection": manifest_hash_or_none(collection.path),
            "pseudo_queries": manifest_hash_or_none(args.pseudo_queries) if args.pseudo_queries else None}


def mine(args: NegativesArguments, index, queries: dict[str, str], positives: dict[str, set[str]], val: set[str],
         bands: list[Band], quotas: list[int], k: int, journal: Journal) -> Journal:
    """Sample every query's negatives, one BM25 chunk at a time, each committed to `journal`
    (a killed run resumes after its last committed chunk; sampling is per query, so the
    result is the same)."""
    stats = journal.stats or {"counts": {"queries": 0, "val_queries": 0, "positives": 0, "pairs": 0,
                                         "val_pairs": 0, "queries_short": 0, "queries_without_candidates": 0,
                                         "negatives_missing": 0}, "short_examples": []}
    counts, short_examples = stats["counts"], stats["short_examples"]
    if journal.done:
        log.info("resuming %s after %d of %d chunks", journal.folder, journal.done, -(-len(queries) // SEARCH_CHUNK))
    for chunk in search_chunks(index, queries, k, first_chunk=journal.done):
        out = {"pairs": [], "val_pairs": [], "queries": []}
        for qid, ranked in chunk:
            rng = np.random.default_rng(stable_seed(args.seed, qid))
            lines, missing = [], 0
            for pos in sorted(positives[qid]):
                negs = sample_negatives(ranked, positives[qid], bands, quotas, rng)
                missing += args.negatives - len(negs)
                lines += [f"{qid}\t{pos}\t{neg}\n" for neg in negs]
            if missing:
                counts["queries_short"] += 1
                counts["negatives_missing"] += missing
                counts["queries_without_candidates"] += not lines
                if len(short_examples) < 5:
                    short_examples.append(f"{qid} ({len(ranked)} BM25 hits)")
            if not lines:
                continue
            held_out = qid in val
            out["val_pairs" if held_out else "pairs"] += lines
            out["queries"].append(dumps_line({"_id": qid, "text": queries[qid]}))
            counts["val_queries" if held_out else "queries"] += 1
            counts["val_pairs" if held_out else "pairs"] += len(lines)
            counts["positives"] += len(positives[qid])
        record = dumps_line({name: "".join(lines) for name, lines in out.items()})
        journal.append(record.encode("utf-8"), 1, {"counts": counts, "short_examples": short_examples})
    return journal


def run(args: NegativesArguments, index=None) -> dict:
    """Mine the negatives; `index` (anything with `.search(queries, k)`) skips building BM25."""
    check_split(args.split)
    if args.negatives < 1:
        raise DDROError("--negatives must be at least 1")
    if not 0 <= args.val_fraction < 1:
        raise DDROError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    bands = parse_bands(args.bands)
    quotas = band_quotas(args.negatives, len(bands))
    k = bands[-1][1]
    out = check_output(args.out, args.overwrite)
    collection = Collection(args.collection)
    if args.queries == "pseudo":
        if not args.pseudo_queries:
            raise DDROError("--queries pseudo needs --pseudo-queries DIR (from `ddro pseudo-queries`)")
        queries, positives = pseudo_training_queries(args.pseudo_queries, collection)
    elif args.queries == "collection":
        if args.pseudo_queries:
            raise DDROError("--pseudo-queries is only used with --queries pseudo")
        queries, positives = collection_queries(collection, args.split)
    else:
        raise DDROError(f"--queries must be one of {', '.join(QUERY_SOURCES)}, got {args.queries!r}")
    if not queries:
        raise DDROError("no training query with a positive document")
    available = len(queries)
    queries, positives = sample_queries(queries, positives, args.max_queries, args.seed)
    val = validation_queries(list(queries), args.val_fraction, args.seed)
    journal = Journal(partial_dir(out), journal_identity(args, collection), args.overwrite)
    if index is None:
        index = build_bm25(collection, args)
    mine(args, index, queries, positives, val, bands, quotas, k, journal)
    counts, short_examples = journal.stats["counts"], journal.stats["short_examples"]
    if counts["queries_short"]:
        log.warning("%d of %d queries got fewer than %d negatives per positive (%d missing, %d queries with "
                    "none, e.g. %s); consider tighter --bands", counts["queries_short"], len(queries),
                    args.negatives, counts["negatives_missing"], counts["queries_without_candidates"],
                    ", ".join(short_examples))
    if not counts["pairs"]:
        raise DDROError("no training pair could be built (no BM25 candidates besides the positives)")
    with atomic_dir(out, args.overwrite) as tmp:
        with open(tmp / PAIRS, "w", encoding="utf-8") as train_f, \
                open(tmp / VAL_PAIRS, "w", encoding="utf-8") as val_f, \
                open(tmp / QUERIES, "w", encoding="utf-8") as queries_f:
            for _, chunk in iter_jsonl(journal.path):  # the chunks, in query order
                train_f.write(chunk["pairs"])
                val_f.write(chunk["val_pairs"])
                queries_f.write(chunk["queries"])
        coll_hash = manifest_hash_or_none(collection.path)
        manifest = write_manifest(
            tmp, KIND, counts={**counts, "queries_available": available}, config=as_dict(args),
            inputs={"collection": coll_hash,
                    "pseudo_queries": manifest_hash(args.pseudo_queries) if args.queries == "pseudo" else None},
            params={"bands": [list(b) for b in bands], "quotas": quotas, "k": k, "backend": args.backend,
                    "k1": args.k1, "b": args.b, "seed": args.seed, "queries": args.queries,
                    "split": args.split, "val_fraction": args.val_fraction, "max_queries": args.max_queries},
            short_examples=short_examples)
    journal.discard()
    log.info("negatives written to %s: %s", out, counts)
    return manifest


# ----------------------------------------------------------------------------- reading (for the trainer)

def read_pairs(path: str | Path, query_ids: set[str] | None = None) -> list[tuple[str, str, str]]:
    pairs = []
    for lineno, line in iter_lines(path):
        cols = line.split("\t")
        if len(cols) != 3 or not all(cols):
            raise InputError(path, "expected 'qid<TAB>positive doc id<TAB>negative doc id'", lineno)
        if query_ids is not None and cols[0] not in query_ids:
            raise InputError(path, f"query {cols[0]!r} is not in {QUERIES}", lineno)
        pairs.append((cols[0], cols[1], cols[2]))
    return pairs


def read_queries(path: Path) -> dict[str, str]:
    """The folder's queries.jsonl: {"_id", "text"} lines, ids unique."""
    queries: dict[str, str] = {}
    for lineno, obj in iter_jsonl(path):
        qid, text = obj.get("_id"), obj.get("text")
        if not isinstance(qid, str) or not qid or not isinstance(text, str):
            raise InputError(path, "expected string fields '_id' and 'text'", lineno)
        if qid in queries:
            raise InputError(path, f"duplicate query id {qid!r}", lineno)
        queries[qid] = text
    return queries


@dataclass
class Negatives:
    """A negatives folder loaded for training."""
    path: Path
    manifest: dict
    queries: dict[str, str]
    train: list[tuple[str, str, str]]
    val: list[tuple[str, str, str]]

    @classmethod
    def load(cls, folder: str | Path) -> "Negatives":
        folder = Path(folder)
        manifest = read_manifest(folder, KIND)
        queries = read_queries(folder / QUERIES)
        train, val = read_pairs(folder / PAIRS, set(queries)), read_pairs(folder / VAL_PAIRS, set(queries))
        return cls(folder, manifest, queries, train, val)


@entry_point
def main(argv=None):
    """Mine BM25 hard negatives for DDRO from rank bands of the train queries' BM25 results.

    --queries pseudo (beyond the paper) trains on pseudo-queries where a collection has no train queries.
    """
    (args,) = parse_args([NegativesArguments], argv, prog="ddro negatives", description=main.__doc__)
    run(args)


if __name__ == "__main__":
    main()
