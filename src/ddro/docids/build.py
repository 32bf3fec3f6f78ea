"""`ddro docids`: give every document of a collection its docid (pq, tu or atomic).

Writes a docid folder (`docids.tsv` + manifest kind "docids", see `table.py`). Token ids
are ids in the decoder's vocabulary, which is either

* `--target-vocab tokenizer` (default): the vocabulary of `--tokenizer` (e.g. T5's).
  PQ and atomic tokens extend it from `vocab_offset` = len(tokenizer); TU docids are
  the tokenizer's own ids, ended by its EOS.
* `--target-vocab own`: a decoder with its own small vocabulary (pad 0,
  decoder_start 1, eos 2), docid tokens from `vocab_offset` = 3; pq and atomic only.

Documents that share a docid are all kept (the manifest counts the collisions);
`--dedup` makes every docid unique instead (see `pq.dedup_pq` and `tu.dedup_tu`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from typing import Optional

from ..config import as_dict, entry_point, parse_args
from ..data.collection import Collection
from ..distributed import is_main_process
from ..errors import DDROError
from ..io import atomic_dir, check_output
from ..manifest import manifest_hash, write_manifest
from ..tokenizer import OFFLINE_MINILM, load_tokenizer, tokenizer_identity
from .atomic import atomic_tokens
from .pq import AUTO_MAX_BITS, AUTO_MIN_POINTS_PER_CENTROID, int_or_auto
from .table import ENCODINGS, DocidTable
from .tu import eos_id

log = logging.getLogger(__name__)

TARGETS = ("tokenizer", "own")
OWN_SPECIALS = {"pad": 0, "decoder_start": 1, "eos": 2}  # --target-vocab own: ids below the docid tokens
OWN_EOS = OWN_SPECIALS["eos"]


@dataclass
class DocidArguments:
    collection: str = field(metadata={"help": "collection folder (imported by `ddro data ...`, with a manifest)"})
    encoding: str = field(metadata={"help": f"docid encoding: {', '.join(ENCODINGS)}"})
    out: str = field(metadata={"help": "folder to write the docid table to"})
    tokenizer: Optional[str] = field(default=None, metadata={
        "help": "the decoder's tokenizer (folder, hub name or offline:minilm): TU docids are its ids, "
                "PQ/atomic tokens extend its vocabulary; not used with --target-vocab own"})
    target_vocab: str = field(default="tokenizer", metadata={
        "help": "tokenizer: docid ids live in --tokenizer's vocabulary; own: a decoder with its own "
                "vocabulary (pad 0, decoder_start 1, eos 2, docid tokens from 3; pq/atomic only)"})
    vocab_offset: Optional[int] = field(default=None, metadata={
        "help": "first id of the new docid tokens (pq/atomic); unset: len(tokenizer), or 3 with "
                "--target-vocab own"})
    dedup: bool = field(default=False, metadata={
        "help": "make every docid unique (pq: one extra position token per colliding document; "
                "tu: a number before EOS); default keeps collisions and reports them"})
    seed: int = field(default=42, metadata={"help": "seed of the PQ k-means"})
    pq_subspaces: int = field(default=24, metadata={"help": "PQ: number of sub-spaces M (docid length); "
                                                            "must divide the embedding dimension"})
    pq_bits: int_or_auto = field(default=8, metadata={
        "help": "PQ: bits per code; K = 2^bits centroids per sub-space (needs at least K documents); auto: the "
                f"largest bits <= {AUTO_MAX_BITS} leaving >= {AUTO_MIN_POINTS_PER_CENTROID} documents per centroid "
                "(what was chosen and why is in the manifest)"})
    embedder: str = field(default=OFFLINE_MINILM, metadata={
        "help": "PQ: sentence-transformers model (folder, hub name, or offline:minilm; the paper "
                "uses sentence-transformers/gtr-t5-base)"})
    embed_fields: list[str] = field(default_factory=lambda: ["title", "text"], metadata={
        "help": "PQ: document fields embedded, joined by a space"})
    embed_max_length: Optional[int] = field(default=None, metadata={
        "help": "PQ: max tokens the embedder reads; unset: the model's own"})
    embed_batch_size: int = field(default=64, metadata={"help": "PQ: documents per embedding batch"})
    embed_cache: str = field(default="resources/cache/embeddings", metadata={
        "help": "PQ: folder caching embeddings (keyed by model, collection and fields)"})
    device: Optional[str] = field(default=None, metadata={"help": "PQ: device for the embedder; unset: "
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


def resolve_target(args: DocidArguments) -> Target:
    if args.target_vocab not in TARGETS:
        raise DDROError(f"unknown --target-vocab '{args.target_vocab}' (choose from {', '.join(TARGETS)})")
    if args.target_vocab == "own":
        if args.encoding == "tu":
            raise DDROError("TU docids are the tokenizer's own token ids: use --target-vocab tokenizer "
                            "with --tokenizer")
        if args.tokenizer:
            raise DDROError("--target-vocab own does not use a tokenizer; drop --tokenizer")
        offset = len(OWN_SPECIALS) if args.vocab_offset is None else args.vocab_offset
        if offset < len(OWN_SPECIALS):
            raise DDROError(f"--vocab-offset {offset} overlaps the own vocabulary's special ids "
                            f"{OWN_SPECIALS}; use >= {len(OWN_SPECIALS)}")
        return Target(offset, OWN_EOS)
    if not args.tokenizer:
        if args.encoding == "tu":
            raise DDROError("TU docids need --tokenizer (the decoder's tokenizer, e.g. t5-base)")
        raise DDROError(f"{args.encoding} docids need --tokenizer (whose vocabulary they extend) "
                        "or --target-vocab own")
    tok = load_tokenizer(args.tokenizer)
    size = len(tok)
    eos = eos_id(tok)
    if args.encoding == "tu":
        if args.vocab_offset is not None:
            raise DDROError("--vocab-offset does not apply to TU docids (they use the tokenizer's own ids)")
        if eos is None:
            raise DDROError(f"tokenizer {args.tokenizer!r} has neither an EOS nor a SEP token to end TU docids")
        offset = size
    else:
        offset = size if args.vocab_offset is None else args.vocab_offset
        if offset < size:
            raise DDROError(f"--vocab-offset {offset} would reuse ids of the tokenizer's {size} tokens; "
                            f"use >= {size}")
    return Target(offset, eos, tok, tokenizer_identity(tok, args.tokenizer))


def build_pq(args: DocidArguments, collection: Collection, target: Target, n_docs: int):
    from .embed import embed_collection
    from .pq import check_pq, dedup_pq, pq_codes, pq_tokens, resolve_pq_bits

    bits, why = resolve_pq_bits(args.pq_bits, n_docs)
    check_pq(n_docs, None, args.pq_subspaces, bits)
    vectors, embedding = embed_collection(
        collection, args.embedder, args.embed_fields, args.embed_cache, max_length=args.embed_max_length,
        batch_size=args.embed_batch_size, device=args.device,
        check_dim=lambda dim: check_pq(n_docs, dim, args.pq_subspaces, bits))
    log.info("PQ: training %d sub-spaces x %d centroids on %d documents%s", args.pq_subspaces, 1 << bits, n_docs,
             f" (--pq-bits auto: {why})" if args.pq_bits == "auto" else "")
    codes, centroids = pq_codes(vectors, args.pq_subspaces, bits, args.seed)
    tokens = pq_tokens(codes, target.vocab_offset, bits)
    n_new = args.pq_subspaces << bits
    params = {"subspaces": args.pq_subspaces, "bits": bits, "centroids": 1 << bits,
              "seed": args.seed, "embedding": embedding}
    if args.pq_bits == "auto":
        params["bits_auto"] = why
    params["codebook"] = CODEBOOK
    return tokens, n_new, params, lambda toks: dedup_pq(toks, target.vocab_offset + n_new), {CODEBOOK: centroids}


def build_tu(args: DocidArguments, collection: Collection, target: Target, n_docs: int):
    from tqdm.auto import tqdm

    from .tu import dedup_tu, encode_tu, tu_string

    if args.tu_max_tokens < 1:
        raise DDROError(f"--tu-max-tokens must be >= 1, got {args.tu_max_tokens}")
    strings, sources = [], {"url": 0, "title": 0, "text": 0}
    for doc in tqdm(collection.iter_docs(), total=n_docs, desc="tu", unit="doc", mininterval=2):
        strings.append(tu_string(doc["title"], doc.get("url"), doc["text"]))
        sources["url" if doc.get("url") else "title" if doc["title"].strip() else "text"] += 1
    tokens = encode_tu(strings, target.tokenizer, args.tu_max_tokens, target.eos_token_id)
    params = {"max_tokens": args.tu_max_tokens, "named_by": sources}
    return tokens, 0, params, lambda toks: dedup_tu(toks, target.tokenizer, args.tu_max_tokens), {}


def build_atomic(args: DocidArguments, collection: Collection, target: Target, n_docs: int):
    return atomic_tokens(n_docs, target.vocab_offset), n_docs, {}, None, {}


# PQ's centroids, (M, K, d/M) float32: what each docid token stands for in the embedding
# space (a model may initialise its docid embeddings from them).
CODEBOOK = "codebook.npy"

BUILDERS = {"pq": build_pq, "tu": build_tu, "atomic": build_atomic}


def run(args: DocidArguments) -> DocidTable:
    if args.encoding not in ENCODINGS:
        raise DDROError(f"unknown --encoding '{args.encoding}' (choose from {', '.join(ENCODINGS)})")
    collection = Collection(args.collection)
    if collection.manifest is None:
        raise DDROError(f"{collection.path}: no manifest.json; import the collection first "
                        f"(ddro data beir --path {collection.path} --out FOLDER)")
    check_output(args.out, args.overwrite)
    target = resolve_target(args)
    doc_ids = collection.doc_ids()
    tokens, add_doc_num, params, dedup, arrays = BUILDERS[args.encoding](args, collection, target, len(doc_ids))
    if not is_main_process():  # torchrun: the other ranks only shared the embedding work
        return DocidTable(doc_ids, tokens)

    before = DocidTable(doc_ids, tokens).collisions()
    dedup_info: dict = {"enabled": args.dedup, "extra_tokens": 0}
    if args.dedup:
        dedup_info["collisions_before"] = before
        if before["colliding_groups"] and dedup is not None:
            tokens, info = dedup(tokens)
            dedup_info.update(info)
            add_doc_num += info["extra_tokens"]
        else:
            dedup_info.update(method="nothing to resolve", groups_resolved=0, docs_changed=0)
    table = DocidTable(doc_ids, tokens)
    collisions = table.collisions()
    log.info("%s docids: %d documents, %d distinct, %d colliding groups (%d documents)%s", args.encoding,
             len(table), collisions["distinct_docids"], collisions["colliding_groups"],
             collisions["docs_in_collisions"], " after dedup" if args.dedup else "")
    collection_hash = manifest_hash(collection.path)
    with atomic_dir(args.out, args.overwrite) as tmp:
        table.save(tmp)
        for name, array in arrays.items():
            np.save(tmp / name, array)
        table.manifest = write_manifest(
            tmp, "docids", counts={"docs": len(table), "distinct_docids": collisions["distinct_docids"]},
            config=as_dict(args), inputs={"collection": collection_hash},
            encoding=args.encoding, params=params, vocab_offset=target.vocab_offset, add_doc_num=add_doc_num,
            max_docid_len=table.max_len, eos_token_id=target.eos_token_id, collection=collection_hash,
            tokenizer=target.identity, target_vocab=args.target_vocab, collisions=collisions, dedup=dedup_info)
    table.path = Path(args.out)
    log.info("docid table written to %s", args.out)
    return table


@entry_point
def main(argv=None):
    """Encode every document's docid: pq (quantized embeddings), tu (title + URL) or atomic."""
    (args,) = parse_args([DocidArguments], argv, prog="ddro docids", description=main.__doc__)
    run(args)


if __name__ == "__main__":
    main()
