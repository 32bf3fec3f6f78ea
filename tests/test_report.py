"""`ddro report` on the shared micro pipeline output (read-only: reports go to tmp folders)."""
import re
import shutil

import ir_measures
import pytest

from ddro.data.collection import Collection
from ddro.report import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WINS = re.compile(r"DDRO wins (\d+), ties (\d+) and loses (\d+) of (\d+) queries")


@pytest.fixture(scope="module")
def report(pipeline_out, tmp_path_factory):
    """The report written twice into the same folder: (folder, first report.md, first PNG bytes,
    cache mtimes after the first run)."""
    out = pipeline_out[1]
    dest = tmp_path_factory.mktemp("report")
    argv = [str(out), "--out", str(dest), "--beam_sizes", "1,5,50", "--max_queries", "12"]
    main(argv)
    first = (dest / "report.md").read_bytes()
    pngs = {p.name: p.read_bytes() for p in (dest / "report").glob("*.png")}
    cache = {p: p.stat().st_mtime_ns for p in (dest / "report" / "beams").rglob("manifest.json")}
    main(argv)
    return dest, first, pngs, cache


def judged_test_queries(out):
    qrels = Collection(out / "collection").qrels("test")
    return {q: {d: s for d, s in docs.items() if s >= 1} for q, docs in qrels.items()
            if any(s >= 1 for s in docs.values())}


def table_rows(text):
    """The systems table: {system: {column: cell}} (the first table after '## Systems')."""
    lines = text.split("## Systems", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| system |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header[1:], cells[1:]))
    return rows


def test_report_writes_markdown_and_pngs(report):
    dest, _, pngs, _ = report
    text = (dest / "report.md").read_text()
    linked = re.findall(r"\]\((report/[^)]+\.png)\)", text)
    assert {name.split("_", 1)[1] for name in map(lambda p: p.split("/")[1], linked)} == \
        {"beams.png", "training.png", "wins.png"}
    for rel in linked:
        data = (dest / rel).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert len(pngs) == 3


def test_report_is_deterministic_and_the_beam_runs_are_cached(report):
    dest, first, pngs, cache = report
    assert (dest / "report.md").read_bytes() == first
    assert {p.name: p.read_bytes() for p in (dest / "report").glob("*.png")} == pngs
    assert cache and {p: p.stat().st_mtime_ns for p in cache} == cache  # nothing re-evaluated
    # beam sizes above the pipeline's own (5) are left out
    assert sorted(p.parent.name for p in cache) == ["ddro-beam1", "ddro-beam5", "sft-beam1", "sft-beam5"]


def test_table_numbers_are_ir_measures_on_the_run_files(report, pipeline_out):
    dest, _, _, _ = report
    out = pipeline_out[1]
    judged = judged_test_queries(out)
    rows = table_rows((dest / "report.md").read_text())
    for system, name in (("bm25", "BM25"), ("dense", "Dense"), ("sft", "SFT"), ("ddro", "DDRO")):
        run = {}
        for line in (out / "runs" / f"{system}.test.run").read_text().splitlines():
            qid, _, doc, rank, _, _ = line.split()
            run.setdefault(qid, {})[doc] = -float(rank)  # rank order, whatever the scores
        # R@k only up to the run's depth: BM25's and dense's 100 documents, the micro preset's 5 beams
        deep = system in ("bm25", "dense")
        recall = ("R@100", "R(rel=1)@100") if deep else ("R@5", "R(rel=1)@5")
        if not deep:
            assert rows[name]["R@100"] == "" and rows[name]["R@10"] == ""
        for metric, measure in (("MRR@10", "RR(rel=1)@10"), ("nDCG@10", "nDCG@10"), recall):
            values = dict.fromkeys(judged, 0.0)
            for m in ir_measures.iter_calc([ir_measures.parse_measure(measure)], judged, run):
                values[m.query_id] = m.value
            expected = sum(values.values()) / len(values)
            assert float(rows[name][metric].rstrip("†‡")) == pytest.approx(expected, abs=5e-5)


def test_win_loss_counts_add_up_to_the_queries(report, pipeline_out):
    dest, _, _, _ = report
    (wins, ties, losses, n), = [tuple(map(int, m)) for m in WINS.findall((dest / "report.md").read_text())]
    assert wins + ties + losses == n == len(judged_test_queries(pipeline_out[1]))


def test_two_outputs_give_two_column_groups(pipeline_out, tmp_path):
    out = pipeline_out[1]
    main([str(out), str(out), "--out", str(tmp_path), "--labels", "tiny", "small", "--beam_sizes", "none"])
    rows = table_rows((tmp_path / "report.md").read_text())
    assert set(rows) == {"BM25", "Dense", "SFT", "DDRO"}
    columns = list(rows["DDRO"])
    assert columns == [f"{label} {m}" for label in ("tiny", "small")
                       for m in ("R@1", "R@5", "R@10", "R@100", "MRR@10", "nDCG@10")]
    assert rows["DDRO"]["tiny MRR@10"] == rows["DDRO"]["small MRR@10"]
    assert (tmp_path / "report" / "tiny_wins.png").is_file() and (tmp_path / "report" / "small_wins.png").is_file()


def test_several_outputs_need_out(pipeline_out, capsys):
    out = str(pipeline_out[1])
    with pytest.raises(SystemExit) as exit_:
        main([out, out])
    assert exit_.value.code == 2 and "--out" in capsys.readouterr().err


def test_missing_run_is_a_one_line_error(pipeline_out, tmp_path, capsys):
    src, partial = pipeline_out[1], tmp_path / "partial"
    for name in ("collection", "runs"):
        shutil.copytree(src / name, partial / name)
    shutil.copy(src / "pipeline.json", partial / "pipeline.json")
    (partial / "runs" / "ddro.test.run").unlink()
    with pytest.raises(SystemExit) as exit_:
        main([str(partial), "--beam_sizes", "none"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1
    assert "runs/ddro.test.run not found" in err
    assert not (partial / "report.md").exists()
