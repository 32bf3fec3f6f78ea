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
        {"beams.png", "training.png", "wins.png", "logps.png", "ranks.png"}
    for rel in linked:
        data = (dest / rel).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert len(pngs) == 5


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


# ----------------------------------------------------------------------------- phase 2

TRANSITIONS = "| SFT (rows), DDRO (columns) |"


def transition_rows(text):
    """Every transition table in report.md: [{SFT bucket: {column: count}}]."""
    lines, tables = text.splitlines(), []
    for start in (i for i, line in enumerate(lines) if line.startswith(TRANSITIONS)):
        header = [c.strip() for c in lines[start].strip("|").split("|")][1:]
        rows = {}
        for line in lines[start + 2:]:
            if not line.startswith("|"):
                break
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = dict(zip(header, map(int, cells[1:])))
        tables.append(rows)
    return tables


def test_rank_transitions_count_a_hand_computed_case():
    from ddro.report import moves
    from ddro.report.data import first_relevant_ranks, rank_transitions

    qrels = {"q1": {"a": 1}, "q2": {"b": 2, "c": 1, "n": 0}, "q3": {"d": 1}, "q4": {"e": 1}, "q5": {"x": 0}}
    ranked = lambda *docs: [(d, float(-i)) for i, d in enumerate(docs)]  # noqa: E731  (best first)
    sft = {"q1": ranked("a", "z"), "q2": ranked("n", "y", "c", "b"), "q3": ranked("u", "v", "w", "x", "d"),
           "q5": ranked("x")}
    ddro = {"q1": ranked("z", "a"), "q2": ranked("b"), "q3": ranked("u"),
            "q4": ranked(*[f"o{i}" for i in range(10)], "e")}
    before, after = first_relevant_ranks(sft, qrels), first_relevant_ranks(ddro, qrels)
    assert before == {"q1": 1, "q2": 3, "q3": 5, "q4": None}  # q5 has no relevant document: not counted
    assert after == {"q1": 2, "q2": 1, "q3": None, "q4": 11}
    counts = rank_transitions(before, after)
    assert {k: n for k, n in counts.items() if n} == {
        ("1", "2-3"): 1, ("2-3", "1"): 1, ("4-10", ">10 / none"): 1, (">10 / none", ">10 / none"): 1}
    assert len(counts) == 16 and moves(counts) == {"up": 1, "same": 1, "down": 2}


def test_transition_table_matches_the_run_files(report, pipeline_out):
    dest, _, _, _ = report
    out = pipeline_out[1]
    judged = judged_test_queries(out)

    def first(system):
        ranks = {}
        for line in (out / "runs" / f"{system}.test.run").read_text().splitlines():
            qid, _, doc, rank, _, _ = line.split()
            if doc in judged.get(qid, {}):
                ranks[qid] = min(ranks.get(qid, 99), int(rank))
        return ranks

    def bucket(rank):
        return "1" if rank == 1 else "2-3" if rank <= 3 else "4-10" if rank <= 10 else ">10 / none"

    sft, ddro = first("sft"), first("ddro")
    expected = {}
    for qid in judged:
        key = bucket(sft.get(qid, 99)), bucket(ddro.get(qid, 99))
        expected[key] = expected.get(key, 0) + 1
    (table,) = transition_rows((dest / "report.md").read_text())
    buckets = ("1", "2-3", "4-10", ">10 / none")
    assert {(a, b): table[a][b] for a in buckets for b in buckets if table[a][b]} == expected
    assert table["DDRO total"]["SFT total"] == len(judged)


def test_logps_figure_follows_the_ddro_log(report, pipeline_out):
    import json

    dest, _, _, _ = report
    history = json.loads((pipeline_out[1] / "ddro" / "log_history.json").read_text())
    steps = [e for e in history if "logps/chosen" in e and "logps/rejected" in e]
    assert steps  # the trainer logs both (the micro preset logs every step)
    text = (dest / "report.md").read_text()
    assert f"`ddro/log_history.json`: {len(steps)} logged steps" in text
    assert (dest / "report" / f"{pipeline_out[1].name}_logps.png").read_bytes().startswith(PNG_MAGIC)


def test_a_log_without_logps_gets_a_note_not_a_figure(pipeline_out, tmp_path):
    import json

    src, copy = pipeline_out[1], tmp_path / "adi"
    for name in ("collection", "runs", "instances"):
        shutil.copytree(src / name, copy / name)
    shutil.copy(src / "pipeline.json", copy / "pipeline.json")
    (copy / "ddro").mkdir()
    (copy / "ddro" / "log_history.json").write_text(json.dumps([{"step": 1, "loss": 0.69}, {"step": 2, "loss": 0.6}]))
    main([str(copy), "--beam_sizes", "none"])
    text = (copy / "report.md").read_text()
    assert "No phase-2 log-probs: `ddro/log_history.json` is missing or has no `logps/chosen`" in text
    assert not (copy / "report" / "adi_logps.png").exists()
    assert (copy / "report" / "adi_ranks.png").is_file() and len(transition_rows(text)) == 1
