"""Title + URL (TU) docids: a short readable string, tokenized with the model's own tokenizer.

The string rule follows the DDRO/Ultron code for MS MARCO: the URL is lowercased, its
scheme dropped and its punctuation turned into spaces; its path segments are read in
reverse (most specific first) and digits are removed from them. A document whose title
has at most two words is named by "reversed path + domain", any other by
"title + domain". Collections without URLs (BEIR) use the title, or the start of the
text when the title is empty. The whole string is lowercased.
"""
from __future__ import annotations

import functools
import re

from ..errors import DDROError
from .scheme import Built, Scheme

TEXT_WORDS = 64          # words of the body used when a document has neither URL nor title
_URL_PUNCT = re.compile(r"[-_?=+&#]")
_URL_SUFFIX = re.compile(r"\.(html?|php|aspx?|jsp)(?=/|$)")
_DIGITS = re.compile(r"\d")


def _squash(text: str) -> str:
    return " ".join(text.split())


def tu_string(title: str, url: str | None = None, text: str = "") -> str:
    """The TU docid string of one document (pure; see the module doc for the rule)."""
    title = _squash(title.lower())
    if not url or not url.strip():
        return title or _squash(" ".join(text.lower().split()[:TEXT_WORDS]))
    url = re.sub(r"^[a-z][a-z0-9+.-]*://", "", url.strip().lower())
    url = _URL_PUNCT.sub(" ", _URL_SUFFIX.sub("", url))
    domain, *path = url.split("/")
    reversed_path = _squash(_DIGITS.sub("", " ".join(reversed(path))))
    head = reversed_path if len(title.split()) <= 2 else title
    return _squash(f"{head} {domain.strip()}")


def eos_id(tokenizer) -> int | None:
    """The id that ends a TU docid: EOS, or [SEP] for BERT-like tokenizers without one."""
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id


def encode_tu(strings: list[str], tokenizer, max_tokens: int, eos: int) -> list[tuple[int, ...]]:
    """Token ids (no special tokens) cut to `max_tokens`, then EOS."""
    ids = tokenizer(strings, add_special_tokens=False)["input_ids"]
    return [tuple(t[:max_tokens]) + (eos,) for t in ids]


def dedup_tu(tokens: list[tuple[int, ...]], tokenizer, max_tokens: int) -> tuple[list[tuple[int, ...]], dict]:
    """Make TU docids unique with a readable number: "title", "title 2", "title 3", ...

    In each group of documents sharing a docid, the first (collection order) keeps it; each
    later one gets the tokens of " n" before EOS, n the smallest number >= 2 whose docid is
    not yet taken by any document (so a real "title 2" elsewhere is never duplicated). The
    base is cut so the docid stays within `max_tokens` + EOS. EOS ends every TU docid, so
    no docid is a prefix of another; no new vocabulary ids are needed.
    """
    number_ids = functools.lru_cache(maxsize=None)(
        lambda n: tuple(tokenizer(f" {n}", add_special_tokens=False)["input_ids"]))
    taken = set(tokens)
    next_number: dict[tuple[int, ...], int] = {}  # per shared docid: where the search resumes
    out, changed = [], 0
    for toks in tokens:
        if toks not in next_number:
            next_number[toks] = 2
            out.append(toks)
            continue
        base, eos = toks[:-1], toks[-1]
        n = next_number[toks]
        while True:
            suffix = number_ids(n)
            candidate = base[:max_tokens - len(suffix)] + suffix + (eos,)
            n += 1
            if candidate not in taken:
                break
        next_number[toks] = n
        taken.add(candidate)
        out.append(candidate)
        changed += 1
    groups = sum(n > 2 for n in next_number.values())
    return out, {"method": "number suffix before EOS", "groups_resolved": groups,
                 "docs_changed": changed, "extra_tokens": 0}


def tu_strings(collection, n_docs: int) -> tuple[list[str], dict]:
    """Every document's TU string, and how many were named by their URL, title or text."""
    from tqdm.auto import tqdm

    strings, sources = [], {"url": 0, "title": 0, "text": 0}
    for doc in tqdm(collection.iter_docs(), total=n_docs, desc="tu", unit="doc", mininterval=2):
        strings.append(tu_string(doc["title"], doc.get("url"), doc["text"]))
        sources["url" if doc.get("url") else "title" if doc["title"].strip() else "text"] += 1
    return strings, sources


class TUScheme(Scheme):
    name = "tu"
    summary = "title + URL, the tokenizer's own ids ended by EOS"
    uses_tokenizer_ids = True
    ends_with_eos = True

    def build(self, args, collection, target, n_docs: int) -> Built:
        if args.tu_max_tokens < 1:
            raise DDROError(f"--tu-max-tokens must be >= 1, got {args.tu_max_tokens}")
        strings, sources = tu_strings(collection, n_docs)
        tokens = encode_tu(strings, target.tokenizer, args.tu_max_tokens, target.eos_token_id)
        params = {"max_tokens": args.tu_max_tokens, "named_by": sources}
        return Built(tokens, 0, params, dedup=functools.partial(
            dedup_tu, tokenizer=target.tokenizer, max_tokens=args.tu_max_tokens))


SCHEME = TUScheme()
