"""`ddro pipeline`: every stage in order on one collection, skipping the finished ones.

The pipeline is only a sequencer. For each stage it writes the stage's config file
(`OUT/configs/<stage>.json`: the preset's section plus the paths that chain the stages)
and runs that stage's own entry point with `--config` — exactly what a user would type,
so any stage can be rerun by hand with `ddro <command> --config OUT/configs/<stage>.json`.

A stage is skipped when its output is complete and `OUT/pipeline.json` records that it
was built from the same config and the same upstream outputs (manifest hashes);
otherwise it is rebuilt, and everything downstream of it with it.

    OUT/collection/   imported collection          OUT/bm25/         BM25 run + metrics
    OUT/docids/       docid table                  OUT/eval/sft/     SFT run + metrics
    OUT/dense/        dense run + metrics          OUT/negatives/    hard negatives (BM25 by default)
    OUT/pseudo_queries/                            OUT/ddro/         DDRO checkpoint
    OUT/instances/    SFT training + eval files    OUT/eval/ddro/    DDRO run + metrics
    OUT/sft/          stage checkpoints
    OUT/runs/<system>.test.run    OUT/results.md   the systems side by side
"""
from __future__ import annotations

import importlib
import importlib.resources
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import yaml

from .config import entry_point, parse_args
from .errors import DDROError
from .io import read_json, sha256_file, write_json

log = logging.getLogger(__name__)

STATE = "pipeline.json"


def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in importlib.resources.files("ddro.presets").iterdir()
                  if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict:
    path = Path(name)
    if not path.is_file():
        if name not in preset_names():
            raise DDROError(f"unknown preset {name!r} (choose from {', '.join(preset_names())}, or give a YAML file)")
        path = Path(str(importlib.resources.files("ddro.presets") / f"{name}.yaml"))
    preset = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(preset, dict) or not all(isinstance(v, dict) for v in preset.values()):
        raise DDROError(f"{path}: a preset maps stage names to mappings of arguments")
    return preset


@dataclass
class PipelineArguments:
    collection: str = field(metadata={"help": "a BEIR-layout folder, or a BEIR dataset name "
                                              "(looked up in --collections_dir, else downloaded)"})
    output: str = field(metadata={"help": "folder for every stage's outputs"})
    preset: str = field(default="tiny", metadata={"help": "settings of every stage: tiny, small, or a YAML file"})
    collections_dir: str = field(default="resources/collections",
                                 metadata={"help": "where named collections are looked up"})
    split: str = field(default="test", metadata={"help": "split evaluated and reported"})
    stop_after: Optional[str] = field(default=None, metadata={"help": "stop after this stage"})


@dataclass(frozen=True)
class Run:
    """A stage's retrieval run: copied to OUT/runs/<system>.<split>.run and tabulated in results.md."""
    system: str      # its name in runs/, results.md and the report
    row: int         # its row in the results table: BM25 first, as in the paper's tables
    depth_key: str   # the argument bounding the documents it returns per query (its metrics claim no more)
    arguments: str   # "module:Class" whose default applies when the config leaves `depth_key` out


@dataclass
class Stage:
    name: str            # its key in pipeline.json and OUT/configs/<name>.json
    module: str          # its entry point
    out_key: str         # the argument naming its output
    done_file: str       # written last: the output is complete when it exists
    # stages whose outputs it reads: fixed, or a function of the stage's config (a negatives source
    # that mines with the SFT model reads sft and docids; BM25 does not, so SFT changes leave it be)
    upstream: tuple[str, ...] | Callable[[dict], tuple[str, ...]]
    # arguments that chain the stages; None marks an input this configuration does not use: left out of
    # the stage's config, yet never settable by a preset (`check_preset_paths` sees every key)
    paths: Callable[[Path, "PipelineArguments", dict], dict]
    folder: str = ""     # its output folder under OUT (default: the name)
    section: str = ""    # the preset section it reads (default: the name; both evaluations read `eval`)
    run: Optional[Run] = None  # the run it makes, if any
    # trainer checkpoints `--resume` continues from, a glob under OUT ({folder}: the output folder);
    # None: not a training stage (an interrupted data stage or evaluation resumes from its journal)
    checkpoints: Optional[str] = None

    def __post_init__(self):
        self.folder = self.folder or self.name
        self.section = self.section or self.name

    def upstream_of(self, config: dict) -> tuple[str, ...]:
        return self.upstream(config) if callable(self.upstream) else self.upstream


def _collection_source(args: PipelineArguments) -> dict:
    src, named = Path(args.collection).expanduser(), Path(args.collections_dir) / args.collection
    if src.is_dir():
        return {"path": str(src)}
    if named.is_dir():
        return {"path": str(named)}
    return {"name": args.collection}


def check_collection(args: PipelineArguments) -> None:
    """A --collection meant as a folder (a path separator, or a leading '.' or '~') must be one: say
    so, rather than that it is no valid BEIR dataset name."""
    name = args.collection
    if "name" in _collection_source(args) and ("/" in name or os.sep in name or name.startswith((".", "~"))):
        raise DDROError(f"--collection {name}: " + ("not a folder" if Path(name).expanduser().exists()
                                                    else "no such folder"))


def _has_train(out: Path) -> bool:
    return (out / "collection" / "qrels" / "train.tsv").is_file()


def docid_embedding(preset: dict) -> dict:
    """The docids section's embedding settings, which the dense stage takes over (unless its own
    section sets them) so that it reads the document embeddings the PQ docids already cached."""
    if "docids" not in preset:
        return {}
    docids = preset["docids"]
    settings = {key: docids[key] for key in ("embedder", "embed_fields", "embed_cache") if key in docids}
    return {**settings, "embed_max_length": docids.get("embed_max_length") or 0}  # 0: the model's own, as unset


def negatives_sources(section: dict) -> set[str]:
    """The sources a negatives section mines with (--source, or the names in --mix)."""
    from .negatives import MIXED, parse_mix

    source = section.get("source", "bm25")
    return set(parse_mix(str(section.get("mix") or ""))) if source == MIXED else {source}


def negatives_paths(out: Path, args: PipelineArguments, preset: dict) -> dict:
    """The negatives stage's inputs. Pseudo-queries where the collection has no train queries (or the section
    asks for them); the SFT checkpoint and its docids where a model source mines, queried as phase 2
    queries (the ddro section's encoding); a dense source reads the docids' embeddings as the dense stage
    does. Unused inputs are None (see Stage.paths)."""
    section = preset.get("negatives", {})
    sources = negatives_sources(section)
    paths = {"collection": str(out / "collection"), "pseudo_queries": None, "checkpoint": None, "docids": None}
    if not _has_train(out):
        paths.update(queries="pseudo", pseudo_queries=str(out / "pseudo_queries"))
    elif section.get("queries") in ("pseudo", "both"):
        paths["pseudo_queries"] = str(out / "pseudo_queries")
    defaults = {}  # what the section leaves unset is taken over from the stages these sources follow
    if "model" in sources:
        paths.update(checkpoint=str(out / "sft"), docids=str(out / "docids"))
        defaults.update({k: v for k, v in preset.get("ddro", {}).items() if k in ("lowercase", "query_max_length")})
    if "dense" in sources:
        defaults.update(docid_embedding(preset))
    return {**{k: v for k, v in defaults.items() if k not in section}, **paths}


STAGES = [
    Stage("collection", "ddro.data.beir", "out", "manifest.json", (),
          lambda out, args, preset: _collection_source(args)),
    Stage("docids", "ddro.docids.build", "out", "manifest.json", ("collection",),
          lambda out, args, preset: {"collection": str(out / "collection")}),
    Stage("dense", "ddro.dense", "out", "manifest.json", ("collection",),
          lambda out, args, preset: {**docid_embedding(preset), **preset.get("dense", {}),
                                     "collection": str(out / "collection"), "split": args.split, "tag": "dense"},
          run=Run("dense", 1, "k", "ddro.dense:DenseArguments")),
    Stage("pseudo_queries", "ddro.pseudo_queries", "out", "manifest.json", ("collection",),
          lambda out, args, preset: {"collection": str(out / "collection")}),
    Stage("instances", "ddro.instances", "out", "manifest.json", ("collection", "docids", "pseudo_queries"),
          lambda out, args, preset: {"collection": str(out / "collection"), "docids": str(out / "docids"),
                                     "pseudo_queries": str(out / "pseudo_queries")}),
    Stage("sft", "ddro.train.sft", "output_dir", "final.json", ("docids", "instances"),
          lambda out, args, preset: {"instances": str(out / "instances"), "docids": str(out / "docids")},
          checkpoints="{folder}/*/checkpoints/checkpoint-*"),  # one trainer per SFT stage folder
    Stage("bm25", "ddro.bm25", "out", "manifest.json", ("collection",),
          lambda out, args, preset: {"collection": str(out / "collection"), "split": args.split, "tag": "bm25"},
          run=Run("bm25", 0, "k", "ddro.bm25.cli:BM25Arguments")),
    Stage("eval_sft", "ddro.eval.evaluate", "out", "manifest.json", ("sft", "docids", "instances"),
          lambda out, args, preset: {"model": str(out / "sft"), "docids": str(out / "docids"),
                                     "instances": str(out / "instances"), "split": args.split, "tag": "sft"},
          folder="eval/sft", section="eval", run=Run("sft", 2, "beams", "ddro.eval.decoding:DecodingArguments")),
    Stage("negatives", "ddro.negatives", "out", "manifest.json",
          lambda config: ("collection", "pseudo_queries", *(("sft", "docids") if config.get("checkpoint") else ())),
          negatives_paths),
    Stage("ddro", "ddro.train.ddro", "output_dir", "manifest.json", ("sft", "docids", "negatives"),
          lambda out, args, preset: {"checkpoint": str(out / "sft"), "docids": str(out / "docids"),
                                     "negatives": str(out / "negatives")},
          checkpoints="{folder}.trainer/checkpoint-*"),  # the trainer's folder beside the output
    Stage("eval_ddro", "ddro.eval.evaluate", "out", "manifest.json", ("ddro", "docids", "instances"),
          lambda out, args, preset: {"model": str(out / "ddro"), "docids": str(out / "docids"),
                                     "instances": str(out / "instances"), "split": args.split, "tag": "ddro"},
          folder="eval/ddro", section="eval", run=Run("ddro", 3, "beams", "ddro.eval.decoding:DecodingArguments")),
]
# The stages that make a run, in the results table's order.
RUN_STAGES = sorted((s for s in STAGES if s.run), key=lambda s: s.run.row)


def stage_named(name: str) -> Stage:
    return next(s for s in STAGES if s.name == name)


def run_stage_of(system: str) -> Stage:
    return next(s for s in RUN_STAGES if s.run.system == system)


def run_depth(stage: Stage, config: dict | None) -> int:
    """Documents per query a stage's run holds at most (its metrics claim no more): the config's
    `stage.run.depth_key` (BM25's or dense's `k`, an evaluation's `beams`), else that argument's default."""
    module, name = stage.run.arguments.split(":")
    default = getattr(importlib.import_module(module), name).__dataclass_fields__[stage.run.depth_key].default
    return int((config or {}).get(stage.run.depth_key, default))


def stage_folder(out: Path, stage: Stage) -> Path:
    return out / stage.folder


# Arguments naming a place a stage writes to (besides its output, which the pipeline sets).
WRITTEN = ("out", "output_dir", "logging_dir", "work_dir", "ref_cache_dir", "cache_dir", "download_dir",
           "embed_cache")


def check_preset_paths(preset: dict, out: Path, args: "PipelineArguments", name: str) -> None:
    """A preset chooses settings, not where things go: it may not set the paths that chain the
    stages, and any place it makes a stage write to must stay inside OUT."""
    for stage in STAGES:
        section = stage.section
        chained = {stage.out_key, *stage.paths(out, args, {})} - {"split", "tag", "queries"}
        for key, value in preset.get(section, {}).items():
            if key in chained:
                raise DDROError(f"preset {name}: section '{section}' sets '{key}', which the pipeline sets "
                                "(stage inputs and outputs live in OUT)")
            if key in WRITTEN and value is not None:
                inside = Path(str(value)).resolve()
                if inside != out.resolve() and out.resolve() not in inside.parents:
                    raise DDROError(f"preset {name}: section '{section}' key '{key}' ({value}) points "
                                    f"outside the output folder {out}")


def check_stage_arguments(out: Path, args: "PipelineArguments", preset: dict) -> None:
    """Parse every stage's config with its own entry point's parser before the first stage runs,
    so that an unknown key or a wrong type in a late section fails now, not minutes later."""
    from .config import check_arguments

    for stage in STAGES:
        check_arguments(importlib.import_module(stage.module).main, stage_config(out, args, preset, stage),
                        f"preset {args.preset}, section '{stage.section}'")


def check_split(out: Path, split: str) -> None:
    """The evaluated split must exist: checked once the collection is in, before any training."""
    from .data.collection import Collection

    splits = Collection(out / "collection").splits
    if split not in splits:
        raise DDROError(f"--split {split}: the collection has no such split (splits: {', '.join(splits)}); a "
                        "collection with train queries but no dev split gets one with the preset's "
                        "`collection: {dev_from_train: ...}`")


def stage_config(out: Path, args: PipelineArguments, preset: dict, stage: Stage) -> dict:
    section = preset.get(stage.section, {})
    paths = {k: v for k, v in stage.paths(out, args, preset).items() if v is not None}
    return {**section, **paths, stage.out_key: str(stage_folder(out, stage))}


def output_hash(out: Path, stage: Stage) -> str | None:
    done = stage_folder(out, stage) / stage.done_file
    return sha256_file(done) if done.is_file() else None


def has_checkpoints(out: Path, stage: Stage) -> bool:
    """Whether an interrupted training stage left trainer checkpoints to resume from."""
    return stage.checkpoints is not None and any(out.glob(stage.checkpoints.format(folder=stage.folder)))


def run_stage(out: Path, stage: Stage, config: dict, state: dict) -> None:
    """Run one stage unless its recorded config and upstream outputs are unchanged."""
    upstream = {name: state.get(name, {}).get("output") for name in stage.upstream_of(config)}
    record = {"config": config, "upstream": upstream}
    previous = state.get(stage.name, {})
    current = output_hash(out, stage)
    if current and previous.get("output") == current and \
            {k: previous.get(k) for k in record} == record:
        log.info("[%s] up to date, skipping", stage.name)
        return
    config_file = out / "configs" / f"{stage.name}.json"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    write_json(config_file, config)
    folder = stage_folder(out, stage)
    argv = ["--config", str(config_file)]
    if previous.get("started") == record and has_checkpoints(out, stage):
        # interrupted with this very config: continue from its last trainer checkpoint
        log.info("[%s] resuming the interrupted run", stage.name)
        argv += ["--resume", "true"]
    else:
        # stale or incomplete: rebuilt from scratch (an interrupted data stage or evaluation
        # resumes by itself from its journal beside the output, which is kept)
        if folder.exists():
            shutil.rmtree(folder)
        argv += ["--overwrite", "true"] if stage.checkpoints else []  # stale trainer checkpoints go too
    state[stage.name] = {"started": record}
    write_json(out / STATE, state)
    log.info("[%s] ddro %s %s", stage.name, stage.module, " ".join(argv))
    importlib.import_module(stage.module).main(argv)
    produced = output_hash(out, stage)
    if produced is None:
        raise DDROError(f"stage {stage.name} finished without writing {folder / stage.done_file}")
    state[stage.name] = {**record, "output": produced}
    write_json(out / STATE, state)


def write_results(out: Path, split: str) -> Path:
    """Copy the runs to OUT/runs/ and tabulate every system, with SFT vs DDRO t-tests."""
    from .eval.metrics import paired_ttest, read_per_query, results_table, shared_metrics

    systems, per_query = {}, {}
    (out / "runs").mkdir(exist_ok=True)
    for stage in RUN_STAGES:
        folder, system = stage_folder(out, stage), stage.run.system
        if (folder / "metrics.json").is_file():
            shutil.copyfile(folder / "run.trec", out / "runs" / f"{system}.{split}.run")
            systems[system] = read_json(folder / "metrics.json")
            per_query[system] = read_per_query(folder / "per_query.csv")
    depths = ", ".join(f"{name} {values.get('depth')}" for name, values in systems.items())
    lines = [f"# Results on `{split}`", "", results_table(systems), "",
             f"R@k only for k up to each run's depth, the documents it returns per query ({depths}).", ""]
    if "sft" in per_query and "ddro" in per_query:
        lines += ["## DDRO vs SFT (paired t-test over queries)", "", "| metric | SFT | DDRO | diff | p |",
                  "|---|---|---|---|---|"]
        for metric in shared_metrics(per_query["sft"], per_query["ddro"]):
            t = paired_ttest(per_query["sft"], per_query["ddro"], metric)
            lines.append(f"| {metric} | {systems['sft'][metric]:.4f} | {systems['ddro'][metric]:.4f} | "
                         f"{t['mean_diff']:+.4f} | {t['p_value']:.3g} |")
    path = out / "results.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_pipeline(args: PipelineArguments) -> Path:
    preset = load_preset(args.preset)
    unknown = set(preset) - {s.section for s in STAGES}
    if unknown:
        raise DDROError(f"preset {args.preset}: unknown stage sections {sorted(unknown)}")
    if args.stop_after and args.stop_after not in {s.name for s in STAGES}:
        raise DDROError(f"--stop_after: unknown stage {args.stop_after!r}")
    out = Path(args.output)
    check_preset_paths(preset, out, args, args.preset)
    check_collection(args)
    check_stage_arguments(out, args, preset)
    out.mkdir(parents=True, exist_ok=True)
    state = read_json(out / STATE) if (out / STATE).is_file() else {}
    for stage in STAGES:
        run_stage(out, stage, stage_config(out, args, preset, stage), state)
        if stage.name == "collection":
            check_split(out, args.split)
        if stage.name == args.stop_after:
            break
    results = write_results(out, args.split)
    log.info("results: %s", results)
    return out


@entry_point
def main(argv=None):
    """Run the whole pipeline on one collection (stages already complete are skipped)."""
    (args,) = parse_args([PipelineArguments], argv, prog="ddro pipeline", description=main.__doc__)
    out = run_pipeline(args)
    print(f"pipeline outputs: {out.resolve()}\nresults: {(out / 'results.md').resolve()}")


if __name__ == "__main__":
    main()
