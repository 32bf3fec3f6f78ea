"""Stage-1 passages: a document cut into title-headed chunks (the paper's "passage -> docid").

Following the DDRO/ULTRON recipe, each passage starts with the title and takes
consecutive sentences until the token budget is reached; the sentence that crosses the
budget is cut there (so are sentences longer than the budget) and the next passage
starts, again with the title, at the following sentence. At most `max_passages`
passages per document; a document without sentences gives one title-only passage.
"""
from __future__ import annotations

from typing import Sequence


def chunk_passages(title: Sequence[int], sentences: Sequence[Sequence[int]], budget: int,
                   max_passages: int = 10) -> list[list[int]]:
    """Content ids of each passage (special tokens are added by the caller), each <= `budget`."""
    if not sentences:
        return [list(title[:budget])] if title else []
    passages: list[list[int]] = []
    chunk = list(title)
    for i, sentence in enumerate(sentences):
        chunk += sentence
        if len(chunk) >= budget or i == len(sentences) - 1:
            passages.append(chunk[:budget])
            if len(passages) == max_passages:
                break
            chunk = list(title)
    return passages
