"""Phase-2 selection on dev: a grid over the negatives and DDRO settings, each point trained from the
pipeline's SFT checkpoint and scored against SFT with a paired t-test.

Given a `ddro pipeline` output OUT (run with `--split dev` through SFT: OUT/sft, OUT/docids,
OUT/instances, OUT/collection, OUT/configs/*.json), every grid point

  1. mines negatives (`ddro negatives`: OUT/configs/negatives.json + the point's `negatives.*`
     settings) into OUT/sweep/negatives/<settings>/, shared by the points with the same settings;
  2. trains phase 2 (`ddro train ddro`: OUT/configs/ddro.json + the point's `ddro.*` settings) into
     OUT/sweep/<point>/ddro/ (reference log-probs cached in OUT/sweep/ref_cache/, keyed by checkpoint
     and negatives, so points that differ only in training settings compute them once);
  3. evaluates it (`ddro eval`: OUT/configs/eval_sft.json, model and split replaced) into
     OUT/sweep/<point>/eval/<split>/;

then writes OUT/sweep/results.md and results.json (results_<split>.* for a split other than dev):
MRR@10, nDCG@10, R@1, R@10 and the paired t-test p against SFT on the same split, best first.

Each stage runs in this process through its own entry point with `--config FILE --overwrite true`,
as `ddro pipeline` runs them; the config files stay beside the outputs (configs/ in each folder), so
any step can be rerun by hand: `python -m ddro.train.ddro --config OUT/sweep/<point>/configs/ddro.json`.
A step is skipped when its output is complete and its recorded config is unchanged, so a killed
sweep continues where it stopped. A point is named by its own settings only: the rest of its config
is the pipeline's, so after a preset change the same name means other settings, and the step is
rebuilt (with a warning naming the keys that differ). Set every axis a comparison depends on (for
example `ddro.loss_type=sigmoid`, not the preset's default) so that names stay exact. Every point's
configs go through the stages' own parsers before anything runs: an unknown key fails at once,
naming the point.

    python benchmarks/phase2_sweep.py OUT --set negatives.source=bm25,model \\
        --set ddro.learning_rate=1e-6,1e-5 --set ddro.loss_type=sigmoid,rpo
    python benchmarks/phase2_sweep.py OUT --grid grid.yaml           # {ddro: {beta: [0.2, 0.4]}, ...}
    python benchmarks/phase2_sweep.py OUT --split test --set ddro.learning_rate=1e-5 --seeds 1,2,3
    python benchmarks/phase2_sweep.py OUT --set negatives.source=model --rounds 2   # + a second round

`--rounds N` follows each point with rounds 2..N: negatives re-mined by the previous round's
phase-2 checkpoint (model sources only), which the round also starts from and takes as its
reference; each round is scored as its own row ('<point>,round=n', in OUT/sweep/<point>/round<n>/).

Values are read with yaml.safe_load (`1e-5` stays the text '1e-5': the stages' parsers convert it);
a value holding commas is given as a YAML list: --set 'negatives.bands=["1-10,11-100"]'.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import importlib
import itertools
import json
import logging
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's ddro

from ddro.errors import DDROError  # noqa: E402
from ddro.io import read_json, write_json  # noqa: E402

log = logging.getLogger("phase2_sweep")

SECTIONS = ("negatives", "ddro")
CHAINED = {"negatives": {"out"}, "ddro": {"output_dir", "negatives"}}  # the sweep sets these


def uses_model(negatives: dict) -> bool:
    """Negatives mined with the SFT model (alone or in a mix) need its checkpoint and docids."""
    from ddro.pipeline import negatives_sources  # the pipeline's reading of --source / --mix

    return "model" in negatives_sources(negatives)


MODULES = {"negatives": "ddro.negatives", "ddro": "ddro.train.ddro", "eval": "ddro.eval.evaluate"}
METRICS = ("MRR@10", "nDCG@10", "R@1", "R@10")
TESTED = ("MRR@10", "nDCG@10")  # metrics with a paired t-test against SFT
SORT_BY = "MRR@10"


# ------------------------------------------------------------------ the grid

def parse_values(text: str) -> list[Any]:
    """'a,b,c' -> three values, each read by yaml.safe_load; a YAML list ('[...]') as it is."""
    text = text.strip()
    try:
        if text.startswith("["):
            values = yaml.safe_load(text)
            if not isinstance(values, list):
                raise DDROError(f"{text!r}: not a YAML list")
            return values
        return [yaml.safe_load(v) if v.strip() else "" for v in text.split(",")]
    except yaml.YAMLError as e:
        raise DDROError(f"{text!r}: not valid YAML ({' '.join(str(e).split())})") from None


def check_key(key: str) -> str:
    section, _, name = key.partition(".")
    if section not in SECTIONS or not name:
        raise DDROError(f"{key!r}: a grid key is SECTION.NAME with SECTION one of {', '.join(SECTIONS)}")
    if name in CHAINED[section]:
        raise DDROError(f"{key!r}: set by the sweep (outputs live in OUT/sweep)")
    return key


def parse_set(spec: str) -> tuple[str, list[Any]]:
    """'--set ddro.beta=0.2,0.4' -> ('ddro.beta', [0.2, 0.4])."""
    key, sep, text = spec.partition("=")
    if not sep:
        raise DDROError(f"--set {spec!r}: expected SECTION.NAME=VALUE[,VALUE...]")
    return check_key(key.strip()), parse_values(text)


def load_grid(path: Path) -> dict[str, list[Any]]:
    """A YAML/JSON file: {section: {name: value or [values]}} or {"section.name": ...}."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise DDROError(f"--grid {path}: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise DDROError(f"{path}: a grid file maps SECTION (or SECTION.NAME) to values")
    grid = {}
    for top, value in data.items():
        items = {f"{top}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {top: value}
        for key, values in items.items():
            grid[check_key(str(key))] = values if isinstance(values, list) else [values]
    return grid


def expand_grid(grid: dict[str, list[Any]], seeds: list[int] | None = None) -> list[dict[str, Any]]:
    """Every combination of the grid's values (cartesian product, in the grid's key order), each
    repeated once per phase-2 seed (`ddro.seed`, last) when seeds are given."""
    if seeds and "ddro.seed" in grid:
        raise DDROError("give the phase-2 seeds with --seeds or as ddro.seed, not both")
    grid = {**grid, **({"ddro.seed": list(seeds)} if seeds else {})}
    for key, values in grid.items():
        if not values:
            raise DDROError(f"{key}: no values")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def settings_name(settings: dict[str, Any]) -> str:
    """A folder name for a point's settings ('base' for none), readable and stable."""
    if not settings:
        return "base"
    name = ",".join(f"{k}={v}" for k, v in settings.items())
    name = re.sub(r"[^A-Za-z0-9_.=,+-]+", "_", name)
    if len(name) > 120:  # keep folder names well under the file system's limit, still unique
        name = f"{name[:100]}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"
    return name


def without_seed(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k != "ddro.seed"}


# ------------------------------------------------------------------ configs

def section(settings: dict[str, Any], name: str) -> dict[str, Any]:
    return {k.split(".", 1)[1]: v for k, v in settings.items() if k.split(".", 1)[0] == name}


def rebase(config: dict, old: Path, new: Path) -> dict:
    """The pipeline wrote its configs with the output path it was given (perhaps relative to where
    it ran): point the values inside that folder at `new`, so the sweep runs from anywhere."""
    def moved(value):
        if isinstance(value, str) and (value == str(old) or value.startswith(f"{old}/")):
            return str(new / Path(value).relative_to(old)) if value != str(old) else str(new)
        return value
    return {k: moved(v) for k, v in config.items()}


def base_configs(out: Path) -> dict[str, dict]:
    """The pipeline's negatives, ddro and eval_sft configs, paths rebased onto `out`."""
    configs = {}
    for stage in ("negatives", "ddro", "eval_sft"):
        path = out / "configs" / f"{stage}.json"
        if not path.is_file():
            raise DDROError(f"{path} not found: run `ddro pipeline --output {out}` (through SFT at least) first")
        configs[stage] = read_json(path)
    old = Path(configs["eval_sft"]["out"]).parent.parent  # the pipeline's OUT/eval/sft
    return {stage: rebase(config, old, out) for stage, config in configs.items()}


def point_configs(out: Path, base: dict[str, dict], settings: dict[str, Any], split: str) -> dict[str, dict]:
    """The three stage configs of one grid point: the pipeline's, the point's settings over them,
    and the sweep's output folders."""
    mined = section(settings, "negatives")
    negatives = {**base["negatives"], **mined}
    if uses_model(negatives):
        negatives.setdefault("checkpoint", str(out / "sft"))
        negatives.setdefault("docids", str(out / "docids"))
    else:  # a pipeline mined with the model: its model-only arguments do not carry over to other sources
        from ddro.negative_sources import SOURCES

        for key in SOURCES["model"].uses:
            if key not in mined:
                negatives.pop(key, None)
    negatives["out"] = str(out / "sweep" / "negatives" / settings_name(mined))
    folder = out / "sweep" / settings_name(settings)
    ddro = {**base["ddro"], **section(settings, "ddro"), "negatives": negatives["out"],
            "output_dir": str(folder / "ddro")}
    ddro.setdefault("ref_cache_dir", str(out / "sweep" / "ref_cache"))
    evaluation = {**base["eval_sft"], "model": ddro["output_dir"], "split": split, "tag": "ddro",
                  "out": str(folder / "eval" / split)}
    return {"negatives": negatives, "ddro": ddro, "eval": evaluation}


def round_configs(previous: dict[str, dict], folder: Path, n: int) -> dict[str, dict]:
    """Round n (>= 2) of a point: negatives re-mined with round n-1's phase-2 checkpoint, which is
    also the new round's starting point and reference (iterative DPO)."""
    checkpoint = previous["ddro"]["output_dir"]
    where = folder / f"round{n}"
    negatives = {**previous["negatives"], "checkpoint": checkpoint, "out": str(where / "negatives")}
    ddro = {**previous["ddro"], "checkpoint": checkpoint, "negatives": negatives["out"],
            "output_dir": str(where / "ddro")}
    split = previous["eval"]["split"]
    evaluation = {**previous["eval"], "model": ddro["output_dir"], "out": str(where / "eval" / split)}
    return {"negatives": negatives, "ddro": ddro, "eval": evaluation}


def with_rounds(names: list[str], points: list[dict], configs: list[dict], out: Path,
                rounds: int) -> tuple[list[str], list[dict], list[dict]]:
    """Each point followed by its rounds 2..`rounds` (named '<point>,round=n'); only model-mined
    negatives can be re-mined."""
    if rounds < 1:
        raise DDROError(f"--rounds must be at least 1, got {rounds}")
    all_names, all_points, all_configs = [], [], []
    for name, point, config in zip(names, points, configs):
        if rounds > 1 and not uses_model(config["negatives"]):
            raise DDROError(f"point {name}: --rounds {rounds} re-mines negatives with the phase-2 model, "
                            "which needs negatives.source model (or a mix holding it)")
        for n in range(1, rounds + 1):
            if n > 1:
                config = round_configs(config, out / "sweep" / name, n)
            all_names.append(name if n == 1 else f"{name},round={n}")
            all_points.append(point if n == 1 else {**point, "round": n})
            all_configs.append(config)
    return all_names, all_points, all_configs


def check_points(points: list[dict[str, dict]], names: list[str]) -> None:
    """Every point's configs through the stages' own parsers, before the first stage runs."""
    from ddro.config import check_arguments

    for configs, name in zip(points, names):
        for stage, config in configs.items():
            check_arguments(importlib.import_module(MODULES[stage]).main, config, f"point {name}, {stage}")


# ------------------------------------------------------------------ running

def done_file(stage: str, config: dict) -> Path:
    folder = Path(config["output_dir" if stage == "ddro" else "out"])
    return folder / ("metrics.json" if stage == "eval" else "manifest.json")


def run_step(stage: str, config: dict, config_file: Path) -> bool:
    """Run one stage unless its output is complete and was built from this same config."""
    done = done_file(stage, config)
    if done.is_file() and config_file.is_file():
        recorded = read_json(config_file)
        if recorded == config:
            log.info("[%s] %s: done, skipping", stage, done.parent)
            return False
        # a point is named by its settings only: a changed pipeline config (a new preset) changes it too
        changed = sorted(k for k in {*recorded, *config} if recorded.get(k) != config.get(k))
        log.warning("[%s] %s was built with another config (%s differ): rebuilding it", stage, done.parent,
                    ", ".join(changed))
    config_file.parent.mkdir(parents=True, exist_ok=True)
    write_json(config_file, config)
    argv = ["--config", str(config_file), "--overwrite", "true"]
    log.info("[%s] python -m %s %s", stage, MODULES[stage], " ".join(argv))
    importlib.import_module(MODULES[stage]).main(argv)
    if not done.is_file():
        raise DDROError(f"{stage} finished without writing {done}")
    if stage == "ddro":  # free the trained model before the next point loads its own
        gc.collect()
        if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
            sys.modules["torch"].cuda.empty_cache()
    return True


def run_point(configs: dict[str, dict], folder: Path) -> Path:
    """Mine (or reuse) the negatives, train, evaluate; returns the evaluation folder."""
    negatives = Path(configs["negatives"]["out"])
    run_step("negatives", configs["negatives"], negatives.parent / f"{negatives.name}.json")
    run_step("ddro", configs["ddro"], folder / "configs" / "ddro.json")
    split = configs["eval"]["split"]
    run_step("eval", configs["eval"], folder / "configs" / f"eval_{split}.json")
    return Path(configs["eval"]["out"])


def sft_reference(out: Path, base_eval: dict, split: str) -> Path:
    """SFT's evaluation on `split`: the pipeline's own when it evaluated that split, else one made
    here with the same decoding settings (OUT/sweep/sft_<split>/)."""
    pipeline = out / "eval" / "sft"
    if base_eval.get("split") == split and (pipeline / "metrics.json").is_file():
        return pipeline
    config = {**base_eval, "split": split, "out": str(out / "sweep" / f"sft_{split}")}
    run_step("eval", config, out / "sweep" / "configs" / f"sft_{split}.json")
    return Path(config["out"])


# ------------------------------------------------------------------ scoring

def score(eval_dir: Path, sft_dir: Path) -> dict:
    """The point's metrics and, per tested metric, the paired t-test against SFT (same queries)."""
    from ddro.eval.metrics import paired_ttest, read_per_query, shared_metrics

    metrics = read_json(eval_dir / "metrics.json")
    per_query, sft = read_per_query(eval_dir / "per_query.csv"), read_per_query(sft_dir / "per_query.csv")
    tests = {m: paired_ttest(sft, per_query, m) for m in TESTED if m in shared_metrics(sft, per_query)}
    return {"metrics": {m: metrics[m] for m in METRICS if m in metrics},
            "p": {m: t["p_value"] for m, t in tests.items()},
            "diff": {m: t["mean_diff"] for m, t in tests.items()}}


def rank_rows(rows: list[dict], mark_best: bool) -> list[dict]:
    """Rows best first by MRR@10 (ties by name); the first marked best when selecting (dev)."""
    rows = sorted(rows, key=lambda r: (-r["metrics"].get(SORT_BY, -math.inf), r["name"]))
    return [{**r, "best": mark_best and i == 0} for i, r in enumerate(rows)]


def seed_order(seed) -> tuple:
    """Numbers in numeric order (2 before 10), anything else after them as text."""
    number = isinstance(seed, (int, float)) and not isinstance(seed, bool)
    return (0, seed, "") if number else (1, 0, str(seed))


def over_seeds(rows: list[dict]) -> list[dict]:
    """Per setting (the point without its `ddro.seed`): mean and sample std of each metric over the
    seeds, and each seed's p against SFT."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(settings_name(without_seed(row["settings"])), []).append(row)
    summary = []
    for name, group in groups.items():
        group = sorted(group, key=lambda r: seed_order(r["settings"].get("ddro.seed")))
        stats = {}
        for m in METRICS:
            values = [r["metrics"][m] for r in group if m in r["metrics"]]
            if len(values) == len(group):
                stats[m] = {"mean": statistics.fmean(values),
                            "std": statistics.stdev(values) if len(values) > 1 else None}
        summary.append({"setting": name, "seeds": [r["settings"].get("ddro.seed") for r in group],
                        "metrics": stats, "p": [r["p"].get(SORT_BY) for r in group]})
    return summary


# ------------------------------------------------------------------ results

def cell(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def p_cell(value: float | None) -> str:
    """A p-value to 3 significant digits: 2e-25 stays 2e-25, not 0.000."""
    return "" if value is None else f"{value:.3g}"


def points_table(rows: list[dict], sft: dict) -> list[str]:
    header = [*METRICS, *(f"p {m}" for m in TESTED)]
    lines = ["| point | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header),
             "| SFT (reference) | " + " | ".join(cell(sft.get(m)) for m in METRICS) + " |" + " |" * len(TESTED)]
    for r in rows:
        name = f"**{r['name']}** (best)" if r["best"] else r["name"]
        cells = [cell(r["metrics"].get(m)) for m in METRICS] + [p_cell(r["p"].get(m)) for m in TESTED]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def seeds_table(summary: list[dict]) -> list[str]:
    lines = ["| setting | seeds | " + " | ".join(f"{m} mean ± std" for m in METRICS) + f" | p {SORT_BY} per seed |",
             "|---|---|" + "---:|" * len(METRICS) + "---|"]
    for s in summary:
        cells = []
        for m in METRICS:
            stat = s["metrics"].get(m)
            cells.append("" if stat is None else f"{stat['mean']:.4f} ± {cell(stat['std']) or 'n/a'}")
        seeds = ", ".join(map(str, s["seeds"]))
        ps = ", ".join(f"{seed}: {p_cell(p)}" for seed, p in zip(s["seeds"], s["p"]))
        lines.append(f"| {s['setting']} | {seeds} | " + " | ".join(cells) + f" | {ps} |")
    return lines


def write_results(out: Path, split: str, sft_dir: Path, rows: list[dict], seeds: bool) -> Path:
    sft = read_json(sft_dir / "metrics.json")
    stem = "results" if split == "dev" else f"results_{split}"
    summary = over_seeds(rows) if seeds else []
    write_json(out / "sweep" / f"{stem}.json", {
        "split": split, "sort_by": SORT_BY, "sft": {"folder": str(sft_dir), **{m: sft.get(m) for m in METRICS}},
        "points": rows, "over_seeds": summary})
    lines = [f"# Phase-2 sweep on `{split}`", "",
             f"Each point: phase 2 from `{out / 'sft'}` with the pipeline's configs and the point's settings, "
             f"evaluated on `{split}` ({sft.get('queries')} queries with a relevant document). p: two-sided "
             f"paired t-test against SFT (`{sft_dir}`) over the queries. Sorted by {SORT_BY}.", ""]
    if split != "dev":
        lines += [f"Not a selection: settings are chosen on dev; `{split}` is reported, no best marked.", ""]
    lines += points_table(rows, sft) + [""]
    if summary:
        lines += ["## Over phase-2 seeds (same SFT checkpoint)", "",
                  "Mean and sample standard deviation over the seeds, and each seed's p against SFT.", "",
                  *seeds_table(summary), ""]
    path = out / "sweep" / f"{stem}.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# ------------------------------------------------------------------ main

def parse_cli(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="phase2_sweep.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="a `ddro pipeline` output folder (run through SFT)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.NAME=V1,V2",
                        help="a grid axis (repeatable): negatives.* or ddro.* values, comma-separated")
    parser.add_argument("--grid", type=Path, help="a YAML/JSON grid file: {negatives: {name: [values]}, ddro: ...}")
    parser.add_argument("--seeds", default=None, help="phase-2 seeds (ddro.seed), e.g. 1,2,3: each point once per "
                        "seed, reported as mean ± std with each seed's p against SFT")
    parser.add_argument("--split", default="dev", help="split to evaluate the points on (select on dev)")
    parser.add_argument("--rounds", type=int, default=1, help="phase-2 rounds per point: round n >= 2 re-mines "
                        "model negatives with round n-1's checkpoint and trains from it (model sources only)")
    parser.add_argument("--dry_run", action="store_true", help="print every point's configs, run nothing")
    return parser.parse_args(argv)


def plan(args: argparse.Namespace) -> tuple[list[str], list[dict], list[dict], dict]:
    """(names, settings, stage configs) of every point, and the pipeline's own configs."""
    grid = load_grid(args.grid) if args.grid else {}
    for spec in args.sets:
        key, values = parse_set(spec)
        grid[key] = values
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()] if args.seeds else None
    except ValueError:
        raise DDROError(f"--seeds {args.seeds!r}: expected comma-separated integers") from None
    points = expand_grid(grid, seeds)
    base = base_configs(args.out)
    configs = [point_configs(args.out, base, p, args.split) for p in points]
    names, points, configs = with_rounds([settings_name(p) for p in points], points, configs, args.out, args.rounds)
    return names, points, configs, base


def sweep(args: argparse.Namespace) -> Path | None:
    names, points, configs, base = plan(args)
    check_points(configs, names)
    if args.dry_run:
        for name, config in zip(names, configs):
            print(json.dumps({"point": name, **config}, indent=2))
        return None
    sft_dir = sft_reference(args.out, base["eval_sft"], args.split)
    rows = []
    for i, (name, settings, config) in enumerate(zip(names, points, configs), start=1):
        log.info("point %d/%d: %s", i, len(names), name)
        eval_dir = run_point(config, Path(config["ddro"]["output_dir"]).parent)
        rows.append({"name": name, "settings": settings, **score(eval_dir, sft_dir)})
    return write_results(args.out, args.split, sft_dir, rank_rows(rows, args.split == "dev"), bool(args.seeds))


def main(argv: list[str] | None = None) -> None:
    from ddro.config import setup_logging

    setup_logging()
    args = parse_cli(argv)
    try:
        path = sweep(args)
    except DDROError as e:
        print(f"phase2_sweep: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if path is not None:
        print(f"results: {path.resolve()}")


if __name__ == "__main__":
    main()
