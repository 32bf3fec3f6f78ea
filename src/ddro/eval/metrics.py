"""Retrieval metrics (via `ir_measures`), per-query tables, paired t-tests, results tables.

Conventions, the same for every system so that numbers compare:
- a document is relevant when its qrel score is >= 1 (R and RR use rel=1; nDCG@10 uses
  the qrel score as its gain; judgements below 1 are dropped);
- the evaluated queries are those with at least one relevant document; a query the run
  has no documents for scores 0 on every metric (trec_eval would leave it out);
- the ranking evaluated is the run's canonical order (score descending, ties by doc id
  ascending): ranks, not raw scores, are handed to ir_measures, so the evaluator's own
  tie-breaking never comes into play;
- a run claims only what it holds: given its depth (the documents a system returns per
  query: `beams` for a generative run, `k` for BM25), R@k is reported only for k <= depth,
  plus R@<depth> when the depth is not one of the standard cutoffs (R@20 for 20 beams), so
  R@100 of a 20-beam run is never printed next to BM25's top-100 recall.
"""
from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path
from typing import Mapping

from ..errors import DDROError, InputError
from ..io import atomic_file
from .runs import canonical_run, read_run

Qrels = Mapping[str, Mapping[str, int]]
PerQuery = dict[str, dict[str, float]]  # query id -> {metric: value}

CUTOFFS = (1, 5, 10, 100)                                        # the standard recall cutoffs
RANKED = {"MRR@10": "RR(rel=1)@10", "nDCG@10": "nDCG@10"}         # reported at every depth
RECALL = re.compile(r"R@(\d+)")


def metric_names(depth: int | None = None) -> tuple[str, ...]:
    """The metrics a run of `depth` documents per query supports (None: every standard one)."""
    cutoffs = CUTOFFS if depth is None else sorted({k for k in CUTOFFS if k <= depth} | {depth})
    return (*(f"R@{k}" for k in cutoffs), *RANKED)


def measure(name: str) -> str:
    """Our metric name -> the ir_measures measure string."""
    m = RECALL.fullmatch(name)
    return f"R(rel=1)@{m.group(1)}" if m else RANKED[name]


def ordered_metrics(names) -> list[str]:
    """The metric names among `names` (other keys dropped), recall by cutoff first, as tables show them."""
    recall = sorted((n for n in set(names) if RECALL.fullmatch(n)), key=lambda n: int(n[2:]))
    return recall + [n for n in RANKED if n in set(names)]


def shared_metrics(*per_query: "PerQuery") -> list[str]:
    """Metrics every one of the systems' per-query results holds: the ones a t-test may compare."""
    keys = [set(next(iter(pq.values()), {})) for pq in per_query]
    return ordered_metrics(set.intersection(*keys)) if keys else []


METRICS = metric_names()
MEASURES: dict[str, str] = {name: measure(name) for name in METRICS}


def relevant_qrels(qrels: Qrels) -> dict[str, dict[str, int]]:
    """Judgements with score >= 1, for the queries that have at least one."""
    kept = {qid: {d: int(s) for d, s in docs.items() if s >= 1} for qid, docs in qrels.items()}
    return {qid: docs for qid, docs in kept.items() if docs}


def evaluate(run: Mapping[str, list[tuple[str, float]]] | str | os.PathLike, qrels: Qrels,
             depth: int | None = None) -> tuple[dict[str, float | int | None], PerQuery]:
    """(aggregate, per query) for `run` (hits per query, or a run file) against `qrels`.

    depth: documents per query the system returns (beams, or BM25's k); only the metrics
    `metric_names(depth)` are computed. The aggregate holds the mean of each metric over
    the evaluated queries, `queries` (how many were evaluated), `queries_without_results`
    and `depth`.
    """
    if depth is not None and depth < 1:
        raise DDROError(f"run depth must be >= 1, got {depth}")
    names = metric_names(depth)
    import ir_measures

    run = read_run(run) if isinstance(run, (str, os.PathLike)) else canonical_run(run)
    judged = relevant_qrels(qrels)
    if not judged:
        raise DDROError("no query has a relevant document (qrel score >= 1): nothing to evaluate")
    # Rank-derived scores: n, n-1, ..., 1 keep exactly the canonical order.
    ranked = {qid: {doc_id: float(len(hits) - i) for i, (doc_id, _) in enumerate(hits)}
              for qid, hits in run.items() if qid in judged and hits}
    per_query: PerQuery = {qid: dict.fromkeys(names, 0.0) for qid in judged}
    if ranked:
        by_measure = {ir_measures.parse_measure(measure(name)): name for name in names}
        for metric in ir_measures.iter_calc(list(by_measure), judged, ranked):
            if metric.query_id in ranked:  # providers may also emit 0s for absent queries
                per_query[metric.query_id][by_measure[metric.measure]] = float(metric.value)
    aggregate: dict[str, float | int] = {
        name: math.fsum(values[name] for values in per_query.values()) / len(per_query) for name in names}
    aggregate["queries"] = len(per_query)
    aggregate["queries_without_results"] = len(per_query) - len(ranked)
    aggregate["depth"] = depth
    return aggregate, per_query


def write_per_query(path: str | os.PathLike, per_query: PerQuery, overwrite: bool = False) -> None:
    """CSV `qid,<metric>...` (the metrics the results hold), queries sorted by id."""
    names = ordered_metrics(next(iter(per_query.values()), METRICS))
    with atomic_file(path, overwrite) as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["qid", *names])
        for qid in sorted(per_query):
            writer.writerow([qid, *(repr(per_query[qid][m]) for m in names)])


def read_per_query(path: str | os.PathLike) -> PerQuery:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][:1] != ["qid"]:
        raise InputError(path, "expected a header starting with 'qid'", 1)
    header, per_query = rows[0], {}
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise InputError(path, f"expected {len(header)} columns, got {len(row)}", lineno)
        try:
            per_query[row[0]] = {m: float(v) for m, v in zip(header[1:], row[1:])}
        except ValueError:
            raise InputError(path, "metric values must be numbers", lineno) from None
    return per_query


def paired_ttest(per_query_a: PerQuery, per_query_b: PerQuery, metric: str) -> dict[str, float | int]:
    """Paired t-test of system b against system a on `metric`, over the same queries.

    `mean_diff` is mean(b - a): positive when b is better. Identical scores give p = 1.
    """
    from scipy.stats import ttest_rel

    if set(per_query_a) != set(per_query_b):
        only = sorted(set(per_query_a) ^ set(per_query_b))
        raise DDROError(f"paired t-test needs the same queries in both systems; {len(only)} differ "
                        f"(e.g. {only[0]!r})")
    qids = sorted(per_query_a)
    if not qids:
        raise DDROError("paired t-test needs at least one query")
    try:
        a = [per_query_a[q][metric] for q in qids]
        b = [per_query_b[q][metric] for q in qids]
    except KeyError:
        raise DDROError(f"metric {metric!r} missing from the per-query results") from None
    mean_a, mean_b = math.fsum(a) / len(a), math.fsum(b) / len(b)
    if all(x == y for x, y in zip(a, b)):
        t, p = 0.0, 1.0
    else:
        result = ttest_rel(b, a)
        t, p = float(result.statistic), float(result.pvalue)
    return {"metric": metric, "queries": len(qids), "mean_a": mean_a, "mean_b": mean_b,
            "mean_diff": math.fsum(y - x for x, y in zip(a, b)) / len(a), "t": t, "p_value": p}


def results_table(systems: Mapping[str, Mapping[str, float]], digits: int = 4) -> str:
    """A Markdown table: one row per system, one column per metric any system holds (blank where
    a system's run is too shallow for it)."""
    metrics = ordered_metrics({m for values in systems.values() for m in values})
    lines = ["| system | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for name, values in systems.items():
        cells = [f"{values[m]:.{digits}f}" if m in values else "" for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_run_folder(folder: str | os.PathLike, hits: Mapping[str, list[tuple[str, float]]], qrels: Qrels,
                     tag: str, depth: int | None) -> tuple[dict[str, float | int | None], PerQuery]:
    """The files of every retrieval output (BM25 or generative): `run.trec`,
    `metrics.json` (with the run's `depth`) and `per_query.csv`; returns (metrics, per query)."""
    from ..io import write_json
    from .runs import write_run

    folder = Path(folder)
    metrics, per_query = evaluate(hits, qrels, depth)
    write_run(folder / "run.trec", hits, tag)
    write_json(folder / "metrics.json", metrics)
    write_per_query(folder / "per_query.csv", per_query)
    return metrics, per_query
