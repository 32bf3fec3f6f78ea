"""`ddro data beir`: import any BEIR-layout folder, local or downloaded, as a collection.

The source is validated line by line (see `collection.py` for the rules), text fields
have their white space collapsed, and the result is written atomically with a manifest.

`--dev_from_train N` (a fraction < 1 or a count) carves a dev split out of a source that has
train queries but no dev split: a seeded sample of the train queries moves, with all their
judgements, from qrels/train.tsv to qrels/dev.tsv, so settings can be chosen on dev without
touching test and training never sees a dev query. The manifest's `dev_split` records what
was done (carved: how many, fraction, seed; or why not).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..config import as_dict, entry_point, parse_args
from ..errors import DDROError
from ..io import atomic_dir, check_output
from .collection import CORPUS, QRELS, QUERIES, clean, iter_corpus, read_qrels, read_queries, write_collection
from .download import download, extract_zip, safe_name

log = logging.getLogger(__name__)

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"


@dataclass
class BeirArguments:
    out: str = field(metadata={"help": "folder to write the collection to"})
    path: Optional[str] = field(default=None, metadata={"help": "a local BEIR-layout folder"})
    name: Optional[str] = field(default=None, metadata={"help": "a BEIR dataset name to download (e.g. scifact)"})
    url_base: str = field(default=BEIR_URL, metadata={"help": "where BEIR zips are downloaded from"})
    download_dir: str = field(default="resources/downloads/beir", metadata={"help": "download cache"})
    sentences: bool = field(default=True, metadata={"help": "add Punkt sentence splits (`sents`)"})
    skip_empty: bool = field(default=True, metadata={
        "help": "leave out documents with neither title nor text (counted, with their qrels); "
                "false: such a document is an error"})
    skip_unknown_qrels: bool = field(default=False, metadata={
        "help": "drop (and count) qrels naming unknown queries/documents instead of failing"})
    dev_from_train: Optional[float] = field(default=None, metadata={
        "help": "when the source has a train split but no dev split: move this many train queries (a count, "
                "or a fraction if < 1) to a new dev split, a seeded sample; unset: keep the source's splits"})
    seed: int = field(default=42, metadata={"help": "seed of the --dev_from_train sample"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --out"})


def fetch(name: str, url_base: str, download_dir: str | Path) -> Path:
    """Download and unpack BEIR dataset `name`; returns its folder."""
    name = safe_name(name, "BEIR dataset name")
    cache = Path(download_dir)
    archive = download(f"{url_base.rstrip('/')}/{name}.zip", cache / f"{name}.zip")
    root = extract_zip(archive, cache / name)
    candidates = [p.parent for p in root.rglob(CORPUS)]
    if len(candidates) != 1:
        raise DDROError(f"{archive}: expected one {CORPUS} in the archive, found {len(candidates)}")
    return candidates[0]


def normalise(doc: dict) -> dict:
    out = {"_id": doc["_id"], "title": clean(doc["title"]), "text": clean(doc["text"])}
    if doc.get("url"):
        out["url"] = doc["url"].strip()
    return out


def dev_count(spec: float, n_train: int) -> int:
    """--dev_from_train as a number of queries: a fraction (< 1) of n_train, rounded, or a count."""
    if spec <= 0 or (spec >= 1 and not float(spec).is_integer()):
        raise DDROError(f"--dev_from_train must be a fraction in (0, 1) or a whole count >= 1, got {spec}")
    n = max(1, round(spec * n_train)) if spec < 1 else int(spec)
    if n >= n_train:
        raise DDROError(f"--dev_from_train {spec} would move {n} of the {n_train} train queries to dev, "
                        "leaving none to train on")
    return n


def carve_dev(qrels: dict, spec: float | None, seed: int) -> dict:
    """Move a seeded sample of the train queries to a new dev split (in place); returns the record."""
    if spec is None:
        return {"source": "dev" if "dev" in qrels else "none"}
    if "dev" in qrels or "train" not in qrels:
        why = "the source has its own dev split" if "dev" in qrels else "the source has no train split"
        log.info("--dev_from_train ignored: %s", why)
        return {"source": "dev" if "dev" in qrels else "none", "dev_from_train": spec, "not_carved": why}
    train = qrels["train"]
    qids = sorted(train)
    n = dev_count(spec, len(qids))
    rng = np.random.default_rng(seed)
    dev = {qids[i] for i in rng.choice(len(qids), n, replace=False)}
    qrels["dev"] = {q: train[q] for q in qids if q in dev}
    qrels["train"] = {q: train[q] for q in qids if q not in dev}
    log.info("dev split: %d of %d train queries (seed %d)", n, len(qids), seed)
    return {"source": "carved from train", "dev_from_train": spec, "seed": seed, "queries": n,
            "train_queries_before": len(qids), "fraction": round(n / len(qids), 6)}


def run(args: BeirArguments) -> dict:
    if bool(args.path) == bool(args.name):
        raise DDROError("give exactly one of --path (a local folder) or --name (a BEIR dataset)")
    check_output(args.out, args.overwrite)
    src = Path(args.path) if args.path else fetch(args.name, args.url_base, args.download_dir)
    if not (src / CORPUS).is_file():
        raise DDROError(f"{src}: not a BEIR folder (no {CORPUS})")
    empty: list[str] | None = [] if args.skip_empty else None
    doc_ids = {d["_id"] for d in iter_corpus(src / CORPUS, empty)}  # pass 1: validate, collect ids
    queries = {qid: clean(text) for qid, text in read_queries(src / QUERIES).items()}
    qrels, skipped = {}, {}
    for path in sorted((src / QRELS).glob("*.tsv")):
        qrels[path.stem], skipped[path.stem] = read_qrels(
            path, doc_ids, set(queries), args.skip_unknown_qrels, dropped_docs=set(empty or ()))
    if not qrels:
        raise DDROError(f"{src}: no qrels/<split>.tsv files")
    dev_split = carve_dev(qrels, args.dev_from_train, args.seed)
    warnings = {f"qrels_skipped.{s}": n for s, n in skipped.items() if n}
    if empty:
        warnings["empty_documents_skipped"] = len(empty)
    for key, n in warnings.items():
        log.warning("%s: %d rows", key, n)
    with atomic_dir(args.out, args.overwrite) as tmp:  # pass 2: stream the corpus out
        manifest = write_collection(
            tmp, (normalise(d) for d in iter_corpus(src / CORPUS, [])), queries, qrels,
            source=f"beir:{args.name}" if args.name else f"beir:{src.name}", total_docs=len(doc_ids),
            warnings=warnings, config=as_dict(args), sentences=args.sentences, dev_split=dev_split)
    log.info("collection written to %s", args.out)
    return manifest


@entry_point
def main(argv=None):
    """Import a BEIR-layout collection (local folder, or a BEIR dataset name to download)."""
    (args,) = parse_args([BeirArguments], argv, prog="ddro data beir", description=main.__doc__)
    run(args)


if __name__ == "__main__":
    main()
