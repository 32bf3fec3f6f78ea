"""TREC run files: `qid Q0 docid rank score tag`, one retrieved document per line.

Canonical order, used when writing and after reading: queries sorted by id, then each
query's documents by score (descending), ties by document id (ascending). Scores are
written with `repr(float)`, the shortest text that reads back to the same float, so a
run survives a write/read round trip exactly, order included.
"""
from __future__ import annotations

import math
import os
from typing import Iterable, Mapping

from ..errors import InputError
from ..io import atomic_file, iter_lines

Hits = list[tuple[str, float]]  # (doc id, score), best first
Run = dict[str, Hits]           # query id -> hits


def rank_hits(hits: Iterable[tuple[str, float]]) -> Hits:
    """Hits in canonical order: score descending, ties by doc id ascending."""
    return sorted(((str(d), float(s)) for d, s in hits), key=lambda h: (-h[1], h[0]))


def canonical_run(run: Mapping[str, Iterable[tuple[str, float]]]) -> Run:
    return {qid: rank_hits(run[qid]) for qid in sorted(run)}


def format_run(run: Mapping[str, Iterable[tuple[str, float]]], tag: str) -> Iterable[str]:
    if not tag or any(c.isspace() for c in tag):
        raise ValueError(f"run tag {tag!r} must be one word")
    for qid, hits in canonical_run(run).items():
        for rank, (doc_id, score) in enumerate(hits, start=1):
            yield f"{qid} Q0 {doc_id} {rank} {score!r} {tag}\n"


def write_run(path: str | os.PathLike, run: Mapping[str, Iterable[tuple[str, float]]], tag: str,
              overwrite: bool = False) -> None:
    with atomic_file(path, overwrite) as f:
        f.writelines(format_run(run, tag))


def read_run(path: str | os.PathLike) -> Run:
    """Read and validate a run file (blank lines are skipped); returns it in canonical order."""
    run: dict[str, dict[str, float]] = {}
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        cols = line.split()
        if len(cols) != 6:
            raise InputError(path, f"expected 6 columns 'qid Q0 docid rank score tag', got {len(cols)}", lineno)
        qid, _, doc_id, rank, score, _ = cols
        try:
            int(rank)
        except ValueError:
            raise InputError(path, f"rank {rank!r} is not an integer", lineno) from None
        try:
            value = float(score)
        except ValueError:
            raise InputError(path, f"score {score!r} is not a number", lineno) from None
        if not math.isfinite(value):
            raise InputError(path, f"score {score!r} is not finite", lineno)
        hits = run.setdefault(qid, {})
        if doc_id in hits:
            raise InputError(path, f"document {doc_id!r} retrieved twice for query {qid!r}", lineno)
        hits[doc_id] = value
    return canonical_run({qid: hits.items() for qid, hits in run.items()})
