"""Atomic docids: one new vocabulary token per document, in collection order."""
from __future__ import annotations

from .scheme import Built, Scheme


def atomic_tokens(n_docs: int, vocab_offset: int) -> list[tuple[int, ...]]:
    """Document i -> (vocab_offset + i,): unique by construction, n_docs new tokens."""
    return [(vocab_offset + i,) for i in range(n_docs)]


class AtomicScheme(Scheme):
    name = "atomic"
    summary = "one new token per document"

    def build(self, args, collection, target, n_docs: int) -> Built:
        return Built(atomic_tokens(n_docs, target.vocab_offset), n_docs, {})


SCHEME = AtomicScheme()
