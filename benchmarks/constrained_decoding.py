"""Benchmark: trie-constrained beam search (ours) vs unconstrained `generate` vs the reference
(nested-dict trie + `prefix_allowed_tokens_fn`), plus the constraint's own cost per step and
the trie's build time and memory. A script, not a test; see benchmarks/README.md.

    nice python benchmarks/constrained_decoding.py [--docids DIR] [--quick] [--device cuda]
"""
from __future__ import annotations

import argparse
import gc
import os
import time
import tracemalloc

import numpy as np
import torch
from transformers import T5Config, T5ForConditionalGeneration
from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor

from ddro.eval.constrained import (
    TrieConstrainedLogitsProcessor,
    constrained_generate,
    dict_trie_allowed_fn,
    nested_dict_trie,
)
from ddro.eval.trie import DocidTrie

TEXT_VOCAB = 32100          # T5's vocabulary; PQ docid tokens follow it
START, EOS = 0, 1           # T5: pad = decoder start = 0, eos = 1


def synthetic_pq(n: int, m: int, k: int = 256, seed: int = 0) -> np.ndarray:
    """n PQ docids of m codes: token = TEXT_VOCAB + k * position + code (the docid folder contract)."""
    codes = np.random.default_rng(seed).integers(0, k, (n, m))
    return TEXT_VOCAB + k * np.arange(m) + codes


def load_tables(docids_dir: str | None, large: bool) -> list[tuple[str, list[tuple[int, ...]], int]]:
    """(name, docids, end token): the given docid folder or a SciFact-size stand-in, and MS MARCO size."""
    if docids_dir:
        from ddro.docids.table import DocidTable
        table = DocidTable.load(docids_dir)
        end = table.manifest.get("eos_token_id")
        small = (f"{os.path.basename(os.path.normpath(docids_dir))} ({table.encoding}, {len(table):,})",
                 table.tokens, EOS if end is None else end)
    else:
        small = ("synthetic 5,183 x 8x256", [tuple(r) for r in synthetic_pq(5183, 8).tolist()], EOS)
    tables = [small]
    if large:
        msmarco = [tuple(r) for r in synthetic_pq(319927, 24, seed=1).tolist()]
        tables.append(("synthetic 319,927 x 24x256", msmarco, EOS))
    return tables


def make_model(vocab: int, device: str, seed: int = 42, d_model: int = 256, heads: int = 4, d_ff: int = 1024,
               layers: int = 4):
    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab, d_model=d_model, d_kv=d_model // heads, num_heads=heads, d_ff=d_ff,
                      num_layers=layers, num_decoder_layers=layers, decoder_start_token_id=START,
                      pad_token_id=START, eos_token_id=EOS)
    model = T5ForConditionalGeneration(config).to(device).eval()
    model.generation_config.eos_token_id = None     # unconstrained runs then take the full number of steps
    return model


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_times(fns: dict, device: str, repeats: int) -> dict:
    """Best wall time of each function over `repeats` interleaved rounds, after a warm-up
    round: interleaving spreads the noise of a shared machine over all of them alike."""
    best = dict.fromkeys(fns, float("inf"))
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            if round_:
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build_costs(docids, end: int) -> dict:
    gc.collect()
    start = time.perf_counter()
    trie = DocidTrie(docids, end)
    trie.to_torch("cpu")
    ours_s = time.perf_counter() - start
    tracemalloc.start()
    DocidTrie(docids, end).to_torch("cpu")
    ours_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    ours_mb = (trie.nbytes + trie.to_torch("cpu").nbytes - trie.offsets.nbytes) / 2**20   # offsets shared
    gc.collect()
    rss = rss_mb()
    start = time.perf_counter()
    dict_trie = nested_dict_trie(docids, end)
    dict_s = time.perf_counter() - start
    dict_mb = rss_mb() - rss
    return dict(trie=trie, dict_trie=dict_trie, ours_s=ours_s, ours_mb=ours_mb, ours_peak=ours_peak,
                dict_s=dict_s, dict_mb=dict_mb)


SEARCHES = ("unconstrained", "ours", "reference")


def decoding_times(model, trie, dict_trie, queries, beams: int, batch: int, device: str, repeats: int,
                   searches=SEARCHES, share: bool = True) -> dict:
    """Seconds per query of the `searches` over all `queries` (batches of `batch`), and the
    processor's share of our search's time when `share`."""
    batches = [queries[i:i + batch] for i in range(0, len(queries), batch)]
    common = dict(num_beams=beams, num_return_sequences=beams, do_sample=False)
    ref_fn = dict_trie_allowed_fn(dict_trie, trie.end_token)

    def ours():
        for ids in batches:
            constrained_generate(model, ids, None, trie, beams)

    def unconstrained():
        for ids in batches:
            model.generate(input_ids=ids, max_new_tokens=trie.max_depth, **common)

    def reference():
        for ids in batches:
            model.generate(input_ids=ids, max_new_tokens=trie.max_depth, eos_token_id=trie.end_token,
                           prefix_allowed_tokens_fn=ref_fn, **common)

    fns = {"unconstrained": unconstrained, "ours": ours, "reference": reference}
    with torch.no_grad():
        best = best_times({name: fns[name] for name in searches}, device, repeats)
        shares = {"share": processor_share(ours, device)} if share else {}
    return {**{name: t / len(queries) for name, t in best.items()}, **shares}


def processor_share(run, device: str) -> float:
    """Fraction of `run`'s wall time spent inside our logits processor: the constraint's
    cost in place, a steadier figure than the difference of two noisy totals."""
    spent = 0.0
    call = TrieConstrainedLogitsProcessor.__call__

    def timed_call(self, input_ids, scores):
        nonlocal spent
        sync(device)
        start = time.perf_counter()
        out = call(self, input_ids, scores)
        sync(device)
        spent += time.perf_counter() - start
        return out

    TrieConstrainedLogitsProcessor.__call__ = timed_call
    try:
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        return spent / (time.perf_counter() - start)
    finally:
        TrieConstrainedLogitsProcessor.__call__ = call


def processor_step_times(trie, dict_trie, beams: int, batch: int, vocab: int, device: str, repeats: int,
                         seed: int = 0) -> dict:
    """Milliseconds per decoding step of the logits processors alone: random log-probs, and rows
    that follow random docids, shuffled within each query at every step as beam search does."""
    rng = np.random.default_rng(seed)
    rows = batch * beams
    paths = [trie.docids[i] for i in rng.integers(0, len(trie.docids), rows)]
    depth = trie.max_depth
    padded = torch.tensor([list(p) + [trie.end_token] * (depth - len(p)) for p in paths], device=device)
    log_probs = torch.randn(rows, vocab, device=device).log_softmax(-1)
    steps = []                                   # input_ids at each step, rows reordered
    for t in range(depth):
        perm = torch.as_tensor(np.concatenate([b * beams + rng.permutation(beams) for b in range(batch)]))
        padded = padded[perm.to(device)]
        steps.append(torch.cat([torch.full((rows, 1), START, device=device), padded[:, :t]], 1))

    def run(processor, scores):
        def go():
            for ids in steps:
                processor(ids, scores)
        return go

    # ours as constrained_generate uses it: masking in place (its cost does not depend on the values)
    ours = TrieConstrainedLogitsProcessor(trie, num_beams=beams, track_scores=True, inplace=True)
    reference = PrefixConstrainedLogitsProcessor(dict_trie_allowed_fn(dict_trie, trie.end_token), beams)
    best = best_times({"ours": run(ours, log_probs.clone()), "reference": run(reference, log_probs)},
                      device, repeats)
    assert ours.walks == 0, "the processor fell back to walking from the root"
    return {name: t / depth * 1e3 for name, t in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docids", help="a docid folder (ddro docids); default: synthetic SciFact-size PQ")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--queries", type=int, default=8, help="queries per measurement")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--beams", type=int, nargs="+", default=[10, 80])
    parser.add_argument("--query-len", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (best of)")
    parser.add_argument("--quick", action="store_true", help="one batch of queries, 2 rounds")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--large", action=argparse.BooleanOptionalAction, default=True,
                        help="also the 319,927-docid table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_queries, repeats = (args.batch, 2) if args.quick else (args.queries, args.repeats)

    tables = load_tables(args.docids, args.large)
    vocab = max(TEXT_VOCAB + 24 * 256, *(1 + max(map(max, d)) for _, d, _ in tables))
    model = make_model(vocab, args.device)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    queries = torch.randint(2, TEXT_VOCAB, (n_queries, args.query_len),
                            generator=torch.Generator().manual_seed(0)).to(args.device)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, model T5 {params:.1f}M params, "
          f"vocab {vocab}, {n_queries} queries of {args.query_len} tokens, batch {args.batch}\n")

    decode_rows, step_rows, build_rows = [], [], []
    for name, docids, end in tables:
        costs = build_costs(docids, end)
        trie, dict_trie = costs["trie"], costs["dict_trie"]
        build_rows.append((name, f"{trie.num_nodes:,}", f"{costs['ours_s']:.2f}", f"{costs['ours_mb']:.0f}",
                           f"{costs['ours_peak']:.0f}", f"{costs['dict_s']:.2f}", f"{costs['dict_mb']:.0f}"))
        for beams in args.beams:
            t = decoding_times(model, trie, dict_trie, queries, beams, args.batch, args.device, repeats)
            decode_rows.append((name, beams, f"{t['unconstrained']:.3f}", f"{t['ours']:.3f}", f"{t['reference']:.3f}",
                                f"{t['ours'] / t['unconstrained']:.3f}", f"{t['reference'] / t['unconstrained']:.3f}",
                                f"{100 * t['share']:.1f}%"))
            s = processor_step_times(trie, dict_trie, beams, args.batch, vocab, args.device, repeats)
            step_rows.append((name, beams, f"{s['ours']:.3f}", f"{s['reference']:.2f}",
                              f"{s['reference'] / s['ours']:.0f}x"))
        del costs, trie, dict_trie
        gc.collect()

    table("Decoding, seconds per query (best of interleaved rounds); share: time inside our processor",
          ("docids", "beams", "unconstrained", "ours", "reference", "ours/unc", "ref/unc", "share"), decode_rows)
    table("Constraint alone, ms per decoding step (batch x beams rows)",
          ("docids", "beams", "ours", "reference", "ref/ours"), step_rows)
    table("Trie build (ours: numpy trie + device tensors; reference: nested dicts, RSS delta)",
          ("docids", "nodes", "ours s", "ours MB", "ours peak MB", "dict s", "dict MB"), build_rows)


def table(title: str, header, rows) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print(title)
    for row in (header, *rows):
        print("  " + "  ".join(str(x).rjust(w) for x, w in zip(row, widths)))
    print()


if __name__ == "__main__":
    main()
