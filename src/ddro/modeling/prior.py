"""A dense prior in the docid logits: the generative retriever starts where its dense encoder is.

PQ docids are product-quantization codes of the embedding model's normalised document
vectors: code c of sub-space m is the centroid C_m[c] (`codebook.npy`, shape (M, K, d/M)).
When the construction's encoder *is* that embedding model, the inner product of a query
embedding q with a document's quantized vector splits over the docid positions:

    <q, x~(d)> = sum_m <q_m, C_m[code_m(d)]>

`DensePriorModel` adds tau * <q_m, C_m[k]> to the decoder's logit of token
`vocab_offset + K*m + k` at output position m (form "ip"), or tau * (<q_m, C_m[k]> -
||C_m[k]||^2 / 2) (form "l2": the sum is -tau/2 (||q - x~||^2 - ||q||^2), faiss's
asymmetric L2 distance up to a per-query constant). q is the encoder's last hidden state
mean-pooled over the attention mask and L2-normalised, as sentence-transformers pools
the documents. Log-softmax subtracts, at each position, a constant of (query, position)
only, so with learned logits at zero the summed docid log-probability ranks documents
exactly as asymmetric PQ scoring does; training learns corrections on top. Positions >= M
(dedup tokens, the end) and every other row get no prior.

The head starts at zero (weight and bias of every row: rows that are not docid tokens
would otherwise depend on the decoder's prefix and break the per-position constant), so
a model written before any training is the prior alone (`ddro model init`). The head is
untied from the decoder's input embeddings, which keep their own initialisation.

Checkpoints: config.json has model_type "ddro-dense-prior" (registered with the Auto
classes when `ddro.modeling` is imported) and the prior's settings; the codebook
(`prior_codebook`) and log tau (`prior_log_tau`, learnable) are weights.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch.nn import CrossEntropyLoss
from transformers import AutoConfig, AutoModelForSeq2SeqLM, EncoderDecoderConfig, EncoderDecoderModel

from ..docids.scheme import CODEBOOK
from ..docids.table import DocidTable
from ..errors import DDROError
from ..io import sha256_file
from ..tokenizer import resolve_model_path

PRIOR_FORMS = ("none", "ip", "l2")
MODEL_TYPE = "ddro-dense-prior"
EXTRA_BIAS = 30.0          # logit of the dedup tokens at position M: e^30 outweighs every other row at 0


@strict
class DensePriorConfig(EncoderDecoderConfig):
    """EncoderDecoderConfig + the prior's settings (the codebook itself is a weight)."""
    model_type = MODEL_TYPE
    dense_prior: str = "ip"
    prior_tau: float = 20.0
    prior_subspaces: int = 1
    prior_codes: int = 1
    prior_dim: int = 1
    prior_vocab_offset: int = 0
    prior_extra_tokens: int = 0   # dedup tokens (rows right after the M*K code rows), read at position M


class DensePriorModel(EncoderDecoderModel):
    """EncoderDecoderModel whose docid logits include the dense prior (see the module docstring)."""
    config_class = DensePriorConfig

    def __init__(self, config, encoder=None, decoder=None):
        super().__init__(config, encoder, decoder)
        m, k, dim = config.prior_subspaces, config.prior_codes, config.prior_dim
        if config.dense_prior not in PRIOR_FORMS[1:] or dim % m:
            raise DDROError(f"dense prior: form {config.dense_prior!r}, {m} sub-spaces of a {dim}-d embedding")
        self.register_buffer("prior_codebook", torch.zeros(m, k, dim // m))
        self.prior_log_tau = torch.nn.Parameter(torch.tensor(math.log(config.prior_tau)))

    @property
    def tau(self) -> torch.Tensor:
        return self.prior_log_tau.exp()

    def query_embedding(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Mean over the attention mask, L2-normalised (sentence-transformers' Pooling + Normalize)."""
        mask = torch.ones(hidden.shape[:2], device=hidden.device) if mask is None else mask
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return F.normalize(pooled.float(), p=2, dim=-1)

    def prior_scores(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, M, K): tau * <q_m, C_m[k]> (ip), minus tau * ||C_m[k]||^2 / 2 (l2)."""
        book = self.prior_codebook.float()
        q = self.query_embedding(hidden, mask).view(len(hidden), book.shape[0], book.shape[2])
        scores = torch.einsum("bmd,mkd->bmk", q, book)
        if self.config.dense_prior == "l2":
            scores = scores - 0.5 * book.pow(2).sum(-1)
        return self.tau * scores

    def prior_logits(self, scores: torch.Tensor, first: int, shape: torch.Size) -> torch.Tensor:
        """(B, T, V) additive logits: output position first + t < M gets scores[:, first + t] on its K rows;
        position M (where dedup docids carry their extra token) gets EXTRA_BIAS on the dedup rows."""
        batch, length, vocab = shape
        m, k = scores.shape[1:]
        pos = first + torch.arange(length, device=scores.device)
        at = pos.clamp(max=m - 1)
        values = scores[:, at] * (pos < m)[None, :, None]          # positions >= M: no prior
        rows = self.config.prior_vocab_offset + k * at[:, None] + torch.arange(k, device=scores.device)
        logits = scores.new_zeros(batch, length, vocab).scatter(-1, rows.expand(batch, length, k), values)
        extra = self.config.prior_extra_tokens
        if extra and bool((pos == m).any()):
            # With the head at zero, an unbiased dedup token would cost log V (every row equally likely);
            # the bias puts position M's mass on the dedup tokens, so a colliding docid pays about
            # log(extra_tokens) for its extra token instead, and training refines it.
            start = self.config.prior_vocab_offset + m * k
            logits[:, pos == m, start:start + extra] += EXTRA_BIAS
        return logits

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, encoder_outputs=None,
                cache=None, labels=None, **kwargs):
        cache = cache if cache is not None else kwargs.pop("past_key_values", None)
        # with a KV cache the decoder input is only the new token(s): they start after the cached ones
        # (read before the decoder appends this step)
        first = cache.get_seq_length() if cache is not None else 0
        if labels is not None and decoder_input_ids is None and kwargs.get("decoder_inputs_embeds") is None:
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
            kwargs.setdefault("decoder_attention_mask",
                              (decoder_input_ids != self.config.pad_token_id).to(decoder_input_ids.dtype))
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                              encoder_outputs=encoder_outputs, cache=cache, **kwargs)
        scores = self.prior_scores(out.encoder_last_hidden_state, attention_mask)
        out.logits = out.logits + self.prior_logits(scores, first, out.logits.shape).to(out.logits.dtype)
        if labels is not None:  # EncoderDecoderModel's own loss, on the logits with the prior
            out.loss = CrossEntropyLoss()(out.logits.reshape(-1, out.logits.shape[-1]), labels.reshape(-1))
        return out


AutoConfig.register(MODEL_TYPE, DensePriorConfig)
AutoModelForSeq2SeqLM.register(DensePriorConfig, DensePriorModel)


# ------------------------------------------------------------------------------- construction
def _same_model(a: str, b: str) -> bool:
    a, b = resolve_model_path(a), resolve_model_path(b)
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


def load_codebook(table: DocidTable, encoder_name: str, hidden_size: int) -> np.ndarray:
    """The table's (M, K, d/M) codebook, after checking it quantises this encoder's embeddings."""
    where = f"dense_prior: docid table {table.path}"
    if not table.scheme.subspace_codebook:
        raise DDROError(f"{where} has {table.encoding!r} docids; the dense prior needs PQ docids "
                        "(use dense_prior none)")
    params = table.manifest.get("params") or {}
    embedder = (params.get("embedding") or {}).get("model")
    if not embedder or not _same_model(embedder, encoder_name):
        raise DDROError(f"{where} quantises embeddings of {embedder!r}, not of this model's encoder "
                        f"{encoder_name!r}; build the docids with --embedder {encoder_name}")
    if (params.get("embedding") or {}).get("normalized") is False:
        raise DDROError(f"{where}: its embeddings are not normalised; the prior compares unit vectors")
    path = Path(table.path) / CODEBOOK
    if not path.is_file():
        raise DDROError(f"{where}: {path} is missing (rebuild the docids with this toolkit)")
    book = np.load(path, allow_pickle=False)
    m, k, dsub = book.shape
    if m * dsub != hidden_size:
        raise DDROError(f"{where}: codebook embeddings have {m * dsub} dimensions, the encoder's hidden size is "
                        f"{hidden_size}")
    if (params.get("subspaces"), params.get("centroids")) not in ((m, k), (None, None)):
        raise DDROError(f"{where}: manifest says {params.get('subspaces')} x {params.get('centroids')} codes, "
                        f"{CODEBOOK} has {m} x {k}")
    return book.astype(np.float32)


def prior_model(encoder, decoder, table: DocidTable, form: str, tau: float, encoder_name: str) -> DensePriorModel:
    """Join `encoder` and `decoder` into a DensePriorModel for `table` (head untied, at zero)."""
    if tau <= 0:
        raise DDROError(f"prior_tau must be > 0, got {tau}")
    book = load_codebook(table, encoder_name, encoder.config.hidden_size)
    config = DensePriorConfig.from_encoder_decoder_configs(
        encoder.config, decoder.config, dense_prior=form, prior_tau=float(tau), prior_subspaces=book.shape[0],
        prior_codes=book.shape[1], prior_dim=book.shape[0] * book.shape[2],
        prior_vocab_offset=table.manifest["vocab_offset"],
        prior_extra_tokens=int((table.manifest.get("dedup") or {}).get("extra_tokens", 0)))
    model = DensePriorModel(config=config, encoder=encoder, decoder=decoder)
    with torch.no_grad():
        model.prior_codebook.copy_(torch.from_numpy(book))
    return model


def zero_head(model) -> None:
    """Every output row (weight and bias) at zero: the zero-step model's logits are the prior alone."""
    head = model.get_output_embeddings()
    with torch.no_grad():
        head.weight.zero_()
        if head.bias is not None:
            head.bias.zero_()


def prior_info(model, table: DocidTable) -> dict:
    """What ddro_model.json records: the prior's settings and the codebook it was built from."""
    c = model.config
    embedding = (table.manifest.get("params") or {}).get("embedding") or {}
    return {"form": c.dense_prior, "tau": c.prior_tau, "subspaces": c.prior_subspaces, "codes": c.prior_codes,
            "codebook_sha256": sha256_file(Path(table.path) / CODEBOOK), "embedder": embedding.get("model"),
            # documents were embedded from their first this-many tokens; queries use their whole input
            "embed_max_seq_length": embedding.get("max_seq_length")}


def check_prior(model, info: dict, table: DocidTable | None, where) -> None:
    """A checkpoint recorded with a dense prior must load as one, for the codebook it was built from."""
    recorded = info.get("dense_prior")
    is_prior = isinstance(model, DensePriorModel)
    if recorded and not is_prior:
        raise DDROError(f"{where}: ddro_model.json records a dense prior, but config.json is a "
                        f"{type(model).__name__} (model_type {model.config.model_type!r}, not {MODEL_TYPE!r})")
    if is_prior and not recorded and not info.get("plain"):
        raise DDROError(f"{where}: config.json has a dense prior that ddro_model.json does not record")
    if recorded and table is not None and table.path is not None:
        path = Path(table.path) / CODEBOOK
        have = sha256_file(path) if path.is_file() else None
        if have != recorded.get("codebook_sha256"):
            raise DDROError(f"{where}: its dense prior was built from another codebook than {path}")
