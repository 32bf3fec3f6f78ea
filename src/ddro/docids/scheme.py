"""The docid scheme interface: everything the toolkit needs to know about one encoding.

A scheme is one module in this package defining a `Scheme` subclass and an instance of it,
`SCHEME`, listed in `schemes.py` (the registry `ENCODINGS` comes from). The rest of the
toolkit asks the scheme, never the encoding's name:

- `uses_tokenizer_ids`: the docid tokens are ids of the decoder's tokenizer (TU), not new
  ids from `vocab_offset`; such docids need `--tokenizer`, take no `--target-vocab own`
  and no `--vocab-offset`, keep a T5's tied head by default, and are rendered as text
  (decoded) when fed to the encoder as an enhanced docid;
- `ends_with_eos`: every docid ends with the target's EOS, which the model then learns
  and the evaluator scores; otherwise the trie adds its own, free end edge, and the
  scheme must keep its docids prefix-free (no docid is the start of another);
- `subspace_codebook`: `CODEBOOK` holds (M, K, d/M) sub-space centroids and token
  `vocab_offset + K*m + c` stands for centroid c of sub-space m (PQ): what
  `docid_init codebook` and the dense prior read;
- `build(args, collection, target, n_docs) -> Built`: the docids of a collection;
- `required_params` / `layout(params)`: how a docid of new tokens reads back as codes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar, Optional

import numpy as np

if TYPE_CHECKING:
    from ..data.collection import Collection
    from .build import DocidArguments, Target

# --target-vocab own: a decoder vocabulary of these specials, then the docid tokens (vocab_offset 3)
OWN_SPECIALS = {"pad": 0, "decoder_start": 1, "eos": 2}
# PQ's centroids, (M, K, d/M) float32: what each docid token stands for in the embedding space
# (a model may initialise its docid embeddings from them, or score with them: modeling/prior.py)
CODEBOOK = "codebook.npy"

Tokens = list[tuple[int, ...]]
Dedup = Callable[[Tokens], tuple[Tokens, dict]]


@dataclass
class Built:
    """What a scheme's `build` returns."""
    tokens: Tokens                 # one docid per document, in collection order
    new_tokens: int                # how many new ids the docids take after vocab_offset (0: tokenizer ids);
                                   # the manifest's `add_doc_num` (plus dedup's extra tokens)
    params: dict                   # the manifest's `params`
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # saved as <name> in the docid folder
    dedup: Optional[Dedup] = None  # makes colliding docids unique (--dedup); None: they cannot collide


class Scheme:
    name: ClassVar[str]
    summary: ClassVar[str]                     # one line for --encoding's help
    uses_tokenizer_ids: ClassVar[bool] = False
    ends_with_eos: ClassVar[bool] = False
    subspace_codebook: ClassVar[bool] = False
    required_params: ClassVar[tuple[str, ...]] = ()  # manifest params `layout` reads

    @property
    def allows_own_vocab(self) -> bool:
        """`--target-vocab own` gives docids of new tokens a decoder vocabulary of their own."""
        return not self.uses_tokenizer_ids

    def build(self, args: "DocidArguments", collection: "Collection", target: "Target", n_docs: int) -> Built:
        raise NotImplementedError

    def layout(self, params: dict) -> tuple[int, Optional[int]]:
        """(W, P): position m < P of a docid holds vocab_offset + W*m + code, later positions
        vocab_offset + W*P + code (P None: every position is banded)."""
        return 0, 0

    def codes(self, tokens: tuple[int, ...], vocab_offset: int, params: dict) -> list[int]:
        """A docid of new tokens as its per-position codes (what the enhanced-docid text shows)."""
        width, positions = self.layout(params)
        return [t - vocab_offset - width * (m if positions is None else min(m, positions))
                for m, t in enumerate(tokens)]


def document_vectors(args: "DocidArguments", collection: "Collection", check_dim=None):
    """The collection's document embeddings (float32, cached) with the embedder settings of `args`:
    one path, and one cache entry, for every scheme that quantizes embeddings."""
    from .embed import embed_collection

    return embed_collection(collection, args.embedder, args.embed_fields, args.embed_cache,
                            max_length=args.embed_max_length, batch_size=args.embed_batch_size,
                            device=args.device, check_dim=check_dim)
