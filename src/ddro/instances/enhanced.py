"""Stage-1 "enhanced docid" inputs: another docid encoding of the same document, as text.

The paper feeds the other encoding (PQ codes for a TU target, TU for a PQ target) to the
encoder. Here the encoder only knows its input tokenizer, so the other docid is rendered
as text and tokenized like any input:

- docids of tokenizer ids (tu) are decoded back to text, e.g. "cerebral white matter";
- docids of new tokens are the scheme's name, then the code of each position
  (`Scheme.codes`): pq "pq 12 255 3 ..." (code = id - offset - K*m, and a dedup token's index
  in its group when the table has one; rq alike), semantic "semantic 4 17 2" (cluster numbers, then
  the leaf index), atomic "atomic 1234" (the document's index).
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
    scheme = table.scheme
    if scheme.uses_tokenizer_ids:
        tokenizer = _tu_decoder(table, input_tokenizer)
        return lambda tokens: tokenizer.decode(list(tokens), skip_special_tokens=True).strip()
    offset = table.manifest.get("vocab_offset", 0)
    params = table.manifest.get("params") or {}
    if not set(scheme.required_params) <= params.keys():
        raise DDROError(f"{table.path}: {scheme.name.upper()} manifest params lack "
                        + "/".join(f"'{key}'" for key in scheme.required_params))
    return lambda tokens: f"{scheme.name} " + " ".join(map(str, scheme.codes(tokens, offset, params)))
