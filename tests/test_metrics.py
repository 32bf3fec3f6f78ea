"""Metrics against values computed by hand; missing queries; t-test; tables."""
import math

import pytest

from ddro.errors import DDROError, InputError
from ddro.eval.metrics import METRICS, evaluate, paired_ttest, read_per_query, results_table, write_per_query
from ddro.eval.runs import write_run

QRELS = {
    "q1": {"d1": 1, "d2": 2, "d9": 0},  # d9 judged non-relevant
    "q2": {"d3": 1},
    "q3": {"d4": 0},                     # no relevant document: not evaluated
    "q4": {"d5": 1},                     # never retrieved: scores 0
}
RUN = {
    "q1": [("d9", 3.0), ("d1", 2.0), ("dx", 1.0), ("d2", 0.5)],
    "q2": [("d8", 1.0), ("d3", 1.0)],    # tie: doc id ascending puts d3 first
    "q3": [("d4", 1.0)],
    "q5": [("d1", 1.0)],                 # not in the qrels: ignored
}
# q1: relevant d1 (gain 1) at rank 2 and d2 (gain 2) at rank 4.
Q1_NDCG = (1 / math.log2(3) + 2 / math.log2(5)) / (2 / math.log2(2) + 1 / math.log2(3))
EXPECTED_PER_QUERY = {
    "q1": {"R@1": 0.0, "R@5": 1.0, "R@10": 1.0, "R@100": 1.0, "MRR@10": 0.5, "nDCG@10": Q1_NDCG},
    "q2": dict.fromkeys(METRICS, 1.0),
    "q4": dict.fromkeys(METRICS, 0.0),
}


def test_evaluate_matches_hand_computed_values():
    aggregate, per_query = evaluate(RUN, QRELS)
    assert set(per_query) == {"q1", "q2", "q4"}
    for qid, expected in EXPECTED_PER_QUERY.items():
        assert per_query[qid] == pytest.approx(expected), qid
    assert aggregate["R@1"] == pytest.approx(1 / 3)
    assert aggregate["R@5"] == pytest.approx(2 / 3)
    assert aggregate["MRR@10"] == pytest.approx(0.5)
    assert aggregate["nDCG@10"] == pytest.approx((Q1_NDCG + 1) / 3)
    assert aggregate["queries"] == 3 and aggregate["queries_without_results"] == 1


def test_recall_cutoffs():
    qrels = {"q": {"a": 1, "b": 1, "c": 1}}
    ranking = ["a", "n1", "n2", "n3", "n4", "b", "n5", "n6", "n7", "n8", "c"]  # a@1, b@6, c@11
    run = {"q": [(d, 100.0 - i) for i, d in enumerate(ranking)]}
    _, per_query = evaluate(run, qrels)
    dcg = 1 + 1 / math.log2(7)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert per_query["q"] == pytest.approx(
        {"R@1": 1 / 3, "R@5": 1 / 3, "R@10": 2 / 3, "R@100": 1.0, "MRR@10": 1.0, "nDCG@10": dcg / idcg})


def test_rr_cutoff_and_graded_qrels_below_one():
    qrels = {"q": {"rel": 1, "neg": -1}}
    run = {"q": [(f"n{i:02d}", 100.0 - i) for i in range(10)] + [("rel", 1.0)]}  # relevant at rank 11
    aggregate, _ = evaluate(run, qrels)
    assert aggregate["MRR@10"] == 0.0 and aggregate["R@10"] == 0.0 and aggregate["R@100"] == 1.0


def test_missing_queries_count_as_zero_not_dropped():
    qrels = {"a": {"x": 1}, "b": {"y": 1}, "c": {"z": 1}, "d": {"w": 1}}
    run = {"a": [("x", 1.0)], "b": [], "zz": [("x", 1.0)]}  # b: empty list, c and d: absent
    aggregate, per_query = evaluate(run, qrels)
    assert aggregate["R@1"] == pytest.approx(1 / 4)  # ir_measures alone would average over 'a' only
    assert aggregate["queries"] == 4 and aggregate["queries_without_results"] == 3
    assert per_query["c"] == dict.fromkeys(METRICS, 0.0)
    empty, _ = evaluate({}, qrels)
    assert empty["MRR@10"] == 0.0 and empty["queries_without_results"] == 4


def test_evaluate_a_run_file(tmp_path):
    write_run(tmp_path / "run.trec", RUN, "t")
    assert evaluate(tmp_path / "run.trec", QRELS) == evaluate(RUN, QRELS)
    assert evaluate(str(tmp_path / "run.trec"), QRELS) == evaluate(RUN, QRELS)


def test_no_relevant_query_is_an_error():
    with pytest.raises(DDROError, match="no query has a relevant document"):
        evaluate(RUN, {"q": {"d": 0}})


def test_per_query_csv_round_trip(tmp_path):
    _, per_query = evaluate(RUN, QRELS)
    write_per_query(tmp_path / "pq.csv", per_query)
    lines = (tmp_path / "pq.csv").read_text().splitlines()
    assert lines[0] == "qid,R@1,R@5,R@10,R@100,MRR@10,nDCG@10"
    assert [line.split(",")[0] for line in lines[1:]] == ["q1", "q2", "q4"]
    assert read_per_query(tmp_path / "pq.csv") == per_query
    (tmp_path / "bad.csv").write_text("qid,R@1\nq1,high\n")
    with pytest.raises(InputError, match=r"bad.csv:2: metric values must be numbers"):
        read_per_query(tmp_path / "bad.csv")


def test_paired_ttest_by_hand():
    a = {"q1": {"m": 0.5}, "q2": {"m": 0.2}, "q3": {"m": 0.1}}
    b = {"q1": {"m": 0.7}, "q2": {"m": 0.5}, "q3": {"m": 0.2}}
    result = paired_ttest(a, b, "m")
    # diffs 0.2, 0.3, 0.1: mean 0.2, sample sd 0.1, t = 0.2 / (0.1 / sqrt 3); for 2 degrees of
    # freedom the two-sided p-value is 1 - |t| / sqrt(t^2 + 2).
    t = 0.2 / (0.1 / math.sqrt(3))
    assert result["mean_diff"] == pytest.approx(0.2)
    assert result["t"] == pytest.approx(t)
    assert result["p_value"] == pytest.approx(1 - t / math.sqrt(t * t + 2))
    assert result["queries"] == 3 and result["mean_a"] == pytest.approx(0.8 / 3)
    assert paired_ttest(b, a, "m")["mean_diff"] == pytest.approx(-0.2)
    assert paired_ttest(a, a, "m")["p_value"] == 1.0


def test_paired_ttest_refuses_different_queries_or_metric():
    a = {"q1": {"m": 0.5}, "q2": {"m": 0.2}}
    with pytest.raises(DDROError, match="same queries"):
        paired_ttest(a, {"q1": {"m": 0.5}}, "m")
    with pytest.raises(DDROError, match="metric 'x'"):
        paired_ttest(a, a, "x")


def test_results_table():
    table = results_table({"BM25": {"MRR@10": 0.64921, "R@1": 0.5, "queries": 300},
                           "DDRO": {"MRR@10": 0.7}})
    assert table.splitlines() == [
        "| system | R@1 | MRR@10 |",
        "|---|---:|---:|",
        "| BM25 | 0.5000 | 0.6492 |",
        "| DDRO |  | 0.7000 |",
    ]


def test_a_run_claims_only_the_recall_its_depth_holds(tmp_path):
    from ddro.eval.metrics import shared_metrics, write_run_folder

    deep, _ = evaluate(RUN, QRELS, depth=100)
    assert [m for m in deep if m.startswith("R@")] == ["R@1", "R@5", "R@10", "R@100"] and deep["depth"] == 100
    beams20, per_query20 = evaluate(RUN, QRELS, depth=20)
    assert [m for m in beams20 if m.startswith("R@")] == ["R@1", "R@5", "R@10", "R@20"]
    assert per_query20["q1"]["R@20"] == 1.0 and beams20["MRR@10"] == pytest.approx(0.5)
    shallow, per_query3 = evaluate(RUN, QRELS, depth=3)
    assert [m for m in shallow if m.startswith("R@")] == ["R@1", "R@3"]
    assert per_query3["q1"]["R@3"] == pytest.approx(0.5)            # d1 at rank 2, d2 at rank 4
    # metrics.json records the depth; per_query.csv holds the run's own columns, and a t-test between
    # systems of different depth compares only the metrics both hold
    write_run_folder(tmp_path / "a", RUN, QRELS, "a", depth=3)
    write_run_folder(tmp_path / "b", RUN, QRELS, "b", depth=100)
    import json
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["depth"] == 3
    a, b = read_per_query(tmp_path / "a" / "per_query.csv"), read_per_query(tmp_path / "b" / "per_query.csv")
    assert (tmp_path / "a" / "per_query.csv").read_text().splitlines()[0] == "qid,R@1,R@3,MRR@10,nDCG@10"
    assert shared_metrics(a, b) == ["R@1", "MRR@10", "nDCG@10"]
    assert all(paired_ttest(a, b, m)["p_value"] == 1.0 for m in shared_metrics(a, b))
    table = results_table({"BM25": deep, "SFT": shallow})
    assert table.splitlines()[0] == "| system | R@1 | R@3 | R@5 | R@10 | R@100 | MRR@10 | nDCG@10 |"
    assert table.splitlines()[3].startswith("| SFT | 0.3333 | 0.5000 |  |  |  |")   # R@3: (0.5 + 1 + 0) / 3
