"""`ddro report OUT [OUT2 ...] [--out DIR]`: report.md and plots for pipeline outputs.

For each output (a `ddro pipeline` folder) the report recomputes every system's metrics from
`runs/<system>.<split>.run` with `ir_measures` on the collection's qrels and writes, into
DIR (default: OUT, given one output):

    report.md                     the sections below, linking the figures
    report/<label>_beams.png      SFT and DDRO metrics against the beam size
    report/<label>_training.png   SFT loss per stage, DDRO loss and reward accuracy/margin
    report/<label>_wins.png       per-query DDRO - SFT difference, sorted
    report/<label>_logps.png      phase 2: the positive's and the negative's log-prob per step
    report/<label>_ranks.png      first relevant rank, SFT vs DDRO (bucket transitions)
    report/beams/<label>/         the `ddro eval` folders behind the beam curves (a cache)

Same inputs give the same report.md and the same PNG bytes (no timestamps anywhere).
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..config import entry_point, parse_args
from ..errors import DDROError
from ..io import atomic_file
from ..verify import leading_positionals
from .data import (
    NAMES,
    RANK_BUCKETS,
    SYSTEMS,
    Output,
    beam_sweep,
    ddro_curves,
    ddro_logps,
    labels_for,
    load_output,
    rank_transitions,
    sft_curves,
    system_ranks,
)
from .plots import plot_beams, plot_logps, plot_rank_transitions, plot_training, plot_wins

log = logging.getLogger(__name__)

BEAM_METRICS = ["MRR@10", "nDCG@10", "R@10"]  # R@10 only at beam sizes >= 10
MARKS = (("bm25", "†"), ("sft", "‡"))  # system compared against, mark when p < alpha


@dataclass
class ReportArguments:
    outputs: list[str] = field(metadata={
        "help": "pipeline output folders (also positional: ddro report OUT [OUT2 ...])"})
    out: Optional[str] = field(default=None, metadata={
        "help": "folder for report.md and report/ (default: OUT; required with several outputs)"})
    labels: Optional[list[str]] = field(default=None, metadata={
        "help": "one name per output for the table's column groups (default: the folder names)"})
    beam_sizes: str = field(default="1,5,10,20", metadata={
        "help": "beam sizes for the beam-size curves, capped by the pipeline's own --beams; 'none' skips them "
                "(they run `ddro eval` on the saved SFT and DDRO checkpoints, cached in report/beams/)"})
    max_queries: Optional[int] = field(default=100, metadata={
        "help": "queries evaluated per beam size (the first N of the split; 0: all)"})
    batch_size: int = field(default=16, metadata={"help": "queries per generate call for the beam-size runs"})
    device: Optional[str] = field(default=None, metadata={"help": "device for the beam-size runs"})
    wins_metric: str = field(default="MRR@10", metadata={"help": "metric of the per-query wins/losses plot"})
    alpha: float = field(default=0.05, metadata={"help": "significance level of the marks in the table"})


def parse_beam_sizes(text: str) -> list[int]:
    if text.strip().lower() in ("", "none", "off", "false"):
        return []
    try:
        sizes = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise DDROError(f"--beam_sizes: expected comma-separated integers, got {text!r}") from None
    if any(b < 1 for b in sizes):
        raise DDROError("--beam_sizes: beam sizes must be >= 1")
    return sizes


# ------------------------------------------------------------------ statistics

def table_metrics(output: Output) -> list[str]:
    """The table's columns for an output: every metric one of its systems' runs is deep enough for."""
    from ..eval.metrics import ordered_metrics

    return ordered_metrics({m for values in output.aggregate.values() for m in values})


def significance(output: Output) -> dict[tuple[str, str, str], dict]:
    """(system, against, metric) -> paired t-test of `system` against `against` over the queries,
    on the metrics both runs hold."""
    from ..eval.metrics import paired_ttest, shared_metrics

    tests = {}
    for system in SYSTEMS:
        for against, _ in MARKS:
            if SYSTEMS.index(against) < SYSTEMS.index(system):
                for metric in shared_metrics(output.per_query[against], output.per_query[system]):
                    tests[system, against, metric] = paired_ttest(
                        output.per_query[against], output.per_query[system], metric)
    return tests


def wins(output: Output, metric: str, tolerance: float = 1e-12) -> tuple[list[float], dict[str, int]]:
    """Per-query DDRO - SFT differences (sorted query ids) and the counts of wins, ties, losses."""
    from ..eval.metrics import shared_metrics

    sft, ddro = output.per_query["sft"], output.per_query["ddro"]
    if metric not in (shared := shared_metrics(sft, ddro)):
        raise DDROError(f"--wins_metric: one of {', '.join(shared)} (the SFT and DDRO runs' metrics), got {metric!r}")
    diffs = [ddro[q][metric] - sft[q][metric] for q in sorted(sft)]
    counts = {"wins": sum(d > tolerance for d in diffs), "ties": sum(abs(d) <= tolerance for d in diffs),
              "losses": sum(d < -tolerance for d in diffs)}
    return diffs, counts


# ------------------------------------------------------------------ markdown

def systems_table(outputs: list[Output], tests: dict[str, dict], alpha: float) -> str:
    """One row per system, one column group (the metrics its runs hold) per output; blank where a
    system's run is shallower than the metric."""
    grouped = len(outputs) > 1
    columns = {o.label: table_metrics(o) for o in outputs}
    header = [f"{o.label} {m}" if grouped else m for o in outputs for m in columns[o.label]]
    lines = ["| system | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    for system in SYSTEMS:
        cells = []
        for o in outputs:
            for metric in columns[o.label]:
                marks = "".join(mark for against, mark in MARKS
                                if (t := tests[o.label].get((system, against, metric))) and t["p_value"] < alpha)
                value = o.aggregate[system].get(metric)
                cells.append("" if value is None else f"{value:.4f}{marks}")
        lines.append(f"| {NAMES[system]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pvalue_table(outputs: list[Output], tests: dict[str, dict]) -> str:
    lines = ["| output | system | against | metric | difference | t | p |", "|---|---|---|---|---:|---:|---:|"]
    for o in outputs:
        for (system, against, metric), t in tests[o.label].items():
            lines.append(f"| {o.label} | {NAMES[system]} | {NAMES[against]} | {metric} | {t['mean_diff']:+.4f} | "
                         f"{t['t']:.3f} | {t['p_value']:.3g} |")
    return "\n".join(lines)


def beam_table(sweep: dict[str, dict[int, dict]]) -> str:
    sizes = sorted({b for by_beam in sweep.values() for b in by_beam})
    lines = ["| system | metric | " + " | ".join(f"beam {b}" for b in sizes) + " |",
             "|---|---|" + "---:|" * len(sizes)]
    for system, by_beam in sweep.items():
        for metric in BEAM_METRICS:
            cells = [f"{by_beam[b][metric]:.4f}" if metric in by_beam.get(b, {}) else "" for b in sizes]
            lines.append(f"| {NAMES[system]} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------ the report

def beam_section(o: Output, args: ReportArguments, dest: Path, sizes: list[int]) -> list[str]:
    from ..eval.metrics import read_per_query

    lines = [f"### {o.label}", ""]
    if not sizes:
        return lines + ["Skipped (`--beam_sizes none`).", ""]
    cache = dest / "report" / "beams" / o.label
    sweep = beam_sweep(o, cache, sizes, args.max_queries or None, args.batch_size, args.device)
    sweep = {s: v for s, v in sweep.items() if v}
    if not sweep:
        return lines + ["No SFT or DDRO checkpoint (or no beam size within the pipeline's own): no curve.", ""]
    system, by_beam = next(iter(sweep.items()))
    qids = read_per_query(cache / f"{system}-beam{min(by_beam)}" / "per_query.csv")
    bm25 = {m: sum(o.per_query["bm25"][q][m] for q in qids) / len(qids) for m in BEAM_METRICS
            if m in o.aggregate["bm25"]}
    limit = f"the first {args.max_queries}" if args.max_queries else "all"
    png = plot_beams(sweep, bm25, BEAM_METRICS, f"{o.label}: metrics vs beam size ({len(qids)} queries)",
                     dest / "report" / f"{o.label}_beams.png")
    return lines + [f"![metrics versus beam size, {o.label}](report/{png.name})", "",
                    f"`ddro eval` of the saved SFT and DDRO checkpoints at each beam size on {limit} `{o.split}` "
                    f"queries ({len(qids)} with a relevant document; BM25 on the same queries dashed): a beam of k "
                    "returns at most k docids (R@10 is shown from beam 10 on), and a wider beam can also change "
                    "the top ones, since it finds higher-probability docids that a narrow one misses.", "",
                    beam_table(sweep), ""]


def training_section(o: Output, dest: Path) -> list[str]:
    sft, ddro = sft_curves(o.path), ddro_curves(o.path)
    png = plot_training(sft, ddro, f"{o.label}: training", dest / "report" / f"{o.label}_training.png")
    steps = ", ".join(f"{stage} {len(points)}" for stage, points in sft.items()) or "none"
    return [f"### {o.label}", "", f"![training curves, {o.label}](report/{png.name})", "",
            "Left: SFT token cross-entropy per stage (from each stage's last checkpoint's `trainer_state.json`); "
            "middle and right: the DDRO pairwise loss, and how often and by how much the policy prefers the "
            "relevant docid over the BM25 negative relative to the frozen SFT reference "
            f"(`ddro/log_history.json`). Logged points: SFT {steps}; DDRO {len(ddro['loss'])}.", ""]


def wins_section(o: Output, metric: str, dest: Path) -> list[str]:
    diffs, counts = wins(o, metric)
    png = plot_wins(diffs, counts, metric, f"{o.label}: DDRO - SFT per query ({metric})",
                    dest / "report" / f"{o.label}_wins.png")
    return [f"### {o.label}", "", f"![per-query wins and losses, {o.label}](report/{png.name})", "",
            f"Each bar is one `{o.split}` query's {metric} under DDRO minus under SFT, sorted: DDRO wins "
            f"{counts['wins']}, ties {counts['ties']} and loses {counts['losses']} of {len(diffs)} queries.", ""]


def transition_table(counts: dict[tuple[str, str], int]) -> str:
    """Rows: SFT's first relevant rank bucket; columns: DDRO's; margins: each system's totals."""
    lines = ["| SFT (rows), DDRO (columns) | " + " | ".join(RANK_BUCKETS) + " | SFT total |",
             "|---|" + "---:|" * (len(RANK_BUCKETS) + 1)]
    for a in RANK_BUCKETS:
        row = [counts[a, b] for b in RANK_BUCKETS]
        lines.append(f"| {a} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
    totals = [sum(counts[a, b] for a in RANK_BUCKETS) for b in RANK_BUCKETS]
    lines.append("| DDRO total | " + " | ".join(map(str, totals)) + f" | {sum(totals)} |")
    return "\n".join(lines)


def moves(counts: dict[tuple[str, str], int]) -> dict[str, int]:
    """Queries whose first relevant rank moved to a better bucket, stayed, or moved to a worse one."""
    index = {b: i for i, b in enumerate(RANK_BUCKETS)}
    return {"up": sum(n for (a, b), n in counts.items() if index[b] < index[a]),
            "same": sum(n for (a, b), n in counts.items() if index[b] == index[a]),
            "down": sum(n for (a, b), n in counts.items() if index[b] > index[a])}


def phase2_section(o: Output, dest: Path) -> list[str]:
    lines = [f"### {o.label}", ""]
    curves = ddro_logps(o.path)
    if curves is None:
        lines += ["No phase-2 log-probs: `ddro/log_history.json` is missing or has no `logps/chosen` and "
                  "`logps/rejected` entries (a DDRO checkpoint from a trainer that did not log them).", ""]
    else:
        png = plot_logps(curves, f"{o.label}: phase-2 log-probs", dest / "report" / f"{o.label}_logps.png")
        lines += [f"![phase-2 log-probs, {o.label}](report/{png.name})", "",
                  "Mean summed docid log-prob under the policy, per logged DDRO step, of the relevant docid (left) "
                  "and of the hard negative (right) of the training pairs (validation pairs dashed, when "
                  f"evaluated), from `ddro/log_history.json`: {len(curves['positive'])} logged steps. A pairwise "
                  "loss only widens the gap, so the positive can drift down while the negative falls faster.", ""]
    counts = rank_transitions(system_ranks(o, "sft"), system_ranks(o, "ddro"))
    moved = moves(counts)
    png = plot_rank_transitions(counts, RANK_BUCKETS, f"{o.label}: first relevant rank",
                                dest / "report" / f"{o.label}_ranks.png")
    return lines + [f"![first relevant rank, SFT vs DDRO, {o.label}](report/{png.name})", "",
                    f"Rank of the first relevant document in `runs/sft.{o.split}.run` (rows) and "
                    f"`runs/ddro.{o.split}.run` (columns), per `{o.split}` query with a relevant document; "
                    "'>10 / none': ranked below 10, or not among the run's documents (deeper than its depth). "
                    f"Better bucket under DDRO: {moved['up']}, same: {moved['same']}, worse: {moved['down']}.", "",
                    transition_table(counts), ""]


def run(args: ReportArguments) -> Path:
    paths = [Path(p) for p in args.outputs]
    if not paths:
        raise DDROError("give at least one pipeline output folder")
    if len(paths) > 1 and not args.out:
        raise DDROError("several outputs: say where the report goes with --out DIR")
    if args.labels and len(args.labels) != len(paths):
        raise DDROError(f"--labels: {len(args.labels)} labels for {len(paths)} outputs")
    labels = list(args.labels) if args.labels else labels_for(paths)
    if len(set(labels)) < len(labels):
        raise DDROError(f"--labels must differ, got {labels}")
    sizes = parse_beam_sizes(args.beam_sizes)
    dest = Path(args.out) if args.out else paths[0]
    outputs = [load_output(p, label) for p, label in zip(paths, labels)]
    tests = {o.label: significance(o) for o in outputs}
    lines = ["# DDRO report", "", "| output | folder | split | queries |", "|---|---|---|---:|"]
    lines += [f"| {o.label} | `{o.path.as_posix()}` | {o.split} | {o.queries} |" for o in outputs]
    lines += ["", "## Systems", "",
              "Metrics recomputed with `ir_measures` from each output's `runs/<system>.<split>.run` on the "
              "collection's qrels (relevant: score >= 1; queries with a relevant document; unretrieved ones "
              "score 0; R@k only for k up to the run's depth: BM25's k, a generative run's beams; blank beyond). "
              f"† p < {args.alpha:g} against BM25, ‡ p < {args.alpha:g} against SFT (two-sided "
              "paired t-test over queries, `scipy.stats.ttest_rel`).", "",
              systems_table(outputs, tests, args.alpha), "", "### Paired t-tests", "",
              "Difference = mean of (system - against) over the queries.", "", pvalue_table(outputs, tests), "",
              "## Metrics versus beam size", ""]
    for o in outputs:
        lines += beam_section(o, args, dest, sizes)
    lines += ["## Training curves", ""]
    for o in outputs:
        lines += training_section(o, dest)
    lines += [f"## Per-query wins and losses of DDRO over SFT ({args.wins_metric})", ""]
    for o in outputs:
        lines += wins_section(o, args.wins_metric, dest)
    lines += ["## Phase 2: log-probs and first relevant rank", ""]
    for o in outputs:
        lines += phase2_section(o, dest)
    path = dest / "report.md"
    with atomic_file(path, overwrite=True) as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")
    return path


@entry_point
def main(argv: Optional[list[str]] = None):
    """Write report.md and PNG plots for one or more pipeline outputs: the systems table with
    paired t-tests (against BM25 and SFT), metrics versus beam size, training curves,
    DDRO's per-query wins and losses over SFT, and phase 2's log-probs and first relevant ranks.
    Usage: ddro report OUT [OUT2 ...] [--out DIR]."""
    argv = leading_positionals(sys.argv[1:] if argv is None else argv, "--outputs")
    (args,) = parse_args([ReportArguments], argv, prog="ddro report", description=main.__doc__)
    path = run(args)
    print(f"report: {path.resolve()}")


if __name__ == "__main__":
    main()
