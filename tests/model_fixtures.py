"""Tiny models, tokenizers and docid folders written in the real formats, shared by the model tests."""
from __future__ import annotations

import torch

from ddro.docids.table import DocidTable
from ddro.manifest import write_manifest
from ddro.modeling import ModelArguments
from ddro.tokenizer import tokenizer_identity
from raw_fixtures import WORDS, t5_tokenizer

__all__ = ["WORDS", "t5_tokenizer", "tiny_pretrained_t5", "tiny_bert_encoder", "docid_folder", "DOCS", "small_args"]


def tiny_pretrained_t5(folder):
    """A random 1-layer T5 + tokenizer saved as if it were a downloaded pretrained model."""
    from transformers import T5Config, T5ForConditionalGeneration

    tok = t5_tokenizer(folder)
    torch.manual_seed(0)
    # vocab padded beyond the tokenizer, as t5-base (32,128 rows for 32,100 tokens)
    config = T5Config(vocab_size=len(tok) + 4, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    return tok


def tiny_bert_encoder(folder):
    """A random 2-layer BERT with the MiniLM WordPiece tokenizer (stands in for offline:minilm)."""
    from transformers import BertConfig, BertModel

    from ddro.tokenizer import load_tokenizer

    tok = load_tokenizer("offline:minilm")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return tok


def docid_folder(folder, doc_ids, *, encoding="pq", m=2, k=4, target_vocab="own", vocab_offset=3,
                 tokenizer=None, tokens=None, params=None, arrays=None, add_doc_num=None, extra_tokens=0):
    """A docid folder (docids.tsv + manifest kind 'docids') in the documented format; `arrays`:
    name -> numpy array saved beside it (e.g. codebook.npy), `params` the manifest's params."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    for name, array in (arrays or {}).items():
        np.save(folder / name, array)
    if tokens is None:  # PQ: token = offset + K*m + code, distinct codes per document
        tokens = [tuple(vocab_offset + k * j + (i // k ** j) % k for j in range(m)) for i in range(len(doc_ids))]
    table = DocidTable(list(doc_ids), [tuple(t) for t in tokens])
    table.save(folder)
    if add_doc_num is None:
        add_doc_num = k * m if encoding == "pq" else 0
    write_manifest(folder, "docids", encoding=encoding, params=params or {"M": m, "K": k},
                   vocab_offset=vocab_offset, add_doc_num=add_doc_num, max_docid_len=max(map(len, table.tokens)),
                   eos_token_id=None, collection=None,
                   tokenizer=tokenizer_identity(tokenizer) if tokenizer is not None else None,
                   target_vocab=target_vocab, collisions=table.collisions(),
                   dedup={"enabled": bool(extra_tokens), "extra_tokens": extra_tokens}, command=["test"])
    return DocidTable.load(folder)


DOCS = [f"d{i}" for i in range(6)]


def small_args(construction, path, **kw):
    extra = {"hidden_size": 32, "intermediate_size": 64, "encoder_layers": 1, "decoder_layers": 1,
             "num_heads": 2} if construction != "t5" else {}
    return ModelArguments(construction=construction, model_name_or_path=str(path), **{**extra, **kw})
