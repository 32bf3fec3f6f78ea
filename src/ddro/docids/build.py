"""`ddro docids`: give every document of a collection its docid (one of the schemes in `schemes.py`).

Writes a docid folder (`docids.tsv` + manifest kind "docids", see `table.py`). Token ids
are ids in the decoder's vocabulary, which is either

* `--target-vocab tokenizer` (default): the vocabulary of `--tokenizer` (e.g. T5's).
  Docids of new tokens (pq, rq, semantic, atomic) extend it from `vocab_offset` =
  len(tokenizer); TU docids are the tokenizer's own ids, ended by its EOS.
* `--target-vocab own`: a decoder with its own small vocabulary (`scheme.OWN_SPECIALS`:
  pad 0, decoder_start 1, eos 2), docid tokens from `vocab_offset` = 3; new-token schemes only.

Documents that share a docid are all kept (the manifest counts the collisions);
`--dedup` makes every docid unique instead (the scheme's `Built.dedup`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..config import as_dict, entry_point, parse_args
from ..data.collection import Collection
from ..distributed import is_main_process
from ..errors import DDROError
from ..io import atomic_dir, check_output
from ..manifest import manifest_hash, write_manifest
from ..tokenizer import OFFLINE_MINILM, load_tokenizer, tokenizer_identity
from .pq import AUTO_MAX_BITS, AUTO_MIN_POINTS_PER_CENTROID, int_or_auto
from .scheme import OWN_SPECIALS, Built, Scheme
from .schemes import SCHEMES, get_scheme
from .table import DocidTable
from .tu import eos_id

log = logging.getLogger(__name__)

TARGETS = ("tokenizer", "own")
EMBEDDING = "pq/rq/semantic"  # the schemes that quantize document embeddings (the embed_* options)


@dataclass
class DocidArguments:
    collection: str = field(metadata={"help": "collection folder (imported by `ddro data ...`, with a manifest)"})
    encoding: str = field(metadata={"help": "docid scheme: " + "; ".join(f"{s.name}: {s.summary}"
                                                                         for s in SCHEMES.values())})
    out: str = field(metadata={"help": "folder to write the docid table to"})
    tokenizer: Optional[str] = field(default=None, metadata={
        "help": "the decoder's tokenizer (folder, hub name or offline:minilm): TU docids are its ids, "
                "the other schemes' new tokens extend its vocabulary; not used with --target-vocab own"})
    target_vocab: str = field(default="tokenizer", metadata={
        "help": "tokenizer: docid ids live in --tokenizer's vocabulary; own: a decoder with its own "
                "vocabulary (pad 0, decoder_start 1, eos 2, docid tokens from 3; not for tu)"})
    vocab_offset: Optional[int] = field(default=None, metadata={
        "help": "first id of the new docid tokens (not tu); unset: len(tokenizer), or 3 with "
                "--target-vocab own"})
    dedup: bool = field(default=False, metadata={
        "help": "make every docid unique (pq/rq: one extra position token per colliding document; "
                "tu: a number before EOS; atomic and semantic docids are unique anyway); default keeps "
                "collisions and reports them"})
    seed: int = field(default=42, metadata={"help": "seed of the k-means (pq, rq, semantic)"})
    pq_subspaces: int = field(default=24, metadata={"help": "PQ: number of sub-spaces M (docid length); "
                                                            "must divide the embedding dimension"})
    pq_bits: int_or_auto = field(default=8, metadata={
        "help": "PQ: bits per code; K = 2^bits centroids per sub-space (needs at least K documents); auto: the "
                f"largest bits <= {AUTO_MAX_BITS} leaving >= {AUTO_MIN_POINTS_PER_CENTROID} documents per centroid "
                "(what was chosen and why is in the manifest)"})
    rq_levels: int = field(default=8, metadata={
        "help": "RQ: number of residual levels M (docid length), each quantizing what the previous left"})
    rq_bits: int_or_auto = field(default=8, metadata={
        "help": "RQ: bits per code; K = 2^bits centroids per level (needs at least K documents); auto: as "
                "--pq-bits auto"})
    semantic_k: int = field(default=30, metadata={
        "help": "semantic: clusters per level of the hierarchical k-means (NCI: 30, DSI: 10)"})
    semantic_c: int = field(default=30, metadata={
        "help": "semantic: a cluster of more documents than this is clustered again; the last docid position "
                "is a document's index in its leaf (NCI: 30, DSI: 100)"})
    embedder: str = field(default=OFFLINE_MINILM, metadata={
        "help": f"{EMBEDDING}: sentence-transformers model (folder, hub name, or offline:minilm; the paper "
                "uses sentence-transformers/gtr-t5-base)"})
    embed_fields: list[str] = field(default_factory=lambda: ["title", "text"], metadata={
        "help": f"{EMBEDDING}: document fields embedded, joined by a space"})
    embed_max_length: Optional[int] = field(default=None, metadata={
        "help": f"{EMBEDDING}: max tokens the embedder reads; unset: the model's own"})
    embed_batch_size: int = field(default=64, metadata={"help": f"{EMBEDDING}: documents per embedding batch"})
    embed_cache: str = field(default="resources/cache/embeddings", metadata={
        "help": f"{EMBEDDING}: folder caching embeddings (keyed by model, collection and fields; shared by "
                "the schemes)"})
    device: Optional[str] = field(default=None, metadata={"help": f"{EMBEDDING}: device for the embedder; unset: "
                                                                  "cuda if available"})
    tu_max_tokens: int = field(default=99, metadata={"help": "TU: tokens kept before EOS"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --out"})


@dataclass
class Target:
    """The vocabulary the docid tokens live in."""
    vocab_offset: int
    eos_token_id: int | None
    tokenizer: object | None = None
    identity: dict | None = None


def resolve_target(args: DocidArguments, scheme: Scheme) -> Target:
    if args.target_vocab not in TARGETS:
        raise DDROError(f"unknown --target-vocab '{args.target_vocab}' (choose from {', '.join(TARGETS)})")
    label = scheme.name.upper()
    if args.target_vocab == "own":
        if not scheme.allows_own_vocab:
            raise DDROError(f"{label} docids are the tokenizer's own token ids: use --target-vocab tokenizer "
                            "with --tokenizer")
        if args.tokenizer:
            raise DDROError("--target-vocab own does not use a tokenizer; drop --tokenizer")
        offset = len(OWN_SPECIALS) if args.vocab_offset is None else args.vocab_offset
        if offset < len(OWN_SPECIALS):
            raise DDROError(f"--vocab-offset {offset} overlaps the own vocabulary's special ids "
                            f"{OWN_SPECIALS}; use >= {len(OWN_SPECIALS)}")
        return Target(offset, OWN_SPECIALS["eos"])
    if not args.tokenizer:
        if scheme.uses_tokenizer_ids:
            raise DDROError(f"{label} docids need --tokenizer (the decoder's tokenizer, e.g. t5-base)")
        raise DDROError(f"{args.encoding} docids need --tokenizer (whose vocabulary they extend) "
                        "or --target-vocab own")
    tok = load_tokenizer(args.tokenizer)
    size = len(tok)
    eos = eos_id(tok)
    if scheme.ends_with_eos and eos is None:
        raise DDROError(f"tokenizer {args.tokenizer!r} has neither an EOS nor a SEP token to end {label} docids")
    if scheme.uses_tokenizer_ids:
        if args.vocab_offset is not None:
            raise DDROError(f"--vocab-offset does not apply to {label} docids (they use the tokenizer's own ids)")
        offset = size
    else:
        offset = size if args.vocab_offset is None else args.vocab_offset
        if offset < size:
            raise DDROError(f"--vocab-offset {offset} would reuse ids of the tokenizer's {size} tokens; "
                            f"use >= {size}")
    return Target(offset, eos, tok, tokenizer_identity(tok, args.tokenizer))


def deduplicate(doc_ids: list[str], built: Built, enabled: bool) -> tuple[list, dict]:
    """--dedup: the scheme's dedup applied when docids collide; (tokens, the manifest's dedup record)."""
    tokens, dedup = built.tokens, built.dedup
    info: dict = {"enabled": enabled, "extra_tokens": 0}
    if not enabled:
        return tokens, info
    before = DocidTable(doc_ids, tokens).collisions()
    info["collisions_before"] = before
    if before["colliding_groups"] and dedup is not None:
        tokens, done = dedup(tokens)
        info.update(done)
    else:
        info.update(method="nothing to resolve", groups_resolved=0, docs_changed=0)
    return tokens, info


def run(args: DocidArguments) -> DocidTable:
    scheme = get_scheme(args.encoding)
    collection = Collection(args.collection)
    if collection.manifest is None:
        raise DDROError(f"{collection.path}: no manifest.json; import the collection first "
                        f"(ddro data beir --path {collection.path} --out FOLDER)")
    check_output(args.out, args.overwrite)
    target = resolve_target(args, scheme)
    doc_ids = collection.doc_ids()
    built = scheme.build(args, collection, target, len(doc_ids))
    if not is_main_process():  # torchrun: the other ranks only shared the embedding work
        return DocidTable(doc_ids, built.tokens)

    tokens, dedup_info = deduplicate(doc_ids, built, args.dedup)
    table = DocidTable(doc_ids, tokens)
    collisions = table.collisions()
    log.info("%s docids: %d documents, %d distinct, %d colliding groups (%d documents)%s", args.encoding,
             len(table), collisions["distinct_docids"], collisions["colliding_groups"],
             collisions["docs_in_collisions"], " after dedup" if args.dedup else "")
    collection_hash = manifest_hash(collection.path)
    with atomic_dir(args.out, args.overwrite) as tmp:
        table.save(tmp)
        for name, array in built.arrays.items():
            np.save(tmp / name, array)
        # add_doc_num: the new ids after vocab_offset (see table.py), dedup's extra tokens included
        table.manifest = write_manifest(
            tmp, "docids", counts={"docs": len(table), "distinct_docids": collisions["distinct_docids"]},
            config=as_dict(args), inputs={"collection": collection_hash},
            encoding=args.encoding, params=built.params, vocab_offset=target.vocab_offset,
            add_doc_num=built.new_tokens + dedup_info["extra_tokens"],
            max_docid_len=table.max_len, eos_token_id=target.eos_token_id, collection=collection_hash,
            tokenizer=target.identity, target_vocab=args.target_vocab, collisions=collisions, dedup=dedup_info)
    table.path = Path(args.out)
    log.info("docid table written to %s", args.out)
    return table


@entry_point
def main(argv=None):
    """Encode every document's docid: pq, rq, semantic (from document embeddings), tu (title + URL) or atomic."""
    (args,) = parse_args([DocidArguments], argv, prog="ddro docids", description=main.__doc__)
    run(args)


if __name__ == "__main__":
    main()
