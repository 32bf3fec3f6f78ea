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

    stage = next(s for s in pipeline.STAGES if s.name == stage_name)
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
