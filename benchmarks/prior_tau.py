"""Which starting temperature suits the dense prior: the likelihood of the relevant docid under the prior alone.

With the head at zero and the other rows outweighed, the prior's probability of a docid is the
product over positions m of softmax_k(tau * s_m[k]) at the docid's code, where s_m[k] is the l2
form's per-position score <q_m, C_m[k]> - ||C_m[k]||^2 / 2 (see ddro.modeling.prior). This
prints the mean summed log-probability of each training query's first relevant docid for a
range of tau: the maximum is a sensible `--prior_tau` (the learned tau moves slowly from it).

    python benchmarks/prior_tau.py --docids OUT/docids --collection OUT/collection --split train
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docids", required=True, help="a PQ docid folder (with codebook.npy)")
    parser.add_argument("--collection", required=True, help="the collection (queries.jsonl, qrels/)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--queries", type=int, default=800, help="a seeded sample of this many queries")
    parser.add_argument("--taus", default="10,20,50,100,150,200,250,300,400,600")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ddro.docids.embed import load_embedder
    from ddro.docids.table import DocidTable

    table = DocidTable.load(args.docids)
    book = np.load(Path(args.docids) / "codebook.npy")
    m, k, dsub = book.shape
    offset = table.manifest["vocab_offset"]
    codes = {d: [t - offset - k * j for j, t in enumerate(toks[:m])] for d, toks in table.by_doc.items()}
    texts = {o["_id"]: o["text"] for o in map(json.loads, open(Path(args.collection) / "queries.jsonl"))}
    relevant: dict[str, str] = {}
    for line in list(open(Path(args.collection) / "qrels" / f"{args.split}.tsv"))[1:]:
        qid, doc, score = line.rstrip("\n").split("\t")
        if int(score) > 0 and doc in codes:
            relevant.setdefault(qid, doc)
    qids = sorted(relevant)
    qids = [qids[i] for i in np.random.default_rng(0).permutation(len(qids))[:args.queries]]
    embedder = load_embedder(table.manifest["params"]["embedding"]["model"])
    q = embedder.encode([texts[x] for x in qids], normalize_embeddings=True, batch_size=64)
    scores = np.einsum("bmd,mkd->bmk", q.reshape(len(qids), m, dsub), book) - 0.5 * (book ** 2).sum(-1)[None]
    target = np.array([codes[relevant[x]] for x in qids])[:, :, None]
    print(f"| tau | mean summed log-prob of the relevant docid ({len(qids)} {args.split} queries) |\n|---:|---:|")
    for tau in map(float, args.taus.split(",")):
        z = tau * scores
        top = z.max(-1, keepdims=True)
        lse = np.log(np.exp(z - top).sum(-1)) + top[..., 0]
        print(f"| {tau:g} | {(np.take_along_axis(z, target, -1)[..., 0] - lse).sum(-1).mean():.3f} |")


if __name__ == "__main__":
    main()
