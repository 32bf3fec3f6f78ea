"""`ddro eval`: trie-constrained beam search over a split's queries -> TREC run + metrics.

Each query's beams are distinct docids, best first. A docid shared by several documents
(a PQ collision) is expanded into all of them in collection order, which is the order
the docid table lists them in; a document already ranked is not repeated. Scores are
the beams' sequence log-probabilities, nudged down by 1e-6 where needed so that they
strictly decrease and every evaluation tool reads the ranking exactly as produced.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from ..config import as_dict, entry_point, parse_args
from ..docids.table import DocidTable
from ..errors import DDROError, InputError
from ..io import atomic_dir, check_output, iter_jsonl
from ..manifest import manifest_hash, manifest_hash_or_none, read_manifest, write_manifest
from .constrained import constrained_generate
from .metrics import write_run_folder
from .trie import DocidTrie

log = logging.getLogger(__name__)


@dataclass
class EvalArguments:
    model: str = field(metadata={"help": "checkpoint folder (SFT stage, SFT output or DDRO output)"})
    docids: str = field(metadata={"help": "docid folder the model was trained on"})
    out: str = field(metadata={"help": "folder for run.trec, metrics.json, per_query.csv"})
    instances: Optional[str] = field(default=None, metadata={
        "help": "instances folder (`ddro instances`) holding eval/<split>.jsonl"})
    test_file: Optional[str] = field(default=None, metadata={
        "help": "a query file instead of --instances: JSONL with query_id, input_ids, relevant"})
    split: str = field(default="test", metadata={"help": "split to evaluate (eval/<split>.jsonl)"})
    beams: int = field(default=20, metadata={"help": "beam size = docids returned per query"})
    batch_size: int = field(default=16, metadata={"help": "queries per generate call"})
    max_queries: Optional[int] = field(default=None, metadata={"help": "evaluate only the first N queries"})
    device: Optional[str] = field(default=None, metadata={"help": "cpu, cuda, ... (default: cuda if available)"})
    tag: str = field(default="ddro", metadata={"help": "run tag (6th column of the run file)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --out"})


def read_eval_file(path: Path, max_queries: int | None = None) -> list[dict]:
    queries = []
    for lineno, obj in iter_jsonl(path):
        if not isinstance(obj.get("query_id"), str) or not isinstance(obj.get("input_ids"), list) \
                or not obj["input_ids"] or not isinstance(obj.get("relevant"), dict):
            raise InputError(path, "expected {'query_id': str, 'input_ids': [int], 'relevant': {doc: score}}", lineno)
        queries.append(obj)
        if max_queries is not None and len(queries) >= max_queries:
            break
    return queries


def rank_documents(beams, table: DocidTable) -> list[tuple[str, float]]:
    """Beams (docid, score), best first -> documents with strictly decreasing scores."""
    hits, seen, last = [], set(), float("inf")
    for beam in beams:
        for doc_id in table.groups[beam.docid]:
            if doc_id in seen:
                continue
            seen.add(doc_id)
            last = min(beam.score, last - 1e-6)
            hits.append((doc_id, last))
    return hits


def generate_run(model, pad_id: int, queries: list[dict], table: DocidTable, beams: int, batch_size: int,
                 device: torch.device) -> dict[str, list[tuple[str, float]]]:
    end_token = model.generation_config.eos_token_id
    if isinstance(end_token, list):
        end_token = end_token[0]
    trie = DocidTrie(list(table.groups), end_token=end_token)  # TU docids may already end with it
    run: dict[str, list[tuple[str, float]]] = {}
    model.eval()
    for start in tqdm(range(0, len(queries), batch_size), desc="eval", unit="batch"):
        batch = queries[start:start + batch_size]
        width = max(len(q["input_ids"]) for q in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, q in enumerate(batch):
            ids[i, :len(q["input_ids"])] = torch.tensor(q["input_ids"])
            mask[i, :len(q["input_ids"])] = 1
        results = constrained_generate(model, ids.to(device), mask.to(device), trie, num_beams=beams)
        for q, result in zip(batch, results):
            run[q["query_id"]] = rank_documents(result, table)
    return run


def run(args: EvalArguments) -> dict:
    from ..modeling.checkpoint import load_model

    if bool(args.instances) == bool(args.test_file):
        raise DDROError("give exactly one of --instances (a folder) or --test-file (a JSONL file)")
    check_output(args.out, args.overwrite)
    table = DocidTable.load(args.docids)
    path = Path(args.test_file) if args.test_file else Path(args.instances) / "eval" / f"{args.split}.jsonl"
    if args.instances:
        built_for = read_manifest(args.instances, "instances").get("inputs", {}).get("docids")
        if built_for and built_for != manifest_hash(args.docids):
            raise DDROError(f"{args.instances} was built for another docid table than {args.docids}")
    if not path.is_file():
        raise DDROError(f"{path}: no evaluation file for split '{args.split}'")
    queries = read_eval_file(path, args.max_queries)
    loaded = load_model(args.model, table)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = loaded.model.to(device)
    pad_id = loaded.tokenizer.pad_token_id or 0
    hits = generate_run(model, pad_id, queries, table, args.beams, args.batch_size, device)
    qrels = {q["query_id"]: {d: int(s) for d, s in q["relevant"].items()} for q in queries}
    with atomic_dir(args.out, args.overwrite) as tmp:
        metrics, _ = write_run_folder(tmp, hits, qrels, args.tag)
        manifest = write_manifest(
            tmp, "run", config=as_dict(args), split=args.split, metrics=metrics,
            inputs={"model": manifest_hash_or_none(loaded.path),
                    "docids": manifest_hash(args.docids), "queries": str(path)},
            counts={"queries": len(queries), "evaluated_queries": metrics["queries"]})
    log.info("%s: %s", args.split, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    return manifest


@entry_point
def main(argv=None):
    """Evaluate a generative retriever: constrained beam search, TREC run, metrics."""
    (args,) = parse_args([EvalArguments], argv, prog="ddro eval", description=main.__doc__)
    run(args)


if __name__ == "__main__":
    main()
