"""Wall time, peak memory and throughput of every `ddro pipeline` stage, and (--estimate) the growth
to MS MARCO top-300k size (319,927 documents) on one GPU.

Each stage runs in its own child process, `ddro pipeline ... --stop_after STAGE` in stage order:
the pipeline skips finished stages, so each child runs exactly one new stage. A child's time
includes the interpreter start, imports and the pipeline's up-to-date checks (the `overhead` row:
one more child when everything is up to date). Peak memory is the child's own peak RSS
(and its children's), from os.wait4. Counts come from the stages' manifests.

    nice python benchmarks/pipeline_cost.py --collection ../shared/data/scifact --output /tmp/cost/scifact \\
        --preset tiny --estimate [--gpu-check gpu_check.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))                     # this checkout's ddro, as the children get it

from ddro.io import read_json  # noqa: E402
from ddro.pipeline import STAGES, load_preset, stage_folder, stage_named  # noqa: E402

# stage -> throughput unit ("docs", "steps" or "queries") and how the target scale grows it
UNITS = {"collection": "docs", "docids": "docs", "pseudo_queries": "docs", "instances": "docs", "sft": "steps",
         "bm25": "queries", "dense": "queries", "eval_sft": "queries", "negatives": "queries", "ddro": "steps",
         "eval_ddro": "queries"}


def fail(message: str) -> None:
    print(f"pipeline_cost: {message}", file=sys.stderr)
    sys.exit(2)


def run_child(argv: list[str], log_path: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MB of the child and its descendants, exit status) of one command."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    with open(log_path, "w") as log:
        start = time.perf_counter()
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)     # this child's rusage, not the cumulative one
        wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024, child.returncode  # ru_maxrss: KiB on Linux


def manifest(out: Path, name: str) -> dict:
    path = stage_folder(out, stage_named(name)) / "manifest.json"
    return read_json(path) if path.is_file() else {}


def sft_steps(out: Path) -> int:
    """Optimizer steps over every SFT stage folder (each has its own manifest)."""
    steps = 0
    for path in sorted((out / "sft").glob("*/manifest.json")):
        training = read_json(path).get("training") or {}
        steps += int(training.get("global_step") or training.get("steps") or 0)
    return steps


def stage_count(out: Path, name: str) -> int:
    """How many units (docs, steps or queries) the stage processed."""
    docs = manifest(out, "collection").get("counts", {}).get("corpus", 0)
    if UNITS[name] == "docs":
        return int(docs)
    if name == "sft":
        return sft_steps(out)
    counts = manifest(out, name).get("counts", {})
    if name == "negatives":
        return int(counts.get("queries", 0) + counts.get("val_queries", 0))
    if name == "ddro":
        return int(counts.get("steps", 0))
    return int(counts.get("queries", 0))


def measure(args) -> list[dict]:
    out = Path(args.output)
    base = [args.python, "-m", "ddro", "pipeline", "--collection", args.collection, "--output", str(out),
            "--preset", args.preset, "--split", args.split]
    logs = out.parent / f"{out.name}.cost-logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows = []
    for stage in [s.name for s in STAGES] + ["overhead"]:
        stop = STAGES[-1].name if stage == "overhead" else stage
        wall, peak, code = run_child(base + ["--stop_after", stop], logs / f"{stage}.log")
        if code != 0:
            fail(f"stage {stage} failed (exit {code}); see {logs / f'{stage}.log'}")
        count = 0 if stage == "overhead" else stage_count(out, stage)
        unit = UNITS.get(stage, "")
        rows.append({"stage": stage, "seconds": wall, "peak_mb": peak, "count": count, "unit": unit,
                     "rate": count / wall if count else None})
        print(f"  {stage:15s} {wall:8.1f} s {peak:8.0f} MB  {count} {unit}", file=sys.stderr, flush=True)
    return rows


def stage_table(rows: list[dict]) -> str:
    lines = ["| stage | wall s | peak RSS MB | work | throughput |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        work = f"{r['count']:,} {r['unit']}" if r["count"] else "-"
        rate = f"{r['rate']:,.3g} {r['unit']}/s" if r["rate"] else "-"
        lines.append(f"| {r['stage']} | {r['seconds']:.1f} | {r['peak_mb']:,.0f} | {work} | {rate} |")
    return "\n".join(lines)


# ---- --estimate: the growth to MS MARCO top-300k on one GPU -------------------------------------

PAPER = Path(__file__).resolve().parents[1] / "configs" / "paper" / "msmarco-pq.yaml"
MIN_WORK = 0.25   # share of a stage's time that must be work, not start-up, to extrapolate it


def target_work(paper: dict, docs: int, train_queries: int, eval_queries: int) -> dict:
    """Work at the target scale under the paper's schedule: SFT steps per stage (passages, pseudo-
    queries and real queries, each for its epochs), DDRO steps (one pair per negative per train
    query, less the validation share), queries."""
    sft, neg, ddro = paper["sft"], paper["negatives"], paper["ddro"]
    examples = (docs * paper["instances"]["passages_per_doc"], docs * paper["pseudo_queries"]["per_doc"],
                train_queries)
    sft_steps = [-(-n * e // b) for n, e, b in zip(examples, sft["stage_epochs"], sft["stage_batch_sizes"])]
    pairs = train_queries * neg["negatives"] * (1 - neg["val_fraction"])
    ddro_steps = int(-(-pairs * ddro["num_train_epochs"] // ddro["per_device_train_batch_size"]))
    return {"docs": docs, "sft_steps": sft_steps, "ddro_steps": ddro_steps, "train_queries": train_queries,
            "eval_queries": eval_queries}


def gpu_rates(path: str | None) -> dict:
    """Rates from gpu_check.sh --json, or {} (CPU-only extrapolation)."""
    if not path:
        return {}
    rows = read_json(Path(path))["rows"]
    return {key: row["value"] for key, row in rows.items()}


def estimate(rows: list[dict], work: dict, gpu: dict) -> list[dict]:
    """Per stage: what it scales with, the target work, the rate used and its source, seconds.
    Measured rates are net of the child's start-up (the overhead row); a stage that spent most
    of its time starting up has no rate (None): extrapolating start-up would be meaningless."""
    by = {r["stage"]: r for r in rows}
    docs = max(by["collection"]["count"], 1)
    overhead = by["overhead"]["seconds"]

    def measured(name: str) -> float | None:     # units/s of this run, net of start-up
        net = by[name]["seconds"] - overhead
        return by[name]["count"] / net if by[name]["count"] and net >= MIN_WORK * by[name]["seconds"] else None

    out = []

    def add(stage, scales, target, unit, rate, source):
        out.append({"stage": stage, "scales_with": scales, "target": target, "unit": unit, "rate": rate,
                    "source": source, "seconds": target / rate if rate else None})

    for name in ("collection", "pseudo_queries", "instances"):
        add(name, "docs", work["docs"], "docs", measured(name), "measured, linear in docs")
    if "embed" in gpu:
        add("docids", "docs", work["docs"], "docs", gpu["embed"], "gpu_check embedding (PQ k-means not included)")
    else:
        add("docids", "docs", work["docs"], "docs", measured("docids"), "measured, linear in docs")
    add_sft(add, work, gpu, measured("sft"))
    # per query, BM25 walks postings and exact dense search scans vectors, both growing with the docs
    for name in ("bm25", "dense", "negatives"):
        queries = work["train_queries"] if name == "negatives" else work["eval_queries"]
        rate = measured(name) and measured(name) * docs / work["docs"]
        add(name, "queries x docs", queries, "queries", rate, "measured, per-query cost linear in docs")
    for name in ("eval_sft", "eval_ddro"):
        rate, source = (gpu["decode_ours"], "gpu_check constrained beam 80") if "decode_ours" in gpu else \
            (measured(name), "measured (preset's model, beams and docids)")
        add(name, "queries", work["eval_queries"], "queries", rate, source)
    rate, source = (gpu["ddro_step"], "gpu_check DDRO step") if "ddro_step" in gpu else \
        (measured("ddro"), "measured (preset's model and batch)")
    add("ddro", "steps", work["ddro_steps"], "steps", rate, source)
    return out


def add_sft(add, work: dict, gpu: dict, measured_rate: float) -> None:
    """SFT on the GPU: stage 1 at the passage-step rate, stages 2-3 at the query-step rate."""
    steps = work["sft_steps"]
    if "sft_passages" in gpu and "sft_queries" in gpu:
        seconds = steps[0] / gpu["sft_passages"] + sum(steps[1:]) / gpu["sft_queries"]
        add("sft", "steps", sum(steps), "steps", sum(steps) / seconds, "gpu_check SFT steps (stage 1; stages 2-3)")
    else:
        add("sft", "steps", sum(steps), "steps", measured_rate, "measured (preset's model and batch)")


def estimate_text(est: list[dict], work: dict, gpu_path: str | None, gpu_name: str | None) -> str:
    lines = ["| stage | scales with | target work | rate | rate source | estimated hours |",
             "|---|---|---:|---:|---|---:|"]
    for e in est:
        hours = f"{e['seconds'] / 3600:,.2f}" if e["seconds"] is not None else "n/a"
        rate = f"{e['rate']:,.3g} {e['unit']}/s" if e["rate"] else "n/a: mostly start-up here"
        lines.append(f"| {e['stage']} | {e['scales_with']} | {e['target']:,} {e['unit']} | {rate} | "
                     f"{e['source']} | {hours} |")
    total = sum(e["seconds"] or 0 for e in est) / 3600
    missing = [e["stage"] for e in est if e["seconds"] is None]
    total_text = f"about {total:,.1f} hours" + (f" without {', '.join(missing)}" if missing else "")
    basis = (f"GPU basis: {gpu_path} ({gpu_name}); the other stages extrapolated from this run"
             if gpu_path else "CPU-only extrapolation: no gpu_check JSON given, every rate is this machine's")
    basis += ("; measured rates are net of the start-up (overhead row), n/a where a stage was mostly "
              "start-up (measure on a larger collection)")
    return "\n".join(lines + ["", f"Total: {total_text}. An estimate, not a measurement. {basis}. "
                              f"Target: {work['docs']:,} docs, {work['train_queries']:,} train queries, "
                              f"{work['eval_queries']:,} eval queries; SFT steps per stage "
                              f"{', '.join(f'{s:,}' for s in work['sft_steps'])} and {work['ddro_steps']:,} "
                              f"DDRO steps under {PAPER.name}'s schedule."])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()),
                                epilog="\n".join(__doc__.splitlines()[2:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--collection", required=True, help="as `ddro pipeline --collection`")
    p.add_argument("--output", required=True, help="a fresh folder for the pipeline's outputs")
    p.add_argument("--preset", default="tiny", help="as `ddro pipeline --preset`")
    p.add_argument("--split", default="test", help="as `ddro pipeline --split`")
    p.add_argument("--json", help="write the measurements here (default: OUTPUT.cost.json)")
    p.add_argument("--python", default=sys.executable, help="interpreter of the child processes")
    p.add_argument("--estimate", action="store_true", help="also estimate the MS MARCO top-300k cost")
    p.add_argument("--gpu-check", help="gpu_check.sh --json output: GPU rates for the estimate")
    p.add_argument("--paper-config", default=str(PAPER), help="schedule of the estimate")
    p.add_argument("--target-docs", type=int, default=319_927)
    p.add_argument("--target-train-queries", type=int, default=367_013, help="MS MARCO document train queries")
    p.add_argument("--target-eval-queries", type=int, default=5_193, help="MS MARCO document dev queries")
    args = p.parse_args(argv)
    load_preset(args.preset)                      # a bad preset fails here, not in the first child
    if (Path(args.output) / "pipeline.json").exists():
        fail(f"{args.output} already holds pipeline outputs (its finished stages would be skipped, "
             "not timed); give a fresh --output")
    rows = measure(args)
    text = f"# Pipeline cost: {args.collection}, preset {args.preset}\n\n{stage_table(rows)}\n"
    result = {"collection": args.collection, "preset": args.preset, "stages": rows}
    if args.estimate:
        work = target_work(load_preset(args.paper_config), args.target_docs, args.target_train_queries,
                           args.target_eval_queries)
        gpu = gpu_rates(args.gpu_check)
        name = read_json(Path(args.gpu_check)).get("device_name") if args.gpu_check else None
        est = estimate(rows, work, gpu)
        text += (f"\n## Estimate: {args.target_docs:,} docs on one GPU\n\n"
                 f"{estimate_text(est, work, args.gpu_check, name)}\n")
        result["estimate"] = {"work": work, "gpu_check": args.gpu_check, "stages": est}
    print(text)
    path = Path(args.json or f"{Path(args.output).resolve()}.cost.json")
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
