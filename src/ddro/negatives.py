"""`ddro negatives`: hard negatives for phase 2 (DDRO), sampled from rank bands of a ranking.

For every training query, a source (`--source`, `ddro.negative_sources`) ranks the top
`max(band end)` documents. For each (query, positive) judgement with score > 0, `n` negatives
are drawn without replacement from rank bands, by default 1-100, 101-500 and 501-1000 with
n//3, n//3 and n//3 + n%3 of them (paper: n = 16). A judged-relevant document of the query is
never a negative. Small corpora should use tighter bands (`--bands 1-20,21-50,51-100`): on
SciFact 1000 candidates are a fifth of the corpus.

Sources (the bands apply to each):

- `bm25` (default; the paper): BM25 top documents (k1 0.82, b 0.68), bm25s or pyserini.
- `model` (beyond the paper): the `--checkpoint`'s own trie-constrained beam search over
  `--docids`, exactly `ddro eval`'s (queries encoded as phase 2 and the SFT instances encode
  them: `--lowercase`, `--query_max_length`); a docid's colliding documents come in the
  evaluator's order. `--beams` defaults to the last band's end, as many docids as the bands need.
- `dense` (beyond the paper): `ddro dense`'s ranking, the same embedder and embedding cache as
  the PQ docids (`--embedder`, `--embed_*`), exact inner-product search.
- `mixed`: `--mix bm25:0.5,model:0.5` (shares as decimals or fractions, e.g. 1/3, summing to 1
  exactly). Each (query, positive)'s `n` negatives are split by share by largest remainder (ties
  broken by a seeded draw per query); each source fills its quota from its own bands, in --mix
  order, never drawing a document an earlier source drew. A source short of candidates gives
  what it has (no top-up from the others).

A band with fewer eligible candidates than its quota gives what it has (BM25: only documents
sharing a term with the query are candidates; model: the beams), and such queries are counted
in the manifest (`queries_short`) and logged. Sampling uses one random stream per query (seed +
a stable hash of the query id), so the output does not depend on query order.

Only the train split is mined: test and dev queries must never be used for training.
`--queries` picks the training queries: `collection` (the split's queries and qrels; the paper),
`pseudo` (beyond the paper, for collections without training queries: every pseudo-query from
`ddro pseudo-queries` becomes a query `pq-<doc id>-<i>`, i = its position among that
document's pseudo-queries, whose only positive is its source document) or `both` (the two
pools joined). `--max_queries N` keeps a seeded sample of N of them (collection order) before
anything is mined, so the searches and the phase-2 pairs stay bounded however large the pools
(the manifest records how many were available). With `--queries both --pseudo_share F`
(0 < F < 1) the kept queries are T = min(N, floor(C / (1 - F)), floor(P / F)) (C training
queries and P pseudo-queries available, N = --max_queries or no limit): floor(F T + 1/2)
pseudo-queries and the rest training queries, each a seeded sample of its pool, training
queries first; pseudo-queries are then F of the kept queries (to the nearest query), and T is
as large as both pools allow. A seeded fraction of the kept queries (`--val-fraction`) is held
out as `val_pairs.tsv` for the trainer's validation.

Resumable: each chunk of queries (SEARCH_CHUNK; a model source's smaller, `ModelSource.chunk`)
is committed to `.<out>.partial/` (a `ddro.io.Journal`) as it is mined; a killed run rerun with
the same arguments and inputs goes on after the last committed chunk and writes the same files
(another run's leftovers are refused unless --overwrite). Searchers (BM25 index, model,
embeddings from their cache) are rebuilt on each start.

Output folder::

    pairs.tsv       "qid<TAB>positive doc id<TAB>negative doc id", one line per pair
    val_pairs.tsv   the same for the held-out validation queries
    queries.jsonl   {"_id", "text"} of every query in either file
    manifest.json   kind "negatives": counts, sampling params, sources and shares, input hashes
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from tqdm.auto import tqdm

from .config import as_dict, entry_point, parse_args
from .data.collection import Collection
from .errors import DDROError, InputError
from .io import Journal, atomic_dir, check_output, dumps_line, iter_jsonl, iter_lines, partial_dir
from .manifest import MANIFEST, manifest_hash_or_none, read_manifest, write_manifest
from .negative_sources import SOURCES
from .pseudo_queries import check_pseudo_queries, iter_pseudo_queries, stable_seed
from .tokenizer import OFFLINE_MINILM

log = logging.getLogger(__name__)

KIND = "negatives"
PAIRS, VAL_PAIRS, QUERIES = "pairs.tsv", "val_pairs.tsv", "queries.jsonl"
QUERY_SOURCES = ("collection", "pseudo", "both")
MIXED = "mixed"
SEARCH_CHUNK = 4096  # queries per search call: bounds memory (a MS MARCO run holds 367k x 1000 hits)

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
                "training queries); both: the two joined (see --pseudo_share)", "choices": list(QUERY_SOURCES)})
    pseudo_queries: Optional[str] = field(default=None, metadata={
        "help": "pseudo-queries folder (`ddro pseudo-queries`), with --queries pseudo or both"})
    pseudo_share: Optional[float] = field(default=None, metadata={
        "help": "--queries both: share F (0 < F < 1) of pseudo-queries among the kept queries, each pool a "
                "seeded sample, as many queries as --max_queries and both pools allow (module doc); unset: "
                "the pools joined whole, --max_queries sampling from their union"})
    source: str = field(default="bm25", metadata={
        "help": "ranking the negatives are sampled from: bm25 (the paper), model (the --checkpoint's own "
                "constrained beam search), dense (the dense baseline), mixed (--mix)",
        "choices": [*SOURCES, MIXED]})
    mix: Optional[str] = field(default=None, metadata={
        "help": "--source mixed: each source's share of the negatives, e.g. 'bm25:0.5,model:0.5' (decimals or "
                "fractions such as 1/3, summing to 1); split per (query, positive) by largest remainder, "
                "a document drawn by one source is not drawn by another"})
    negatives: int = field(default=16, metadata={"help": "negatives per (query, positive) pair"})
    bands: str = field(default="1-100,101-500,501-1000", metadata={
        "help": "rank bands to sample from, 'a-b,c-d,...' (of each source); each gets negatives//bands, the "
                "last also the remainder"})
    backend: str = field(default="bm25s", metadata={"help": "BM25 backend: bm25s or pyserini"})
    k1: float = field(default=0.82, metadata={"help": "BM25 k1 (paper, train queries: 0.82)"})
    b: float = field(default=0.68, metadata={"help": "BM25 b (paper, train queries: 0.68)"})
    threads: int = field(default=0, metadata={"help": "BM25 search threads (0: every core)"})
    # the model source
    checkpoint: Optional[str] = field(default=None, metadata={
        "help": "model source: the checkpoint to mine with (an SFT output folder or stage, or a DDRO output)"})
    docids: Optional[str] = field(default=None, metadata={"help": "model source: the docid folder it was trained for"})
    beams: Optional[int] = field(default=None, metadata={
        "help": "model source: beam size (docids per query); unset: the last band's end"})
    batch_size: int = field(default=16, metadata={"help": "model source: queries per beam search call"})
    query_max_length: int = field(default=64, metadata={
        "help": "model source: query tokens (special tokens included), as `ddro train ddro --query_max_length` "
                "and `ddro instances`"})
    lowercase: bool = field(default=True, metadata={
        "help": "model source: lowercase queries, as `ddro train ddro --lowercase` and `ddro instances`"})
    device: Optional[str] = field(default=None, metadata={
        "help": "model and dense sources: device; unset: cuda if available"})
    # the dense source (`ddro dense`'s arguments, same defaults)
    embedder: str = field(default=OFFLINE_MINILM, metadata={
        "help": "dense source: sentence-transformers encoder of documents and queries (the docids' embedder)"})
    embed_fields: list[str] = field(default_factory=lambda: ["title", "text"], metadata={
        "help": "dense source: document fields embedded, joined by a space"})
    embed_max_length: int = field(default=128, metadata={
        "help": "dense source: max tokens read per document (0: the model's own)"})
    embed_cache: str = field(default="resources/cache/embeddings", metadata={
        "help": "dense source: document embedding cache, shared with `ddro docids` and `ddro dense`"})
    embed_batch_size: int = field(default=64, metadata={"help": "dense source: texts per encoding batch"})
    dense_query_max_length: int = field(default=64, metadata={
        "help": "dense source: max tokens the embedder reads per query (`ddro dense --query_max_length`)"})
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


def parse_mix(spec: str) -> dict[str, Fraction]:
    """'bm25:0.5,model:1/2' -> {'bm25': 1/2, 'model': 1/2}: known sources, each once, shares > 0 summing to 1
    (exactly: shares are read as decimals or fractions, never rounded)."""
    shares: dict[str, Fraction] = {}
    for part in spec.split(","):
        name, _, share = part.strip().partition(":")
        try:
            value = Fraction(share.strip())
        except (ValueError, ZeroDivisionError):
            raise DDROError(f"--mix: {part.strip()!r} is not 'source:share' (e.g. bm25:0.5)") from None
        if name not in SOURCES:
            raise DDROError(f"--mix: unknown source {name!r} (sources: {', '.join(SOURCES)})")
        if name in shares or value <= 0:
            raise DDROError(f"--mix: {part.strip()!r}: each source once, with a share above 0")
        shares[name] = value
    if sum(shares.values()) != 1:
        raise DDROError(f"--mix: the shares sum to {float(sum(shares.values())):g}, not 1 (write thirds as 1/3)")
    return shares


def band_quotas(n: int, n_bands: int) -> list[int]:
    """n//B negatives per band, the last band also takes the remainder (16 -> 5, 5, 6)."""
    quotas = [n // n_bands] * n_bands
    quotas[-1] += n % n_bands
    return quotas


def split_quota(n: int, shares: list[Fraction], rng: np.random.Generator) -> list[int]:
    """n split by shares, largest remainder first; equal remainders in a random (seeded) order."""
    exact = [n * s for s in shares]
    quotas = [math.floor(x) for x in exact]
    tiebreak = rng.permutation(len(shares))
    order = sorted(range(len(shares)), key=lambda i: (quotas[i] - exact[i], tiebreak[i]))
    for i in order[:n - sum(quotas)]:
        quotas[i] += 1
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


@dataclass(frozen=True)
class Plan:
    """How every query is mined: the bands, the negatives per positive, each source's share."""
    bands: list[Band]
    negatives: int
    shares: dict[str, Fraction]  # in --mix order

    @property
    def k(self) -> int:
        return self.bands[-1][1]


def draw_negatives(ranked: dict[str, list[str]], positives: set[str], plan: Plan, rng: np.random.Generator,
                   mix_rng: np.random.Generator) -> list[str]:
    """One (query, positive)'s negatives: each source's quota from its own bands, in plan order, never a
    positive nor a document an earlier source drew. One source: `sample_negatives` itself."""
    quotas = [plan.negatives] if len(plan.shares) == 1 else \
        split_quota(plan.negatives, list(plan.shares.values()), mix_rng)
    out: list[str] = []
    for name, quota in zip(plan.shares, quotas):
        out += sample_negatives(ranked[name], positives | set(out), plan.bands, band_quotas(quota, len(plan.bands)),
                                rng)
    return out


def validation_queries(qids: list[str], fraction: float, seed: int) -> set[str]:
    """A seeded random `fraction` of the query ids (at least one training query stays)."""
    n_val = int(round(fraction * len(qids)))
    if n_val >= len(qids) and qids:
        raise DDROError(f"--val-fraction {fraction} leaves no training query out of {len(qids)}")
    rng = np.random.default_rng(stable_seed(seed, "validation split"))
    return {qids[i] for i in rng.choice(len(qids), n_val, replace=False)}


def sample_queries(queries: dict[str, str], positives: dict[str, set[str]], n: int | None, seed: int,
                   stream: str = "max queries") -> tuple[dict[str, str], dict[str, set[str]]]:
    """At most `n` of the queries, a seeded sample kept in their original order."""
    if n is None or len(queries) <= n:
        return queries, positives
    qids = list(queries)
    rng = np.random.default_rng(stable_seed(seed, stream))
    kept = [qids[i] for i in np.sort(rng.choice(len(qids), n, replace=False))]
    log.info("mining %d of %d queries (%s, seed %d)", n, len(qids), stream, seed)
    return {q: queries[q] for q in kept}, {q: positives[q] for q in kept}


def pseudo_split(n_collection: int, n_pseudo: int, share: float, max_queries: int | None) -> tuple[int, int]:
    """(training queries, pseudo-queries) kept for --pseudo_share: pseudo-queries are `share` of them (to the
    nearest query), as many as --max_queries and both pools allow (see the module doc)."""
    f = Fraction(repr(share))  # the decimal as written: 0.2 is 1/5, so floor(C / (1 - F)) is exact
    limits = [math.floor(n_collection / (1 - f)), math.floor(n_pseudo / f)]
    total = min(limits + ([max_queries] if max_queries is not None else []))
    n_pseudo_kept = math.floor(f * total + Fraction(1, 2))
    return total - n_pseudo_kept, n_pseudo_kept


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


def select_queries(args: NegativesArguments, collection: Collection) -> tuple[dict, dict, dict]:
    """(queries, positives, counts) of the kept training queries: --queries' pools, --max_queries and
    --pseudo_share applied."""
    pools = {}
    if args.queries in ("collection", "both"):
        pools["collection"] = collection_queries(collection, args.split)
    if args.queries in ("pseudo", "both"):
        pools["pseudo"] = pseudo_training_queries(args.pseudo_queries, collection)
    counts = {"queries_available": sum(len(q) for q, _ in pools.values())}
    if len(pools) > 1:
        counts.update({f"{name}_queries_available": len(q) for name, (q, _) in pools.items()})
        clash = next((q for q in pools["pseudo"][0] if q in pools["collection"][0]), None)
        if clash:
            raise DDROError(f"query id {clash!r} is both a training query and a pseudo-query id")
    if args.pseudo_share is not None:
        kept = pseudo_split(len(pools["collection"][0]), len(pools["pseudo"][0]), args.pseudo_share,
                            args.max_queries)
        pools = {name: sample_queries(*pools[name], n, args.seed, f"{name} queries kept")
                 for name, n in zip(("collection", "pseudo"), kept)}
        counts.update({f"{name}_queries_kept": len(q) for name, (q, _) in pools.items()})
    queries = {qid: text for q, _ in pools.values() for qid, text in q.items()}
    positives = {qid: docs for _, p in pools.values() for qid, docs in p.items()}
    if not queries:
        raise DDROError("no training query with a positive document")
    if args.pseudo_share is None:
        queries, positives = sample_queries(queries, positives, args.max_queries, args.seed)
    return queries, positives, counts


# ----------------------------------------------------------------------------- checks (before any input is read)

def check_query_args(args: NegativesArguments) -> None:
    if args.queries not in QUERY_SOURCES:
        raise DDROError(f"--queries must be one of {', '.join(QUERY_SOURCES)}, got {args.queries!r}")
    if args.queries == "collection" and args.pseudo_queries:
        raise DDROError("--pseudo-queries is only used with --queries pseudo or both")
    if args.queries != "collection" and not args.pseudo_queries:
        raise DDROError(f"--queries {args.queries} needs --pseudo-queries DIR (from `ddro pseudo-queries`)")
    if args.pseudo_share is not None and args.queries != "both":
        raise DDROError("--pseudo_share is only used with --queries both")
    if args.pseudo_share is not None and not 0 < args.pseudo_share < 1:
        raise DDROError(f"--pseudo_share must be between 0 and 1 (exclusive), got {args.pseudo_share}; "
                        "all pseudo-queries: --queries pseudo")
    if args.max_queries is not None and args.max_queries < 1:
        raise DDROError(f"--max_queries must be at least 1, got {args.max_queries}")


def source_shares(args: NegativesArguments) -> dict[str, Fraction]:
    """Each source's share of the negatives, from --source and --mix; arguments of a source not used refused."""
    if args.source == MIXED:
        if not args.mix:
            raise DDROError("--source mixed needs --mix, e.g. --mix bm25:0.5,model:0.5")
        shares = parse_mix(args.mix)
    elif args.source in SOURCES:
        if args.mix:
            raise DDROError(f"--mix is only used with --source mixed (got --source {args.source})")
        shares = {args.source: Fraction(1)}
    else:
        raise DDROError(f"--source must be one of {', '.join([*SOURCES, MIXED])}, got {args.source!r}")
    for name, source in SOURCES.items():
        for arg in source.uses:
            if getattr(args, arg) is not None and not any(arg in SOURCES[s].uses for s in shares):
                raise DDROError(f"--{arg} is only used by the {name} source (--source {args.source})")
    return shares


def check_args(args: NegativesArguments) -> Plan:
    """Every refusal that reads no input; the plan the queries are mined with."""
    check_split(args.split)
    if args.negatives < 1:
        raise DDROError("--negatives must be at least 1")
    if not 0 <= args.val_fraction < 1:
        raise DDROError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    check_query_args(args)
    shares = source_shares(args)
    return Plan(parse_bands(args.bands), args.negatives, shares)


# ----------------------------------------------------------------------------- run

def input_hashes(args: NegativesArguments, plan: Plan, collection: Collection) -> dict[str, str | None]:
    """What the negatives depend on besides the arguments: the collection, pseudo-queries, the sources' inputs."""
    inputs = {"collection": manifest_hash_or_none(collection.path),
              "pseudo_queries": manifest_hash_or_none(args.pseudo_queries) if args.queries != "collection" else None}
    for name in plan.shares:
        inputs.update(SOURCES[name].inputs(args))
    return inputs


def chunk_size(plan: Plan) -> int:
    """Queries per journal commit: the smallest any source asks for (read when called: tests lower it)."""
    return min(SOURCES[name].chunk or SEARCH_CHUNK for name in plan.shares)


def journal_identity(args: NegativesArguments, inputs: dict, chunk: int) -> dict:
    """What the chunks depend on: a rerun resumes an unfinished run only when all of it matches (inputs by
    content: their hashes replace the paths)."""
    config = {k: v for k, v in as_dict(args).items() if k not in ("out", "overwrite", "threads", "device")}
    return {**config, "search_chunk": chunk, **inputs}


def build_searchers(args: NegativesArguments, plan: Plan, collection: Collection, index) -> dict:
    """A searcher per source: those handed in (`index`: one searcher for a single source, or {source: searcher}),
    the others built."""
    given = index if isinstance(index, dict) else {} if index is None else {next(iter(plan.shares)): index}
    if not isinstance(index, dict) and index is not None and len(plan.shares) > 1:
        raise DDROError("a mixed run takes its searchers as {source: searcher}")
    return {name: given[name] if name in given else SOURCES[name](args, collection, plan.k) for name in plan.shares}


def search_chunks(searchers: dict, queries: dict[str, str], k: int, chunk: int,
                  first_chunk: int = 0) -> Iterator[list[tuple[str, dict[str, list[str]]]]]:
    """Chunks of (qid, {source: ranked doc ids}), `chunk` queries each, from chunk `first_chunk` on."""
    qids = list(queries)
    start = first_chunk * chunk
    with tqdm(total=len(qids), initial=min(start, len(qids)), desc=f"{'+'.join(searchers)} negatives",
              unit="query", mininterval=2) as bar:
        for start in range(start, len(qids), chunk):
            part = {q: queries[q] for q in qids[start:start + chunk]}
            runs = {name: searcher.search(part, k, progress=False) for name, searcher in searchers.items()}
            yield [(qid, {name: [d for d, _ in run.get(qid, [])] for name, run in runs.items()}) for qid in part]
            bar.update(len(part))


def query_pairs(qid: str, ranked: dict[str, list[str]], positives: set[str], plan: Plan,
                seed: int) -> tuple[list[str], int]:
    """(pair lines, negatives missing) of one query: one random stream per query, whatever the query order."""
    rng = np.random.default_rng(stable_seed(seed, qid))
    mix_rng = np.random.default_rng(stable_seed(seed, f"mix\t{qid}")) if len(plan.shares) > 1 else None
    lines, missing = [], 0
    for pos in sorted(positives):
        negs = draw_negatives(ranked, positives, plan, rng, mix_rng)
        missing += plan.negatives - len(negs)
        lines += [f"{qid}\t{pos}\t{neg}\n" for neg in negs]
    return lines, missing


def mine(searchers: dict, queries: dict[str, str], positives: dict[str, set[str]], val: set[str], plan: Plan,
         seed: int, chunk: int, journal: Journal) -> Journal:
    """Sample every query's negatives, one chunk at a time, each committed to `journal` (a killed run
    resumes after its last committed chunk; sampling is per query, so the result is the same)."""
    stats = journal.stats or {"counts": {"queries": 0, "val_queries": 0, "positives": 0, "pairs": 0,
                                         "val_pairs": 0, "queries_short": 0, "queries_without_candidates": 0,
                                         "negatives_missing": 0}, "short_examples": []}
    counts, short_examples = stats["counts"], stats["short_examples"]
    if journal.done:
        log.info("resuming %s after %d of %d chunks", journal.folder, journal.done, -(-len(queries) // chunk))
    for part in search_chunks(searchers, queries, plan.k, chunk, first_chunk=journal.done):
        out = {"pairs": [], "val_pairs": [], "queries": []}
        for qid, ranked in part:
            lines, missing = query_pairs(qid, ranked, positives[qid], plan, seed)
            if missing:
                counts["queries_short"] += 1
                counts["negatives_missing"] += missing
                counts["queries_without_candidates"] += not lines
                if len(short_examples) < 5:
                    hits = ", ".join(f"{len(docs)} {name}" for name, docs in ranked.items())
                    short_examples.append(f"{qid} ({hits} hits)")
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


def sampling_params(args: NegativesArguments, plan: Plan, searchers: dict) -> dict:
    """The manifest's params: how the pairs were sampled, and from which sources (shares, settings)."""
    sources = {name: {"share": float(share), **(getattr(searchers[name], "info", dict)())}
               for name, share in plan.shares.items()}
    bm25 = {"backend": args.backend, "k1": args.k1, "b": args.b} if "bm25" in plan.shares else {}
    return {"bands": [list(b) for b in plan.bands], "k": plan.k, "source": args.source, "sources": sources,
            "quotas": band_quotas(plan.negatives, len(plan.bands)) if len(plan.shares) == 1 else None, **bm25,
            "seed": args.seed, "queries": args.queries, "pseudo_share": args.pseudo_share, "split": args.split,
            "val_fraction": args.val_fraction, "max_queries": args.max_queries}


def write_output(out: Path, args: NegativesArguments, journal: Journal, params: dict, inputs: dict,
                 counts: dict, short_examples: list[str]) -> dict:
    with atomic_dir(out, args.overwrite) as tmp:
        with open(tmp / PAIRS, "w", encoding="utf-8") as train_f, \
                open(tmp / VAL_PAIRS, "w", encoding="utf-8") as val_f, \
                open(tmp / QUERIES, "w", encoding="utf-8") as queries_f:
            for _, chunk in iter_jsonl(journal.path):  # the chunks, in query order
                train_f.write(chunk["pairs"])
                val_f.write(chunk["val_pairs"])
                queries_f.write(chunk["queries"])
        return write_manifest(tmp, KIND, counts=counts, config=as_dict(args), inputs=inputs, params=params,
                              short_examples=short_examples)


def run(args: NegativesArguments, index=None) -> dict:
    """Mine the negatives. `index`: a searcher (anything with `.search(queries, k)`) for the one source, or
    {source: searcher}, used instead of building it (e.g. a BM25 index already built)."""
    plan = check_args(args)
    out = check_output(args.out, args.overwrite)
    collection = Collection(args.collection)
    for name in plan.shares:
        SOURCES[name].check(args, collection, plan.k)
    queries, positives, query_counts = select_queries(args, collection)
    val = validation_queries(list(queries), args.val_fraction, args.seed)
    inputs, chunk = input_hashes(args, plan, collection), chunk_size(plan)
    journal = Journal(partial_dir(out), journal_identity(args, inputs, chunk), args.overwrite)
    searchers = build_searchers(args, plan, collection, index)
    mine(searchers, queries, positives, val, plan, args.seed, chunk, journal)
    counts, short_examples = journal.stats["counts"], journal.stats["short_examples"]
    if counts["queries_short"]:
        log.warning("%d of %d queries got fewer than %d negatives per positive (%d missing, %d queries with "
                    "none, e.g. %s); consider tighter --bands", counts["queries_short"], len(queries),
                    args.negatives, counts["negatives_missing"], counts["queries_without_candidates"],
                    ", ".join(short_examples))
    if not counts["pairs"]:
        raise DDROError(f"no training pair could be built (no {args.source} candidates besides the positives)")
    manifest = write_output(out, args, journal, sampling_params(args, plan, searchers), inputs,
                            {**counts, **query_counts}, short_examples)
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
    """Mine hard negatives for DDRO from rank bands of the train queries' rankings: BM25 (the paper), the
    checkpoint's own beam search, the dense baseline, or a mix of them (--source, --mix).

    --queries pseudo or both (beyond the paper) trains on pseudo-queries too (see --pseudo_share).
    """
    (args,) = parse_args([NegativesArguments], argv, prog="ddro negatives", description=main.__doc__)
    run(args)


if __name__ == "__main__":
    main()
