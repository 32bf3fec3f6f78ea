"""Stage-1 "enhanced docid" inputs: another docid encoding of the same document, as text.

The paper feeds the other encoding (PQ codes for a TU target, TU for a PQ target) to the
encoder. Here the encoder only knows its input tokenizer, so the other docid is rendered
as text and tokenized like any input:

- tu: its tokens are decoded back to text (they are tokenizer ids), e.g. "cerebral white matter";
- pq: "pq" then the code of each position, e.g. "pq 12 255 3 ..." (code = id - offset - K*m),
  and a dedup token's index in its group when the table has one;
- atomic: "atomic" then the document's index, e.g. "atomic 1234".
"""
from __future__ import annotations

from typing import Callable

from ..docids.table import DocidTable
from ..errors import DDROError
from ..tokenizer import check_tokenizer, load_tokenizer, tokenizer_identity


def _tu_decoder(table: DocidTable, input_tokenizer):
    """The tokenizer the TU docids were made with: the input one when the vocabularies match."""
    expected = table.manifest.get("tokenizer") or {}
    if not expected or expected.get("vocab_sha256") == tokenizer_identity(input_tokenizer)["vocab_sha256"]:
        return input_tokenizer
    if not expected.get("name"):
        raise DDROError(f"{table.path}: TU docids do not name their tokenizer; cannot decode them")
    tokenizer = load_tokenizer(expected["name"])
    check_tokenizer(expected, tokenizer, f"TU docid table {table.path}")
    return tokenizer


def docid_renderer(table: DocidTable, input_tokenizer) -> Callable[[tuple[int, ...]], str]:
    """A function from one docid's token ids (as in `table`) to the text fed to the encoder."""
    offset = table.manifest.get("vocab_offset", 0)
    if table.encoding == "tu":
        tokenizer = _tu_decoder(table, input_tokenizer)
        return lambda tokens: tokenizer.decode(list(tokens), skip_special_tokens=True).strip()
    if table.encoding == "pq":
        params = table.manifest.get("params") or {}
        if not {"subspaces", "centroids"} <= params.keys():
            raise DDROError(f"{table.path}: PQ manifest params lack 'subspaces'/'centroids'")
        positions, codebook = params["subspaces"], params["centroids"]
        # position m < M holds offset + K*m + code; a dedup token after them, offset + K*M + j
        return lambda tokens: "pq " + " ".join(str(t - offset - codebook * min(m, positions))
                                               for m, t in enumerate(tokens))
    return lambda tokens: "atomic " + " ".join(str(t - offset) for t in tokens)
