"""The bash launchers (scripts/), the SLURM jobs (scripts/slurm/) and the paper configs (configs/paper/).

The launchers only compose paths and call `ddro` entry points. They run here with DRY_RUN=1 (print,
run nothing) and every printed command goes through its stage's real argument parser, config file
included; the SLURM jobs run with stub `ddro`/`torchrun` executables that record how they were called.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

import ddro.config
from ddro.cli import resolve
from ddro.pipeline import STAGES, PipelineArguments, load_preset, stage_config

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
PAPER = REPO / "configs" / "paper"
VENV_BIN = Path(sys.executable).parent
SETTINGS = [("msmarco", "pq"), ("msmarco", "tu"), ("nq", "pq"), ("nq", "tu")]
# Stage launchers: script -> arguments after the setting.
LAUNCHERS = {
    "data/build_collection.sh": [], "data/sentences.sh": [], "data/embed.sh": [], "data/docids.sh": [],
    "data/pseudo_queries.sh": [], "data/instances.sh": [], "sft/train_sft.sh": [],
    "bm25/bm25.sh": [], "dense/dense.sh": [], "ddro/negatives.sh": [], "ddro/train_ddro.sh": [],
    "eval/eval.sh": ["sft"], "eval/eval_published.sh": [],
}
ENV_KNOBS = ("ROOT", "DATA", "OUT", "COLLECTION", "CONFIG", "SPLIT", "NPROC", "OTHER_ENCODING", "DRY_RUN",
             "NEGATIVES_FROM", "NEGATIVES_SOURCE", "NEGATIVES_MIX", "PSEUDO_SHARE", "CHECKPOINT", "RAW_DIR", "SHARDS",
             "SBATCH_ARGS", "VENV", "DATASET", "NAME", "ENCODING", "MODEL", "PYTHON")


def shell(script: Path | str, *args: str, root: Path, dry_run: bool = True, **env: str):
    environ = {k: v for k, v in os.environ.items() if k not in ENV_KNOBS and not k.startswith("SLURM_")}
    environ.update(PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", ROOT=str(root),
                   PYTHON=sys.executable, DRY_RUN="1" if dry_run else "0")
    environ.update(env)
    return subprocess.run(["bash", str(script), *args], cwd=REPO, env=environ, capture_output=True,
                          text=True, timeout=120)


def printed(result) -> list[list[str]]:
    assert result.returncode == 0, result.stderr
    return [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]


class _Parsed(Exception):
    pass


_parsed_cache: dict = {}


def parse_command(cmd: list[str]) -> tuple[str, dict]:
    """(stage module, its parsed arguments) of a printed command, through the stage's own main()."""
    if cmd[0] == "ddro":
        found = resolve(cmd[1:])
        assert found, f"not a ddro command: {cmd}"
        _, module, argv = found
    elif cmd[0] == "torchrun":
        m = cmd.index("-m")
        assert cmd[1:m] in (["--standalone", "--nproc_per_node", cmd[m - 1]],), cmd
        module, argv = cmd[m + 1], cmd[m + 2:]
    elif Path(cmd[0]).name.startswith("python") and cmd[1] == "-m":
        module, argv = cmd[2], cmd[3:]
    else:
        raise AssertionError(f"launchers may only run ddro entry points, got: {shlex.join(cmd)}")
    assert module.startswith("ddro."), cmd
    config = argv[argv.index("--config") + 1] if "--config" in argv else None
    key = (module, tuple(argv), Path(config).read_text() if config and Path(config).is_file() else None)
    if key not in _parsed_cache:
        _parsed_cache[key] = _parse(module, argv)
    return module, _parsed_cache[key]


def _parse(module: str, argv: list[str]) -> dict:
    """Run the stage's main() up to the end of argument parsing (its real parser and config loading)."""
    build = ddro.config.build_parser

    def stopping_parser(*args, **kwargs):
        parser = build(*args, **kwargs)
        parse = parser.parse_args_into_dataclasses
        parser.parse_args_into_dataclasses = lambda *a, **k: (_ for _ in ()).throw(_Parsed(parse(*a, **k)))
        return parser

    with mock.patch.object(ddro.config, "build_parser", stopping_parser):
        try:
            importlib.import_module(module).main(list(argv))
        except _Parsed as done:
            *dataclasses_, remaining = done.args[0]
        except SystemExit as e:
            pytest.fail(f"{module} refused {shlex.join(argv)} (exit {e.code})")
        else:
            pytest.fail(f"{module} did not parse its arguments")
    assert remaining == [], f"{module}: unrecognized {remaining}"
    return {k: v for d in dataclasses_ for k, v in vars(d).items()}


def chain(root: Path, *setting: str, log: list | None = None, **env) -> dict[str, dict]:
    """`run_paper.sh` under DRY_RUN: stage label -> parsed arguments (its stderr appended to `log`)."""
    stages = {}
    result = shell(SCRIPTS / "run_paper.sh", *setting, root=root, **env)
    if log is not None:
        log.append(result.stderr)
    for cmd in printed(result):
        if cmd[0].endswith(f"download_{setting[0]}.sh"):
            stages["download"] = {"dir": cmd[1]}
            continue
        module, args = parse_command(cmd)
        label = {"ddro.docids.build": f"docids-{args.get('encoding')}",
                 "ddro.eval.evaluate": f"eval-{args.get('tag')}"}.get(module, module)
        assert label not in stages, f"{label} runs twice"
        stages[label] = args
    return stages


# ---------------------------------------------------------------------------------------------- syntax


def all_scripts() -> list[Path]:
    return sorted(p for p in SCRIPTS.rglob("*") if p.suffix in (".sh", ".sbatch"))


@pytest.mark.parametrize("script", all_scripts(), ids=lambda p: str(p.relative_to(SCRIPTS)))
def test_bash_syntax(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_launchers_are_executable():
    sourced = {SCRIPTS / "lib.sh", SCRIPTS / "slurm" / "common.sh"}
    for script in set(SCRIPTS.rglob("*.sh")) - sourced:
        assert os.access(script, os.X_OK), script


# ---------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("path", sorted(PAPER.glob("*.yaml")), ids=lambda p: p.name)
def test_paper_config_is_a_pipeline_preset(path, tmp_path):
    """What `ddro pipeline --preset FILE` writes for each stage parses with that stage's module."""
    preset = load_preset(str(path))
    assert set(preset) <= {s.name for s in STAGES} | {"eval"}
    args = PipelineArguments(collection=str(tmp_path / "c"), output=str(tmp_path / "o"), preset=str(path),
                             split="dev")
    for stage in STAGES:
        config = tmp_path / f"{stage.name}.json"
        config.write_text(json.dumps(stage_config(tmp_path / "o", args, preset, stage)))
        parse_command(["python", "-m", stage.module, "--config", str(config)])


def test_paper_configs_cover_the_four_settings_with_shared_sections_identical():
    for dataset in ("msmarco", "nq"):
        pq, tu = (load_preset(str(PAPER / f"{dataset}-{e}.yaml")) for e in ("pq", "tu"))
        for section in ("collection", "pseudo_queries", "negatives", "bm25"):  # built once per dataset
            assert pq[section] == tu[section], (dataset, section)


def check_paper_settings(stages: dict, dataset: str, encoding: str) -> None:
    docids, sft, ddro_ = stages[f"docids-{encoding}"], stages["ddro.train.sft"], stages["ddro.train.ddro"]
    if encoding == "pq":
        assert (docids["pq_subspaces"], 2 ** docids["pq_bits"]) == (24, 256)
    assert docids["tokenizer"] == "t5-base" and docids["target_vocab"] == "tokenizer"
    assert (sft["construction"], sft["model_name_or_path"]) == ("t5", "t5-base")
    assert (sft["schedule"], list(sft["stage_epochs"])) == ("sequential", [10, 20, 10])
    scheduler = getattr(sft["lr_scheduler_type"], "value", None)
    assert (sft["learning_rate"], sft["max_grad_norm"], scheduler) == (1e-3, 5.0, "linear")
    assert stages["ddro.pseudo_queries"]["method"] == "doc2query"
    neg = stages["ddro.negatives"]
    assert (neg["negatives"], neg["bands"], neg["k1"], neg["b"]) == (16, "1-100,101-500,501-1000", 0.82, 0.68)
    assert ddro_["beta"] == {"msmarco": 0.4, "nq": 0.49}[dataset] and ddro_["loss_type"] == "sigmoid"
    scheduler = getattr(ddro_["lr_scheduler_type"], "value", None)
    assert (ddro_["learning_rate"], scheduler, ddro_["warmup_steps"]) == (1e-6, "cosine", 1000)
    assert (ddro_["max_grad_norm"], ddro_["per_device_train_batch_size"], ddro_["num_train_epochs"]) == (0.5, 64, 2)
    beams = {("msmarco", "pq"): 80, ("msmarco", "tu"): 15, ("nq", "pq"): 100, ("nq", "tu"): 50}
    assert stages["eval-sft"]["beams"] == stages["eval-ddro"]["beams"] == beams[dataset, encoding]
    # DDRO reads queries the way the instances were built
    instances = stages["ddro.instances"]
    assert (ddro_["query_max_length"], ddro_["lowercase"]) == (instances["query_max_length"], instances["lowercase"])


# ---------------------------------------------------------------------------------------------- launchers


@pytest.mark.parametrize("script", sorted(LAUNCHERS))
def test_launcher_prints_one_parsable_ddro_command(script, tmp_path):
    if script in ("data/embed.sh", "dense/dense.sh"):  # they read the embedder settings of the docids section
        (cmd,) = printed(shell(SCRIPTS / script, "msmarco", "pq", root=tmp_path))
        assert parse_command(cmd)[1]["embedder"] == "sentence-transformers/gtr-t5-base"
    # every setting goes through run_paper.sh below; here each launcher alone prints exactly one command
    commands = printed(shell(SCRIPTS / script, "nq", "pq", *LAUNCHERS[script], root=tmp_path))
    assert len(commands) == 1
    parse_command(commands[0])
    assert not list(tmp_path.rglob("manifest.json")), "DRY_RUN must not build anything"


def test_dense_launcher_reads_the_embedding_cache_the_docids_fill(tmp_path):
    """Same model, fields, length and cache folder as docids.sh: the same cache entry."""
    from ddro.docids.embed import cache_key

    def key(args):
        return cache_key(args["embedder"], "h", args["embed_fields"], args["embed_max_length"] or None), \
            args["embed_cache"], args["collection"]
    (dense,) = printed(shell(SCRIPTS / "dense/dense.sh", "nq", "pq", root=tmp_path))
    (docids,) = printed(shell(SCRIPTS / "data/docids.sh", "nq", "pq", root=tmp_path))
    assert key(parse_command(dense)[1]) == key(parse_command(docids)[1])


def test_negatives_launcher_passes_the_source_and_query_options(tmp_path):
    """BM25 (the config's default) to $DATA; a source mining with the model reads this setting's SFT
    checkpoint and docids and writes $OUT/negatives, which the DDRO launcher then reads; a dense source
    reads the docids' embedding cache entry."""
    from ddro.docids.embed import cache_key

    (cmd,) = printed(shell(SCRIPTS / "ddro/negatives.sh", "nq", "pq", root=tmp_path))
    args = parse_command(cmd)[1]
    assert (args["source"], args["checkpoint"], args["out"]) == ("bm25", None, f"{tmp_path}/nq/negatives")
    env = dict(NEGATIVES_SOURCE="mixed", NEGATIVES_MIX="bm25:0.5,dense:0.25,model:0.25", NEGATIVES_FROM="both",
               PSEUDO_SHARE="0.3")
    (cmd,) = printed(shell(SCRIPTS / "ddro/negatives.sh", "nq", "pq", root=tmp_path, **env))
    args = parse_command(cmd)[1]
    assert (args["source"], args["mix"], args["queries"], args["pseudo_share"]) == \
        ("mixed", env["NEGATIVES_MIX"], "both", 0.3)
    assert args["pseudo_queries"] == f"{tmp_path}/nq/pseudo_queries"
    assert (args["checkpoint"], args["docids"], args["out"]) == \
        (f"{tmp_path}/nq-pq/sft", f"{tmp_path}/nq/docids-pq", f"{tmp_path}/nq-pq/negatives")
    (docids,) = printed(shell(SCRIPTS / "data/docids.sh", "nq", "pq", root=tmp_path))
    docids = parse_command(docids)[1]
    assert (cache_key(args["embedder"], "h", args["embed_fields"], args["embed_max_length"] or None),
            args["embed_cache"]) == (cache_key(docids["embedder"], "h", docids["embed_fields"],
                                               docids["embed_max_length"] or None), docids["embed_cache"])
    (cmd,) = printed(shell(SCRIPTS / "ddro/train_ddro.sh", "nq", "pq", root=tmp_path, NEGATIVES_SOURCE="model"))
    assert parse_command(cmd)[1]["negatives"] == f"{tmp_path}/nq-pq/negatives"
    for bad in (dict(NEGATIVES_SOURCE="lexical"), dict(NEGATIVES_FROM="dev")):
        refused = shell(SCRIPTS / "ddro/negatives.sh", "nq", "pq", root=tmp_path, **bad)
        assert refused.returncode == 2 and "usage:" in refused.stderr and not refused.stdout


def test_run_paper_mines_model_negatives_after_sft(tmp_path):
    s = chain(tmp_path, "nq", "pq", NEGATIVES_SOURCE="model")
    neg, sft, ddro_ = s["ddro.negatives"], s["ddro.train.sft"], s["ddro.train.ddro"]
    assert (neg["source"], neg["checkpoint"], neg["docids"]) == ("model", sft["output_dir"], ddro_["docids"])
    assert ddro_["negatives"] == neg["out"] == f"{tmp_path}/nq-pq/negatives"
    assert list(s).index("ddro.negatives") > list(s).index("ddro.train.sft")


@pytest.mark.parametrize("dataset,encoding", SETTINGS)
def test_run_paper_runs_every_stage_with_the_paper_settings(dataset, encoding, tmp_path):
    s = chain(tmp_path, dataset, encoding)
    check_paper_settings(s, dataset, encoding)
    other = {"pq": "tu", "tu": "pq"}[encoding]
    assert list(s) == ["download", "ddro.data." + dataset, f"docids-{encoding}", f"docids-{other}",
                       "ddro.pseudo_queries", "ddro.instances", "ddro.train.sft", "ddro.bm25", "eval-sft",
                       "ddro.negatives", "ddro.train.ddro", "eval-ddro"]
    collection = s["ddro.data." + dataset]
    assert s["download"]["dir"] == collection["raw_dir"]
    for stage in ("docids-pq", "docids-tu", "ddro.pseudo_queries", "ddro.instances", "ddro.bm25", "ddro.negatives"):
        assert s[stage]["collection"] == collection["out"], stage
    inst, sft, ddro_ = s["ddro.instances"], s["ddro.train.sft"], s["ddro.train.ddro"]
    assert inst["docids"] == s[f"docids-{encoding}"]["out"]
    assert inst["other_docids"] == s[f"docids-{other}"]["out"]  # the paper's stage-1 enhanced docid
    assert inst["pseudo_queries"] == s["ddro.pseudo_queries"]["out"]
    assert (sft["instances"], sft["docids"]) == (inst["out"], inst["docids"])
    assert (ddro_["checkpoint"], ddro_["docids"]) == (sft["output_dir"], inst["docids"])
    assert ddro_["negatives"] == s["ddro.negatives"]["out"]
    for tag, model in (("sft", sft["output_dir"]), ("ddro", ddro_["output_dir"])):
        ev = s[f"eval-{tag}"]
        assert (ev["model"], ev["docids"], ev["instances"], ev["split"]) == (model, inst["docids"], inst["out"], "dev")
    assert s["ddro.bm25"]["split"] == "dev"
    outputs = [collection["out"], s[f"docids-{encoding}"]["out"], inst["out"], sft["output_dir"],
               ddro_["output_dir"], s["eval-sft"]["out"], s["eval-ddro"]["out"]]
    assert len(set(outputs)) == len(outputs) and all(o.startswith(str(tmp_path)) for o in outputs)


def test_run_paper_skips_finished_stages(tmp_path):
    for done in ("msmarco/collection/manifest.json", "msmarco/docids-tu/manifest.json",
                 "msmarco-pq/sft/final.json"):
        (tmp_path / done).parent.mkdir(parents=True)
        (tmp_path / done).write_text("{}")
    (tmp_path / "msmarco-pq/instances").mkdir(parents=True)  # unfinished: no manifest
    log = []
    stages = chain(tmp_path, "msmarco", "pq", log=log)
    assert not {"download", "ddro.data.msmarco", "docids-tu", "ddro.train.sft"} & set(stages)
    assert {"docids-pq", "ddro.instances", "eval-sft", "ddro.train.ddro", "eval-ddro"} <= set(stages)
    assert log[0].count("== skip") == 3


def test_gpu_stages_use_torchrun_over_nproc_gpus_and_training_resumes(tmp_path):
    for script in ("sft/train_sft.sh", "ddro/train_ddro.sh"):
        (cmd,) = printed(shell(SCRIPTS / script, "nq", "pq", root=tmp_path, NPROC="1"))
        assert cmd[:3] == ["ddro", "train", script.split("/")[0]] and parse_command(cmd)[1]["resume"] is False
    for script, module in (("eval/eval.sh", "ddro.eval.evaluate"), ("data/pseudo_queries.sh", "ddro.pseudo_queries"),
                           ("data/embed.sh", "ddro.docids.embed"), ("data/docids.sh", "ddro.docids.build")):
        (cmd,) = printed(shell(SCRIPTS / script, "nq", "pq", root=tmp_path, NPROC="2"))
        assert cmd[:4] == ["torchrun", "--standalone", "--nproc_per_node", "2"]
        assert parse_command(cmd)[0] == module
    assert shell(SCRIPTS / "eval/eval.sh", "nq", "pq", root=tmp_path, NPROC="two").returncode == 2
    (tmp_path / "nq-pq/sft/stage1").mkdir(parents=True)  # interrupted SFT run
    (tmp_path / "nq-pq/ddro.trainer/checkpoint-500").mkdir(parents=True)  # interrupted DDRO run
    for script in ("sft/train_sft.sh", "ddro/train_ddro.sh"):
        (cmd,) = printed(shell(SCRIPTS / script, "nq", "pq", root=tmp_path, NPROC="4"))
        assert cmd[:4] == ["torchrun", "--standalone", "--nproc_per_node", "4"]
        assert parse_command(cmd)[1]["resume"] is True


def test_environment_overrides_paths(tmp_path):
    env = dict(DATA=str(tmp_path / "d"), OUT=str(tmp_path / "o"), COLLECTION=str(tmp_path / "c"), SPLIT="train",
               OTHER_ENCODING="")
    (cmd,) = printed(shell(SCRIPTS / "data/instances.sh", "msmarco", "pq", root=tmp_path / "r", **env))
    args = parse_command(cmd)[1]
    assert (args["collection"], args["docids"], args["out"]) == (env["COLLECTION"], f"{env['DATA']}/docids-pq",
                                                                  f"{env['OUT']}/instances")
    assert args["other_docids"] is None
    (cmd,) = printed(shell(SCRIPTS / "eval/eval.sh", "msmarco", "pq", root=tmp_path / "r", **env))
    assert parse_command(cmd)[1]["split"] == "train"


def test_beir_uses_a_given_folder_or_name_and_needs_a_config(tmp_path, shared_data):
    folder = shared_data / "scifact"
    (cmd,) = printed(shell(SCRIPTS / "data/build_collection.sh", "beir", str(folder), root=tmp_path, CONFIG="small"))
    args = parse_command(cmd)[1]
    assert (args["path"], args["name"], args["out"]) == (str(folder), None, f"{tmp_path}/beir-scifact/collection")
    (cmd,) = printed(shell(SCRIPTS / "data/build_collection.sh", "beir", "nfcorpus", root=tmp_path, CONFIG="small"))
    assert parse_command(cmd)[1]["name"] == "nfcorpus"
    commands = printed(shell(SCRIPTS / "run_paper.sh", "beir", str(folder), "atomic", root=tmp_path, CONFIG="small"))
    parsed = [parse_command(c) for c in commands]
    assert [a["split"] for m, a in parsed if m in ("ddro.eval.evaluate", "ddro.bm25")] == ["test"] * 3
    assert [a["other_docids"] for m, a in parsed if m == "ddro.instances"] == [None]
    refused = shell(SCRIPTS / "data/docids.sh", "beir", "nfcorpus", "pq", root=tmp_path)
    assert refused.returncode == 2 and "CONFIG" in refused.stderr and not refused.stdout


@pytest.mark.parametrize("args", [[], ["trec"], ["msmarco"], ["msmarco", "bpe"], ["beir", "pq"],
                                  ["msmarco", "pq", "extra"]], ids=" ".join)
@pytest.mark.parametrize("script", ["data/docids.sh", "run_paper.sh", "slurm/submit_paper.sh", "bm25/bm25.sh"])
def test_bad_arguments_exit_with_usage(script, args, tmp_path):
    if script == "bm25/bm25.sh" and args == ["msmarco"]:
        args = ["msmarco", "pq", "extra"]  # the encoding is optional there
    result = shell(SCRIPTS / script, *args, root=tmp_path)
    assert result.returncode == 2
    assert "usage:" in result.stderr and not result.stdout.strip()


def test_published_checkpoints_evaluation(tmp_path):
    for dataset, encoding in SETTINGS:
        (cmd,) = printed(shell(SCRIPTS / "eval/eval_published.sh", dataset, encoding, root=tmp_path))
        args = parse_command(cmd)[1]
        assert args["model"] == f"kiyam/ddro-{dataset}-{encoding}"
        assert args["docids"] == f"hf:dataset:kiyam/ddro-docids:{encoding}_{dataset}_docids.txt"
        assert args["test_file"].startswith(f"hf:dataset:kiyam/ddro-testsets:{dataset}/")
        assert f".{encoding}." in args["test_file"] and args["instances"] is None
    for bad in (["beir", "scifact", "pq"], ["msmarco", "atomic"]):
        assert shell(SCRIPTS / "eval/eval_published.sh", *bad, root=tmp_path).returncode == 2


# ---------------------------------------------------------------------------------------------- SLURM


def sbatch_options(path: Path) -> dict[str, str]:
    """The #SBATCH options SLURM reads: those before the first command line."""
    options = {}
    for line in path.read_text().splitlines()[1:]:
        if line.startswith("#SBATCH"):
            name, _, value = line.split(None, 1)[1].partition("=")
            options[name.lstrip("-")] = value
        elif line.strip() and not line.startswith("#"):
            break
    return options


SBATCH = sorted((SCRIPTS / "slurm").glob("*.sbatch"))
GPU_STAGES = {"embed", "docids", "pseudo_queries", "sft", "ddro", "eval"}
ARRAY_STAGES = {"embed", "pseudo_queries", "eval"}


def test_sbatch_headers():
    assert {p.stem for p in SBATCH} >= GPU_STAGES | {"collection", "instances", "negatives", "bm25"}
    for path in SBATCH:
        options = sbatch_options(path)
        assert {"job-name", "cpus-per-task", "mem", "time", "output", "error"} <= set(options), path.name
        assert options["output"].startswith("logs/") and options["error"].startswith("logs/")
        assert options["output"] != options["error"]
        assert re.fullmatch(r"\d+(-\d+)?:\d\d:\d\d", options["time"]), path.name
        assert (path.stem in GPU_STAGES) == bool(re.fullmatch(r"gpu:\d+", options.get("gres", ""))), path.name
        assert (path.stem in ARRAY_STAGES) == ("array" in options), path.name


@pytest.fixture
def stubs(tmp_path):
    """A fake venv whose `ddro`, `torchrun` and `python -m ddro...` record their arguments and shard environment."""
    bin_ = tmp_path / "venv" / "bin"
    bin_.mkdir(parents=True)
    log = tmp_path / "calls.jsonl"
    record = (f"{shlex.quote(sys.executable)} -c 'import json, os, sys; print(json.dumps({{\"argv\": sys.argv[1:], "
              "\"shard\": [os.environ.get(\"DDRO_SHARD_INDEX\"), os.environ.get(\"DDRO_NUM_SHARDS\")]}))' "
              f"TOOL \"$@\" >> {shlex.quote(str(log))}\n")
    for tool in ("ddro", "torchrun"):
        (bin_ / tool).write_text("#!/usr/bin/env bash\n" + record.replace("TOOL", tool))
    (bin_ / "python").write_text(  # stage_config's own python calls go to the real interpreter
        "#!/usr/bin/env bash\nif [[ $1 == -m && $2 == ddro.* ]]; then\n" + record.replace("TOOL", "python")
        + f"else exec {shlex.quote(sys.executable)} \"$@\"; fi\n")
    for tool in ("ddro", "torchrun", "python"):
        (bin_ / tool).chmod(0o755)
    (bin_ / "activate").write_text(f"PATH={shlex.quote(str(bin_))}:$PATH\n")
    return tmp_path / "venv", log


def run_job(name, stubs, tmp_path, **env):
    venv, log = stubs
    log.unlink(missing_ok=True)
    environ = dict(SLURM_SUBMIT_DIR=str(REPO), VENV=str(venv), PYTHON=str(venv / "bin" / "python"),
                   DATASET="msmarco", ENCODING="pq", **env)
    result = shell(SCRIPTS / "slurm" / f"{name}.sbatch", root=tmp_path / "r", dry_run=False, **environ)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_sbatch_jobs_run_their_stage(stubs, tmp_path):
    for name in sorted({p.stem for p in SBATCH}):
        (call,) = run_job(name, stubs, tmp_path, SLURM_GPUS_ON_NODE="1")
        module, _ = parse_command(call["argv"])
        assert module.split(".")[1] in {"data", "docids", "pseudo_queries", "instances", "train", "bm25",
                                        "negatives", "eval"}, name


def test_sbatch_training_uses_every_gpu_of_the_job(stubs, tmp_path):
    for name, module in (("sft", "ddro.train.sft"), ("ddro", "ddro.train.ddro")):
        (call,) = run_job(name, stubs, tmp_path, SLURM_GPUS_ON_NODE="4")
        assert call["argv"][:4] == ["torchrun", "--standalone", "--nproc_per_node", "4"]
        assert parse_command(call["argv"])[0] == module


@pytest.mark.parametrize("name", sorted(ARRAY_STAGES))
def test_array_tasks_get_their_shard(name, stubs, tmp_path):
    (call,) = run_job(name, stubs, tmp_path, SLURM_ARRAY_TASK_ID="5", SLURM_ARRAY_TASK_MIN="2",
                      SLURM_ARRAY_TASK_COUNT="4")
    assert call["shard"] == ["3", "4"]
    (single,) = run_job(name, stubs, tmp_path, SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_TASK_MIN="0",
                        SLURM_ARRAY_TASK_COUNT="1")
    assert single["shard"] == [None, None] and single["argv"] == call["argv"]


def submitted(root: Path, *args: str, **env) -> dict[str, dict]:
    """submit_paper.sh under DRY_RUN: job id -> {script, export, deps, options}."""
    jobs = {}
    for n, cmd in enumerate(printed(shell(SCRIPTS / "slurm/submit_paper.sh", *args, root=root, **env)), 1):
        assert cmd[:2] == ["sbatch", "--parsable"] and (SCRIPTS / "slurm" / Path(cmd[-1]).name).is_file()
        options = dict(o.lstrip("-").split("=", 1) for o in cmd[2:-1])
        deps = options.pop("dependency", "afterok").split(":")
        assert deps[0] == "afterok"
        export = dict(kv.split("=", 1) for kv in options.pop("export").split(",")[1:])
        jobs[str(n)] = {"stage": Path(cmd[-1]).stem, "export": export, "deps": deps[1:], "options": options}
    return jobs


def upstream(jobs: dict, job_id: str) -> set[str]:
    """Stages this job waits for, directly or not."""
    seen, todo = set(), list(jobs[job_id]["deps"])
    while todo:
        dep = todo.pop()
        assert dep in jobs, f"dependency on a job never submitted: {dep}"
        seen.add(dep)
        todo += jobs[dep]["deps"]
    return {jobs[d]["stage"] + ("-" + jobs[d]["export"].get("ENCODING", "") if jobs[d]["stage"] == "docids" else "")
            for d in seen}


def test_submit_paper_chains_jobs_with_afterok(tmp_path):
    jobs = submitted(tmp_path, "nq", "tu", SHARDS="4", NPROC="8")
    by_stage: dict[str, list[str]] = {}
    for job_id, job in jobs.items():
        assert int(max(job["deps"], default="0", key=int)) < int(job_id)  # only on jobs submitted before
        by_stage.setdefault(job["stage"], []).append(job_id)
    needs = {"instances": {"collection", "docids-tu", "docids-pq", "pseudo_queries"},
             "sft": {"instances", "docids-tu", "pseudo_queries"}, "bm25": {"collection"},
             "negatives": {"collection"}, "ddro": {"sft", "negatives", "instances"}}
    for stage, wanted in needs.items():
        (job_id,) = by_stage[stage]
        assert wanted <= upstream(jobs, job_id), stage
    for stage in ("sft", "ddro"):
        job = jobs[by_stage[stage][0]]
        assert job["options"]["gres"] == "gpu:8" and job["export"]["NPROC"] == "8"
    evals = [jobs[j] for j in by_stage["eval"]]
    assert [(e["export"]["MODEL"], e["options"]["array"]) for e in evals] == [("sft", "0-3"), ("ddro", "0-3")]
    assert "ddro" in upstream(jobs, by_stage["eval"][1]) and "ddro" not in upstream(jobs, by_stage["eval"][0])
    assert jobs[by_stage["pseudo_queries"][0]]["options"]["array"] == "0-3"
    assert sorted(jobs[j]["export"]["ENCODING"] for j in by_stage["docids"]) == ["pq", "tu"]
    (embed,) = by_stage["embed"]  # PQ only
    assert jobs[embed]["options"]["array"] == "0-3" and jobs[embed]["export"]["ENCODING"] == "pq"
    pq_docids = next(j for j in by_stage["docids"] if jobs[j]["export"]["ENCODING"] == "pq")
    assert embed in jobs[pq_docids]["deps"]
    assert all(j["export"]["DATASET"] == "nq" for j in jobs.values())


def test_submit_paper_runs_model_negatives_after_sft_on_a_gpu(tmp_path):
    jobs = submitted(tmp_path, "nq", "pq", SHARDS="1", NEGATIVES_SOURCE="model", NEGATIVES_FROM="both")
    (negatives,) = [j for j, job in jobs.items() if job["stage"] == "negatives"]
    assert {"sft", "pseudo_queries", "collection"} <= upstream(jobs, negatives)
    assert jobs[negatives]["options"]["gres"] == "gpu:1"
    (ddro_,) = [j for j, job in jobs.items() if job["stage"] == "ddro"]
    assert negatives in jobs[ddro_]["deps"]
    bm25_jobs = submitted(tmp_path / "b", "nq", "pq", SHARDS="1")
    (negatives,) = [j for j, job in bm25_jobs.items() if job["stage"] == "negatives"]
    assert "sft" not in upstream(bm25_jobs, negatives) and "gres" not in bm25_jobs[negatives]["options"]


def test_submit_paper_leaves_out_finished_stages(tmp_path):
    for done in ("msmarco/collection/manifest.json", "msmarco/docids-pq/manifest.json",
                 "msmarco/docids-tu/manifest.json", "msmarco/pseudo_queries/manifest.json"):
        (tmp_path / done).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / done).write_text("{}")
    jobs = submitted(tmp_path, "msmarco", "pq", SHARDS="1")
    stages = [j["stage"] for j in jobs.values()]
    assert stages == ["instances", "sft", "bm25", "eval", "negatives", "ddro", "eval"]
    assert jobs["1"]["deps"] == [] and all(j["options"].get("array", "0-0") == "0-0" for j in jobs.values())
