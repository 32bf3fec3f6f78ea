"""`ddro eval`: trie-constrained beam search over a split's queries -> TREC run + metrics.

Each query's beams are distinct docids, best first. A docid shared by several documents
(a PQ collision) is expanded into all of them in collection order, which is the order
the docid table lists them in; a document already ranked is not repeated. Scores are
the beams' sequence log-probabilities, nudged down by 1e-6 where needed so that they
strictly decrease and every evaluation tool reads the ranking exactly as produced.

Resumable: finished batches are committed to `.<out>.partial/` (per shard: beside the shard
in `<out>.shards/`); a killed evaluation rerun with the same arguments goes on after the
last committed batch and writes the same files.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from ..config import as_dict, entry_point, parse_args
from ..distributed import (
    INDEX_HELP,
    SHARD_HELP,
    Shard,
    ShardSet,
    barrier,
    default_num_shards,
    default_shard_index,
    device_for_rank,
    is_main_process,
    plan_shard,
)
from ..docids.table import DocidTable
from ..errors import DDROError, InputError
from ..hub import resolve_file, resolve_model
from ..io import Journal, atomic_dir, check_output, dumps_line, iter_jsonl, partial_dir, sha256_file
from ..manifest import manifest_hash, manifest_hash_or_none, read_manifest, write_manifest
from ..modeling.build import special_ids
from ..modeling.checkpoint import is_plain_checkpoint, resolve_checkpoint
from ..padding import pad_queries
from .constrained import constrained_generate
from .decoding import DecodingArguments
from .metrics import write_run_folder
from .published import is_published_test_file, read_published_docids, read_published_queries
from .trie import DocidTrie

log = logging.getLogger(__name__)


@dataclass
class EvalArguments:
    model: str = field(metadata={"help": "checkpoint folder (SFT stage, SFT output or DDRO output), a plain "
                                          "save_pretrained folder, or a published model: hf:model:OWNER/NAME"
                                          "[:REVISION] or OWNER/NAME"})
    docids: str = field(metadata={"help": "docid folder the model was trained on, or a published docid table "
                                           "file (local or hf:dataset:OWNER/NAME[@REVISION]:PATH)"})
    out: str = field(metadata={"help": "folder for run.trec, metrics.json, per_query.csv"})
    instances: Optional[str] = field(default=None, metadata={
        "help": "instances folder (`ddro instances`) holding eval/<split>.jsonl"})
    test_file: Optional[str] = field(default=None, metadata={
        "help": "a query file instead of --instances: JSONL with query_id, input_ids, relevant, or a published "
                "test set (input_ids, query_id, doc_id; local or hf:dataset:OWNER/NAME[@REVISION]:PATH)"})
    cache_dir: Optional[str] = field(default=None, metadata={
        "help": "download cache for hf: references (default: the Hugging Face cache)"})
    split: str = field(default="test", metadata={"help": "split to evaluate (eval/<split>.jsonl)"})
    batch_size: int = field(default=16, metadata={"help": "queries per generate call"})
    max_queries: Optional[int] = field(default=None, metadata={"help": "evaluate only the first N queries"})
    device: Optional[str] = field(default=None, metadata={"help": "cpu, cuda, ... (default: cuda if available)"})
    tag: str = field(default="ddro", metadata={"help": "run tag (6th column of the run file)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --out"})
    num_shards: int = field(default_factory=default_num_shards, metadata={"help": SHARD_HELP})
    shard_index: int = field(default_factory=default_shard_index, metadata={"help": INDEX_HELP})
    merge_shards: bool = field(default=False, metadata={
        "help": "only merge the finished shards in <out>.shards/ into --out (same arguments as the shard "
                "runs; needed only when the automatic merge did not happen)"})


def read_eval_file(path: Path, max_queries: int | None = None) -> list[dict]:
    queries, seen = [], set()
    for lineno, obj in iter_jsonl(path):
        if not isinstance(obj.get("query_id"), str) or not isinstance(obj.get("input_ids"), list) \
                or not obj["input_ids"] or not isinstance(obj.get("relevant"), dict):
            raise InputError(path, "expected {'query_id': str, 'input_ids': [int], 'relevant': {doc: score}}", lineno)
        if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in obj["input_ids"]):
            raise InputError(path, "'input_ids' must be non-negative integer token ids", lineno)
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in obj["relevant"].values()):
            raise InputError(path, "'relevant' scores must be integers", lineno)
        if obj["query_id"] in seen:
            raise InputError(path, f"query {obj['query_id']!r} appears twice", lineno)
        seen.add(obj["query_id"])
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


def single_id(token_id) -> int:
    """A config's eos_token_id may be a list (several end tokens): decoding ends docids with the first."""
    return token_id[0] if isinstance(token_id, list) else token_id


def docid_trie(model, table: DocidTable) -> DocidTrie:
    """The trie of the table's docids, ended by the model's end token (TU docids may already end with it)."""
    return DocidTrie(list(table.groups), end_token=single_id(special_ids(model)["eos"]))


def end_token_of(model_path) -> int:
    """The end token a checkpoint decodes with (from its config.json: no weights loaded)."""
    from transformers import AutoConfig

    return single_id(AutoConfig.from_pretrained(model_path).eos_token_id)


def generate_run(model, pad_id: int, queries: list[dict], table: DocidTable, decoding: DecodingArguments,
                 batch_size: int, device: torch.device, journal: Journal | None = None,
                 trie: DocidTrie | None = None) -> dict[str, list[tuple[str, float]]]:
    """Hits per query; with a `journal`, each batch is committed to it and a rerun starts after the
    last committed batch (scores round-trip exactly through JSON). `trie`: the table's
    `docid_trie`, built once by a caller that decodes chunk after chunk."""
    trie = trie or docid_trie(model, table)
    rows = model.get_input_embeddings().num_embeddings
    for q in queries:  # an id beyond the embeddings would fail deep inside the model
        if max(q["input_ids"]) >= rows:
            raise DDROError(f"query {q['query_id']!r}: input token id {max(q['input_ids'])} is outside the model's "
                            f"{rows}-token input vocabulary (eval file built with another tokenizer?)")
    run: dict[str, list[tuple[str, float]]] = {}
    if journal is not None and journal.done:
        log.info("resuming %s after %d queries", journal.folder, journal.done)
        run = {obj["query_id"]: [(d, s) for d, s in obj["hits"]] for _, obj in iter_jsonl(journal.path)}
    model.eval()
    for start in tqdm(range(len(run), len(queries), batch_size), desc="eval", unit="batch"):
        batch = queries[start:start + batch_size]
        ids, mask = pad_queries([q["input_ids"] for q in batch], pad_id)
        results = constrained_generate(model, ids.to(device), mask.to(device), trie, decoding=decoding)
        for q, result in zip(batch, results):
            run[q["query_id"]] = rank_documents(result, table)
        if journal is not None:
            journal.append(hits_lines({q["query_id"]: run[q["query_id"]] for q in batch}).encode(), len(batch))
    return run


def hits_lines(hits: dict[str, list[tuple[str, float]]]) -> str:
    return "".join(dumps_line({"query_id": q, "hits": [[d, float(s)] for d, s in h]}) for q, h in hits.items())


SHARD_ARGS = ("num_shards", "shard_index", "merge_shards")


def run_config(args: EvalArguments, decoding: DecodingArguments) -> dict:
    """The manifest's config: how the work was split does not change the result."""
    return {k: v for k, v in as_dict(args, decoding).items() if k not in SHARD_ARGS}


def generate_block(args: EvalArguments, decoding: DecodingArguments, queries: list[dict], table: DocidTable,
                   shard: Shard, journal: Journal | None = None) -> dict:
    """Hits of this shard's whole batches: each batch is the one a single process would run."""
    from ..modeling.checkpoint import load_model

    batches = shard.block(-(-len(queries) // args.batch_size))
    mine = queries[batches.start * args.batch_size:batches.stop * args.batch_size]
    loaded = load_model(args.model, table)
    device = torch.device(device_for_rank(args.device))
    model = loaded.model.to(device)
    pad_id = loaded.tokenizer.pad_token_id or 0
    return generate_run(model, pad_id, mine, table, decoding, args.batch_size, device, journal)


def sharded_hits(args: EvalArguments, decoding: DecodingArguments, queries: list[dict], table: DocidTable,
                 inputs: dict) -> tuple[dict | None, ShardSet | None]:
    """(the run's hits, the shards they came from), computed here or merged from the shards;
    hits None when another process merges.

    One process: everything here. Shards (`--num_shards`, torchrun ranks): each process writes
    its batches' hits to <out>.shards/; torchrun's rank 0 (after a barrier), or the array task
    that finds every shard done, reads them back in query order (scores round-trip exactly).
    """
    shard = plan_shard(args.num_shards, args.shard_index)
    settings = {**{k: v for k, v in run_config(args, decoding).items() if k not in ("out", "overwrite", "device")},
                **inputs}
    if shard.count == 1 and not args.merge_shards:  # `run` removes the journal once --out is written
        journal = Journal(partial_dir(args.out), settings, args.overwrite)
        return generate_block(args, decoding, queries, table, shard, journal), None
    shards = ShardSet(args.out, settings, shard.count, "jsonl")
    if args.merge_shards:
        if shard.count == 1:
            raise DDROError("--merge_shards needs --num_shards: the number of shards to merge")
        if not is_main_process():
            return None, None
    else:
        if shards.done(shard) is not None and not args.overwrite:
            log.info("shard %d of %d: already done, reused", shard.index, shard.count)
        else:
            journal = Journal(shards.payload(shard).with_suffix(".partial"),
                              {**settings, "shard": shard.index, "num_shards": shard.count}, args.overwrite)
            hits = generate_block(args, decoding, queries, table, shard, journal)
            with shards.writing(shard) as f:
                f.write(hits_lines(hits))
            shards.finish(shard, queries=len(hits))
            journal.discard()
        barrier()
        if not (is_main_process() and shards.claim_merge()):
            log.info("shard %d of %d written to %s", shard.index, shard.count, shards.folder)
            return None, None
    shards.require_complete()
    hits = {}
    for part in shards.shards():
        for _, obj in iter_jsonl(shards.payload(part)):
            hits[obj["query_id"]] = [(d, s) for d, s in obj["hits"]]
    if list(hits) != [q["query_id"] for q in queries]:
        raise DDROError(f"{shards.folder}: the shards do not hold exactly the evaluated queries")
    return hits, shards


def run(args: EvalArguments, decoding: DecodingArguments | None = None) -> dict:
    decoding = decoding or DecodingArguments()
    if bool(args.instances) == bool(args.test_file):
        raise DDROError("give exactly one of --instances (a folder) or --test-file (a JSONL file)")
    check_output(args.out, args.overwrite)
    # hf: references are downloaded once here; the manifest's config keeps them as given
    docids = resolve_file(args.docids, args.cache_dir, "--docids")
    folder_table = docids.path.is_dir()
    table = DocidTable.load(docids.path) if folder_table else read_published_docids(docids.path)
    test = resolve_file(args.test_file, args.cache_dir, "--test_file") if args.test_file else None
    path = test.path if test else Path(args.instances) / "eval" / f"{args.split}.jsonl"
    if args.instances:
        built_for = read_manifest(args.instances, "instances").get("inputs", {}).get("docids")
        if built_for and built_for != (manifest_hash(docids.path) if folder_table else None):
            raise DDROError(f"{args.instances} was built for another docid table than {args.docids}")
    if not path.is_file():
        raise DDROError(f"{path}: no evaluation file for split '{args.split}'")
    queries = read_published_queries(path, table, args.max_queries) if is_published_test_file(path) \
        else read_eval_file(path, args.max_queries)
    model = resolve_model(args.model, args.cache_dir)
    model_path = model.path if is_plain_checkpoint(model.path) else resolve_checkpoint(model.path)
    model_id = manifest_hash_or_none(model_path) or model.source
    docids_id = manifest_hash(docids.path) if folder_table else sha256_file(docids.path)
    inputs = {"model": model_id, "docids": docids_id, "queries": sha256_file(path)}
    hits, shards = sharded_hits(replace(args, model=str(model.path)), decoding, queries, table, inputs)
    if hits is None:  # this process wrote its shard; another one merges
        return {}
    qrels = {q["query_id"]: {d: int(s) for d, s in q["relevant"].items()} for q in queries}
    with atomic_dir(args.out, args.overwrite) as tmp:
        metrics, _ = write_run_folder(tmp, hits, qrels, args.tag, depth=decoding.beams)
        trie = DocidTrie(list(table.groups), end_token=end_token_of(model_path))
        manifest = write_manifest(
            tmp, "run", config=run_config(args, decoding), split=args.split, metrics=metrics,
            decoding=decoding.resolved(trie),
            inputs={"model": model_id, "docids": docids_id,
                    "queries": test.source if test and test.source else str(path)},
            counts={"queries": len(queries), "evaluated_queries": metrics["queries"]})
    if shards is not None:
        shards.cleanup()
    shutil.rmtree(partial_dir(args.out), ignore_errors=True)  # the finished batches, now in --out
    log.info("%s: %s", args.split, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    return manifest


@entry_point
def main(argv=None):
    """Evaluate a generative retriever: constrained beam search, TREC run, metrics."""
    args, decoding = parse_args([EvalArguments, DecodingArguments], argv, prog="ddro eval",
                                description=main.__doc__)
    run(args, decoding)


if __name__ == "__main__":
    main()
