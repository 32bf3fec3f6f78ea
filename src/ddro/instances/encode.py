"""Input-side tokenization: batched calls to a fast tokenizer, with its own special tokens.

Transformers 5 tokenizers no longer expose `build_inputs_with_special_tokens`, so the
special tokens a tokenizer adds around one sequence (T5: `</s>` after; BERT: `[CLS]`
before, `[SEP]` after) are found once by encoding a probe with and without them.
Content is tokenized without special tokens, cut to the length budget, then wrapped.
"""
from __future__ import annotations

from typing import Sequence

from ..errors import DDROError


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """(prefix, suffix): the ids the tokenizer puts before and after a single sequence."""
    probe = "a"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return full[:start], full[start + len(bare):]
    raise DDROError(f"cannot tell where tokenizer {tokenizer.name_or_path!r} puts its special tokens")


class InputEncoder:
    """Turns texts into encoder input ids: optional lowercasing, truncation, special tokens."""

    def __init__(self, tokenizer, lowercase: bool):
        self.tokenizer, self.lowercase = tokenizer, lowercase
        self.prefix, self.suffix = special_tokens(tokenizer)

    def budget(self, max_length: int) -> int:
        """How many content tokens fit in `max_length` once the special tokens are added."""
        room = max_length - len(self.prefix) - len(self.suffix)
        if room < 1:
            raise DDROError(f"max length {max_length} leaves no room for text "
                            f"after {len(self.prefix) + len(self.suffix)} special tokens")
        return room

    def pieces(self, texts: Sequence[str], max_tokens: int | None = None) -> list[list[int]]:
        """Content ids of each text (no special tokens), at most `max_tokens` each; one batched call."""
        if not texts:
            return []
        texts = [t.lower() if self.lowercase else t for t in texts]
        kwargs = {"truncation": True, "max_length": max_tokens} if max_tokens else {}
        return self.tokenizer(list(texts), add_special_tokens=False, verbose=False, **kwargs)["input_ids"]

    def wrap(self, ids: Sequence[int], max_length: int) -> list[int]:
        return [*self.prefix, *ids[:self.budget(max_length)], *self.suffix]

    def encode(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        """Full input ids (special tokens included, at most `max_length`) for each text."""
        budget = self.budget(max_length)
        return [self.wrap(ids, max_length) for ids in self.pieces(texts, budget)]
