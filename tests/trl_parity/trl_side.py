"""TRL 0.28.0's DPO sigmoid loss and gradients on a batch written by tests/test_trl_parity.py.

Runs in the isolated `.venv-trl` (transformers 5.2.0 + trl 0.28.0), never in the main venv.
Usage: python trl_side.py WORKDIR. Reads WORKDIR/model and WORKDIR/ref (save_pretrained
T5s: the policy and the frozen reference) and
WORKDIR/batch.json ({"beta", "pad_token_id", "pairs": [{"query", "chosen", "rejected"}]});
writes WORKDIR/trl.safetensors (loss, policy/reference log-probs, every parameter's
gradient as "grad.<name>") and WORKDIR/trl.json (versions, metrics).

The batch goes through TRL's own pieces: `DPOTrainer.get_batch_loss_metrics` ->
`concatenated_forward` on the policy, `compute_ref_log_probs` on TRL's reference copy,
`dpo_loss(loss_type="sigmoid")`. Queries are left-padded as TRL's collator does.

One adjustment: in 0.28.0 the encoder-decoder branch of `concatenated_forward` still
applies the causal-LM shift (`torch.roll(per_token_logps, 1)` then `[:, 1:]`), which drops
the log-prob of whatever label sits in the last column. One padding column (mask 0) is
appended to the completions so that no docid token sits there; the loss is then the
documented DPO loss over every docid token.
"""
import json
import sys
from pathlib import Path

import torch


def left_pad(rows, value):
    width = max(map(len, rows))
    return torch.tensor([[value] * (width - len(r)) + list(r) for r in rows])


def right_pad(rows, value, width):
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows])


def tokenizer_for(vocab_size: int):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def main(work: Path) -> None:
    import transformers
    import trl
    from datasets import Dataset
    from safetensors.torch import save_file
    from transformers import AutoModelForSeq2SeqLM
    from trl import DPOConfig, DPOTrainer

    spec = json.loads((work / "batch.json").read_text())
    pad = spec["pad_token_id"]
    model = AutoModelForSeq2SeqLM.from_pretrained(work / "model")
    ref_model = AutoModelForSeq2SeqLM.from_pretrained(work / "ref")
    tokenizer = tokenizer_for(model.config.vocab_size)
    config = DPOConfig(output_dir=str(work / "trl-out"), beta=spec["beta"], loss_type="sigmoid", report_to=[],
                       use_cpu=True, disable_dropout=True, label_smoothing=0.0,
                       bf16=False, fp16=False)  # DPOConfig defaults to bf16, which autocasts the reference
    dummy = Dataset.from_dict({"prompt": ["w3 w4"], "chosen": ["w5"], "rejected": ["w6"]})
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=config, train_dataset=dummy, processing_class=tokenizer)
    assert trainer.is_encoder_decoder and trainer.ref_model is not None

    pairs = spec["pairs"]
    chosen, rejected = [p["chosen"] for p in pairs], [p["rejected"] for p in pairs]
    width = max(map(len, chosen + rejected)) + 1  # one spare padding column (see the module docstring)
    batch = {
        "prompt_input_ids": left_pad([p["query"] for p in pairs], pad),
        "prompt_attention_mask": left_pad([[1] * len(p["query"]) for p in pairs], 0),
        "chosen_input_ids": right_pad(chosen, pad, width),
        "chosen_attention_mask": right_pad([[1] * len(c) for c in chosen], 0, width),
        "rejected_input_ids": right_pad(rejected, pad, width),
        "rejected_attention_mask": right_pad([[1] * len(r) for r in rejected], 0, width),
    }
    policy = trainer.model
    policy.train()
    policy.zero_grad()
    loss, metrics = trainer.get_batch_loss_metrics(policy, {k: v.clone() for k, v in batch.items()})
    loss.backward()
    with torch.no_grad():
        out = trainer.concatenated_forward(policy, {k: v.clone() for k, v in batch.items()})
        ref_chosen, ref_rejected = trainer.compute_ref_log_probs({k: v.clone() for k, v in batch.items()})
    tensors = {"loss": loss.detach().reshape(1), "chosen_logps": out["chosen_logps"],
               "rejected_logps": out["rejected_logps"], "ref_chosen_logps": ref_chosen,
               "ref_rejected_logps": ref_rejected}
    tensors.update({f"grad.{name}": p.grad.detach().clone() for name, p in policy.named_parameters()
                    if p.grad is not None})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(work / "trl.safetensors"))
    (work / "trl.json").write_text(json.dumps({"trl": trl.__version__, "transformers": transformers.__version__,
                                               "torch": torch.__version__, "metrics": metrics}, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
