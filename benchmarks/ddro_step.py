"""DDRO training-step time: precomputed reference log-probs vs an on-the-fly reference model.

One step = forward + backward + AdamW step on the same batch of (query, d+, d-) pairs:

- precomputed   the DDRO trainer: policy only, encoder once per query (ddro_loss.pair_logps),
                reference log-probs read from the batch (computed once before training)
- on-the-fly    the same policy step plus a no-grad forward of a frozen reference copy
                (same encoder-once forward): isolates the cost of the reference model
- trl-style     what TRL's DPOTrainer does: policy and reference both run the model on the
                concatenated [chosen; rejected] batch (encoder twice per query)

Variants are timed interleaved (median of --steps) so that load on a shared machine hits
them alike. Default sizes: T5-small shape (d 512, 6+6 layers) with PQ docids of 8 tokens
(vocabulary 32,128 + 2,048 docid rows), 16 pairs, 64 query tokens.

    python benchmarks/ddro_step.py [--batch 16 --docid-len 8 --layers 6 --device cpu]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from ddro.train.ddro_loss import ddro_loss, pair_logps


def build(args):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(args.seed)
    config = T5Config(vocab_size=args.vocab + args.docid_rows, d_model=args.d_model, d_ff=args.d_ff,
                      num_layers=args.layers, num_decoder_layers=args.layers, num_heads=args.heads,
                      d_kv=args.d_model // args.heads, dropout_rate=0.0, decoder_start_token_id=0)
    policy = T5ForConditionalGeneration(config).to(args.device)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(args.seed)
    lo = args.vocab
    batch = {"input_ids": torch.randint(3, args.vocab, (args.batch, args.query_len), generator=g),
             "attention_mask": torch.ones(args.batch, args.query_len, dtype=torch.long),
             "chosen_labels": torch.randint(lo, lo + args.docid_rows, (args.batch, args.docid_len), generator=g),
             "rejected_labels": torch.randint(lo, lo + args.docid_rows, (args.batch, args.docid_len), generator=g),
             "ref_chosen": -torch.rand(args.batch, generator=g) * 10,
             "ref_rejected": -torch.rand(args.batch, generator=g) * 10}
    return policy, reference, {k: v.to(args.device) for k, v in batch.items()}


def step_fn(policy, reference, batch, optimizer, mode: str, beta: float):
    inputs = (batch["input_ids"], batch["attention_mask"], batch["chosen_labels"], batch["rejected_labels"])
    share = mode != "trl-style"

    def step():
        if mode == "precomputed":
            ref_c, ref_r = batch["ref_chosen"], batch["ref_rejected"]
        else:
            with torch.no_grad():
                ref_c, ref_r = pair_logps(reference, *inputs, share_encoder=share)
        chosen, rejected = pair_logps(policy, *inputs, share_encoder=share)
        loss = ddro_loss(chosen, rejected, ref_c, ref_r, beta).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 0.5)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--query-len", type=int, default=64)
    p.add_argument("--docid-len", type=int, default=8)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--d-ff", type=int, default=2048)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32128)
    p.add_argument("--docid-rows", type=int, default=2048)
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--beta", type=float, default=0.4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    policy, reference, batch = build(args)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    modes = ("precomputed", "on-the-fly", "trl-style")
    steps = {m: step_fn(policy, reference, batch, optimizer, m, args.beta) for m in modes}
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    times: dict[str, list[float]] = {m: [] for m in modes}
    for rep in range(args.warmup + args.steps):
        for m in modes:  # interleaved: machine load affects every variant alike
            sync()
            start = time.perf_counter()
            steps[m]()
            sync()
            if rep >= args.warmup:
                times[m].append(time.perf_counter() - start)
    med = {m: statistics.median(t) for m, t in times.items()}
    n_params = sum(p.numel() for p in policy.parameters())
    print(f"device {args.device}, threads {torch.get_num_threads()}, {n_params / 1e6:.1f}M parameters, "
          f"batch {args.batch} pairs, query {args.query_len} tokens, docid {args.docid_len} tokens")
    for m in modes:
        print(f"  {m:12s} {med[m] * 1000:8.1f} ms/step   (min {min(times[m]) * 1000:.1f}, n={len(times[m])})")
    print(f"ratio precomputed / on-the-fly (same forward): {med['precomputed'] / med['on-the-fly']:.3f}")
    print(f"ratio precomputed / trl-style (reference model, encoder per sequence): "
          f"{med['precomputed'] / med['trl-style']:.3f}   (target <= 0.6)")


if __name__ == "__main__":
    main()
