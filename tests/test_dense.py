"""`ddro dense` on a small real collection (adi, 82 documents): exact inner-product ranking over
the docid embedder's cached document vectors, depth k, cache reuse, bad input."""
import json

import numpy as np
import pytest

from ddro.dense import DenseArguments, main, run
from ddro.eval.runs import read_run

K = 5


@pytest.fixture(scope="module")
def adi(shared_data, tmp_path_factory):
    from ddro.data.beir import BeirArguments
    from ddro.data.beir import run as import_beir

    folder = tmp_path_factory.mktemp("dense") / "adi"
    import_beir(BeirArguments(path=str(shared_data / "adi"), out=str(folder), sentences=False))
    return folder


@pytest.fixture(scope="module")
def cache(adi):
    """The embedding cache as `ddro docids embed` fills it, with the dense baseline's default settings."""
    from ddro.docids.embed import EmbedArguments
    from ddro.docids.embed import run as embed

    folder = adi.parent / "cache"
    embed(EmbedArguments(collection=str(adi), embed_max_length=128, embed_cache=str(folder)))
    return folder


@pytest.fixture
def no_embedding(monkeypatch):
    """Documents may only come from the cache."""
    def refuse(*args, **kwargs):
        raise AssertionError("documents were embedded again")
    monkeypatch.setattr("ddro.docids.embed.encode_docs", refuse)


@pytest.fixture(scope="module")
def dense_run(adi, cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("ddro.docids.embed.encode_docs", lambda *a, **kw: pytest.fail("documents were embedded again"))
        manifest = run(DenseArguments(collection=str(adi), out=str(adi.parent / "run"), k=K, embed_cache=str(cache)))
    return adi.parent / "run", manifest


def brute_force_scores(adi, cache, manifest):
    """Query x document inner products from the cached vectors and an independent query encoding."""
    from sentence_transformers import SentenceTransformer

    from ddro.data.collection import Collection
    from ddro.tokenizer import OFFLINE_MINILM, resolve_model_path

    docs = np.load(cache / f"{manifest['embedding']['cache_key']}.npy").astype(np.float32)
    collection = Collection(adi)
    qids = sorted(collection.qrels("test"))
    model = SentenceTransformer(resolve_model_path(OFFLINE_MINILM), device="cpu")
    model.max_seq_length = 64
    queries = model.encode([collection.queries()[q] for q in qids], normalize_embeddings=True)
    return qids, collection.doc_ids(), queries @ docs.T


def test_run_is_the_exact_inner_product_top_k(adi, cache, dense_run):
    out, manifest = dense_run
    qids, doc_ids, scores = brute_force_scores(adi, cache, manifest)
    hits = read_run(out / "run.trec")
    assert sorted(hits) == qids
    for qid, row in zip(qids, scores):
        ranked = hits[qid]
        assert len(ranked) == K
        by_doc = dict(zip(doc_ids, row))
        got = [s for _, s in ranked]
        assert got == sorted(got, reverse=True)
        for doc, score in ranked:
            assert score == pytest.approx(by_doc[doc], abs=1e-5)
        left_out = [s for d, s in by_doc.items() if d not in dict(ranked)]
        assert min(got) >= max(left_out) - 1e-5  # nothing better was left out


def test_outputs_and_manifest(adi, dense_run):
    out, manifest = dense_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert manifest["kind"] == "run" and manifest["metrics"] == metrics
    assert manifest["counts"]["hits"] == K * manifest["counts"]["queries"]
    assert manifest["embedding"]["max_seq_length"] == 128 and manifest["embedding"]["fields"] == ["title", "text"]
    assert (out / "per_query.csv").read_text().count("\n") == metrics["queries"] + 1
    assert all(line.split()[5] == "dense" for line in (out / "run.trec").read_text().splitlines())


def test_rerun_reads_the_cache_and_writes_the_same_run(adi, cache, dense_run, no_embedding, tmp_path):
    out, _ = dense_run
    run(DenseArguments(collection=str(adi), out=str(tmp_path / "again"), k=K, embed_cache=str(cache)))
    for name in ("run.trec", "metrics.json", "per_query.csv"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()


@pytest.mark.parametrize("flags, message", [
    (["--collection", "MISSING"], "not a collection"),
    (["--split", "dev"], "no qrels for split 'dev'"),
    (["--k", "0"], "--k must be at least 1"),
    (["--tag", "two words"], "must be one word"),
    (["--collection", "RAW"], "no manifest.json; import it first"),
])
def test_bad_input_is_one_line_and_leaves_the_output(flags, message, adi, shared_data, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.trec").write_text("kept\n")
    flags = [{"MISSING": str(tmp_path / "nope"), "RAW": str(shared_data / "adi")}.get(f, f) for f in flags]
    argv = ["--collection", str(adi), "--out", str(out), "--overwrite", "true", "--embed_cache", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_:
        main(argv + flags)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert [p.name for p in out.iterdir()] == ["run.trec"] and (out / "run.trec").read_text() == "kept\n"
    assert not list(tmp_path.glob("*.npy"))  # nothing embedded


def test_existing_output_is_refused_without_overwrite(adi, dense_run, capsys):
    out, _ = dense_run
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(SystemExit) as exit_:
        main(["--collection", str(adi), "--out", str(out)])
    assert exit_.value.code == 2 and "already exists" in capsys.readouterr().err
    assert (out / "manifest.json").read_bytes() == before
