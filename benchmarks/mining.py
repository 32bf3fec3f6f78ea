"""`ddro negatives` mining speed per source: queries/s of bm25, dense and model on a small collection.

Builds, in --work (reused by a rerun): the collection (`ddro data beir`), its PQ docids of the packaged
MiniLM's document embeddings (cached; the dense source reads the same cache entry) and a zero-step
minilm-decoder checkpoint over them (`ddro model init`: MiniLM encoder + a 1-layer random decoder).
Then, per source, the searcher is built once (timed apart: BM25 index, embeddings from the cache,
model loading) and handed to `ddro.negatives.run`, which mines --queries training queries (a seeded
sample: --max_queries): queries/s = queries / that run's wall time (search + sampling + writing).
The model source decodes with beams = the last band's end, the evaluator's beam search.

    PYTHONPATH=src nice .venv/bin/python benchmarks/mining.py [--collection ../shared/data/scifact]
        [--queries 256] [--bands 1-10,11-20] [--sources bm25,dense,model] [--device cpu] [--threads 1]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def prepare(work: Path, collection: Path, device: str) -> tuple[Path, Path, Path]:
    """(collection, docids, checkpoint) folders in `work`, each built once."""
    from ddro.data.beir import BeirArguments
    from ddro.data.beir import run as import_beir
    from ddro.docids.build import DocidArguments
    from ddro.docids.build import run as build_docids
    from ddro.modeling import ModelArguments
    from ddro.modeling.init import InitArguments
    from ddro.modeling.init import run as init_model

    coll, docids, ckpt = work / "collection", work / "docids", work / "model"
    if not (coll / "manifest.json").is_file():
        import_beir(BeirArguments(path=str(collection), out=str(coll), sentences=False))
    if not (docids / "manifest.json").is_file():
        build_docids(DocidArguments(collection=str(coll), encoding="pq", out=str(docids), target_vocab="own",
                                    pq_subspaces=8, dedup=True, embed_max_length=128, device=device,
                                    embed_cache=str(work / "embeddings")))
    if not (ckpt / "ddro_model.json").is_file():
        init_model(ModelArguments(construction="minilm-decoder", decoder_layers=1),
                   InitArguments(docids=str(docids), out=str(ckpt)))
    return coll, docids, ckpt


def measure(source: str, args, coll: Path, docids: Path, ckpt: Path, work: Path) -> tuple[float, float, int]:
    """(searcher build seconds, mining seconds, queries mined) of one source."""
    from ddro.data.collection import Collection
    from ddro.negatives import SOURCES, NegativesArguments, check_args, run

    model = {"checkpoint": str(ckpt), "docids": str(docids)} if source == "model" else {}
    neg = NegativesArguments(collection=str(coll), out=str(work / f"negatives-{source}"), source=source,
                             bands=args.bands, negatives=args.negatives, max_queries=args.queries,
                             val_fraction=0, threads=args.threads, device=args.device, batch_size=args.batch_size,
                             embed_cache=str(work / "embeddings"), overwrite=True, **model)
    plan = check_args(neg)
    start = time.perf_counter()
    searcher = SOURCES[source](neg, Collection(coll), plan.k)
    built = time.perf_counter() - start
    start = time.perf_counter()
    manifest = run(neg, index=searcher)
    return built, time.perf_counter() - start, min(args.queries, manifest["counts"]["queries_available"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collection", default=str(REPO.parent / "shared" / "data" / "scifact"),
                        help="a BEIR-layout folder with a train split")
    parser.add_argument("--work", default=str(REPO / "resources" / "bench-mining"),
                        help="where the collection, docids, model and negatives are built (reused)")
    parser.add_argument("--queries", type=int, default=256, help="training queries mined per source")
    parser.add_argument("--bands", default="1-10,11-20", help="rank bands (model: beams = the last band's end)")
    parser.add_argument("--negatives", type=int, default=4)
    parser.add_argument("--sources", default="bm25,dense,model")
    parser.add_argument("--batch_size", type=int, default=16, help="model source: queries per beam search call")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch and BM25 threads")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    coll, docids, ckpt = prepare(work, Path(args.collection), args.device)
    rows = [(source, *measure(source, args, coll, docids, ckpt, work)) for source in args.sources.split(",")]
    print(f"\nMining {args.queries} training queries of {Path(args.collection).name}, bands {args.bands}, "
          f"device {args.device}, {args.threads} thread(s)")
    print("| source | searcher build s | mining s | queries | queries/s |\n|---|---|---|---|---|")
    for source, built, mined, n in rows:
        print(f"| {source} | {built:.1f} | {mined:.1f} | {n} | {n / mined:,.1f} |")


if __name__ == "__main__":
    main()
