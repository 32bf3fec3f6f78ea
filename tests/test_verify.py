"""`ddro verify`: a fresh pipeline output is OK; damage of each kind is named and ranked."""
import json
import os
import shutil

import pytest

from ddro.verify import CORRUPT, MISSING, OK, STALE, VerifyArguments, main, run

BIG = (".safetensors", ".pt", ".bin", ".pth")


def copy_output(src, dst):
    """A private copy of the shared pipeline output. Model weights are hard links (no test
    edits them), everything else is copied, so tests may damage text files freely."""
    def copy(a, b):
        return os.link(a, b) if a.endswith(BIG) else shutil.copy2(a, b)
    shutil.copytree(src, dst, copy_function=copy)
    return dst


@pytest.fixture
def output(pipeline_out, tmp_path):
    return copy_output(pipeline_out[1], tmp_path / "adi")


def verdict(out):
    return {c.name: c for c in run(VerifyArguments(output=str(out)))}


def test_fresh_output_is_all_ok(output, capsys):
    main([str(output)])  # no SystemExit: exit status 0
    printed = capsys.readouterr().out
    assert "14/14 OK" in printed
    for name in ("collection", "dense", "sft", "negatives", "eval_ddro", "pipeline.json", "runs", "results"):
        assert any(line.split()[:1] == [name] and " OK " in line for line in printed.splitlines())


def test_fresh_output_every_stage_is_ok(output):
    checks = verdict(output)
    assert {name: c.status for name, c in checks.items()} == dict.fromkeys(checks, OK)


def test_negatives_manifest_hashes_the_files_as_written(output):
    """Regression: negatives.py once hashed its files before closing them."""
    from ddro.io import sha256_file
    manifest = json.loads((output / "negatives" / "manifest.json").read_text())
    assert manifest["files"] and manifest["files"] == {
        p.name: sha256_file(p) for p in (output / "negatives").iterdir() if p.name != "manifest.json"}


def test_flipped_byte_is_corrupt_and_named(output, capsys):
    path = output / "docids" / "docids.tsv"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    checks = verdict(output)
    assert checks["docids"].status == CORRUPT
    assert any("docids/docids.tsv" in what for status, what in checks["docids"].problems if status == CORRUPT)
    assert checks["instances"].status == OK  # built from the manifest, which did not change
    with pytest.raises(SystemExit) as exit_:
        main([str(output)])
    assert exit_.value.code == 1
    assert "docids/docids.tsv" in capsys.readouterr().out


def test_edited_upstream_manifest_makes_downstream_stale(output):
    path = output / "collection" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["source"] = "edited by hand"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    checks = verdict(output)
    for downstream in ("docids", "dense", "pseudo_queries", "instances", "bm25", "negatives"):
        assert checks[downstream].status == STALE
        assert any(status == STALE and "collection" in what for status, what in checks[downstream].problems)
    assert checks["collection"].status == CORRUPT  # no longer the manifest pipeline.json recorded
    assert checks["sft"].status == OK  # its inputs (docids, instances) are unchanged


def test_deleted_file_is_missing(output):
    (output / "eval" / "sft" / "per_query.csv").unlink()
    checks = verdict(output)
    assert checks["eval_sft"].status == MISSING
    assert any("eval/sft/per_query.csv" in what for _, what in checks["eval_sft"].problems)


def test_results_and_runs_must_match_the_run_files(output):
    results = output / "results.md"
    lines = results.read_text().splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("| bm25 |"))
    cells = lines[i].split(" | ")
    cells[1] = "0.9999" if cells[1] != "0.9999" else "0.9998"
    lines[i] = " | ".join(cells)
    results.write_text("\n".join(lines) + "\n")
    run_copy = output / "runs" / "sft.test.run"
    run_copy.write_text("\n".join(run_copy.read_text().splitlines()[1:]) + "\n")
    checks = verdict(output)
    assert checks["results"].status == CORRUPT
    assert any("bm25 R@1" in what for _, what in checks["results"].problems)
    assert checks["runs"].status == CORRUPT
    assert any("runs/sft.test.run" in what for _, what in checks["runs"].problems)


def test_not_a_pipeline_folder_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path)])
    assert exit_.value.code == 2
    assert "not a pipeline output" in capsys.readouterr().err
