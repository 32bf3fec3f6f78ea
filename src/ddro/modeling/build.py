"""Model constructions: an encoder-decoder that maps text to the docid tokens of a docid table.

Three constructions, chosen by `ModelArguments.construction`:

- `t5`: a pretrained T5 (Hub name or local folder) and its tokenizer. The shared embedding
  matrix and the output head grow to the docid table's `required_vocab` rows; the docid
  rows are initialised at random. `new_head` gives an untied output head (PQ docids, as
  the paper does), started as a copy of the tied one; otherwise the head stays tied (TU).
- `t5-scratch`: a randomly initialised T5 of the given sizes over a trained sentencepiece
  tokenizer folder (`ddro tokenizer train`).
- `minilm-decoder`: a pretrained encoder (default the packaged all-MiniLM-L6-v2 `BertModel`)
  joined by `EncoderDecoderModel` to a small random `BertLMHeadModel` decoder over the docid
  table's own vocabulary (pad 0, decoder start 1, eos 2, docid tokens from 3).

The two T5 constructions decode in the tokenizer's vocabulary (docid target_vocab
"tokenizer"), so the docid tokens must start right after the tokenizer's last id; the
decoder construction needs a table with target_vocab "own".
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..docids.scheme import CODEBOOK, OWN_SPECIALS
from ..docids.table import DocidTable
from ..errors import DDROError
from ..manifest import manifest_hash
from ..tokenizer import OFFLINE_MINILM, check_tokenizer, load_tokenizer, resolve_model_path, tokenizer_identity

log = logging.getLogger(__name__)

CONSTRUCTIONS = ("t5", "t5-scratch", "minilm-decoder")
OWN_VOCAB = OWN_SPECIALS  # minilm-decoder decodes the docid table's own vocabulary (target_vocab own)

# Per-construction defaults for the sizes left unset (None).
SIZE_DEFAULTS = {
    "t5-scratch": {"hidden_size": 256, "intermediate_size": 1024, "encoder_layers": 4, "decoder_layers": 4,
                   "num_heads": 4},
    "minilm-decoder": {"hidden_size": None, "intermediate_size": 1536, "decoder_layers": 3, "num_heads": 6},
}

# EncoderDecoderModel warns on every forward with labels about a change made in v4.12.
warnings.filterwarnings("ignore", message="Version v4.12.0 introduces a better way to train encoder-decoder")


@dataclass
class ModelArguments:
    construction: str = field(default="minilm-decoder", metadata={"help": f"one of {', '.join(CONSTRUCTIONS)}"})
    model_name_or_path: Optional[str] = field(default=None, metadata={
        "help": "t5: pretrained T5 (Hub name or folder, e.g. t5-base); t5-scratch: the sentencepiece tokenizer "
                f"folder; minilm-decoder: the encoder (default {OFFLINE_MINILM})"})
    new_head: Optional[bool] = field(default=None, metadata={
        "help": "T5 constructions: an untied output head; default: yes for docids of new tokens "
                "(pq, rq, semantic, atomic), no (the tied head) for docids of tokenizer ids (tu)"})
    hidden_size: Optional[int] = field(default=None, metadata={
        "help": "t5-scratch d_model (256) / decoder hidden size (default: the encoder's)"})
    intermediate_size: Optional[int] = field(default=None, metadata={
        "help": "t5-scratch d_ff (1024) / decoder feed-forward size (1536)"})
    encoder_layers: Optional[int] = field(default=None, metadata={"help": "t5-scratch encoder layers (4)"})
    decoder_layers: Optional[int] = field(default=None, metadata={
        "help": "decoder layers (t5-scratch 4, minilm-decoder 3)"})
    num_heads: Optional[int] = field(default=None, metadata={
        "help": "attention heads (t5-scratch 4, minilm-decoder decoder 6)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout of the randomly initialised parts"})
    freeze_encoder_embeddings: bool = field(default=False, metadata={
        "help": "do not train the encoder's word embeddings (minilm-decoder; saves optimizer time)"})
    docid_init: str = field(default="random", metadata={
        "help": "initial docid token embeddings: random, or codebook (PQ docids only: token (m, c) starts as "
                "centroid c of sub-space m, placed at that sub-space's dimensions; needs the model's hidden "
                "size to equal the embedding dimension the codebook was trained on)"})
    freeze_encoder: bool = field(default=False, metadata={
        "help": "do not train the encoder at all (a pretrained encoder: only the decoder learns, about "
                "3x faster per instance on CPU); weights it shares with the decoder still train"})
    dense_prior: str = field(default="none", metadata={
        "help": "minilm-decoder with PQ docids of its own encoder: add tau * <q_m, C_m[k]> (ip) or tau * "
                "(<q_m, C_m[k]> - |C_m[k]|^2/2) (l2) to docid position m's logits, q the pooled query "
                "embedding; the head starts at zero, so the untrained model ranks like asymmetric PQ (l2: faiss's "
                "L2 search; it beat ip at zero steps on SciFact and MedQuAD); or none"})
    prior_tau: float = field(default=200.0, metadata={
        "help": "dense_prior: initial temperature tau (learned). 200: the scale at which the prior alone "
                "gives the relevant docid the highest likelihood on SciFact and MedQuAD train queries "
                "(all-MiniLM-L6-v2, 8x256 PQ; benchmarks/prior_tau.py); at 20 the prior is nearly flat "
                "and SFT starts at a loss of log V"})


@dataclass
class BuiltModel:
    model: torch.nn.Module
    tokenizer: object  # the encoder's tokenizer (inputs); for T5 also the decoder's
    info: dict  # what `ddro_model.json` records


def output_rows(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


def sizes(args: ModelArguments) -> dict:
    """The resolved size arguments of a from-scratch part."""
    defaults = SIZE_DEFAULTS.get(args.construction, {})
    return {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()}


def _check_target_vocab(table: DocidTable, construction: str, tokenizer=None) -> None:
    target = table.manifest.get("target_vocab", "tokenizer")
    if construction == "minilm-decoder":
        if target != "own":
            raise DDROError(f"{table.path}: construction minilm-decoder decodes its own vocabulary, but this docid "
                            f"table has target_vocab {target!r}; rebuild the docids with target_vocab 'own'")
        return
    if target != "tokenizer":
        raise DDROError(f"{table.path}: construction {construction} decodes in the tokenizer's vocabulary, but this "
                        f"docid table has target_vocab {target!r}; use construction minilm-decoder")
    check_tokenizer(table.manifest.get("tokenizer") or {}, tokenizer, f"docid table {table.path}")
    offset, added = table.manifest["vocab_offset"], table.manifest["add_doc_num"]
    if added and offset != len(tokenizer):
        raise DDROError(f"{table.path}: docid tokens start at {offset:,}, but the tokenizer has {len(tokenizer):,} "
                        "tokens; the docids must be built for this tokenizer")


def _grow_t5_vocab(model, rows: int, offset: int) -> None:
    """Resize the shared embedding (and tied head) to `rows`, re-drawing rows >= offset at random.

    Rows between the tokenizer's length and the old matrix size (T5 pads to 32,128) are
    re-drawn too, so every docid token starts from the same distribution.
    """
    old = model.get_input_embeddings().weight
    if rows > old.shape[0]:
        model.resize_token_embeddings(rows, mean_resizing=False)
    weight = model.get_input_embeddings().weight
    if not 0 < offset < rows:
        raise DDROError(f"docid tokens start at {offset:,}, outside the {rows:,}-row vocabulary")
    with torch.no_grad():
        std = weight[:offset].std().item() if offset > 1 else 1.0
        weight[offset:].normal_(0.0, std)


def _untie_head(model) -> None:
    """Give a T5 its own output head, started as a copy of the tied one."""
    shared = model.get_input_embeddings().weight
    head = torch.nn.Linear(shared.shape[1], shared.shape[0], bias=False)
    with torch.no_grad():
        head.weight.copy_(shared)
    model.set_output_embeddings(head)
    keep_head_untied(model)


def keep_head_untied(model) -> None:
    """T5 declares lm_head tied to the shared matrix (and v5 forces tie_word_embeddings);
    drop that declaration on this instance so no later `tie_weights()` re-ties the new head."""
    model._tied_weights_keys = {k: v for k, v in model._tied_weights_keys.items() if k != "lm_head.weight"}
    model.all_tied_weights_keys.pop("lm_head.weight", None)


def _new_head(args: ModelArguments, table: DocidTable) -> bool:
    return args.new_head if args.new_head is not None else not table.scheme.uses_tokenizer_ids


def _t5_generation(model, tokenizer, table: DocidTable) -> None:
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id = tokenizer.pad_token_id
        cfg.pad_token_id = tokenizer.pad_token_id
        cfg.eos_token_id = tokenizer.eos_token_id
    model.generation_config.max_new_tokens = table.max_len


def build_t5(args: ModelArguments, table: DocidTable) -> BuiltModel:
    from transformers import T5ForConditionalGeneration

    if not args.model_name_or_path:
        raise DDROError("construction t5 needs --model_name_or_path (a T5 name or folder, e.g. t5-base)")
    tokenizer = load_tokenizer(args.model_name_or_path)
    _check_target_vocab(table, "t5", tokenizer)
    try:
        model = T5ForConditionalGeneration.from_pretrained(args.model_name_or_path, use_safetensors=True)
    except (OSError, ValueError) as e:
        raise DDROError(f"cannot load T5 {args.model_name_or_path!r}: {e}") from None
    if table.manifest["add_doc_num"]:  # new docid tokens; TU docids are tokenizer ids
        _grow_t5_vocab(model, max(table.required_vocab, model.config.vocab_size), table.manifest["vocab_offset"])
    new_head = _new_head(args, table)
    if new_head:
        _untie_head(model)
    _t5_generation(model, tokenizer, table)
    return BuiltModel(model, tokenizer, {"base": args.model_name_or_path, "new_head": new_head})


def build_t5_scratch(args: ModelArguments, table: DocidTable) -> BuiltModel:
    from transformers import T5Config, T5ForConditionalGeneration

    if not args.model_name_or_path:
        raise DDROError("construction t5-scratch needs --model_name_or_path (a sentencepiece tokenizer folder)")
    tokenizer = load_tokenizer(args.model_name_or_path)
    _check_target_vocab(table, "t5-scratch", tokenizer)
    s = sizes(args)
    if s["hidden_size"] % s["num_heads"]:
        raise DDROError(f"hidden_size {s['hidden_size']} is not a multiple of num_heads {s['num_heads']}")
    config = T5Config(vocab_size=max(table.required_vocab, len(tokenizer)), d_model=s["hidden_size"],
                      d_ff=s["intermediate_size"], num_layers=s["encoder_layers"],
                      num_decoder_layers=s["decoder_layers"], num_heads=s["num_heads"],
                      d_kv=s["hidden_size"] // s["num_heads"], dropout_rate=args.dropout,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    model = T5ForConditionalGeneration(config)
    new_head = _new_head(args, table)
    if new_head:
        _untie_head(model)
    _t5_generation(model, tokenizer, table)
    return BuiltModel(model, tokenizer, {"base": None, "new_head": new_head, "sizes": s})


def build_minilm_decoder(args: ModelArguments, table: DocidTable) -> BuiltModel:
    from transformers import AutoModel, BertConfig, BertLMHeadModel, EncoderDecoderModel

    name = args.model_name_or_path or OFFLINE_MINILM
    _check_target_vocab(table, "minilm-decoder")
    tokenizer = load_tokenizer(name)
    try:
        encoder = AutoModel.from_pretrained(resolve_model_path(name), use_safetensors=True)
    except (OSError, ValueError) as e:
        raise DDROError(f"cannot load encoder {name!r}: {e}") from None
    s = sizes(args)
    hidden = s["hidden_size"] or encoder.config.hidden_size
    if hidden % s["num_heads"]:
        raise DDROError(f"decoder hidden size {hidden} is not a multiple of num_heads {s['num_heads']}")
    decoder_config = BertConfig(
        vocab_size=table.required_vocab, hidden_size=hidden, num_hidden_layers=s["decoder_layers"],
        num_attention_heads=s["num_heads"], intermediate_size=s["intermediate_size"],
        hidden_dropout_prob=args.dropout, attention_probs_dropout_prob=args.dropout,
        max_position_embeddings=max(64, table.max_len + 2), type_vocab_size=1,
        tie_word_embeddings=args.dense_prior == "none",  # the prior's head starts at zero, the inputs do not
        is_decoder=True, add_cross_attention=True, pad_token_id=OWN_VOCAB["pad"],
        bos_token_id=OWN_VOCAB["decoder_start"], eos_token_id=OWN_VOCAB["eos"])
    decoder = BertLMHeadModel(decoder_config)
    if args.dense_prior == "none":
        model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    else:
        from .prior import prior_model

        model = prior_model(encoder, decoder, table, args.dense_prior, args.prior_tau, name)
    model.config.encoder.name_or_path = name  # the logical name, not this machine's path
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id = OWN_VOCAB["decoder_start"]
        cfg.pad_token_id = OWN_VOCAB["pad"]
        cfg.eos_token_id = OWN_VOCAB["eos"]
    model.config.vocab_size = table.required_vocab
    model.generation_config.max_new_tokens = table.max_len
    return BuiltModel(model, tokenizer, {"base": name, "new_head": None, "sizes": {**s, "hidden_size": hidden}})


def init_docids_from_codebook(model, table: DocidTable) -> None:
    """Start each PQ docid token's embedding (and output row) at its centroid.

    Token vocab_offset + K*m + c gets centroid c of sub-space m in dimensions
    [m*d, (m+1)*d) and zeros elsewhere, so tokens of nearby centroids start close and the
    decoder's input and output spaces begin aligned with the embedding space the docids
    were quantised in. Both the input embedding and an untied output head are set.
    """
    path = table.path / CODEBOOK
    if not path.is_file():
        raise DDROError(f"docid_init codebook: {path} is missing (rebuild the docids with this toolkit)")
    import numpy as np

    centroids = torch.from_numpy(np.load(path, allow_pickle=False)).float()  # (M, K, d)
    m_count, k, dsub = centroids.shape
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.decoder
    matrices = {id(w): w for w in (decoder.get_input_embeddings().weight, model.get_output_embeddings().weight)}
    offset = table.manifest["vocab_offset"]
    for weight in matrices.values():
        if weight.shape[1] != m_count * dsub:
            raise DDROError(f"docid_init codebook: the model's hidden size {weight.shape[1]} differs from the "
                            f"codebook's embedding dimension {m_count * dsub}; set hidden_size to match")
        rows = torch.zeros(m_count * k, m_count * dsub)
        for m in range(m_count):
            rows[m * k:(m + 1) * k, m * dsub:(m + 1) * dsub] = centroids[m]
        with torch.no_grad():
            weight[offset:offset + m_count * k] = rows.to(weight.dtype)


BUILDERS = {"t5": build_t5, "t5-scratch": build_t5_scratch, "minilm-decoder": build_minilm_decoder}


def check_dense_prior(args: ModelArguments) -> None:
    from .prior import PRIOR_FORMS

    if args.dense_prior not in PRIOR_FORMS:
        raise DDROError(f"unknown dense_prior {args.dense_prior!r} (choose from {', '.join(PRIOR_FORMS)})")
    if args.dense_prior != "none" and args.construction != "minilm-decoder":
        raise DDROError(f"dense_prior {args.dense_prior} needs construction minilm-decoder (its encoder is the "
                        f"PQ docids' embedding model), not {args.construction}")


def check_codebook_use(args: ModelArguments, table: DocidTable) -> None:
    """docid_init codebook and the dense prior read PQ's sub-space centroids: refuse both at once, before
    any model is built, for docids of another scheme."""
    uses = ["docid_init codebook"] * (args.docid_init == "codebook") + \
        [f"dense_prior {args.dense_prior}"] * (args.dense_prior != "none")
    if uses and not table.scheme.subspace_codebook:
        raise DDROError(f"{' and '.join(uses)}: needs PQ docids (their sub-space centroids); {table.path} has "
                        f"{table.encoding!r} docids: set docid_init random and dense_prior none")


def special_ids(model) -> dict:
    g = model.generation_config
    return {"pad": g.pad_token_id, "decoder_start": g.decoder_start_token_id, "eos": g.eos_token_id}


def build_model(args: ModelArguments, table: DocidTable, seed: int = 42) -> BuiltModel:
    """A fresh model for `table` (random parts drawn from `seed`), with its `ddro_model.json` info."""
    from transformers import set_seed

    if args.construction not in BUILDERS:
        raise DDROError(f"unknown construction {args.construction!r} (choose from {', '.join(CONSTRUCTIONS)})")
    check_dense_prior(args)
    if table.path is None:
        raise DDROError("build_model needs a docid table loaded from (or saved to) a folder")
    check_codebook_use(args, table)
    set_seed(seed)
    built = BUILDERS[args.construction](args, table)
    if args.docid_init == "codebook":
        init_docids_from_codebook(built.model, table)
    elif args.docid_init != "random":
        raise DDROError(f"unknown docid_init {args.docid_init!r} (choose random or codebook)")
    table.check_vocab(output_rows(built.model), f"{args.construction} model")
    if args.dense_prior != "none":
        from .prior import prior_info, zero_head

        zero_head(built.model)
        built.info["dense_prior"] = prior_info(built.model, table)
    built.info = {
        "construction": args.construction,
        **built.info,
        "docid_init": args.docid_init,
        "docids": manifest_hash(table.path),
        "docid_encoding": table.encoding,
        "vocab": {"decoder_rows": output_rows(built.model), "required": table.required_vocab,
                  "vocab_offset": table.manifest["vocab_offset"], "add_doc_num": table.manifest["add_doc_num"],
                  "target_vocab": table.manifest.get("target_vocab", "tokenizer"), **special_ids(built.model)},
        "tokenizer": tokenizer_identity(built.tokenizer),
        "seed": seed,
    }
    log.info("built %s: %s parameters, %s decoder rows", args.construction,
             f"{sum(p.numel() for p in built.model.parameters()):,}", f"{output_rows(built.model):,}")
    return built


def freeze_encoder_embeddings(model) -> int:
    """Stop training the encoder's word embeddings; refuses a matrix the decoder shares (T5)."""
    weight = model.get_encoder().get_input_embeddings().weight
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.decoder
    if any(p is weight for p in decoder.parameters()) or model.get_output_embeddings().weight is weight:
        raise DDROError("freeze_encoder_embeddings: this model's encoder shares its embedding matrix with the "
                        "decoder (T5), so freezing it would freeze the docid tokens too")
    weight.requires_grad_(False)
    return weight.numel()


def freeze_encoder(model) -> int:
    """Stop training every encoder weight the decoder does not share; returns how many."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.decoder
    shared = {id(p) for p in decoder.parameters()} | {id(model.get_output_embeddings().weight)}
    frozen = 0
    for p in model.get_encoder().parameters():
        if id(p) not in shared:
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen
