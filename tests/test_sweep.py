"""benchmarks/phase2_sweep.py: the grid, the configs each point's stages get, skipping finished
steps, the results table; and one small sweep end to end on a copy of the micro pipeline output."""
import importlib.util
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from ddro.errors import DDROError

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("phase2_sweep", ROOT / "benchmarks" / "phase2_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep = load_script()


# ----------------------------------------------------------------------------- the grid

def test_set_values_are_comma_lists_read_by_yaml():
    assert sweep.parse_set("ddro.beta=0.2,0.4") == ("ddro.beta", [0.2, 0.4])
    assert sweep.parse_set("negatives.source=bm25,model") == ("negatives.source", ["bm25", "model"])
    # PyYAML reads 1e-6 as text (no dot): the stages' parsers convert it, as from any config file
    assert sweep.parse_set("ddro.learning_rate=1e-6,1.0e-5") == ("ddro.learning_rate", ["1e-6", 1e-5])
    assert sweep.parse_set('negatives.bands=["1-10,11-100", "1-100"]') == ("negatives.bands", ["1-10,11-100", "1-100"])
    assert sweep.parse_set("ddro.keep_work_dir=true") == ("ddro.keep_work_dir", [True])


@pytest.mark.parametrize("spec, says", [
    ("eval.beams=5", "SECTION.NAME"), ("ddro=1", "SECTION.NAME"), ("ddro.output_dir=x", "set by the sweep"),
    ("negatives.out=x", "set by the sweep"), ("ddro.beta", "expected SECTION.NAME=VALUE"),
])
def test_bad_grid_keys_are_refused(spec, says):
    with pytest.raises(DDROError, match=says):
        sweep.parse_set(spec)


def test_grid_file_nested_or_dotted(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("negatives: {source: [bm25, model]}\nddro.beta: 0.2\nddro: {learning_rate: [1.0e-6, 1.0e-5]}\n")
    assert sweep.load_grid(path) == {"negatives.source": ["bm25", "model"], "ddro.beta": [0.2],
                                     "ddro.learning_rate": [1e-6, 1e-5]}


def test_grid_expands_to_the_cartesian_product_then_the_seeds():
    grid = {"negatives.source": ["bm25", "model"], "ddro.learning_rate": ["1e-6", "1e-5"],
            "ddro.loss_type": ["sigmoid", "rpo"]}
    points = sweep.expand_grid(grid)
    assert len(points) == 8 and len({json.dumps(p) for p in points}) == 8
    assert points[0] == {"negatives.source": "bm25", "ddro.learning_rate": "1e-6", "ddro.loss_type": "sigmoid"}
    assert points[1]["ddro.loss_type"] == "rpo" and points[-1]["negatives.source"] == "model"
    seeded = sweep.expand_grid(grid, [1, 2, 3])
    assert len(seeded) == 24 and [p["ddro.seed"] for p in seeded[:3]] == [1, 2, 3]
    assert sweep.expand_grid({}) == [{}] and sweep.expand_grid({}, [7]) == [{"ddro.seed": 7}]
    with pytest.raises(DDROError, match="not both"):
        sweep.expand_grid({"ddro.seed": [1]}, [2])
    with pytest.raises(DDROError, match="no values"):
        sweep.expand_grid({"ddro.beta": []})


def test_point_names_are_readable_distinct_and_bounded():
    assert sweep.settings_name({}) == "base"
    assert sweep.settings_name({"negatives.source": "bm25", "ddro.learning_rate": "1e-6"}) == \
        "negatives.source=bm25,ddro.learning_rate=1e-6"
    assert sweep.settings_name({"negatives.checkpoint": "/a b/c"}) == "negatives.checkpoint=_a_b_c"
    long_a, long_b = ({"ddro.x": "y" * 200 + tail} for tail in "ab")
    assert sweep.settings_name(long_a) != sweep.settings_name(long_b)
    assert len(sweep.settings_name(long_a)) <= 120


# ----------------------------------------------------------------------------- configs

def base(root="O"):
    return {"negatives": {"collection": f"{root}/collection", "out": f"{root}/negatives", "negatives": 2},
            "ddro": {"checkpoint": f"{root}/sft", "docids": f"{root}/docids", "negatives": f"{root}/negatives",
                     "output_dir": f"{root}/ddro", "beta": 0.4, "learning_rate": 1e-5},
            "eval_sft": {"model": f"{root}/sft", "docids": f"{root}/docids", "instances": f"{root}/instances",
                         "split": "dev", "tag": "sft", "out": f"{root}/eval/sft", "beams": 5}}


def test_point_configs_merge_the_settings_over_the_pipeline_configs():
    out = Path("O")
    configs = sweep.point_configs(out, base(), {"negatives.source": "model", "ddro.beta": 0.2}, "dev")
    point = out / "sweep" / "negatives.source=model,ddro.beta=0.2"
    mined = out / "sweep" / "negatives" / "source=model"  # named by its negatives settings
    assert configs["negatives"] == {"collection": "O/collection", "negatives": 2, "source": "model",
                                    "checkpoint": "O/sft", "docids": "O/docids", "out": str(mined)}
    assert configs["ddro"] == {"checkpoint": "O/sft", "docids": "O/docids", "negatives": str(mined),
                               "output_dir": str(point / "ddro"), "beta": 0.2, "learning_rate": 1e-5,
                               "ref_cache_dir": "O/sweep/ref_cache"}
    assert configs["eval"] == {**base()["eval_sft"], "model": str(point / "ddro"), "tag": "ddro",
                               "out": str(point / "eval" / "dev")}


def test_model_negatives_keep_a_given_checkpoint_and_bm25_gets_none():
    given = sweep.point_configs(Path("O"), base(), {"negatives.source": "mixed", "negatives.mix": "bm25:0.5,model:0.5",
                                                    "negatives.checkpoint": "X"}, "dev")
    assert given["negatives"]["checkpoint"] == "X" and given["negatives"]["docids"] == "O/docids"
    no_model = sweep.point_configs(Path("O"), base(), {"negatives.source": "mixed",
                                                       "negatives.mix": "bm25:0.5,dense:0.5"}, "dev")
    assert "checkpoint" not in no_model["negatives"]  # `ddro negatives` refuses a checkpoint it does not use
    bm25 = sweep.point_configs(Path("O"), base(), {"negatives.source": "bm25"}, "dev")
    assert "checkpoint" not in bm25["negatives"] and "docids" not in bm25["negatives"]


def test_points_with_the_same_negatives_settings_share_the_mined_folder():
    a, b, c = (sweep.point_configs(Path("O"), base(), s, "test") for s in (
        {"ddro.beta": 0.2}, {"ddro.beta": 0.4}, {"negatives.negatives": 4, "ddro.beta": 0.2}))
    assert a["negatives"] == b["negatives"]
    assert a["ddro"]["negatives"] == b["ddro"]["negatives"] == "O/sweep/negatives/base"
    assert c["ddro"]["negatives"] == "O/sweep/negatives/negatives=4"
    assert a["ddro"]["output_dir"] != b["ddro"]["output_dir"] and a["eval"]["split"] == "test"


def test_base_configs_are_rebased_onto_the_output_given(tmp_path):
    (tmp_path / "configs").mkdir()
    for stage, config in base("/elsewhere/run").items():
        (tmp_path / "configs" / f"{stage}.json").write_text(json.dumps({**config, "other": "/elsewhere/runs"}))
    configs = sweep.base_configs(tmp_path)
    assert configs["ddro"]["checkpoint"] == str(tmp_path / "sft")
    assert configs["eval_sft"]["out"] == str(tmp_path / "eval" / "sft")
    assert configs["negatives"]["other"] == "/elsewhere/runs"  # not inside the old output: kept
    with pytest.raises(DDROError, match="ddro pipeline"):
        sweep.base_configs(tmp_path / "missing")


def write_base(folder):
    (folder / "configs").mkdir(parents=True)
    for stage, config in base(str(folder)).items():
        (folder / "configs" / f"{stage}.json").write_text(json.dumps(config))


def test_an_unknown_key_fails_before_anything_runs_naming_the_point(tmp_path, capsys):
    write_base(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        sweep.main([str(tmp_path), "--set", "ddro.beta=0.2,0.4", "--set", "ddro.bta=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and err == ["phase2_sweep: error: point ddro.beta=0.2,ddro.bta=1, ddro: "
                                             "unknown key 'bta'"]
    assert not (tmp_path / "sweep").exists()


def test_dry_run_prints_every_points_configs(tmp_path, capsys):
    write_base(tmp_path)
    sweep.main([str(tmp_path), "--set", "negatives.negatives=2,4", "--seeds", "1", "--dry_run"])
    printed = capsys.readouterr().out
    assert printed.count('"point"') == 2 and '"seed": 1' in printed
    assert not (tmp_path / "sweep").exists()


# ----------------------------------------------------------------------------- running and scoring

def test_a_step_is_skipped_only_when_done_with_the_same_config(tmp_path, monkeypatch):
    calls = []

    def main(argv):
        config = json.loads(Path(argv[1]).read_text())
        calls.append((argv[2:], config["beta"]))
        if config["beta"] > 0:  # a stage that writes its output
            Path(config["output_dir"]).mkdir(parents=True, exist_ok=True)
            (Path(config["output_dir"]) / "manifest.json").write_text("{}")

    monkeypatch.setattr(sweep.importlib, "import_module", lambda name: SimpleNamespace(main=main))
    config, file = {"output_dir": str(tmp_path / "ddro"), "beta": 0.2}, tmp_path / "configs" / "ddro.json"
    assert sweep.run_step("ddro", config, file) and not sweep.run_step("ddro", config, file)
    assert sweep.run_step("ddro", {**config, "beta": 0.4}, file)  # settings changed: rebuilt
    assert calls == [(["--overwrite", "true"], 0.2), (["--overwrite", "true"], 0.4)]
    with pytest.raises(DDROError, match="without writing"):
        sweep.run_step("ddro", {"output_dir": str(tmp_path / "none"), "beta": 0}, file)


def test_sft_reference_is_evaluated_on_another_split(tmp_path, monkeypatch):
    (tmp_path / "eval" / "sft").mkdir(parents=True)
    (tmp_path / "eval" / "sft" / "metrics.json").write_text("{}")
    ran = []
    monkeypatch.setattr(sweep, "run_step", lambda stage, config, file: ran.append((stage, config, file)))
    assert sweep.sft_reference(tmp_path, {"split": "dev", "model": "M"}, "dev") == tmp_path / "eval" / "sft"
    assert not ran
    assert sweep.sft_reference(tmp_path, {"split": "dev", "model": "M"}, "test") == tmp_path / "sweep" / "sft_test"
    assert ran == [("eval", {"split": "test", "model": "M", "out": str(tmp_path / "sweep" / "sft_test")},
                    tmp_path / "sweep" / "configs" / "sft_test.json")]


def row(name, mrr, seed=None, p=0.5):
    settings = {"ddro.beta": name, **({"ddro.seed": seed} if seed is not None else {})}
    return {"name": sweep.settings_name(settings), "settings": settings,
            "metrics": {"MRR@10": mrr, "nDCG@10": mrr / 2, "R@1": mrr}, "p": {"MRR@10": p}, "diff": {}}


def test_rows_are_sorted_by_mrr_and_the_best_marked_on_dev_only():
    rows = [row(0.1, 0.30), row(0.2, 0.50), row(0.3, 0.40)]
    ranked = sweep.rank_rows(rows, mark_best=True)
    assert [r["settings"]["ddro.beta"] for r in ranked] == [0.2, 0.3, 0.1]
    assert [r["best"] for r in ranked] == [True, False, False]
    assert not any(r["best"] for r in sweep.rank_rows(rows, mark_best=False))
    lines = sweep.points_table(ranked, {"MRR@10": 0.25})
    assert lines[2].startswith("| SFT (reference) | 0.2500 |") and lines[3].startswith("| **ddro.beta=0.2** (best) |")
    assert lines[3].count("|") == lines[0].count("|")  # R@10 missing: a blank cell, not a shifted row


def test_seeds_give_mean_std_and_each_seeds_p():
    rows = [row(0.2, 0.3, seed=2, p=0.04), row(0.2, 0.5, seed=1, p=0.01), row(0.2, 0.4, seed=3, p=0.2),
            row(0.4, 0.1, seed=1)]
    summary = sweep.over_seeds(rows)
    assert [s["setting"] for s in summary] == ["ddro.beta=0.2", "ddro.beta=0.4"]
    first = summary[0]
    assert first["seeds"] == [1, 2, 3] and first["p"] == [0.01, 0.04, 0.2]
    assert first["metrics"]["MRR@10"]["mean"] == pytest.approx(0.4)
    assert first["metrics"]["MRR@10"]["std"] == pytest.approx(0.1)
    assert summary[1]["metrics"]["MRR@10"]["std"] is None  # one seed: no spread
    assert "0.4000 ± 0.1000" in sweep.seeds_table(summary)[2] and "| 1: 0.01, 2: 0.04, 3: 0.2 |" in \
        sweep.seeds_table(summary)[2]


# ----------------------------------------------------------------------------- end to end

def test_a_sweep_runs_on_the_micro_pipeline_output_and_resumes(pipeline_out, tmp_path):
    """Two seeds of one point on adi's test split (the micro output has no dev split): one mined
    negatives folder, two DDRO runs scored against the pipeline's own SFT evaluation; a rerun redoes nothing."""
    from ddro.eval.metrics import paired_ttest, read_per_query

    src, out = pipeline_out[1], tmp_path / "adi"
    for name in ("collection", "docids", "instances", "pseudo_queries", "sft", "configs", "eval"):
        shutil.copytree(src / name, out / name)
    argv = [str(out), "--split", "test", "--set", "ddro.learning_rate=1.0e-4", "--seeds", "1,2"]
    sweep.main(argv)
    results = json.loads((out / "sweep" / "results_test.json").read_text())
    assert sorted(p["settings"]["ddro.seed"] for p in results["points"]) == [1, 2]
    assert [p.name for p in (out / "sweep" / "negatives").iterdir() if p.is_dir()] == ["base"]  # mined once
    sft = read_per_query(out / "eval" / "sft" / "per_query.csv")
    for point in results["points"]:
        folder = out / "sweep" / point["name"] / "eval" / "test"
        assert point["p"]["MRR@10"] == paired_ttest(sft, read_per_query(folder / "per_query.csv"), "MRR@10")["p_value"]
        assert not point["best"]  # test is reported, not selected on
    text = (out / "sweep" / "results_test.md").read_text()
    assert "## Over phase-2 seeds" in text and "| ddro.learning_rate=0.0001 | 1, 2 |" in text
    stamps = {p: p.stat().st_mtime_ns for p in (out / "sweep").rglob("manifest.json")}
    sweep.main(argv)
    assert {p: p.stat().st_mtime_ns for p in (out / "sweep").rglob("manifest.json")} == stamps


def test_rounds_chain_each_round_on_the_previous_phase2_checkpoint():
    out = Path("O")
    settings = {"negatives.source": "model", "ddro.learning_rate": 1e-5}
    first = sweep.point_configs(out, base(), settings, "dev")
    names, points, configs = sweep.with_rounds(["p"], [settings], [first], out, 3)
    assert names == ["p", "p,round=2", "p,round=3"] and points[2]["round"] == 3
    for previous, current in zip(configs, configs[1:]):
        trained = previous["ddro"]["output_dir"]
        # mined with, started from and referenced to the previous round's model; scored alone
        assert current["negatives"]["checkpoint"] == current["ddro"]["checkpoint"] == trained
        assert current["ddro"]["negatives"] == current["negatives"]["out"] != previous["negatives"]["out"]
        assert current["eval"]["model"] == current["ddro"]["output_dir"] != trained
        assert current["eval"]["out"] != previous["eval"]["out"]
    assert configs[0]["ddro"]["checkpoint"] == "O/sft"
    bm25 = sweep.point_configs(out, base(), {"negatives.source": "bm25"}, "dev")
    assert sweep.with_rounds(["b"], [{}], [bm25], out, 1)[0] == ["b"]
    with pytest.raises(DDROError, match="source model"):
        sweep.with_rounds(["b"], [{}], [bm25], out, 2)


def test_a_pipeline_that_mined_with_the_model_lends_no_checkpoint_to_other_sources():
    mined_with_model = base()
    mined_with_model["negatives"].update(source="model", checkpoint="O/sft", docids="O/docids", beams=10)
    bm25 = sweep.point_configs(Path("O"), mined_with_model, {"negatives.source": "bm25"}, "dev")["negatives"]
    assert not {"checkpoint", "docids", "beams"} & set(bm25)
    model = sweep.point_configs(Path("O"), mined_with_model, {"negatives.bands": "1-5"}, "dev")["negatives"]
    assert model["checkpoint"] == "O/sft" and model["beams"] == 10
