"""Atomic docids: one new vocabulary token per document, in collection order."""
from __future__ import annotations


def atomic_tokens(n_docs: int, vocab_offset: int) -> list[tuple[int, ...]]:
    """Document i -> (vocab_offset + i,): unique by construction, add_doc_num = n_docs."""
    return [(vocab_offset + i,) for i in range(n_docs)]
