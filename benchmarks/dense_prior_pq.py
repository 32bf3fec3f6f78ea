"""The dense prior's zero-step model against faiss PQ search over the same codes.

faiss `IndexPQ` with the docid folder's own codebook (`codebook.npy`), filled with the cached
document embeddings `ddro docids` quantised (so its codes are the docids' codes: checked),
searched with asymmetric L2 distance for the split's queries embedded by the same
sentence-transformers model. Prints MRR@10 / R@1 / R@10 of the faiss run and, given the
`ddro eval` run of a zero-step model (`ddro model init --dense_prior ...`), of that run
too, and the share of queries whose top document (and top docid) differs between them.

    nice python benchmarks/dense_prior_pq.py --collection OUT/collection --docids OUT/docids \
        --split dev --generative OUT/eval/prior-l2/run.trec [--embed_cache resources/cache/embeddings]

Only the queries of the generative run are searched when one is given (`--max_queries` runs).
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from ddro.data.collection import Collection
from ddro.docids.embed import embed_collection, load_embedder
from ddro.docids.table import DocidTable
from ddro.eval.metrics import evaluate
from ddro.eval.runs import read_run


def faiss_index(table: DocidTable, vectors: np.ndarray):
    import faiss

    book = np.load(table.path / "codebook.npy")
    m, k, dsub = book.shape
    index = faiss.IndexPQ(m * dsub, m, int(np.log2(k)))
    faiss.copy_array_to_vector(book.ravel(), index.pq.centroids)
    index.pq.sync_transposed_centroids()
    index.is_trained = True
    index.add(vectors)
    offset = table.manifest["vocab_offset"]
    docid_codes = np.array([t[:m] for t in table.tokens]) - offset - k * np.arange(m)
    faiss_codes = index.pq.decode(faiss.vector_to_array(index.codes).reshape(len(vectors), -1))
    same = np.allclose(faiss_codes, np.concatenate([book[j, docid_codes[:, j]] for j in range(m)], 1))
    return index, same


def top(scores: np.ndarray, doc_ids: list[str], qids: list[str], depth: int) -> dict:
    best = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    return {qid: [(doc_ids[j], float(scores[i, j])) for j in best[i]] for i, qid in enumerate(qids)}


def exhaustive_runs(table: DocidTable, index, q: np.ndarray, qids: list[str], args) -> dict:
    """Every document scored, no beam search: the ip ADC score, and what the zero-step model's summed
    log-prob would rank by (prior sum, minus log V for a dedup token: its head logits are all zero)."""
    import faiss

    x = index.pq.decode(faiss.vector_to_array(index.codes).reshape(index.ntotal, -1))
    ip, half_norm = q @ x.T, 0.5 * (x ** 2).sum(1)
    doc_ids, m = table.doc_ids, index.pq.M
    runs = {"exhaustive ip ADC": top(ip, doc_ids, qids, args.depth)}
    if args.rows:
        extra = np.array([len(t) > m for t in table.tokens]) * np.log(args.rows)
        for form, score in (("ip", ip), ("l2", ip - half_norm)):
            runs[f"exhaustive zero-step {form} (dedup token costs log V)"] = top(
                args.tau * score - extra, doc_ids, qids, args.depth)
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--collection", required=True)
    p.add_argument("--docids", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--generative", help="run.trec of `ddro eval` on a zero-step prior model")
    p.add_argument("--embed_cache", default="resources/cache/embeddings")
    p.add_argument("--depth", type=int, default=100)
    p.add_argument("--rows", type=int, default=0, help="the model's output rows V (decoder_rows in ddro_model.json): "
                   "adds the exhaustive zero-step rankings")
    p.add_argument("--tau", type=float, default=20.0, help="the model's tau (with --rows)")
    args = p.parse_args()

    collection, table = Collection(args.collection), DocidTable.load(args.docids)
    emb = table.manifest["params"]["embedding"]
    config = table.manifest["config"]
    vectors, _ = embed_collection(collection, emb["model"], emb["fields"], args.embed_cache,
                                  max_length=config.get("embed_max_length"))
    index, same_codes = faiss_index(table, vectors)
    qrels = collection.qrels(args.split)
    generative = read_run(args.generative) if args.generative else None
    qids = [q for q in qrels if generative is None or q in generative]
    texts = collection.queries()
    model = load_embedder(emb["model"], "cpu")
    model.max_seq_length = emb["max_seq_length"]
    q = model.encode([texts[qid] for qid in qids], normalize_embeddings=True, convert_to_numpy=True)
    dist, ids = index.search(np.ascontiguousarray(q, dtype=np.float32), args.depth)
    doc_ids = table.doc_ids
    faiss_run = {qid: [(doc_ids[j], -float(d)) for d, j in zip(ds, js) if j >= 0]
                 for qid, ds, js in zip(qids, dist, ids)}
    judged = {qid: qrels[qid] for qid in qids}
    rows = {"faiss PQ (L2 ADC)": evaluate(faiss_run, judged)[0]}
    for name, run in exhaustive_runs(table, index, q, qids, args).items():
        rows[name] = evaluate(run, judged)[0]
    report = {"queries": len(qids), "codes_match_docids": bool(same_codes)}
    if generative is not None:
        rows["generative zero-step"] = evaluate(generative, judged)[0]
        top = {qid: (faiss_run[qid][0][0], generative[qid][0][0] if generative.get(qid) else None) for qid in qids}
        report["top_doc_differs"] = sum(a != b for a, b in top.values()) / len(qids)
        report["top_docid_differs"] = sum(b is None or table.by_doc[a] != table.by_doc[b]
                                          for a, b in top.values()) / len(qids)
    for name, metrics in rows.items():
        report[name] = {k: round(metrics[k], 4) for k in ("MRR@10", "R@1", "R@10")}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
