"""The DDRO authors' published formats: docid tables and test sets (Hugging Face `kiyam/ddro-*`).

Docid table (`pq_msmarco_docids.txt`, `tu_nq_docids.txt`, ...): one line per document::

    [d123]<TAB>32128,32540,...        doc id (usually in brackets, lowercased), T5 token ids

PQ tokens are `vocab_size + 256*m + code` (M=24), atomic ones `vocab_size + index`, TU ones
T5 tokenizer ids ending with EOS 1; the NQ tables written from `model.generate` output also
carry pad/decoder-start 0s (and 1s), which the authors' NQ loader drops. So here every 0 and
1 is dropped and a TU docid gets back exactly one EOS; PQ/atomic docids never contain them.

Test set (`query_dev.t5_128_1.pq.top_300k.json`, ...): JSONL, one line per (query, relevant
document) pair::

    {"input_ids": [...query tokens..., 1], "query_id": "[d123]", "doc_id": "32128,32540,..."}

Despite its name, `query_id` is the *relevant document* (the authors' evaluator scores each
line with truth = query_id) and `doc_id` is that document's docid tokens; the file has no
query ids. Lines with identical `input_ids` are one query (a query with several relevant
documents has several lines, not necessarily adjacent); it is named `q<first line number>`.
A list of documents in `query_id` (with a parallel list in `doc_id`) is accepted too.

Doc ids on both sides are normalized as the authors' code does (surrounding brackets
dropped, lowercased; MS MARCO `[D123]` and NQ `123`/`[123]` meet as `d123`/`123`), and
whitespace becomes `_` so that the ids fit a TREC run file.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from ..docids.schemes import get_scheme
from ..docids.table import DocidTable
from ..errors import DDROError, InputError
from ..io import iter_jsonl, iter_lines

log = logging.getLogger(__name__)

PAD, EOS = 0, 1  # T5: pad = decoder start, </s>


def normalize_doc_id(raw: str) -> str:
    doc = raw.strip()
    if doc.startswith("[") and doc.endswith("]"):
        doc = doc[1:-1].strip()
    return re.sub(r"\s+", "_", doc.lower())


def parse_tokens(text: str) -> list[int]:
    """Comma-separated token ids; ValueError when malformed."""
    toks = [int(t) for t in text.split(",")]
    if any(t < 0 for t in toks):
        raise ValueError("negative token id")
    return toks


def _clean(toks: list[int], ends_with_eos: bool) -> tuple[int, ...]:
    core = tuple(t for t in toks if t not in (PAD, EOS))
    return (*core, EOS) if ends_with_eos and core else core


def guess_encoding(name: str, raw: list[list[int]]) -> str:
    """From the file name (pq_/tu_/url/atomic), else from the tokens: 0/1 inside -> TU
    (tokenizer ids with EOS), one token -> atomic, one fixed length -> PQ."""
    words = set(re.split(r"[^a-z]+", name.lower()))
    for encoding, names in (("pq", {"pq"}), ("atomic", {"atomic"}), ("tu", {"tu", "url", "title"})):
        if words & names:
            return encoding
    if any(t in (PAD, EOS) for toks in raw for t in toks):
        return "tu"
    lengths = {len(t) for t in raw}
    return "atomic" if lengths == {1} else "pq" if len(lengths) == 1 else "tu"


def pq_layout(tokens: list[tuple[int, ...]]) -> tuple[int, int] | None:
    """(offset, K) of PQ tokens `offset + K*m + code`: the smallest power of two K for which
    one offset puts every column m in its band [offset + K*m, offset + K*(m+1)), and the largest
    such offset (the authors use K=256 and offset = the T5 vocabulary size); None when none fits."""
    cols = [(min(c), max(c)) for c in zip(*tokens)]
    for k in (2 ** e for e in range(1, 17)):
        low = max(hi - k * (m + 1) + 1 for m, (_, hi) in enumerate(cols))
        high = min(lo - k * m for m, (lo, _) in enumerate(cols))
        if low <= high:
            return high, k
    return None


def read_published_docids(path: str | Path) -> DocidTable:
    """A published docid table file -> DocidTable with a synthesized in-memory manifest."""
    path = Path(path)
    doc_ids, raw, seen = [], [], {}
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 2 or not cols[0].strip() or not cols[1].strip():
            raise InputError(path, "expected '<doc id><TAB><comma-separated token ids>'", lineno)
        doc = normalize_doc_id(cols[0])
        if not doc:
            raise InputError(path, f"empty document id {cols[0]!r}", lineno)
        if doc in seen:
            raise InputError(path, f"document id {cols[0]!r} appears twice (first on line {seen[doc]})", lineno)
        try:
            toks = parse_tokens(cols[1])
        except ValueError:
            raise InputError(path, f"token ids must be non-negative integers, got {cols[1][:80]!r}", lineno) from None
        seen[doc] = lineno
        doc_ids.append(doc)
        raw.append(toks)
    if not doc_ids:
        raise InputError(path, "no docids")
    encoding = guess_encoding(path.name, raw)
    scheme = get_scheme(encoding)
    tokens = [_clean(t, scheme.ends_with_eos) for t in raw]
    for toks, doc in zip(tokens, doc_ids):
        if not toks:
            raise InputError(path, f"docid of {doc} has only pad/eos tokens", seen[doc])
    lengths = {len(t) for t in tokens}
    if encoding == "pq" and len(lengths) != 1:
        raise InputError(path, f"PQ docids must all have the same length, found lengths {sorted(lengths)[:5]}")
    if encoding == "atomic" and lengths != {1}:
        raise InputError(path, "atomic docids must be single tokens")
    new = [t for toks in tokens for t in toks] if not scheme.uses_tokenizer_ids else []
    offset = min(new, default=0)
    add = max(new) + 1 - offset if new else 0
    params = {}
    if encoding == "pq":
        params = {"M": len(tokens[0])}
        layout = pq_layout(tokens)
        if layout is not None:
            offset, params["K"] = layout
            add = params["K"] * len(tokens[0])
    table = DocidTable(doc_ids, tokens, path=path)
    table.manifest = {
        "kind": "docids", "encoding": encoding, "params": params, "vocab_offset": offset, "add_doc_num": add,
        "max_docid_len": max(lengths), "eos_token_id": EOS if scheme.ends_with_eos else None,
        "collection": None, "tokenizer": None, "target_vocab": "tokenizer",
        "collisions": table.collisions(), "dedup": {"enabled": False, "extra_tokens": 0},
        "source": {"format": "ddro-reference", "file": path.name},
    }
    log.info("%s: %d %s docids (%d distinct), guessed from the published format",
             path.name, len(table), encoding, len(table.groups))
    return table


def is_published_test_file(path: str | Path) -> bool:
    """True when the first record is in the published layout (no `relevant`, a `doc_id`)."""
    for _, obj in iter_jsonl(path):
        return "relevant" not in obj and "doc_id" in obj
    return False


def _as_list(value) -> list | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


def read_published_queries(path: str | Path, table: DocidTable | None = None,
                           max_queries: int | None = None) -> list[dict]:
    """Published test JSONL -> our eval queries {query_id, input_ids, relevant}, one per query."""
    path = Path(path)
    by_input: dict[tuple[int, ...], dict] = {}
    ends_with_eos = table is not None and table.scheme.ends_with_eos
    missing = mismatched = total = 0
    first_mismatch = None
    for lineno, obj in iter_jsonl(path):
        ids = obj.get("input_ids")
        if not isinstance(ids, list) or not ids or not all(type(t) is int and t >= 0 for t in ids):
            raise InputError(path, "'input_ids' must be a non-empty list of token ids", lineno)
        docs = _as_list(obj.get("query_id"))
        if docs is None:
            raise InputError(path, "'query_id' (the relevant document) must be a string or a list of strings",
                             lineno)
        codes = _as_list(obj["doc_id"]) if "doc_id" in obj else [None] * len(docs)
        if codes is None or len(codes) != len(docs):
            raise InputError(path, "'doc_id' must be the relevant document's docid tokens "
                                   "(a string, or a list as long as 'query_id')", lineno)
        query = by_input.setdefault(tuple(ids), {"query_id": f"q{lineno}", "input_ids": ids, "relevant": {}})
        for raw_doc, code in zip(docs, codes):
            doc = normalize_doc_id(raw_doc)
            if not doc:
                raise InputError(path, "empty document id in 'query_id'", lineno)
            if code is not None:
                try:
                    toks = parse_tokens(code)
                except ValueError:
                    raise InputError(path, f"'doc_id' must be comma-separated token ids, got {code[:80]!r}",
                                     lineno) from None
            query["relevant"][doc] = 1
            total += 1
            if table is None:
                continue
            if doc not in table.by_doc:
                missing += 1
            elif code is not None and _clean(toks, ends_with_eos) != table.by_doc[doc]:
                mismatched += 1
                first_mismatch = first_mismatch or lineno
    queries = list(by_input.values())
    if not queries:
        raise InputError(path, "no queries")
    pairs = sum(len(q["relevant"]) for q in queries)
    if table is not None:
        if missing == total:
            raise DDROError(f"{path}: none of its {pairs} relevant documents is in the docid table {table.path}; "
                            "use the test set published with that table")
        if missing:
            log.warning("%s: %d of %d (query, document) pairs name a document that is not in the docid table "
                        "(it cannot be retrieved)", path, missing, total)
        if mismatched:
            log.warning("%s: %d relevant documents have other docid tokens than in the table (first: line %d); "
                        "the test set may belong to another docid table", path, mismatched, first_mismatch)
    log.info("%s: %d queries from %d (query, document) pairs", path.name, len(queries), pairs)
    return queries[:max_queries] if max_queries is not None else queries
