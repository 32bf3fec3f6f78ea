"""End to end: the whole pipeline on a real (small) collection, offline, with a micro preset
(the `pipeline_out` fixture of conftest.py, built once per session and shared with
test_verify.py and test_report.py)."""
import re

import ir_measures
import pytest

from ddro.data.collection import Collection
from ddro.pipeline import run_pipeline

ROW = re.compile(r"^\| (\w+) \|")


def test_pipeline_writes_runs_and_results(pipeline_out):
    _, out = pipeline_out
    for system in ("bm25", "dense", "sft", "ddro"):
        assert (out / "runs" / f"{system}.test.run").is_file()
    rows = [m.group(1) for line in (out / "results.md").read_text().splitlines() if (m := ROW.match(line))]
    assert {"bm25", "dense", "sft", "ddro"} <= set(rows)
    assert "paired t-test" in (out / "results.md").read_text()


def test_results_agree_with_ir_measures_on_the_run_files(pipeline_out):
    """The numbers in metrics.json are what ir_measures computes from the TREC runs."""
    import json

    _, out = pipeline_out
    qrels = Collection(out / "collection").qrels("test")
    judged = {q: {d: s for d, s in docs.items() if s >= 1} for q, docs in qrels.items()}
    judged = {q: d for q, d in judged.items() if d}
    for system, folder in (("bm25", "bm25"), ("dense", "dense"), ("sft", "eval/sft"), ("ddro", "eval/ddro")):
        run = {}
        for line in (out / "runs" / f"{system}.test.run").read_text().splitlines():
            qid, _, doc, rank, score, _ = line.split()
            run.setdefault(qid, {})[doc] = float(score)
        values = {q: 0.0 for q in judged}
        for m in ir_measures.iter_calc([ir_measures.parse_measure("nDCG@10")], judged, run):
            values[m.query_id] = m.value
        expected = sum(values.values()) / len(values)
        assert json.loads((out / folder / "metrics.json").read_text())["nDCG@10"] == pytest.approx(expected, abs=1e-9)


def test_rerun_skips_every_finished_stage(pipeline_out, caplog):
    args, out = pipeline_out
    before = {p: p.stat().st_mtime_ns for p in out.rglob("manifest.json")}
    with caplog.at_level("INFO"):
        run_pipeline(args)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("manifest.json")} == before
    assert caplog.text.count("up to date, skipping") == 11


def test_dense_stage_reads_the_embeddings_the_docids_cached(pipeline_out):
    """The dense stage takes over the docids section's embedding settings: same cache entry."""
    import json

    _, out = pipeline_out
    docids = json.loads((out / "docids" / "manifest.json").read_text())
    dense = json.loads((out / "dense" / "manifest.json").read_text())
    assert dense["embedding"]["cache_key"] == docids["params"]["embedding"]["cache_key"]
    assert dense["config"]["embed_max_length"] == 64  # the micro preset's docids setting, not dense's default


def test_collection_without_train_split_trains_ddro_on_pseudo_queries(pipeline_out):
    import json

    _, out = pipeline_out
    manifest = json.loads((out / "negatives" / "manifest.json").read_text())
    assert manifest["config"]["queries"] == "pseudo"
    assert (out / "ddro" / "manifest.json").is_file()


@pytest.mark.parametrize("stage_name", ["sft", "ddro"])
def test_interrupted_training_stage_resumes_only_with_the_same_config(stage_name, tmp_path, monkeypatch):
    """A training stage killed after a checkpoint continues with --resume when rerun with the
    same config; with another config it starts over (--overwrite, interrupted folder removed)."""
    from types import SimpleNamespace

    from ddro import pipeline

    stage = pipeline.stage_named(stage_name)
    folder = pipeline.stage_folder(tmp_path, stage)
    checkpoint = folder / "mixed" / "checkpoints" / "checkpoint-5" if stage_name == "sft" else \
        tmp_path / "ddro.trainer" / "checkpoint-5"
    calls, interrupt = [], [True]

    def main(argv):
        calls.append(argv[2:])
        folder.mkdir(parents=True, exist_ok=True)
        if interrupt[0]:  # dies after its first checkpoint
            checkpoint.mkdir(parents=True, exist_ok=True)
            raise KeyboardInterrupt
        (folder / stage.done_file).write_text(str(len(calls)))

    monkeypatch.setattr(pipeline.importlib, "import_module", lambda name: SimpleNamespace(main=main))
    state = {}
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_stage(tmp_path, stage, {"lr": 1}, state)
    interrupt[0] = False
    pipeline.run_stage(tmp_path, stage, {"lr": 1}, state)
    assert calls == [["--overwrite", "true"], ["--resume", "true"]]

    calls.clear()
    interrupt[0] = True
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_stage(tmp_path, stage, {"lr": 2}, state)
    interrupt[0] = False
    pipeline.run_stage(tmp_path, stage, {"lr": 3}, state)
    assert calls == [["--overwrite", "true"], ["--overwrite", "true"]]
    if stage_name == "sft":  # the interrupted folder went before the fresh start
        assert not checkpoint.exists()


def test_sft_run_is_ranked_by_teacher_forced_summed_log_probs(pipeline_out):
    """`ddro rescore`: re-scoring each query's returned docids by teacher forcing finds no pair out of order."""
    from ddro.eval.rescore import RescoreArguments, run_rescore

    _, out = pipeline_out
    result = run_rescore(RescoreArguments(model=str(out / "sft"), docids=str(out / "docids"),
                                          instances=str(out / "instances"), run=str(out / "runs" / "sft.test.run")))
    assert result["queries"] > 0
    assert result["queries_with_inversion"] == 0, (result["max_inversion"], result["inverted"][:5])
    assert result["max_inversion"] <= 1e-4


def test_metrics_claim_only_the_runs_depth(pipeline_out):
    """Micro preset: 5 beams, BM25 k 100: R@10 and R@100 only for BM25, recorded depths, blank cells."""
    import json

    _, out = pipeline_out
    depth = {f: json.loads((out / f / "metrics.json").read_text())["depth"] for f in ("bm25", "eval/sft", "eval/ddro")}
    assert depth == {"bm25": 100, "eval/sft": 5, "eval/ddro": 5}
    sft = json.loads((out / "eval" / "sft" / "metrics.json").read_text())
    assert "R@5" in sft and "R@10" not in sft and "R@100" not in sft
    rows = {m.group(1): line for line in (out / "results.md").read_text().splitlines() if (m := ROW.match(line))}
    assert rows["sft"].rstrip().endswith("|") and "|  |" in rows["sft"] and "|  |" not in rows["bm25"]
    manifest = json.loads((out / "eval" / "sft" / "manifest.json").read_text())
    assert manifest["decoding"] == {"beams": 5, "ranking": "sum", "length_penalty": 0.0, "early_stopping": "never",
                                    "max_length": manifest["decoding"]["max_length"]}
    assert manifest["decoding"]["max_length"] >= 5          # PQ M = 4 (+ a dedup token) + the end edge


# ----------------------------------------------------------------------------- checked before any stage runs

def micro_preset(tmp_path, **sections) -> str:
    import yaml

    from conftest import MICRO

    preset = {name: dict(values) for name, values in MICRO.items()}
    for name, values in sections.items():
        preset.setdefault(name, {}).update(values)
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(preset))
    return str(path)


@pytest.mark.parametrize("section, values, says", [
    ("ddro", {"bta": 0.4}, "section 'ddro': unknown key 'bta'"),
    ("ddro", {"loss_type": "pairwise"}, "--loss_type: one of sigmoid, rpo, listwise, got 'pairwise'"),
    ("negatives", {"max_queries": "many"}, "section 'negatives': key 'max_queries'"),
    ("eval", {"beams": [1, 2]}, "section 'eval': key 'beams' takes a single value"),
    ("collection", {"dev_from_train": "some"}, "section 'collection': key 'dev_from_train'"),
    ("sft", {"eval_strategy": "sometimes"}, "section 'sft'"),
])
def test_a_bad_preset_section_fails_before_the_first_stage(section, values, says, shared_data, tmp_path, capsys):
    from ddro.cli import main as cli_main

    out = tmp_path / "out"  # an earlier run's output, which must stay as it is
    (out / "collection").mkdir(parents=True)
    (out / "pipeline.json").write_text('{"collection": {}}')
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["pipeline", "--collection", str(shared_data / "adi"), "--output", str(out),
                  "--preset", micro_preset(tmp_path, **{section: values})])
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error")]
    assert exit_info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert says in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["collection", "pipeline.json"]  # no stage ran
    assert (out / "pipeline.json").read_text() == '{"collection": {}}' and not any((out / "collection").iterdir())


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_packaged_presets_pass_every_stage_parser(name, tmp_path):
    from ddro.pipeline import PipelineArguments, check_stage_arguments, load_preset

    args = PipelineArguments(collection=str(tmp_path), output=str(tmp_path / "out"), preset=name)
    check_stage_arguments(tmp_path / "out", args, load_preset(name))  # raises on any bad key or value


@pytest.mark.parametrize("collection", ["/no/such/folder", "./missing", "~/no-such-collection", "data/missing"])
def test_a_missing_collection_folder_is_named_as_such(collection, tmp_path, capsys):
    from ddro.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["pipeline", "--collection", collection, "--output", str(tmp_path / "out"),
                  "--collections_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"--collection {collection}: no such folder" in err and "BEIR" not in err, err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- a dev split

def beir_with_train(folder):
    """A small collection with test and train queries but no dev split."""
    import json

    words = "protein cell gene mouse brain cancer virus drug dose trial heart blood liver lung immune".split()
    folder.mkdir()
    with open(folder / "corpus.jsonl", "w") as f:
        for i in range(40):
            f.write(json.dumps({"_id": f"d{i}", "title": words[i % 15],
                                "text": " ".join(words[(i * k) % 15] for k in range(1, 12))}) + "\n")
    with open(folder / "queries.jsonl", "w") as f:
        for j in range(30):
            f.write(json.dumps({"_id": f"q{j}", "text": f"{words[j % 15]} {words[(j * 7) % 15]}"}) + "\n")
    (folder / "qrels").mkdir()
    header = "query-id\tcorpus-id\tscore\n"
    (folder / "qrels" / "test.tsv").write_text(header + "".join(f"q{j}\td{j}\t1\n" for j in range(5)))
    (folder / "qrels" / "train.tsv").write_text(header + "".join(f"q{j}\td{j}\t1\n" for j in range(5, 30)))
    return folder


def test_split_dev_is_carved_from_train_and_reaches_the_eval_files(tmp_path):
    import json

    from ddro.pipeline import PipelineArguments

    src = beir_with_train(tmp_path / "src")
    preset = micro_preset(tmp_path, collection={"dev_from_train": 0.2, "seed": 3, "sentences": False})
    args = PipelineArguments(collection=str(src), output=str(tmp_path / "out"), preset=preset, split="dev",
                             stop_after="instances")
    out = run_pipeline(args)
    dev = set(Collection(out / "collection").qrels("dev"))
    assert len(dev) == 5 and not dev & set(Collection(out / "collection").qrels("train"))
    evaluated = {json.loads(line)["query_id"] for line in (out / "instances" / "eval" / "dev.jsonl").open()}
    assert evaluated == dev
    # stage 3 trains on the 20 train queries left (one judgement each), never on a dev query
    assert json.loads((out / "instances" / "manifest.json").read_text())["counts"]["stage3"] == {"query": 20}


def test_split_missing_from_the_collection_fails_before_training(shared_data, tmp_path):
    from ddro.errors import DDROError
    from ddro.pipeline import PipelineArguments

    args = PipelineArguments(collection=str(shared_data / "adi"), output=str(tmp_path / "out"),
                             preset=micro_preset(tmp_path), split="dev")
    with pytest.raises(DDROError, match="no such split .*dev_from_train"):
        run_pipeline(args)
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == ["collection", "configs"]
    assert not (tmp_path / "out" / "configs" / "docids.json").exists()  # no stage after the collection ran


# ----------------------------------------------------------------------------- negatives mined with the model

def negatives_stage():
    from ddro.pipeline import stage_named

    return stage_named("negatives")


def test_negatives_sources_choose_the_stages_inputs_and_upstream(tmp_path):
    from ddro.errors import DDROError
    from ddro.pipeline import PipelineArguments, check_preset_paths, check_stage_arguments, load_preset, stage_config

    out, stage = tmp_path / "out", negatives_stage()
    args = PipelineArguments(collection=str(tmp_path), output=str(out), preset="tiny")
    bm25 = stage_config(out, args, {"negatives": {"bands": "1-10"}}, stage)
    assert "checkpoint" not in bm25 and "docids" not in bm25  # unused inputs stay out of the config
    assert stage.upstream_of(bm25) == ("collection", "pseudo_queries")  # SFT changes leave BM25 negatives be
    for section in ({"source": "model", "bands": "1-10"}, {"source": "mixed", "mix": "bm25:0.5,model:0.5"}):
        config = stage_config(out, args, {"negatives": section, "ddro": {"lowercase": False}}, stage)
        assert (config["checkpoint"], config["docids"]) == (str(out / "sft"), str(out / "docids"))
        assert config["lowercase"] is False  # queries encoded as phase 2 encodes them
        assert {"sft", "docids"} <= set(stage.upstream_of(config))
    dense = stage_config(out, args, {"negatives": {"source": "dense"},
                                     "docids": {"embedder": "offline:minilm", "embed_max_length": 32}}, stage)
    assert (dense["embedder"], dense["embed_max_length"], "checkpoint" in dense) == ("offline:minilm", 32, False)
    for key in ("checkpoint", "docids"):  # never set by a preset, whatever the source
        for source in ("bm25", "model"):
            with pytest.raises(DDROError, match=f"section 'negatives' sets '{key}'"):
                check_preset_paths({"negatives": {"source": source, key: str(tmp_path)}}, out, args, "p")
    preset = load_preset("tiny")
    preset["negatives"] = {**preset["negatives"], "source": "model", "bands": "1-10"}
    check_stage_arguments(out, args, preset)


def test_negatives_mined_with_the_model_are_rebuilt_when_sft_changes(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from ddro import pipeline

    stage, args = negatives_stage(), pipeline.PipelineArguments(collection=str(tmp_path), output=str(tmp_path))
    calls = []

    def main(argv):
        calls.append(argv)
        (tmp_path / "negatives").mkdir(exist_ok=True)
        (tmp_path / "negatives" / "manifest.json").write_text(str(len(calls)))

    monkeypatch.setattr(pipeline.importlib, "import_module", lambda name: SimpleNamespace(main=main))
    for source, rebuilt in (("bm25", False), ("model", True)):
        state = {"sft": {"output": "sft-1"}, "docids": {"output": "docids-1"}}
        config = pipeline.stage_config(tmp_path, args, {"negatives": {"source": source}}, stage)
        pipeline.run_stage(tmp_path, stage, config, state)
        built = len(calls)
        state["sft"]["output"] = "sft-2"  # SFT trained again
        pipeline.run_stage(tmp_path, stage, config, state)
        assert (len(calls) > built) == rebuilt, source


def test_model_negatives_run_as_the_pipeline_configures_them(pipeline_out, tmp_path):
    """The negatives stage of a preset with `negatives: {source: model, bands: 1-10}`, on the micro pipeline's SFT
    checkpoint (its other stages as built): pairs from the checkpoint's beams, its identity recorded."""
    import json

    from conftest import MICRO
    from ddro.manifest import manifest_hash
    from ddro.modeling.checkpoint import resolve_checkpoint
    from ddro.negatives import main as negatives_main
    from ddro.pipeline import stage_config

    args, out = pipeline_out
    preset = {**MICRO, "negatives": {**MICRO["negatives"], "source": "model", "bands": "1-10", "max_queries": 16}}
    config = {**stage_config(out, args, preset, negatives_stage()), "out": str(tmp_path / "neg")}
    (tmp_path / "negatives.json").write_text(json.dumps(config))
    negatives_main(["--config", str(tmp_path / "negatives.json"), "--device", "cpu"])
    manifest = json.loads((tmp_path / "neg" / "manifest.json").read_text())
    assert manifest["inputs"]["checkpoint"] == manifest_hash(resolve_checkpoint(out / "sft"))
    assert manifest["inputs"]["docids"] == manifest_hash(out / "docids")
    assert manifest["params"]["sources"]["model"]["decoding"]["beams"] == 10
    assert manifest["counts"]["pairs"] + manifest["counts"]["val_pairs"] > 0
