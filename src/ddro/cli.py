"""`ddro`: one command, one subcommand per pipeline stage.

Each subcommand is a module with a `main(argv)`; `ddro data beir ...` and
`python -m ddro.data.beir ...` run the same function with the same arguments.
"""
from __future__ import annotations

import importlib
import sys

# (subcommand words, module, one-line summary), in pipeline order.
COMMANDS: list[tuple[str, str, str]] = [
    ("data beir", "ddro.data.beir", "import a BEIR-layout collection (local folder or download)"),
    ("data msmarco", "ddro.data.msmarco", "build MS MARCO document top-300k from the raw files"),
    ("data nq", "ddro.data.nq", "build NQ320k from the raw Natural Questions files"),
    ("data sentences", "ddro.data.sentences", "add Punkt sentence splits (`sents`) to a collection"),
    ("tokenizer train", "ddro.tokenizer", "train a T5-layout sentencepiece tokenizer on a collection"),
    ("docids embed", "ddro.docids.embed", "fill the embedding cache ahead of `ddro docids` (shardable)"),
    ("docids", "ddro.docids.build", "encode every document's docid (pq, tu, atomic, semantic or rq)"),
    ("pseudo-queries", "ddro.pseudo_queries", "generate pseudo-queries for every document"),
    ("instances", "ddro.instances", "build the three SFT stages' training files and the eval files"),
    ("model init", "ddro.modeling.init", "write a constructed model before any training (e.g. the dense prior alone)"),
    ("train sft", "ddro.train.sft", "phase 1: three-stage supervised fine-tuning (doc, pseudo-query, query -> docid)"),
    ("negatives", "ddro.negatives", "phase 2 data: hard negatives (BM25, the model, dense, mixed) from rank bands"),
    ("train ddro", "ddro.train.ddro", "phase 2: direct document relevance optimisation (pairwise loss; rpo, listwise)"),
    ("eval", "ddro.eval.evaluate", "trie-constrained beam search on a split: TREC run + metrics"),
    ("rescore", "ddro.eval.rescore", "re-score a run's docids by teacher forcing: report ranking inversions"),
    ("bm25", "ddro.bm25", "BM25 baseline run and metrics on a split"),
    ("dense", "ddro.dense", "dense baseline (sentence-transformers, exact inner product) run and metrics on a split"),
    ("pipeline", "ddro.pipeline", "run every stage built so far, skipping finished ones"),
    ("verify", "ddro.verify", "re-check a pipeline folder's manifests; report anything stale or inconsistent"),
    ("report", "ddro.report", "write report.md and plots for one or more pipeline folders"),
]


def _usage() -> str:
    width = max(len(words) for words, _, _ in COMMANDS)
    lines = ["usage: ddro <command> [args] (ddro <command> --help for its arguments)", "",
             "commands, in pipeline order:"]
    lines += [f"  {words.ljust(width)}  {summary}" for words, _, summary in COMMANDS]
    return "\n".join(lines)


def resolve(argv: list[str]) -> tuple[str, str, list[str]] | None:
    """The longest registered command that prefixes argv: (words, module, remaining args)."""
    for words, module, _ in sorted(COMMANDS, key=lambda c: -len(c[0].split())):
        n = len(words.split())
        if argv[:n] == words.split():
            return words, module, argv[n:]
    return None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    if argv[0] in ("-V", "--version"):
        from . import __version__
        print(__version__)
        return
    found = resolve(argv)
    if found is None:
        print(f"ddro: unknown command '{' '.join(argv[:2])}'\n\n{_usage()}", file=sys.stderr)
        raise SystemExit(2)
    words, module, rest = found
    sys.argv[0] = f"ddro {words}"
    from . import manifest
    manifest.COMMAND = ["ddro", *argv]
    importlib.import_module(module).main(rest)


if __name__ == "__main__":
    main()
