"""The docid table: document id -> docid token ids, bound to its collection and vocabulary.

On disk, a docid folder holds::

    docids.tsv      "<doc id>\t<comma-separated token ids>", one line per document,
                    in collection order
    manifest.json   kind "docids": encoding, params, vocab_offset, add_doc_num,
                    max_docid_len, eos_token_id, collection (its manifest sha256),
                    tokenizer (identity), collisions, dedup

Token ids are ids in the *decoder's* vocabulary. `vocab_offset` is the first id of the
new docid tokens and `add_doc_num` how many new ids they take after it (ids
vocab_offset ... vocab_offset + add_doc_num - 1: the scheme's `Built.new_tokens` plus
dedup's extra tokens; 0 for TU docids, which are tokenizer ids; the key keeps its name
for the tables already written), so a model that decodes this table needs at least
`vocab_offset + add_doc_num` output rows (`required_vocab`). `encoding` names the
scheme (`schemes.py`) that built the table.

Two documents may share a docid (PQ on a small corpus). The table keeps both: `groups`
maps each distinct docid to its documents in collection order, which is the order in
which the evaluator ranks them.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DDROError, InputError
from ..io import iter_lines
from ..manifest import MANIFEST, manifest_hash_or_none, read_manifest
from .scheme import Scheme
from .schemes import ENCODINGS, get_scheme

TABLE = "docids.tsv"


@dataclass
class DocidTable:
    doc_ids: list[str]
    tokens: list[tuple[int, ...]]
    manifest: dict = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self):
        self.by_doc = dict(zip(self.doc_ids, self.tokens))
        groups: dict[tuple[int, ...], list[str]] = defaultdict(list)
        for doc_id, toks in zip(self.doc_ids, self.tokens):
            groups[toks].append(doc_id)
        self.groups = dict(groups)

    def __len__(self) -> int:
        return len(self.doc_ids)

    @property
    def encoding(self) -> str:
        return self.manifest["encoding"]

    @property
    def scheme(self) -> Scheme:
        return get_scheme(self.encoding)

    @property
    def required_vocab(self) -> int:
        """Output rows a decoder needs: every docid token id must be below this."""
        return max(self.manifest["vocab_offset"] + self.manifest["add_doc_num"],
                   1 + max((max(t) for t in self.tokens if t), default=0))

    @property
    def max_len(self) -> int:
        return max(map(len, self.tokens))

    def collisions(self) -> dict:
        shared = [docs for docs in self.groups.values() if len(docs) > 1]
        return {"distinct_docids": len(self.groups), "colliding_groups": len(shared),
                "docs_in_collisions": sum(map(len, shared)),
                "largest_group": max(map(len, shared), default=1)}

    def save(self, folder: Path) -> None:
        with open(Path(folder) / TABLE, "w", encoding="utf-8") as f:
            for doc_id, toks in zip(self.doc_ids, self.tokens):
                f.write(f"{doc_id}\t{','.join(map(str, toks))}\n")

    @classmethod
    def load(cls, folder: str | Path) -> "DocidTable":
        folder = Path(folder)
        manifest = read_manifest(folder, "docids")
        for key in ("vocab_offset", "add_doc_num", "max_docid_len"):  # the checks below need them
            value = manifest.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(folder / MANIFEST, f"key '{key}' must be a non-negative integer, got {value!r}")
        if manifest.get("encoding") not in ENCODINGS:
            raise InputError(folder / MANIFEST, f"key 'encoding' must be one of {', '.join(ENCODINGS)}, "
                                                f"got {manifest.get('encoding')!r}")
        path = folder / TABLE
        doc_ids, tokens, seen = [], [], set()
        limit = manifest["vocab_offset"] + manifest["add_doc_num"]
        new_ids = bool(manifest["add_doc_num"]) and not get_scheme(manifest["encoding"]).uses_tokenizer_ids
        for lineno, line in iter_lines(path):
            cols = line.split("\t")
            if len(cols) != 2 or not cols[0] or not cols[1]:
                raise InputError(path, "expected '<doc id><TAB><comma-separated token ids>'", lineno)
            try:
                toks = tuple(int(t) for t in cols[1].split(","))
            except ValueError:
                raise InputError(path, f"token ids must be integers, got {cols[1]!r}", lineno) from None
            if min(toks) < 0 or (new_ids and max(toks) >= limit):
                raise InputError(path, f"token id out of range [0, {limit})", lineno)
            if len(toks) > manifest["max_docid_len"]:
                raise InputError(path, f"docid has {len(toks)} tokens, manifest says at most "
                                       f"{manifest['max_docid_len']}", lineno)
            if cols[0] in seen:
                raise InputError(path, f"document id {cols[0]!r} appears twice", lineno)
            seen.add(cols[0])
            doc_ids.append(cols[0])
            tokens.append(toks)
        return cls(doc_ids, tokens, manifest, folder)

    def check_collection(self, collection) -> None:
        """Refuse a table built for another collection (or another version of it), or not covering it."""
        check_built_for(self.path, self.manifest, collection)
        if set(self.doc_ids) != set(collection.doc_ids()):
            raise DDROError(f"{self.path}: docid table covers {len(self)} documents, "
                            f"{collection.path} has {len(collection)}; rebuild the docids")

    def check_vocab(self, rows: int, what: str = "model") -> None:
        """Refuse a decoder whose output vocabulary cannot hold every docid token."""
        if rows < self.required_vocab:
            raise DDROError(f"{what} has {rows:,} vocabulary rows, docid table {self.path} "
                            f"needs {self.required_vocab:,}")


def check_built_for(folder, manifest: dict, collection) -> None:
    """Refuse a docid folder whose manifest names another collection (or another version of it); reads
    the manifest only, so a check before mining need not parse the whole table."""
    want = manifest.get("collection")
    have = manifest_hash_or_none(collection.path)
    if want and have and want != have:
        raise DDROError(f"{folder}: docid table was built for another collection "
                        f"(manifest {want[:12]}), not {collection.path} ({have[:12]})")
