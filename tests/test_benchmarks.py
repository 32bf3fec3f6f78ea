"""The benchmark scripts run and print their tables: gpu_check.sh in its tiny size, pipeline_cost.py
on adi with a preset of a few steps (both on CPU; gpu_check in seconds, pipeline_cost in minutes)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MICRO

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
NUMBER = r"([0-9][0-9,.e+]*)"


def run(argv, **env):
    # the scripts set PYTHONPATH=src themselves; an outer one must not hide a broken setup
    environ = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": "", **env}
    return subprocess.run(argv, capture_output=True, text=True, env=environ, cwd=ROOT, timeout=600)


@pytest.mark.fast
def test_gpu_check_tiny_prints_every_row_with_a_positive_number(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = run([str(BENCH / "gpu_check.sh"), "--size", "tiny", "--threads", "1", "--json", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = {"constrained beam search (ours)": "queries/s", "unconstrained beam search": "queries/s",
                "reference prefix_allowed_tokens_fn": "queries/s", "constraint's share of decoding": "%",
                "ours / unconstrained time": "x", "SFT step, passages (stage 1)": "steps/s",
                "SFT step, queries (stages 2-3)": "steps/s", "DDRO step (phase 2)": "steps/s",
                "embedding (all-MiniLM-L6-v2)": "docs/s"}
    printed = {}
    for line in proc.stdout.splitlines():
        if m := re.match(rf"^\| (.+?) \| {NUMBER} \| (\S+) \|", line):
            printed[m.group(1)] = (float(m.group(2).replace(",", "")), m.group(3))
    assert set(printed) == set(expected), proc.stdout
    for name, unit in expected.items():
        value, printed_unit = printed[name]
        assert value > 0 and printed_unit == unit, (name, value, printed_unit)
    rows = json.loads(out.read_text())["rows"]
    assert {r["name"] for r in rows.values()} == set(expected)
    assert all(r["value"] > 0 for r in rows.values())


@pytest.mark.fast
def test_gpu_check_names_missing_packages_before_running(tmp_path):
    # a sitecustomize that hides sentence_transformers from import lookups
    (tmp_path / "sitecustomize.py").write_text(
        "import importlib.util as u\n_find = u.find_spec\n"
        "u.find_spec = lambda name, *a: None if name == 'sentence_transformers' else _find(name, *a)\n")
    proc = run([str(BENCH / "gpu_check.sh"), "--size", "tiny"], PYTHONPATH=str(tmp_path))
    assert proc.returncode == 2
    assert "missing Python packages: sentence-transformers" in proc.stderr
    assert "--skip embed" in proc.stderr and "| measurement |" not in proc.stdout


@pytest.fixture(scope="module")
def cost_run(shared_data, tmp_path_factory):
    import yaml

    tmp = tmp_path_factory.mktemp("cost")
    preset = tmp / "micro.yaml"
    preset.write_text(yaml.safe_dump(MICRO))
    gpu = tmp / "gpu.json"   # a gpu_check result in its documented format, for the estimate's GPU basis
    gpu.write_text(json.dumps({"device_name": "test GPU", "rows": {
        key: {"value": value} for key, value in (("decode_ours", 50.0), ("sft_passages", 4.0),
                                                 ("sft_queries", 10.0), ("ddro_step", 5.0), ("embed", 3000.0))}}))
    report = tmp / "cost.json"
    proc = subprocess.run([sys.executable, str(BENCH / "pipeline_cost.py"), "--collection", str(shared_data / "adi"),
                           "--output", str(tmp / "adi"), "--preset", str(preset), "--json", str(report),
                           "--estimate", "--gpu-check", str(gpu)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(report.read_text())


@pytest.mark.slow
def test_pipeline_cost_times_every_stage(cost_run):
    from ddro.pipeline import STAGES

    stdout, report = cost_run
    stages = {r["stage"]: r for r in report["stages"]}
    assert list(stages) == [s.name for s in STAGES] + ["overhead"]
    for name, row in stages.items():
        assert row["seconds"] > 0 and row["peak_mb"] > 0, row
        assert re.search(rf"^\| {name} \| [0-9.]+ \| [0-9,]+ \|", stdout, re.M), name
        if name != "overhead":      # every stage did some work: its throughput is known
            assert row["count"] > 0 and row["rate"] > 0, row
    assert stages["collection"]["count"] == 82          # adi's documents
    assert stages["sft"]["count"] == MICRO["sft"]["max_steps"]
    assert stages["ddro"]["count"] == MICRO["ddro"]["max_steps"]


@pytest.mark.slow
def test_pipeline_cost_estimate_uses_the_gpu_rates(cost_run):
    stdout, report = cost_run
    est = {e["stage"]: e for e in report["estimate"]["stages"]}
    work = report["estimate"]["work"]
    assert work["docs"] == 319_927
    assert est["eval_sft"]["seconds"] == pytest.approx(work["eval_queries"] / 50.0)
    assert est["ddro"]["seconds"] == pytest.approx(work["ddro_steps"] / 5.0)
    steps = work["sft_steps"]
    assert est["sft"]["seconds"] == pytest.approx(steps[0] / 4.0 + sum(steps[1:]) / 10.0)
    assert est["docids"]["seconds"] == pytest.approx(319_927 / 3000.0)
    # a stage measured here has an estimate unless it was mostly start-up (then it says so)
    assert all(e["seconds"] is None or e["seconds"] > 0 for e in est.values())
    for e in est.values():
        if e["seconds"] is None:
            assert re.search(rf"^\| {e['stage']} \| .* \| n/a: mostly start-up here \|", stdout, re.M)
    assert "An estimate, not a measurement" in stdout and "GPU basis" in stdout


@pytest.mark.fast
def test_ddro_step_times_every_variant_and_every_loss():
    from ddro.train.ddro_loss import LOSSES

    proc = run([sys.executable, str(BENCH / "ddro_step.py"), "--batch", "2", "--d-model", "32", "--d-ff", "64",
                "--layers", "1", "--heads", "2", "--vocab", "50", "--docid-rows", "16", "--steps", "1",
                "--threads", "1"], PYTHONPATH=str(ROOT / "src"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("precomputed", "on-the-fly", "trl-style", *LOSSES):
        match = re.search(rf"^\s+{name}\s+{NUMBER} ms/step", proc.stdout, re.M)
        assert match and float(match.group(1)) > 0, (name, proc.stdout)
