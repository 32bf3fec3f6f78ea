"""DDRO training-step time: precomputed reference log-probs vs an on-the-fly reference model.

One step = forward + backward + AdamW step on the same batch of (query, d+, d-) pairs:

- precomputed   the DDRO trainer: policy only, encoder once per query (ddro_loss.pair_logps),
                reference log-probs read from the batch (computed once before training)
- on-the-fly    the same policy step plus a no-grad forward of a frozen reference copy
                (same encoder-once forward): isolates the cost of the reference model
- trl-style     what TRL's DPOTrainer does: policy and reference both run the model on the
                concatenated [chosen; rejected] batch (encoder twice per query)

A second table times the trainer's step (precomputed reference) under each `--loss_type`:
sigmoid and rpo on the batch of pairs, listwise on the same queries as groups of
`--group-negatives` negatives (1 + K decoded docids per query).

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

from ddro.train.ddro_loss import GROUPED, LOSSES, ddro_loss, list_logps, loss_function, pair_logps


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
        update(policy, optimizer, ddro_loss(chosen, rejected, ref_c, ref_r, beta).loss)
    return step


def update(policy, optimizer, loss) -> None:
    """Backward, clip (the paper's 0.5), optimizer step: what every timed variant ends with."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), 0.5)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def loss_step_fn(policy, batch, optimizer, loss_type: str, beta: float, k: int, generator):
    """The trainer's step (precomputed reference) under `loss_type`; listwise on K negatives per query."""
    loss = loss_function(loss_type, beta)
    inputs = (batch["input_ids"], batch["attention_mask"], batch["chosen_labels"])
    if loss_type in GROUPED:
        b, length = batch["rejected_labels"].shape
        lo, hi = int(batch["chosen_labels"].min()), int(batch["chosen_labels"].max()) + 1
        rejected = torch.randint(lo, hi, (b, k, length), generator=generator).to(batch["input_ids"].device)
        mask = torch.ones(b, k, dtype=torch.bool, device=rejected.device)
        ref_rejected = batch["ref_rejected"][:, None].expand(b, k)

    def step():
        if loss_type in GROUPED:
            chosen, rejected_logps = list_logps(policy, *inputs, rejected, mask)
            out = loss(chosen, rejected_logps, batch["ref_chosen"], ref_rejected, rejected_mask=mask)
        else:
            chosen, rejected_logps = pair_logps(policy, *inputs, batch["rejected_labels"])
            out = loss(chosen, rejected_logps, batch["ref_chosen"], batch["ref_rejected"])
        update(policy, optimizer, out.loss)
    return step


def timed(steps: dict, warmup: int, n: int, sync) -> dict[str, list[float]]:
    """Seconds per call of each step, interleaved (machine load affects every variant alike)."""
    times: dict[str, list[float]] = {m: [] for m in steps}
    for rep in range(warmup + n):
        for m, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            if rep >= warmup:
                times[m].append(time.perf_counter() - start)
    return times


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
    p.add_argument("--group-negatives", type=int, default=2, help="listwise: negatives per query (K)")
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
    times = timed(steps, args.warmup, args.steps, sync)
    med = {m: statistics.median(t) for m, t in times.items()}
    n_params = sum(p.numel() for p in policy.parameters())
    print(f"device {args.device}, threads {torch.get_num_threads()}, {n_params / 1e6:.1f}M parameters, "
          f"batch {args.batch} pairs, query {args.query_len} tokens, docid {args.docid_len} tokens")
    for m in modes:
        print(f"  {m:12s} {med[m] * 1000:8.1f} ms/step   (min {min(times[m]) * 1000:.1f}, n={len(times[m])})")
    print(f"ratio precomputed / on-the-fly (same forward): {med['precomputed'] / med['on-the-fly']:.3f}")
    print(f"ratio precomputed / trl-style (reference model, encoder per sequence): "
          f"{med['precomputed'] / med['trl-style']:.3f}   (target <= 0.6)")
    g = torch.Generator().manual_seed(args.seed)
    losses = {t: loss_step_fn(policy, batch, optimizer, t, args.beta, args.group_negatives, g) for t in LOSSES}
    loss_med = {t: statistics.median(v) for t, v in timed(losses, args.warmup, args.steps, sync).items()}
    print(f"trainer step by --loss_type (precomputed reference; listwise: {args.group_negatives} negatives a query):")
    for t, sec in loss_med.items():
        rows = args.batch * (1 + (args.group_negatives if t in GROUPED else 1))
        print(f"  {t:12s} {sec * 1000:8.1f} ms/step   {rows / sec:8.1f} docid rows/s   "
              f"ratio to sigmoid {sec / loss_med['sigmoid']:.3f}")


if __name__ == "__main__":
    main()
