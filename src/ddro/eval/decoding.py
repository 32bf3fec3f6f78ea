"""How `ddro eval` decodes: every setting of the trie-constrained beam search, in one place.

A docid's score is the SUM of its tokens' log-probabilities under the model (the end token
included when the docid carries it, e.g. TU docids ending in eos; nothing for the end edge
the trie adds itself, see `DocidTrie.free_end`). There is no length normalisation: with
`dedup` PQ docids (M or M + 1 tokens) and TU docids (any length) dividing by the length
would reorder the docids. HF's length-normalised ranking stays available by name.

Beam search stops (HF's `early_stopping`) by the rule chosen here, and never by a
checkpoint's `generation_config`: `generation_config` builds the complete
`GenerationConfig` that `constrained_generate` hands to `generate`, and `generate` runs with
that config as the model's own, so no field falls back to what a checkpoint saved.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Optional

from ..errors import DDROError

RANKINGS = ("sum", "length_normalised")
STOPPING = {"never": "never", "false": False, "true": True}  # our names -> HF's early_stopping


@dataclass
class DecodingArguments:
    beams: int = field(default=20, metadata={"help": "beam size = docids returned per query (colliding documents "
                                                      "of a returned docid come along)"})
    ranking: str = field(default="sum", metadata={
        "choices": list(RANKINGS),
        "help": "how finished docids are scored and ranked: 'sum' = summed token log-probability (the DDRO "
                "paper's); 'length_normalised' = summed log-probability / length ** length_penalty "
                "(HF's default ranking, which reorders docids of different lengths)"})
    length_penalty: Optional[float] = field(default=None, metadata={
        "help": "exponent of the length in 'length_normalised' ranking (default 1.0); refused with 'sum'"})
    early_stopping: str = field(default="never", metadata={
        "choices": list(STOPPING),
        "help": "when beam search stops (HF's early_stopping): 'never' = once no running beam can still beat "
                "the worst kept docid, bounded over every remaining length (exact for both rankings: log-probs "
                "only fall); 'false' = HF's heuristic, bounded at the current length (exact for 'sum' only); "
                "'true' = as soon as `beams` docids are finished (can drop a longer, better docid)"})
    max_length: Optional[int] = field(default=None, metadata={
        "help": "most tokens generated per docid, end token included (default: the longest docid in the trie)"})

    def __post_init__(self):
        if self.beams < 1:
            raise DDROError(f"--beams must be >= 1, got {self.beams}")
        if self.ranking not in RANKINGS:
            raise DDROError(f"--ranking: one of {', '.join(RANKINGS)}, got {self.ranking!r}")
        if self.early_stopping not in STOPPING:
            raise DDROError(f"--early_stopping: one of {', '.join(STOPPING)}, got {self.early_stopping!r}")
        if self.ranking == "sum" and self.length_penalty is not None:
            raise DDROError("--length_penalty applies only to --ranking length_normalised")
        if self.max_length is not None and self.max_length < 1:
            raise DDROError(f"--max_length must be >= 1, got {self.max_length}")

    @property
    def exponent(self) -> float:
        """The length exponent HF divides finished scores by: 0 for summed log-probs."""
        if self.ranking == "sum":
            return 0.0
        return 1.0 if self.length_penalty is None else self.length_penalty

    def resolved(self, trie) -> dict:
        """The settings as run on `trie` (max_length filled in), for manifests."""
        return {**asdict(self), "length_penalty": self.exponent, "max_length": self.max_length or trie.max_depth}


def decoding_from(config: dict) -> DecodingArguments:
    """The decoding settings in a flat config (a `ddro eval` config or manifest), defaults elsewhere."""
    names = DecodingArguments.__dataclass_fields__
    return DecodingArguments(**{k: v for k, v in config.items() if k in names})


def generation_config(decoding: DecodingArguments, trie, num_return_sequences: int, pad_token_id: int,
                      decoder_start_token_id: int):
    """Every setting `generate` reads for this search, explicit (none left to a checkpoint)."""
    from transformers import GenerationConfig

    return GenerationConfig(
        num_beams=decoding.beams, num_return_sequences=num_return_sequences, do_sample=False,
        max_new_tokens=decoding.max_length or trie.max_depth, min_length=0,
        length_penalty=decoding.exponent, early_stopping=STOPPING[decoding.early_stopping],
        eos_token_id=trie.end_token, pad_token_id=pad_token_id, decoder_start_token_id=decoder_start_token_id,
        forced_bos_token_id=None, forced_eos_token_id=None,
        repetition_penalty=1.0, encoder_repetition_penalty=1.0, no_repeat_ngram_size=0,
        encoder_no_repeat_ngram_size=0, bad_words_ids=None, suppress_tokens=None, begin_suppress_tokens=None,
        sequence_bias=None, exponential_decay_length_penalty=None, renormalize_logits=False,
        remove_invalid_values=False, use_cache=True, output_scores=False, return_dict_in_generate=False)


@contextmanager
def only_config(model, config):
    """`generate` fills every unset field of the config it is given from `model.generation_config`;
    with `config` standing in as the model's own for the call, nothing comes from the checkpoint."""
    saved = model.generation_config
    model.generation_config = config
    try:
        yield config
    finally:
        model.generation_config = saved
