"""`ddro data nq`: Natural Questions -> NQ320k, following the NCI / DSI-QG construction.

Raw files (in --raw-dir, `.gz` or plain; see scripts/data/download_nq.sh):

    simplified-nq-train.jsonl   simplified format: `document_text` = tokens joined by spaces,
                                HTML tags included (307,373 lines)
    nq-dev-all.jsonl            full format: `document_tokens` [{token, html_token, ...}] and
                                `document_title` (7,830 lines)

Construction (NCI `Data_process/NQ_dataset/NQ_dataset_Process.ipynb`, also DDRO's
`NQ_dataset_processing.py`), per question line:
- page text = `document_text`, or the `document_tokens` joined by single spaces;
- title = `document_title` when the line has one (full format), otherwise the text between
  the first `<H1>` and the first `</H1>` (simplified format);
- abstract = the text between the first `<P>` and the first `</P>`;
- content = from after that first `</P>` up to the last `</Ul>`, or when two or more
  `</Ul>` exist up to the second-to-last one (so the last list, usually navigation, and
  all after it are dropped); HTML tags (`<[^<]+?>`) removed, newlines removed, spaces
  collapsed.
Documents are deduplicated by the *title key*: bert-base-uncased's `lower()` of the
reference, i.e. WordPiece-tokenize the raw title and decode the tokens again
(lowercased, accents stripped, punctuation split off, words outside the vocabulary
become `[UNK]`, then the tokenizer's old clean-up of spaces before `. , ? !` and around
`'`). `offline:minilm` has the same uncased vocabulary (30,522 pieces), so it is the
default; `--title-tokenizer bert-base-uncased` uses the original. The first line of a
title key (train file first, then dev) supplies the document; document ids are "0",
"1", ... in that order. Every train and dev question is kept (query id = `example_id`)
and judged relevant (score 1) to its page's document, in splits `train` and `dev`.

Our document: `title` = the title with tags stripped, `text` = abstract + content (the
reference concatenated title+abstract+content without separators and left the tags in
the abstract; we strip them), `url` = `document_url` when present.

Deviations, only where the reference crashes or misbehaves (none occur in the real
files, so the counts 109,739 / 307,373 / 7,830 are unaffected):
- a page without `<P>`: the reference reuses the previous line's paragraph end; we take
  the content from the start of the text (counted `pages_without_paragraph`);
- `<P>` without `</P>` or `<H1>` without `</H1>` (the reference raises): the unclosed
  part runs to the end of the text;
- a page whose title and text are both empty is not made a document; its question is
  dropped and counted (`questions_on_empty_page_dropped`), and a later line with the same
  title key may supply the document.
Malformed lines (bad JSON, missing or mistyped fields, repeated `example_id`) are
InputErrors naming the file and line: the reference has no skipping rule for them.

Memory stays bounded: both files are streamed line by line; new documents go to a spool
file next to --out (in order), and only questions and title keys stay in memory.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..config import as_dict, entry_point, parse_args
from ..errors import InputError
from ..io import atomic_dir, check_output, iter_jsonl
from .collection import Qrels, clean, write_collection
from .raw import raw_file, spool_beside

log = logging.getLogger(__name__)

SOURCE = "nq320k"
RAW = {"train": "simplified-nq-train.jsonl", "dev": "nq-dev-all.jsonl"}
TAG = re.compile(r"<[^<]+?>")
# transformers' historical `clean_up_tokenization` (applied by `decode` in the reference).
CLEAN_UP = [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
            (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")]


@dataclass
class NQArguments:
    raw_dir: str = field(metadata={"help": "folder with simplified-nq-train.jsonl(.gz) and nq-dev-all.jsonl(.gz)"})
    out: str = field(metadata={"help": "folder to write the collection to"})
    title_tokenizer: str = field(default="offline:minilm", metadata={
        "help": "bert-base-uncased-vocabulary tokenizer whose decode() keys the title deduplication"})
    sentences: bool = field(default=True, metadata={"help": "add Punkt sentence splits (`sents`)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --out"})


class TitleKey:
    """The reference's `lower(title)`: tokenize, then decode as the slow BertTokenizer did."""

    def __init__(self, tokenizer_name: str):
        from ..tokenizer import load_tokenizer

        self.tokenizer = load_tokenizer(tokenizer_name)
        self.cache: dict[str, str] = {}  # ~110k distinct titles: pages repeat across questions

    def __call__(self, title: str) -> str:
        key = self.cache.get(title)
        if key is None:
            key = " ".join(self.tokenizer.tokenize(title)).replace(" ##", "").strip()
            for old, new in CLEAN_UP:
                key = key.replace(old, new)
            self.cache[title] = key
        return key


def strip_tags(text: str) -> str:
    return clean(TAG.sub("", text).replace("\n", ""))


def between(text: str, start: str, end: str) -> tuple[str, int] | None:
    """Text between the first `start` and the first `end` (reference semantics), and where
    `end` finishes; an unclosed `start` runs to the end of the text. None without `start`."""
    begin = text.find(start)
    if begin == -1:
        return None
    stop = text.find(end)
    if stop == -1:
        stop = len(text)
    return text[begin + len(start):stop], stop + len(end)


def h1_title(text: str) -> str:
    """The simplified format's title: between the first `<H1>` and `</H1>` ("" without one)."""
    h1 = between(text, "<H1>", "</H1>")
    return h1[0] if h1 else ""


def parse_page(text: str, title: str, warnings: Counter) -> dict:
    """Title, abstract and content of one page, as the reference extracts them."""
    paragraph = between(text, "<P>", "</P>")
    if paragraph is None:
        warnings["pages_without_paragraph"] += 1
        abstract, content_start = "", 0
    else:
        abstract, content_start = paragraph
    if "</Ul>" in text:
        text = text[:text.rindex("</Ul>")]
        if "</Ul>" in text:
            text = text[:text.rindex("</Ul>")]
    return {"title": strip_tags(title),
            "text": clean(strip_tags(abstract) + " " + strip_tags(text[content_start:]))}


def _field(obj: dict, key: str, kind: type | tuple[type, ...], path: Path, lineno: int):
    value = obj.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise InputError(path, f"missing or mistyped field '{key}' (expected {names})", lineno)
    return value


def page_text(obj: dict, path: Path, lineno: int) -> str:
    """Simplified lines carry `document_text`; full-format lines carry `document_tokens`."""
    if "document_text" in obj:
        return _field(obj, "document_text", str, path, lineno)
    tokens = _field(obj, "document_tokens", list, path, lineno)
    try:
        return " ".join(t["token"] for t in tokens)
    except (TypeError, KeyError):
        raise InputError(path, "'document_tokens' must be a list of {token: ...} objects", lineno) from None


class NQBuilder:
    """One streaming pass over both files: documents to the spool, questions to memory."""

    def __init__(self, title_key: TitleKey, spool):
        self.title_key, self.spool = title_key, spool
        self.doc_of_key: dict[str, str] = {}
        self.queries: dict[str, str] = {}
        self.qrels: dict[str, Qrels] = {}
        self.warnings: Counter = Counter()

    def add_file(self, path: Path, split: str) -> None:
        judged = self.qrels.setdefault(split, {})
        for lineno, obj in tqdm(iter_jsonl(path), desc=f"nq {split}", unit=" questions", mininterval=5):
            qid = str(_field(obj, "example_id", (int, str), path, lineno)).strip()
            question = clean(_field(obj, "question_text", str, path, lineno))
            if not qid or any(c.isspace() for c in qid):
                raise InputError(path, f"invalid example_id {qid!r}", lineno)
            if not question:
                raise InputError(path, "empty 'question_text'", lineno)
            if qid in self.queries:
                raise InputError(path, f"repeated example_id {qid}", lineno)
            doc_id = self.document_for(obj, path, lineno)
            if doc_id is None:
                self.warnings["questions_on_empty_page_dropped"] += 1
                continue
            self.queries[qid] = question
            judged[qid] = {doc_id: 1}

    def document_for(self, obj: dict, path: Path, lineno: int) -> str | None:
        """The id of this line's page, making it a new document on first sight of its title key."""
        text = None
        if "document_title" in obj:
            title = _field(obj, "document_title", str, path, lineno)
        else:
            text = page_text(obj, path, lineno)
            title = h1_title(text)
        key = self.title_key(title)
        if key in self.doc_of_key:  # a known page: no need to parse it again
            return self.doc_of_key[key]
        page = parse_page(page_text(obj, path, lineno) if text is None else text, title, self.warnings)
        if not page["title"] and not page["text"]:
            return None
        doc_id = str(len(self.doc_of_key))
        self.doc_of_key[key] = doc_id
        doc = {"_id": doc_id, **page}
        url = obj.get("document_url")
        if isinstance(url, str) and url.strip():
            doc["url"] = url.strip()
        self.spool.add(doc)
        return doc_id


def run(args: NQArguments) -> dict:
    check_output(args.out, args.overwrite)
    paths = {split: raw_file(args.raw_dir, name) for split, name in RAW.items()}
    title_key = TitleKey(args.title_tokenizer)
    with spool_beside(args.out) as spool:
        builder = NQBuilder(title_key, spool)
        for split, path in paths.items():  # train first: its pages get the low ids
            builder.add_file(path, split)
        warnings = dict(sorted(builder.warnings.items()))
        for key, n in warnings.items():
            log.warning("%s: %d", key, n)
        log.info("%d documents, %s questions", len(spool),
                 {split: len(judged) for split, judged in builder.qrels.items()})
        with atomic_dir(args.out, args.overwrite) as tmp:
            manifest = write_collection(
                tmp, spool.read(list(spool.index)), builder.queries, builder.qrels, source=SOURCE,
                total_docs=len(spool), warnings=warnings, config=as_dict(args), sentences=args.sentences)
    log.info("collection written to %s", args.out)
    return manifest


@entry_point
def main(argv=None):
    """Build NQ320k (Natural Questions, NCI/DSI-QG construction) from the raw NQ files."""
    (args,) = parse_args([NQArguments], argv, prog="ddro data nq", description=main.__doc__)
    run(args)


if __name__ == "__main__":
    main()
