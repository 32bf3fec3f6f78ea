"""`ddro rescore`: re-score a generative run's docids by teacher forcing and look for inversions.

Independent of beam search: each query's returned docids are scored in one forward pass
with the docid as the labels (sum of the log-softmax at each label; the docid's own end
token included, the end edge a trie adds to docids without one scores 0, as in
`DocidTrie.free_end`). Under `--ranking sum` the run must list its docids in decreasing
order of these sums; an *inversion* is a docid ranked below another yet scoring more.
Reports the queries with an inversion and the largest one in nats.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Optional

import torch
from tqdm.auto import tqdm

from ..config import entry_point, parse_args
from ..docids.table import DocidTable
from ..errors import DDROError
from ..padding import IGNORE, pad_rows
from .trie import DocidTrie

log = logging.getLogger(__name__)


@dataclass
class RescoreArguments:
    model: str = field(metadata={"help": "the checkpoint the run was produced with (as for `ddro eval`)"})
    docids: str = field(metadata={"help": "its docid folder"})
    instances: str = field(metadata={"help": "instances folder holding eval/<split>.jsonl (the run's queries)"})
    run: str = field(metadata={"help": "the TREC run to check (run.trec of `ddro eval`)"})
    split: str = field(default="test", metadata={"help": "split the run was evaluated on"})
    tolerance: float = field(default=1e-4, metadata={"help": "nats by which a lower-ranked docid may outscore a "
                                                                "higher one before it counts (float noise)"})
    device: Optional[str] = field(default=None, metadata={"help": "cpu, cuda, ... (default: cuda if available)"})


def docid_log_probs(model, query_ids: list[int], docids: list[tuple[int, ...]], trie: DocidTrie) -> list[float]:
    """Summed log-probability of each docid given the query, by teacher forcing (`docid_logps`, the
    training path's); the docid ends as in `trie`: with no end token under `free_end`, else with it."""
    from ..train.ddro_loss import docid_logps

    if not trie.free_end:
        docids = [d if d[-1] == trie.end_token else (*d, trie.end_token) for d in docids]
    device = next(model.parameters()).device
    labels = pad_rows(docids, IGNORE)
    query = torch.tensor([query_ids], device=device).expand(len(docids), -1)
    with torch.no_grad():
        return docid_logps(model, query, torch.ones_like(query), labels.to(device)).cpu().tolist()


def inversions(scores: list[float]) -> float:
    """Largest amount (nats) by which a docid outscores one ranked above it; 0 when none does."""
    worst, lowest = 0.0, float("inf")
    for s in scores:
        worst = max(worst, s - lowest)
        lowest = min(lowest, s)
    return worst


def run_docids(hits: list[tuple[str, float]], table: DocidTable) -> list[tuple[int, ...]]:
    """The distinct docids behind a query's ranked documents, in rank order (collision members share one)."""
    seen, order = set(), []
    for doc_id, _ in hits:
        docid = table.by_doc.get(doc_id)
        if docid is None:
            raise DDROError(f"document {doc_id!r} of the run is not in the docid table")
        if docid not in seen:
            seen.add(docid)
            order.append(docid)
    return order


def rescore(model, queries: list[dict], run: dict, table: DocidTable, tolerance: float = 1e-4) -> dict:
    """{queries, queries_with_inversion, max_inversion (nats), inverted: [query ids]} for `run`."""
    from .evaluate import docid_trie

    model.eval()
    trie = docid_trie(model, table)   # the evaluator's: its end token and free_end rule
    inverted, largest, checked = [], 0.0, 0
    for q in tqdm(queries, desc="rescore", unit="query"):
        hits = run.get(q["query_id"])
        if not hits:
            continue
        checked += 1
        worst = inversions(docid_log_probs(model, q["input_ids"], run_docids(hits, table), trie))
        largest = max(largest, worst)
        if worst > tolerance:
            inverted.append(q["query_id"])
    return {"queries": checked, "queries_with_inversion": len(inverted), "max_inversion": largest,
            "tolerance": tolerance, "inverted": inverted}


def run_rescore(args: RescoreArguments) -> dict:
    from pathlib import Path

    from ..distributed import device_for_rank
    from ..modeling.checkpoint import load_model
    from .evaluate import read_eval_file
    from .runs import read_run

    table = DocidTable.load(args.docids)
    path = Path(args.instances) / "eval" / f"{args.split}.jsonl"
    if not path.is_file():
        raise DDROError(f"{path}: no evaluation file for split '{args.split}'")
    queries, run = read_eval_file(path), read_run(args.run)
    loaded = load_model(args.model, table)
    model = loaded.model.to(torch.device(device_for_rank(args.device)))
    return rescore(model, queries, run, table, args.tolerance)


@entry_point
def main(argv=None):
    """Re-score a generative run's docids by teacher forcing; report queries whose order contradicts
    the summed log-probabilities (inversions) and the largest inversion in nats."""
    (args,) = parse_args([RescoreArguments], argv, prog="ddro rescore", description=main.__doc__)
    result = run_rescore(args)
    print(json.dumps({k: v for k, v in result.items() if k != "inverted"}))
    if result["inverted"]:
        print("queries with an inversion: " + " ".join(result["inverted"][:20])
              + (" ..." if len(result["inverted"]) > 20 else ""))


if __name__ == "__main__":
    main()
